"""A classifier's ``eval``, ``attack`` and compare scores, and what ``main`` prints of them:
the heavy parts of :data:`advnlp.cli.tasks.classification.TASK`."""
from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence

from ...config import TrainConfig
from ...data import load_splits, read_file
from ...distributed import device_of
from ...errors import InputError
from ...files import atomic_path, write_json
from ...plan import (
    attack_epsilons,
    attack_key,
    attacks_validation,
    discrete_attacks,
    robust_key,
    success_key,
    typo_copy,
)
from ...robustness import discrete_attack, embedding_robustness
from ...rundir import load_run, read_config
from .classify import check_attack, metrics, predict
from .run import ClassifyRun


def row(run: ClassifyRun, result: dict, plan: dict, log) -> dict:
    """The compare row of ``run``, just trained."""
    return _scores(run.cfg, run.clf, run.labels, run.splits, run.targets, run.device, result,
                   plan, log)


def row_of_saved(folder: str, plan: dict, log) -> dict:
    """The row of a run that finished training but was stopped before it was scored."""
    cfg, labels, clf = load_run(folder, plan["config"]["device"])
    splits = load_splits(cfg.data, cfg.seed)
    targets = {name: labels.encode([lab for _, lab in getattr(splits, name)], f"{name} split")
               for name in ("validation", "test")}
    with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as f:
        result = json.load(f)
    log("  trained before: scoring it")
    return _scores(cfg, clf, labels, splits, targets, device_of(plan["config"]["device"]), result,
                   plan, log)


def _split_scores(clf, cfg: TrainConfig, examples: list, targets, device, plan: dict) -> dict:
    """Robust accuracy at each radius (first ``attack_samples`` examples) and, with a typo
    rate, accuracy on the typo'd copy of ``examples``."""
    sample = examples[:plan["attack_samples"]]
    curve = embedding_robustness(clf, [t for t, _ in sample], targets[: len(sample)],
                                 cfg.data.multi_label, attack_epsilons(plan),
                                 plan["attack_steps"], cfg.batch_size, device)["curve"]
    out = {robust_key(p["epsilon"]): p["accuracy"] for p in curve[1:]}
    if plan.get("typo_rate"):
        typoed = typo_copy([t for t, _ in examples], plan["typo_rate"])
        out["typo_accuracy"] = metrics(predict(clf, typoed, cfg.batch_size, device), targets,
                                       cfg.data.multi_label)["accuracy"]
    return out


def _scores(cfg: TrainConfig, clf, labels, splits, targets: dict, device, result: dict,
            plan: dict, log) -> dict:
    """One trained run's row: test metrics, robust accuracy at each radius, accuracy on the
    typo'd test copy and under the discrete attack, the same on the validation split
    (``validation_*``: what to choose settings by), and the cost."""
    test = splits.test
    row = {**result["final"]["test"],
           **_split_scores(clf, cfg, test, targets["test"], device, plan)}
    validation = {**result["final"]["validation"],
                  **(_split_scores(clf, cfg, splits.validation, targets["validation"], device,
                                   plan) if attacks_validation(plan) else {})}
    row.update({f"validation_{k}": v for k, v in validation.items() if k != "micro_f1"})
    row.update(seconds_per_step=result["seconds_per_step"], run_dir=cfg.output_dir,
               test_examples=len(test))
    if "typo_accuracy" in row:
        log(f"  typo'd test copy (rate {plan['typo_rate']:g}): accuracy {row['typo_accuracy']:.4f}")
    sample = test[:plan["attack_limit"]]
    for attack in discrete_attacks(plan):
        res = discrete_attack(attack, clf, labels, [t[0] for t, _ in sample],
                              targets["test"][: len(sample)], device, seed=cfg.seed,
                              batch_size=cfg.batch_size * 2).summary()
        row[attack_key(attack)] = res["attacked_accuracy"]
        row[success_key(attack)] = res["success_rate"]
        log(f"  {attack} attack: accuracy {res['clean_accuracy']:.4f} -> "
            f"{res['attacked_accuracy']:.4f} on {res['examples']} test examples")
    return row


def _examples(run_dir: str, data, device: str, allow_changed_data: bool):
    cfg, labels, clf = load_run(run_dir, device)
    if data is None and not allow_changed_data:
        cfg.data.check_unchanged()
    examples = read_file(data, cfg.data) if data else load_splits(cfg.data, cfg.seed).test
    targets = labels.encode([lab for _, lab in examples], data or "test split")
    return cfg, labels, clf, device_of(device), examples, targets


def evaluate_run(run_dir: str, data: Optional[str], epsilons: Sequence[float], steps: int,
             samples: int, batch_size: int, device: str, allow_changed_data: bool) -> dict:
    """Clean metrics and a robustness curve for a saved run; also written to eval.json."""
    cfg, labels, clf, dev, examples, targets = _examples(run_dir, data, device, allow_changed_data)
    texts = [t for t, _ in examples]
    clean = metrics(predict(clf, texts, batch_size, dev), targets, labels.multi_label)
    n = min(samples, len(texts))
    att = embedding_robustness(clf, texts[:n], targets[:n], labels.multi_label, epsilons, steps,
                               batch_size, dev, seed=cfg.seed)
    out = {"data": data or "test split", "examples": len(texts), "clean": clean,
           "attack": {"norm": att["norm"], "space": att["space"], "method": att["method"],
                      "steps": steps, "alpha": att["alpha"], "examples": n},
           "robust": att["curve"]}
    write_json(os.path.join(run_dir, "eval.json"), out)
    return out


def attack_run(run_dir: str, attack: str, data: Optional[str], limit: int, *,
               max_change: float, query_budget: int, threshold: float, seed: Optional[int],
               epsilons: Sequence[float], norm: str, steps: int, random_start: bool,
               batch_size: int, device: str, allow_changed_data: bool,
               edit_entities: bool) -> dict:
    """Attack a saved run; writes ``attack-<name>.json`` (and ``adversarial-<name>.csv``)."""
    if edit_entities:
        raise InputError("--edit-entities is for token-classification runs (a classifier's "
                         "char attack edits any word)")
    check_attack(attack, read_config(run_dir))
    cfg, labels, clf, dev, examples, targets = _examples(run_dir, data, device, allow_changed_data)
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
        with atomic_path(csv_path) as tmp:
            res.to_csv(tmp, labels.names)
        files["csv"] = csv_path
        out = {**res.to_dict(), **source}
    path = os.path.join(run_dir, f"attack-{attack}.json")
    out["files"] = {"json": path, **files}
    write_json(path, out)
    return out


def summary(run_dir: str, result: dict) -> str:
    """The lines ``advnlp train`` prints at the end of a run."""
    test = result["final"]["test"]
    extra = f", micro-F1 {test['micro_f1']:.4f}" if "micro_f1" in test else ""
    aug = (f" + {result['augmented_examples']} adversarial"
           if result.get("augmented_examples") else "")
    return (f"done: {run_dir}\n"
            f"  {result['train_examples']} training examples{aug}"
            f", {len(result['epochs'])} epoch(s), "
            f"{result['seconds_per_step']:.2f} s/step\n"
            f"  test ({result['test_examples']} examples): accuracy {test['accuracy']:.4f}, "
            f"macro-F1 {test['macro_f1']:.4f}{extra}")


def eval_report(out: dict) -> List[str]:
    """What ``advnlp eval`` prints of ``out`` (eval.json), before the file's name."""
    c = out["clean"]
    return [f"{out['data']} ({out['examples']} examples): accuracy {c['accuracy']:.4f}, "
            f"macro-F1 {c['macro_f1']:.4f}",
            "robust accuracy, L2 PGD on the embeddings "
            f"({out['attack']['examples']} examples, {out['attack']['steps']} steps):",
            *(f"  epsilon {point['epsilon']:<5g} {point['accuracy']:.4f}" for point in out["robust"])]


def attack_report(attack: str, out: dict) -> List[str]:
    """What ``advnlp attack`` prints of ``out`` (attack-<name>.json), before the files."""
    lines = [f"{attack} attack on {out['examples']} examples of {out['data']} (seed {out['seed']}):"]
    if attack == "embedding":
        lines.append(f"| epsilon ({out['norm']}) | accuracy | success rate |\n|---|---|---|")
        lines += [f"| {p['epsilon']:g} | {p['accuracy']:.4f} | {p['success_rate']:.4f} |"
                  for p in out["curve"]]
    else:
        lines.append("| clean accuracy | accuracy under attack | success rate | words changed "
                     "| queries/example | s/example |\n|---|---|---|---|---|---|")
        lines.append(f"| {out['clean_accuracy']:.4f} | {out['attacked_accuracy']:.4f} "
                     f"| {out['success_rate']:.4f} ({out['successes']}) "
                     f"| {out['avg_changed_fraction']:.3f} "
                     f"| {out['avg_queries']:.1f} | {out['seconds_per_example']:.3f} |")
    return lines


# The name the registry asks every task's module for.
Run = ClassifyRun
