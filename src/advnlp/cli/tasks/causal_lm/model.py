"""A causal LM from a local folder, optionally with LoRA adapters (PEFT), saved as safetensors.

Nothing is downloaded and no code from the folder runs (``trust_remote_code=False``); the
folder's weights must be safetensors. A folder whose config names no causal-LM architecture
(an encoder such as BERT) is refused. With ``--lora-r`` the base weights are frozen and only
the adapters train; the run's ``model/`` then holds the adapters (``adapter_model.safetensors``,
``adapter_config.json`` naming the base folder) and the tokenizer, and ``--merge-lora`` also
writes ``model-merged/``: the base with the adapters folded in, a plain model folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import List, Optional, Sequence

import torch

from ...errors import InputError
from ...models import hf_loading, open_hf_folder
from .data import Encoded, collate

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
MERGED = "model-merged"


def _architectures(path: str) -> List[str]:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            arch = json.load(f).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [a for a in arch if isinstance(a, str)]


def check_folder(path: str, config: bool = True) -> None:
    """A model folder (``config``: with its config.json; a run's adapters have none)."""
    if not os.path.isdir(path) or (config and not os.path.isfile(os.path.join(path, "config.json"))):
        what = "no config.json" if os.path.isdir(path) else "no such directory"
        raise InputError(f"--model {path}: not a model directory ({what}); --task causal-lm "
                         "needs a local causal LM folder (nothing is downloaded)")


def check_causal(path: str, transformers) -> None:
    """Refuse a folder that is not a causal LM, before its weights are read."""
    arch = _architectures(path)
    if arch:
        # BertLMHeadModel is BERT as a decoder; a plain BERT folder says BertModel
        causal = any(a.endswith(CAUSAL_SUFFIXES) for a in arch)
    else:
        with hf_loading(path):
            config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=False)
        names = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        causal = config.model_type in names and not config.is_encoder_decoder
    if not causal:
        raise InputError(f"--model {path} is not a causal language model (its config names "
                         f"{', '.join(arch) or 'no causal-LM architecture'}); --task causal-lm "
                         "trains decoder LMs (Llama, Qwen2, GPT-2, ...). An encoder trains "
                         "with --task classification or token-classification")


class CausalLM:
    """A causal LM and its tokenizer: what a causal-LM run trains, scores and saves."""

    is_hf = True
    normalizer = None  # no typo defence for a causal LM

    def __init__(self, model, tokenizer, max_length: int, base: str):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.base = base  # the folder a merged copy starts from
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)

    def batch(self, examples: Sequence[Encoded]) -> dict:
        return collate(examples, self.pad_id)

    def save(self, directory: str, state_dict: Optional[dict] = None) -> None:
        """Adapters (LoRA) or the whole model, as safetensors, and the tokenizer;
        ``state_dict``: the weights to write (a sharded model's, gathered) instead of the
        model's own."""
        if state_dict is not None:
            # A gathered state holds tied weights (a head tied to the embedding) as separate
            # copies under each name: keep the first name only, as the model's own save does.
            first = {n for n, _ in self.model.named_parameters()}
            every = {n for n, _ in self.model.named_parameters(remove_duplicate=False)}
            state_dict = {k: v for k, v in state_dict.items() if k in first or k not in every}
        self.model.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)
        self.tokenizer.save_pretrained(directory)

    def save_merged(self, directory: str, adapters: str) -> None:
        """The base with the adapters saved in ``adapters`` folded in: a fresh copy of the
        base, so the run's model keeps its adapters."""
        merged = attach_adapters(load_base(self.base), adapters).merge_and_unload()
        merged.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)


def load_base(path: str):
    check_folder(path)
    transformers = open_hf_folder(path)
    check_causal(path, transformers)
    with hf_loading(path):
        return transformers.AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=False, use_safetensors=True, dtype=torch.float32)


def load_tokenizer(path: str):
    check_folder(path, config=False)
    transformers = open_hf_folder(path)
    with hf_loading(path):
        return transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def _peft():
    try:
        import peft
    except ImportError:
        raise InputError("--lora-r needs peft: pip install 'advnlp[llm]'") from None
    return peft


def with_lora(model, r: int, alpha: float, targets: Sequence[str]):
    """``model`` with fresh LoRA adapters on ``targets`` (module names, or all-linear)."""
    peft = _peft()
    target = "all-linear" if list(targets) == ["all-linear"] else list(targets)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=target, lora_dropout=0.0,
                             task_type="CAUSAL_LM")
    try:
        with _quiet():
            return peft.get_peft_model(model, config)
    except ValueError as e:
        names = sorted({n.split(".")[-1] for n, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear)})
        raise InputError(f"--lora-targets {','.join(targets)}: {str(e).splitlines()[0]} (the "
                         f"model's linear layers are named {', '.join(names)})") from None


def attach_adapters(base, directory: str):
    """``base`` with the adapters saved in ``directory``."""
    peft = _peft()
    with hf_loading(directory), _quiet():
        return peft.PeftModel.from_pretrained(base, directory, is_trainable=False)


@contextlib.contextmanager
def _quiet():
    """peft asks transformers a name it has deprecated (is_gradient_checkpointing): its
    FutureWarning says nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def build_lm(cfg, log) -> CausalLM:
    """The model of a new run: the base, with fresh adapters when ``cfg.lora_r``."""
    check_folder(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    model = load_base(cfg.model)
    if cfg.lora_r:
        model = with_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_targets)
    model.config.use_cache = False  # training: no key/value cache
    return CausalLM(model, tokenizer, cfg.max_length, cfg.model)


def load_trained(cfg, directory: str) -> CausalLM:
    """A finished run's model: its ``model/`` folder (with the base, for adapters)."""
    tokenizer = load_tokenizer(directory)
    if cfg.lora_r:
        model = attach_adapters(load_base(cfg.model), directory)
    else:
        model = load_base(directory)
    return CausalLM(model, tokenizer, cfg.max_length, cfg.model)


def position_limit(model) -> Optional[int]:
    """The most positions the model reads (None: no known limit)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


__all__ = ["CausalLM", "MERGED", "build_lm", "check_causal", "load_trained", "position_limit"]
