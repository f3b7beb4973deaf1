#!/usr/bin/env python
"""The command line's causal-LM step against a hand-written loop's, and the methods' cost in it.

A benchmark, not a test: it asserts nothing. The model of ``step_cost_llm.py`` (a randomly
initialised Llama, LoRA r=8 on q_proj and v_proj) is saved with a word-level tokenizer into
a temporary folder; for each method, ``advnlp train --task causal-lm``'s own step (the run
built by the CLI's classes: its batch from the examples, ``train_step``: the method's
``backward`` with the prompt mask, clipping at 1.0, AdamW, the schedule) and a hand loop doing
the same on its own copy of the model (collate, ``adv.backward(closure, mask=prompt)``,
clip, step, schedule, zero_grad) are timed interleaved on the same examples, the starting
step rotating every round. Reported: the CLI's overhead (median of t(cli) / t(hand) per
round) and each method's cost against the plain step of the same loop.

Then the engines: for each method, whole one-epoch runs of ``advnlp train --task causal-lm``
with ``--engine loop``, ``--engine trainer`` (Hugging Face's ``Trainer``) and ``--engine trl``
(TRL's ``SFTTrainer`` at ``SFTConfig``'s defaults, gradient checkpointing included), in rotated
order over ``--engine-rounds`` rounds; each run's own seconds per optimizer step (what its
metrics.json records), and the median over rounds of each engine's over the loop's.

    python benchmarks/step_cost_llm_cli.py            # ~2 min on a quiet 2-core CPU
    python benchmarks/step_cost_llm_cli.py --quick    # a smaller model, a smoke test

Writes ``benchmarks/results/step_cost-llm-cli-<device>.json`` and prints a markdown table.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

import advnlp  # noqa: E402
from advnlp import FGM, PGD  # noqa: E402
from advnlp.cli.cost import timed_rounds  # noqa: E402
from step_cost_llm import llama_size, parse_args  # noqa: E402

METHODS = {"none": None, "fgm": lambda m: FGM(m, epsilon=0.03, relative=True),
           "pgd": lambda m: PGD(m, epsilon=0.03, alpha=0.009, steps=3, relative=True)}
ENGINE_BATCHES = 40  # batches of the engines' runs' data (32 training steps after the splits)
CLI_SIZES = {"none": {}, "fgm": {}, "pgd": {"steps": 3}}  # the CLI's measured defaults otherwise


def save_model(folder: str, quick: bool, seq: int) -> int:
    """A random Llama and a word-level tokenizer over ``w0 .. wN`` in ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    size = llama_size(quick)
    words = ["<pad>", "<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(size["vocab_size"] - 4)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>", unk_token="<unk>").save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(max_position_embeddings=max(512, seq), bos_token_id=2,
                                 eos_token_id=3, pad_token_id=0, **size)).save_pretrained(folder)
    return size["vocab_size"]


def write_data(path: str, n: int, seq: int, vocab: int) -> None:
    """``n`` prompt/completion pairs of about ``seq`` tokens, half of them prompt."""
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            words = [f"w{rng.randrange(vocab - 4)}" for _ in range(seq - 2)]
            half = len(words) // 2
            f.write(json.dumps({"prompt": " ".join(words[:half]),
                                "completion": " ".join(words[half:])}) + "\n")


def cli_run(folder, data, method, batch, seq, device):
    from advnlp.cli.config import TrainConfig
    from advnlp.cli.data import DataSpec
    from advnlp.cli.tasks.causal_lm.run import LMRun

    cfg = TrainConfig(model=folder, method=method, task="causal-lm", batch_size=batch,
                      max_length=seq, lr=1e-5, lora_r=8, lora_targets=("q_proj", "v_proj"),
                      device=str(device), output_dir=os.path.join(os.path.dirname(data), method),
                      data=DataSpec(train=data), **CLI_SIZES[method]).resolved()
    return LMRun(cfg)


def hand_step(run, method, device):
    """The same model, optimizer and schedule as ``run``'s, stepped by a hand loop."""
    import copy

    from advnlp.cli.tasks.causal_lm.data import IGNORE, collate

    model = copy.deepcopy(run.clf.model)
    adv = METHODS[method](model) if METHODS[method] else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    examples, pad = run.splits.train, run.clf.pad_id

    def step(idx):
        b = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad).items()}
        closure = lambda: model(**b).loss  # noqa: E731
        if adv is None:
            closure().backward()
        else:
            prompt = b["attention_mask"].bool() & (b["labels"] == IGNORE)
            adv.backward(closure, mask=prompt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return step


def engine_run(folder, data, method, batch, seq, device, engine, out) -> float:
    """Seconds per optimizer step of one one-epoch causal-LM run on ``engine``."""
    from advnlp.cli.commands import train
    from advnlp.cli.config import TrainConfig
    from advnlp.cli.data import DataSpec

    cfg = TrainConfig(model=folder, method=method, task="causal-lm", batch_size=batch,
                      max_length=seq, lr=1e-5, lora_r=8, lora_targets=("q_proj", "v_proj"),
                      device=str(device), output_dir=out, engine=engine, epochs=1,
                      eval_strategy="end", data=DataSpec(train=data), **CLI_SIZES[method])
    return train(cfg.resolved(), overwrite=True)["seconds_per_step"]


ENGINES = ("loop", "trainer", "trl")


def engines(folder, data, args, device, tmp) -> list:
    """Per method: each engine's seconds per step over the loop's, whole runs in rotated
    order per round."""
    rows = []
    for method in METHODS:
        got = {e: [] for e in ENGINES}
        for r in range(args.engine_rounds):
            for engine in ENGINES[r % 3:] + ENGINES[:r % 3]:
                got[engine].append(engine_run(folder, data, method, args.batch, args.seq, device,
                                              engine, os.path.join(tmp, f"{method}-{engine}-{r}")))
        row = {"method": method, **{f"{e}_seconds_per_step": got[e] for e in ENGINES}}
        for e in ENGINES[1:]:
            row[f"{e}_over_loop"] = statistics.median(t / lo for t, lo in zip(got[e], got["loop"]))
        rows.append(row)
    return rows


def main() -> None:
    args = parse_args(__doc__, engine_rounds=True)
    device = torch.device(args.device)
    from advnlp.cli.engines.loop import train_step

    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "model")
        vocab = save_model(folder, args.quick, args.seq)
        data = os.path.join(tmp, "train.jsonl")
        write_data(data, 10 * args.batch, args.seq, vocab)
        idx = list(range(args.batch))
        steps = {}
        for method in METHODS:
            run = cli_run(folder, data, method, args.batch, args.seq, device)
            steps[f"hand:{method}"] = (lambda s=hand_step(run, method, device): s(idx))
            # the loop engine encodes the batch, then steps: both timed, as the hand loop's
            steps[f"cli:{method}"] = (lambda r=run: train_step(r, idx, r.batch(idx)))
        runs_data = os.path.join(tmp, "runs.jsonl")
        write_data(runs_data, ENGINE_BATCHES * args.batch, args.seq, vocab)
        engine_rows = engines(folder, runs_data, args, device, tmp) if args.engine_rounds else []
        names = list(steps)
        for name in names:  # warm-up
            steps[name]()
        times = {n: [] for n in names}
        for timed in timed_rounds(steps, args.rounds, {"s": time.perf_counter}):
            for name in names:
                times[name].append(timed["s"][name])
    med = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731
    rows = [{"method": m, "cli_over_hand": med(f"cli:{m}", f"hand:{m}"),
             "cli_vs_plain": med(f"cli:{m}", "cli:none"), "hand_vs_plain": med(f"hand:{m}", "hand:none"),
             "cli_median_seconds": statistics.median(times[f"cli:{m}"]),
             "hand_median_seconds": statistics.median(times[f"hand:{m}"])} for m in METHODS]
    out = {"benchmark": "step_cost_llm_cli", "advnlp": advnlp.__version__,
           "torch": torch.__version__, "device": str(device),
           "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "model": f"random Llama ({'quick' if args.quick else '4 layers, hidden 256'}), LoRA r=8 "
                    "on q_proj, v_proj", "batch": args.batch, "seq": args.seq,
           "rounds": args.rounds, "perturb": "prompt (the CLI's default), the first half",
           "ratio": "median over rounds of the ratio of two steps' times in the same round",
           "rows": rows, "seconds": times,
           "engines": {"what": f"whole one-epoch runs ({ENGINE_BATCHES * args.batch} examples "
                               "minus the held-out 20%), the engines in rotated order per round; each run's "
                               "own seconds per optimizer step; <engine>_over_loop: the median "
                               "ratio; trl runs at SFTConfig's defaults (gradient checkpointing on)",
                       "rounds": args.engine_rounds, "rows": engine_rows}}
    kind = "cuda" if device.type == "cuda" else "cpu"
    path = os.path.join(HERE, "results", f"step_cost-llm-cli-{kind}{'-quick' if args.quick else ''}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"{out['model']}, batch {args.batch} x {args.seq}, {device}, {args.rounds} interleaved "
          "rounds\n")
    print("| method | CLI step / hand step | CLI vs plain (CLI) | hand vs plain (hand) | CLI s/step |\n"
          "|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['cli_over_hand']:.3f} | {r['cli_vs_plain']:.2f}x "
              f"| {r['hand_vs_plain']:.2f}x | {r['cli_median_seconds']:.3f} |")
    if engine_rows:
        print("\n| method | --engine trainer / loop | --engine trl / loop (s/step, whole runs) |"
              "\n|---|---:|---:|")
        for r in engine_rows:
            print(f"| {r['method']} | {r['trainer_over_loop']:.3f} | {r['trl_over_loop']:.3f} |")
    print(f"\nwritten: {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
