"""Scoring a classifier: clean metrics and robustness to an embedding-space PGD attack.

The attack reuses advnlp's embedding discovery and norm/projection helpers, so it
perturbs the space the training methods defend: the input-embedding output, one
L2 ball per example, padding untouched.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Sequence

import torch
from torch import nn

from . import _perturb as P
from .models import Classifier


def loss_fn(multi_label: bool) -> nn.Module:
    return nn.BCEWithLogitsLoss() if multi_label else nn.CrossEntropyLoss()


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


def batches(n: int, size: int) -> List[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def predict(clf: Classifier, texts: Sequence[tuple], batch_size: int, device) -> torch.Tensor:
    clf.model.eval()
    out = []
    for idx in batches(len(texts), batch_size):
        enc = {k: v.to(device) for k, v in clf.encode([texts[i] for i in idx]).items()}
        out.append(clf(enc).float().cpu())
    return torch.cat(out)


def pgd_attack(forward: Callable[[], torch.Tensor], model: nn.Module, targets: torch.Tensor,
               criterion: nn.Module, epsilon: float, steps: int = 5,
               alpha: float = None) -> torch.Tensor:
    """Logits of ``forward()`` under an L2 PGD attack on the input-embedding output.

    Untargeted: each step climbs ``criterion(logits, targets)`` by ``alpha`` along
    the per-example normalised gradient and projects back onto the ``epsilon``
    ball; padding positions are never perturbed. Only the perturbation gets
    gradients: the parameters' ``.grad`` are left untouched. ``alpha`` defaults
    to ``2.5 * epsilon / steps`` (Madry et al.). ``forward`` must call the
    embedding once, on the same batch every time.
    """
    alpha = 2.5 * epsilon / steps if alpha is None else alpha
    _, embedding = P.find_embedding(model)
    pad = getattr(embedding, "padding_idx", None)
    state = {}

    def add_delta(module, args, out):
        if "delta" not in state:  # first call: a zero perturbation of the output's shape
            ids = args[0] if args else None
            keep = (ids != pad) if pad is not None and isinstance(ids, torch.Tensor) \
                else torch.ones(out.shape[:-1], dtype=torch.bool, device=out.device)
            state["mask"] = keep.unsqueeze(-1).float()
            state["delta"] = torch.zeros(out.shape, device=out.device, requires_grad=True)
        return out + state["delta"].to(out.dtype)

    handle = embedding.register_forward_hook(add_delta)
    try:
        with torch.enable_grad():
            for _ in range(steps):
                loss = criterion(forward(), targets)
                (grad,) = torch.autograd.grad(loss, state["delta"])
                mask = state["mask"]
                moved = state["delta"].detach() + alpha * P.normalize(grad * mask, "l2", "example")
                state["delta"] = (P.project(moved, epsilon, "l2", "example") * mask).requires_grad_(True)
        with torch.no_grad():
            return forward().float()
    finally:
        handle.remove()


def robust_accuracy(clf: Classifier, texts: Sequence[tuple], targets: torch.Tensor,
                    multi_label: bool, epsilon: float, steps: int, batch_size: int,
                    device) -> float:
    """Accuracy (exact match for multi-label) under :func:`pgd_attack`."""
    clf.model.eval()
    criterion = loss_fn(multi_label)
    correct = 0.0
    for idx in batches(len(texts), batch_size):
        enc = {k: v.to(device) for k, v in clf.encode([texts[i] for i in idx]).items()}
        y = targets[idx.start:idx.stop].to(device)
        logits = pgd_attack(lambda: clf(enc), clf.model, y, criterion, epsilon, steps)
        correct += metrics(logits.cpu(), y.cpu(), multi_label)["accuracy"] * len(idx)
    return correct / max(len(texts), 1)


def evaluate_run(run_dir: str, data: str = None, epsilons: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
                 steps: int = 5, samples: int = 100, batch_size: int = 32,
                 device: str = "auto") -> dict:
    """Clean metrics and a robustness curve for a saved run; also written to eval.json."""
    # Imported here: train.py builds on this module, not the other way round.
    from .data import load_splits, read_file
    from .train import _write_json, device_of, load_run

    cfg, labels, clf = load_run(run_dir, device)
    dev = device_of(device)
    examples = read_file(data, cfg.data) if data else load_splits(cfg.data, cfg.seed).test
    texts = [t for t, _ in examples]
    targets = labels.encode([lab for _, lab in examples], data or "test split")
    clean = metrics(predict(clf, texts, batch_size, dev), targets, labels.multi_label)
    n = min(samples, len(texts))
    curve = [{"epsilon": 0.0, "accuracy": metrics(predict(clf, texts[:n], batch_size, dev),
                                                  targets[:n], labels.multi_label)["accuracy"]}]
    for eps in epsilons:
        curve.append({"epsilon": eps, "accuracy": robust_accuracy(
            clf, texts[:n], targets[:n], labels.multi_label, eps, steps, batch_size, dev)})
    out = {"data": data or "test split", "examples": len(texts), "clean": clean,
           "attack": {"norm": "l2", "space": "input-embedding output, per example",
                      "steps": steps, "examples": n},
           "robust": curve}
    _write_json(os.path.join(run_dir, "eval.json"), out)
    return out
