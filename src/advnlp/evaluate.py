"""Scoring a classifier: clean metrics, and robustness through :mod:`advnlp.attacks`.

The embedding attack is :func:`advnlp.attacks.embedding_attack`: the training
methods' own hook and norm/projection helpers, so it perturbs the space they
defend (the input-embedding output, one ball per example, padding untouched).
``advnlp eval``, ``compare``'s robust-accuracy column and ``advnlp attack
--attack embedding`` all use it. :func:`attack_run` also runs the discrete
character- and word-level attacks on a saved run.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

import torch
from torch import nn

from .attacks import advnlp_classifier, char_attack, embedding_attack, word_attack
from .data import InputError
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


def embedding_robustness(clf: Classifier, texts: Sequence[tuple], targets: torch.Tensor,
                         multi_label: bool, epsilons: Sequence[float], steps: int,
                         batch_size: int, device, *, norm: str = "l2",
                         random_start: bool = False, seed: int = 0) -> dict:
    """:func:`advnlp.attacks.embedding_attack` on a CLI classifier: the training methods' own
    hook and norm arithmetic (one ball per example, padding untouched), PGD with step
    ``2.5 * epsilon / steps`` (FGSM when ``steps == 1``). Multi-label: an example is
    correct only on an exact match of the label set, so the attack wins when any label flips.

    Returns the attack's dict (``clean_accuracy``, ``curve``, ``robust_accuracy`` per ε, ...).
    """
    def pairs():
        for idx in batches(len(texts), batch_size):
            enc = {k: v.to(device) for k, v in clf.encode([texts[i] for i in idx]).items()}
            yield enc, targets[idx.start:idx.stop].to(device)

    try:
        return embedding_attack(clf.model, clf, pairs(), list(epsilons), norm=norm, steps=steps,
                                random_start=random_start, multi_label=multi_label, seed=seed)
    except ValueError as e:
        raise InputError(str(e)) from None


def robust_accuracy(clf: Classifier, texts: Sequence[tuple], targets: torch.Tensor,
                    multi_label: bool, epsilon: float, steps: int, batch_size: int,
                    device) -> float:
    """Accuracy under the L2 embedding PGD attack of :func:`embedding_robustness` at one ε."""
    out = embedding_robustness(clf, texts, targets, multi_label, [epsilon], steps, batch_size, device)
    return out["curve"][-1]["accuracy"]


def _examples(run_dir: str, data, device: str):
    # Imported here: train.py builds on this module, not the other way round.
    from .data import load_splits, read_file
    from .train import device_of, load_run

    cfg, labels, clf = load_run(run_dir, device)
    examples = read_file(data, cfg.data) if data else load_splits(cfg.data, cfg.seed).test
    targets = labels.encode([lab for _, lab in examples], data or "test split")
    return cfg, labels, clf, device_of(device), examples, targets


def evaluate_run(run_dir: str, data: str = None, epsilons: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
                 steps: int = 5, samples: int = 100, batch_size: int = 32,
                 device: str = "auto") -> dict:
    """Clean metrics and a robustness curve for a saved run; also written to eval.json."""
    from .train import _write_json

    cfg, labels, clf, dev, examples, targets = _examples(run_dir, data, device)
    texts = [t for t, _ in examples]
    clean = metrics(predict(clf, texts, batch_size, dev), targets, labels.multi_label)
    n = min(samples, len(texts))
    att = embedding_robustness(clf, texts[:n], targets[:n], labels.multi_label, epsilons, steps,
                               batch_size, dev, seed=cfg.seed)
    out = {"data": data or "test split", "examples": len(texts), "clean": clean,
           "attack": {"norm": att["norm"], "space": att["space"], "method": att["method"],
                      "steps": steps, "alpha": att["alpha"], "examples": n},
           "robust": att["curve"]}
    _write_json(os.path.join(run_dir, "eval.json"), out)
    return out


ATTACKS = ("char", "word", "embedding")


def discrete_attack(attack: str, clf: Classifier, labels, texts: Sequence[str], targets,
                    device, *, max_change: float = 0.15, query_budget: int = 500,
                    threshold: float = 0.6, seed: int = 0, batch_size: int = 32):
    """The character- or word-level attack of :mod:`advnlp.attacks` on a CLI classifier.

    Each text is first cut to the part the model reads (``--max-length`` tokens), so the
    query budget is not spent on words the model never sees; the CSV shows that part."""
    classifier = advnlp_classifier(clf, multi_label=labels.multi_label, batch_size=batch_size,
                                   device=device, neighbours=attack == "word")
    texts = [clf.visible_prefix(t) for t in texts]
    try:
        if attack == "char":
            return char_attack(classifier, texts, targets, max_change=max_change,
                               query_budget=query_budget, seed=seed)
        return word_attack(classifier, texts, targets, max_change=max_change,
                           query_budget=query_budget, threshold=threshold, seed=seed)
    except ValueError as e:
        raise InputError(f"--attack {attack}: {e}") from None


def check_single_segment(attack: str, text_columns) -> None:
    if attack in ("char", "word") and len(text_columns) != 1:
        raise InputError(f"--attack {attack} edits single texts; this run uses sentence pairs "
                         f"({','.join(text_columns)}): use --attack embedding")


def attack_run(run_dir: str, attack: str, data: str = None, limit: int = 100, *,
               max_change: float = 0.15, query_budget: int = 500, threshold: float = 0.6,
               seed: int = None, epsilons: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
               norm: str = "l2", steps: int = 10, random_start: bool = False,
               batch_size: int = 32, device: str = "auto") -> dict:
    """Attack a saved run; writes ``attack-<name>.json`` (and ``adversarial-<name>.csv``)."""
    from .train import _write_json, read_config

    if attack not in ATTACKS:
        raise InputError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    check_single_segment(attack, read_config(run_dir).data.text_columns)
    cfg, labels, clf, dev, examples, targets = _examples(run_dir, data, device)
    seed = cfg.seed if seed is None else seed
    examples, targets = examples[:limit], targets[:limit]
    texts = [t for t, _ in examples]
    source = {"run_dir": run_dir, "data": data or "test split", "limit": limit, "seed": seed}
    files = {}
    if attack == "embedding":
        res = embedding_robustness(clf, texts, targets, labels.multi_label, epsilons, steps,
                                   batch_size, dev, norm=norm, random_start=random_start, seed=seed)
        out = {**res, **source}
    else:
        res = discrete_attack(attack, clf, labels, [t[0] for t in texts], targets, dev,
                              max_change=max_change, query_budget=query_budget,
                              threshold=threshold, seed=seed, batch_size=batch_size)
        csv_path = os.path.join(run_dir, f"adversarial-{attack}.csv")
        res.to_csv(csv_path, labels.names)
        files["csv"] = csv_path
        out = {**res.to_dict(), **source}
    path = os.path.join(run_dir, f"attack-{attack}.json")
    out["files"] = {"json": path, **files}
    _write_json(path, out)
    return out
