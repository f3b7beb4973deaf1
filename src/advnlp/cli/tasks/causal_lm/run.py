"""A causal-LM run (``--task causal-lm``): a :class:`Run` whose examples are prompt/completion
token ids, whose model is a :class:`~.model.CausalLM` (LoRA or full fine-tuning) and whose
metric is the held-out completion loss.

Everything else is the shared run's: the loop, the schedule, checkpoints and --resume,
Ctrl-C, bf16/fp16, torchrun, every method through ``adv.backward(closure)``. The closure is
the model's own loss (next-token NLL on the completion, mean over its tokens); SMART, VAT and
R3F get the model's output (its ``.loss`` and ``.logits``). ``--perturb prompt`` (default)
gives the methods a mask of the prompt's real positions (Xhonneux et al. 2024: an adversary
moves the instruction, the model is trained to keep its answer); ``--perturb all`` every real
token. Splits: ``--validation`` / ``--test`` files, or else 10% of the training examples each,
split off with the run's seed.
"""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import List, Optional

import torch

from advnlp import EmbeddingAdversary, backward_step

from ...data import held_out
from ...distributed import seed_everything
from ...errors import InputError
from ...files import atomic_dir, write_json, write_jsonl
from ...run import Run
from ..classification.classify import example_ids
from . import data as D
from .model import MERGED, build_lm, position_limit
from .score import completion_scores, generations

SAMPLES = "samples.jsonl"  # greedy continuations of a few test prompts
SAMPLE_PROMPTS = 3
DEFAULT_LENGTH = 256  # tokens per example (prompt and completion) without --max-length


class LMLabels:
    """labels.json of a causal-LM run: it has no labels, only its task."""

    def to_json(self) -> dict:
        return {"task": "causal-lm"}


def lm_splits(cfg, tokenizer, log) -> SimpleNamespace:
    """(train, validation, test) rows of the run's files (10% split off each when not given)."""
    spec = cfg.data
    rows = D.read_conversations(spec.train)
    held = {}
    for name, path in (("test", spec.test), ("validation", spec.validation)):
        if path is not None:
            held[name] = D.read_conversations(path)
        else:
            rows, held[name] = held_out(rows, 0.1, cfg.seed + (name == "test"), name)
    if spec.max_train_samples is not None and spec.max_train_samples < len(rows):
        rows, _ = held_out(rows, 1 - spec.max_train_samples / len(rows), cfg.seed, "train")
    return SimpleNamespace(**{name: D.encode_all(tokenizer, r, cfg.max_length, name, log)
                              for name, r in (("train", rows), ("validation", held["validation"]),
                                              ("test", held["test"]))})


class LMRun(Run):
    headline = "completion_loss"
    bounded_headline = False

    def _setup_task(self, cfg, log) -> None:
        seed_everything(cfg.seed)  # before LoRA's random initialisation
        self.clf = build_lm(cfg, log)
        limit = position_limit(self.clf.model)
        if cfg.max_length is None:  # config.json records the resolved value
            cfg.max_length = min(DEFAULT_LENGTH, limit or DEFAULT_LENGTH)
        elif limit is not None and cfg.max_length > limit:
            raise InputError(f"--max-length {cfg.max_length} is more than the {limit} positions "
                             f"--model {cfg.model} reads; lower it")
        self.clf.max_length = cfg.max_length
        self.splits = lm_splits(cfg, self.clf.tokenizer, log)
        self.labels = LMLabels()
        self.targets = {}
        self.criterion = None

    def labelled_batch(self, idx: List[int]) -> dict:
        train = self.train_set
        return self.clf.batch([train[i] for i in idx])

    def batch(self, idx: List[int]) -> dict:
        return {k: v.to(self.device) for k, v in self.labelled_batch(idx).items()}

    def positions(self, batch: dict) -> Optional[torch.Tensor]:
        """What the methods may perturb: the prompt's real tokens, or every real token."""
        real = batch["attention_mask"].bool()
        return real & (batch["labels"] == D.IGNORE) if self.cfg.perturb == "prompt" else real

    def task_step(self, idx: List[int], batch: Optional[dict]) -> torch.Tensor:
        model, adv = self.train_clf.model, self.adv

        def output():
            with self.autocast():
                return model(**batch)

        mask = self.positions(batch) if isinstance(adv, EmbeddingAdversary) else None  # AWP: weights
        return backward_step(adv, lambda: output().loss.float(), output, self.backward_fn,
                             mask=mask, **example_ids(adv, idx))

    def evaluate(self, split: str) -> dict:
        return completion_scores(self.clf, getattr(self.splits, split), self.cfg.batch_size * 2,
                                 self.device)

    def finish(self) -> Optional[dict]:
        samples = (generations(self.clf, self.splits.test[:SAMPLE_PROMPTS], self.device,
                               synced=self.sharded) if self.evaluates() else None)
        result = super().finish()
        if result is None:
            return None
        write_jsonl(os.path.join(self.run_dir, SAMPLES), samples)
        if self.cfg.merge_lora and self.cfg.lora_r:
            with atomic_dir(os.path.join(self.run_dir, MERGED)) as staged:
                self.clf.save_merged(staged, os.path.join(self.run_dir, "model"))
        write_json(os.path.join(self.run_dir, "metrics.json"), {**result, "task": "causal-lm"})
        return result


__all__ = ["LMRun", "LMLabels", "lm_splits"]
