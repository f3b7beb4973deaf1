"""Causal language modelling (``--task causal-lm``): supervised fine-tuning of a decoder LM on
prompt/completion pairs or conversations, full or with LoRA adapters.

:mod:`.data` reads the JSONL and tokenizes it (loss on the completion only), :mod:`.model`
loads the model and its adapters, :mod:`.run` is the run, :mod:`.score` the completion loss
clean and under PGD on the prompt, :mod:`.commands` its ``eval``, ``attack`` and compare scores.
"""
from __future__ import annotations

from ...distributed import distributed_requested
from ...errors import InputError, comma_list
from ...options import Option
from .. import Task

NAME = "causal-lm"
PERTURB = ("prompt", "all")


def _check(cfg) -> None:
    if cfg.data.train is None:
        raise InputError(f"--task {NAME} needs --train: a JSONL file of {{\"messages\": [...]}} "
                         "conversations or {\"prompt\": ..., \"completion\": ...} pairs")
    if cfg.model in ("textcnn", "bilstm"):
        raise InputError(f"--model {cfg.model} classifies or tags; --task {NAME} needs --model "
                         "DIR, a local causal LM folder (Llama, Qwen2, GPT-2, ...)")
    refused = {"--online-attack": cfg.online_attack is not None,
               "--typo-defence": cfg.typo_defence,
               "--synonym-defence": cfg.synonym_defence,
               "--augment-with-attack": cfg.augment_with_attack is not None,
               "--multi-label": cfg.data.multi_label,
               "--text-columns": tuple(cfg.data.text_columns) != ("text",),
               "--crf": cfg.crf, "--label-all-subtokens": cfg.label_all_subtokens}
    for flag, given in refused.items():
        if given:
            raise InputError(f"--task {NAME} does not take {flag} (a classifier's or tagger's "
                             "option); drop it")
    if cfg.perturb not in PERTURB:
        raise InputError(f"--perturb takes {' or '.join(PERTURB)}, got {cfg.perturb!r}")
    _check_lora(cfg)
    _check_fsdp(cfg)


def _check_fsdp(cfg) -> None:
    if not cfg.fsdp:
        return
    if not distributed_requested(False):
        raise InputError("--fsdp shards the model over torchrun's processes; launch with "
                         "torchrun --nproc_per_node N -m advnlp.cli train ... --fsdp (one "
                         "process holds the whole model: drop --fsdp)")
    if cfg.engine != "loop":
        raise InputError(f"--fsdp shards the model in advnlp's own loop; drop --engine "
                         f"{cfg.engine} (or --fsdp: the Trainer engines run DDP under torchrun)")
    if cfg.precision == "fp16":
        raise InputError("--fsdp does not take --precision fp16 (its loss scaler does not "
                         "handle sharded gradients); use --precision bf16")


def _check_lora(cfg) -> None:
    if cfg.lora_r is None:
        if cfg.lora_alpha is not None or cfg.merge_lora or cfg.lora_targets != ("all-linear",):
            raise InputError("--lora-alpha, --lora-targets and --merge-lora go with --lora-r "
                             "(LoRA's rank); without it the whole model is fine-tuned")
        return
    if cfg.lora_r < 1:
        raise InputError(f"--lora-r is LoRA's rank, an integer >= 1, got {cfg.lora_r}")
    if cfg.lora_alpha is None:
        cfg.lora_alpha = float(2 * cfg.lora_r)  # the common alpha = 2r; config.json records it
    if not cfg.lora_alpha > 0:
        raise InputError(f"--lora-alpha must be > 0, got {cfg.lora_alpha:g}")
    if not cfg.lora_targets or any(not t for t in cfg.lora_targets):
        raise InputError("--lora-targets takes module names (q_proj,v_proj) or all-linear")


def _targets(text: str):
    return tuple(comma_list(text))


OPTIONS = {
    "perturb": Option(choices=PERTURB,
                      help="the positions the embedding methods perturb: prompt (default; the "
                           "instruction, trained to keep the answer: Xhonneux et al. 2024) or "
                           "all (every real token)"),
    "lora_r": Option(type=int, metavar="R",
                     help="train LoRA adapters of rank R (PEFT) on the frozen model instead of "
                          "every weight; model/ then holds the adapters"),
    "lora_alpha": Option(type=float, help="LoRA's alpha (default 2 * --lora-r)"),
    "lora_targets": Option(type=_targets, metavar="NAMES",
                           help="the modules LoRA adapts, comma-separated (q_proj,v_proj) or "
                                "all-linear (default)"),
    "merge_lora": Option(help="also write model-merged/: the base model with the adapters "
                              "folded in"),
    "fsdp": Option(help="under torchrun: shard the model over the processes (FSDP2, one unit "
                        "per decoder layer) instead of a copy per process (DDP)"),
}


TASK = Task(
    name=NAME,
    help=f"{NAME}: a decoder LM fine-tuned on its completions (JSONL messages or "
         "prompt/completion)",
    module=f"{__name__}.commands", loader=f"{__name__}.commands.load_lm_run",
    score="completion_loss", clean_keys=("completion_loss", "perplexity"),
    table={"task": NAME, "score": "completion_loss", "lower_is_better": True},
    check=_check, attacks=(), attacks_note=" for a causal LM (char and word edit a "
    "classifier's texts; its attack is PGD on the prompt's embeddings)",
    typo_rate=f"--typo-rate is for classifiers; --task {NAME} is scored by its completion loss "
              "under PGD on the prompt's embeddings",
    lower_better=("completion_loss", "perplexity", "robust_completion_loss", "broken_share"),
    extra_keys=("broken_share",),
    options=OPTIONS, options_title=f"causal LM (--task {NAME})", engines=("loop", "trainer", "trl"))
