"""Sequence classification: one label (softmax) or a label set (sigmoid) per text.

The loss, the metrics (accuracy, macro-F1, micro-F1 for multi-label), batched
prediction, the check that an attack fits the input, and the training step: the
closure every advnlp method is called with.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Sequence

import torch
from torch import nn

from advnlp import ATTA, backward_step

from ...data import batches
from ...errors import InputError
from ...models import SCRATCH, Classifier
from ...robustness import DISCRETE_ATTACKS


def loss_fn(multi_label: bool, reduction: str = "mean") -> nn.Module:
    return (nn.BCEWithLogitsLoss(reduction=reduction) if multi_label
            else nn.CrossEntropyLoss(reduction=reduction))


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.ones_like(denom))


def predictions(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    return (logits > 0).float() if multi_label else logits.argmax(-1)


def metrics(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> Dict[str, float]:
    """accuracy (exact match for multi-label) and macro-F1; micro-F1 too for multi-label."""
    pred = predictions(logits, multi_label)
    if multi_label:
        truth = targets.float()
    else:
        n = logits.shape[-1]
        pred = nn.functional.one_hot(pred, n).float()
        truth = nn.functional.one_hot(targets, n).float()
    tp = (pred * truth).sum(0)
    fp = (pred * (1 - truth)).sum(0)
    fn = ((1 - pred) * truth).sum(0)
    out = {
        "accuracy": (pred == truth).all(-1).float().mean().item(),
        "macro_f1": _f1(tp, fp, fn).mean().item(),
    }
    if multi_label:
        out["micro_f1"] = _f1(tp.sum(), fp.sum(), fn.sum()).item()
    return out


@torch.no_grad()
def predict(clf: Classifier, texts: Sequence[tuple], batch_size: int, device) -> torch.Tensor:
    clf.model.eval()
    out = []
    for idx in batches(len(texts), batch_size):
        enc = {k: v.to(device) for k, v in clf.encode([texts[i] for i in idx]).items()}
        out.append(clf(enc).float().cpu())
    return torch.cat(out)


def check_single_segment(attack: str, text_columns) -> None:
    if attack in DISCRETE_ATTACKS and len(text_columns) != 1:
        raise InputError(f"--attack {attack} edits single texts; this run uses sentence pairs "
                         f"({','.join(text_columns)}): use --attack embedding")


def check_attack(attack: str, cfg) -> None:
    """A discrete attack fits ``cfg``'s data and model (compare and ``advnlp attack``)."""
    check_single_segment(attack, cfg.data.text_columns)
    if attack == "word-swap" and cfg.model in SCRATCH:
        # Neighbours in embeddings learnt from this data alone are words the model already
        # confuses, not meaning-preserving swaps: the score would not say what it claims.
        raise InputError(f"--attack word-swap swaps words for their neighbours in a pretrained "
                         f"model's embeddings; --model {cfg.model} learns its embeddings from "
                         f"scratch: use --attack word or char")


def train_step(clf: Classifier, adv, criterion, batch, y, autocast=contextlib.nullcontext,
               backward_fn=None, texts=None, ids=None) -> torch.Tensor:
    """One step's gradients: clean only, or clean + adversarial through ``adv.backward``.
    ``autocast`` wraps every forward pass (--precision); ``backward_fn`` scales for fp16.
    With ``texts`` (--online-attack) ``adv`` is a DiscreteAT that encodes them itself.
    ``ids``: the batch's training-set indices, for a method that keeps state per example."""
    def logits(b=batch):
        with autocast():
            return clf(b)

    if texts is not None:
        return adv.backward(lambda b, labels: criterion(logits(b).float(), labels), texts, y,
                            backward_fn)

    # SMART, VAT compare logits: their closure returns them and they take labels=y
    return backward_step(adv, lambda: criterion(logits().float(), y), logits, backward_fn,
                         labels=y, **example_ids(adv, ids))


def example_ids(adv, ids) -> dict:
    """``{"ids": ids}`` for a method that keeps state per example (ATTA), else nothing."""
    return {"ids": list(ids)} if isinstance(adv, ATTA) else {}
