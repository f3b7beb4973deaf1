"""``advnlp eval``, ``attack`` and ``compare``'s scores for a causal-LM run, and what ``main``
prints of them: the heavy parts of :data:`advnlp.cli.tasks.causal_lm.TASK`. The attack is
:func:`.score.prompt_attack` (L2 PGD on the prompt's embeddings, ε relative to the prompt).
"""
from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import List, Optional, Sequence

from ...distributed import device_of
from ...errors import InputError
from ...files import write_json
from ...plan import attack_epsilons, attacks_validation
from ...rundir import read_config, read_labels, trained_model_dir
from . import data as D
from .model import load_trained
from .run import LMRun, lm_splits
from .score import broken_key, completion_scores, prompt_attack, robust_key

LM_ATTACKS = ("embedding",)


def load_lm_run(run_dir: str, device: str = "auto"):
    """``(cfg, labels, lm)`` of a finished causal-LM run."""
    cfg = read_config(run_dir)
    if read_labels(run_dir).get("task") != "causal-lm":
        raise InputError(f"{run_dir}: labels.json is not a causal-LM run's")
    lm = load_trained(cfg, trained_model_dir(run_dir))
    lm.model.to(device_of(device))
    return cfg, None, lm


def _examples(run_dir: str, data: Optional[str], cfg, lm, allow_changed_data: bool) -> list:
    """``data``'s examples, or the run's own test split."""
    if data is None:
        if not allow_changed_data:
            cfg.data.check_unchanged()
        return lm_splits(cfg, lm.tokenizer, lambda s: None).test
    return D.encode_all(lm.tokenizer, D.read_conversations(data), cfg.max_length, "--data",
                        lambda s: None)


def evaluate_lm_run(run_dir: str, data: Optional[str], epsilons: Sequence[float], steps: int,
                    samples: int, batch_size: int, device: str,
                    allow_changed_data: bool) -> dict:
    """Clean completion loss and perplexity, and the same under PGD on the prompt per ε."""
    cfg, _, lm = load_lm_run(run_dir, device)
    examples = _examples(run_dir, data, cfg, lm, allow_changed_data)
    dev = device_of(device)
    clean = completion_scores(lm, examples, batch_size, dev)
    n = min(samples, len(examples))
    att = prompt_attack(lm, examples[:n], epsilons, steps, batch_size, dev, seed=cfg.seed)
    out = {"task": "causal-lm", "data": data or "test split", "examples": len(examples),
           "clean": clean,
           "attack": {k: att[k] for k in ("method", "norm", "steps", "space", "objective",
                                          "broken", "examples")},
           "robust": att["curve"]}
    write_json(os.path.join(run_dir, "eval.json"), out)
    return out


def attack_lm_run(run_dir: str, attack: str, data: Optional[str], limit: int, *,
                  epsilons: Sequence[float], norm: str, steps: int, batch_size: int, device: str,
                  allow_changed_data: bool, seed: Optional[int] = None, **unused) -> dict:
    """``advnlp attack --attack embedding`` on a causal LM: ``attack-embedding.json``."""
    if attack not in LM_ATTACKS:
        raise InputError(f"--attack {attack} edits a classifier's texts; a causal-LM run takes "
                         "--attack embedding (PGD on the prompt's embeddings)")
    if norm != "l2":
        raise InputError("a causal-LM run's embedding attack is L2 (relative to the prompt's "
                         "embedding); drop --norm")
    cfg, _, lm = load_lm_run(run_dir, device)
    examples = _examples(run_dir, data, cfg, lm, allow_changed_data)[:limit]
    seed = cfg.seed if seed is None else seed
    res = prompt_attack(lm, examples, epsilons, steps, batch_size, device_of(device), seed=seed)
    path = os.path.join(run_dir, f"attack-{attack}.json")
    out = {**res, "run_dir": run_dir, "data": data or "test split", "limit": limit,
           "seed": seed, "task": "causal-lm", "files": {"json": path}}
    write_json(path, out)
    return out


# --------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------
def _split_scores(lm, cfg, examples: list, plan: dict, device) -> dict:
    sample = examples[:plan["attack_samples"]]
    curve = prompt_attack(lm, sample, attack_epsilons(plan), plan["attack_steps"],
                          cfg.batch_size, device, seed=cfg.seed)["curve"]
    out = {}
    for p in curve[1:]:
        out[robust_key(p["epsilon"])] = p["completion_loss"]
        out[broken_key(p["epsilon"])] = p["broken_share"]
    return out


def _lm_scores(cfg, lm, splits, device, result: dict, plan: dict, log) -> dict:
    """A causal LM's row: clean completion loss and perplexity, the robust loss and the
    broken share at each radius, validation's the same (``validation_*``), the cost."""
    row = {**result["final"]["test"], **_split_scores(lm, cfg, splits.test, plan, device)}
    validation = {**result["final"]["validation"],
                  **(_split_scores(lm, cfg, splits.validation, plan, device)
                     if attacks_validation(plan) else {})}
    row.update({f"validation_{k}": v for k, v in validation.items()})
    row.update(seconds_per_step=result["seconds_per_step"], run_dir=cfg.output_dir,
               test_examples=len(splits.test))
    return row


def row(run: LMRun, result: dict, plan: dict, log) -> dict:
    """The compare row of ``run``, just trained."""
    return _lm_scores(run.cfg, run.clf, run.splits, run.device, result, plan, log)


def row_of_saved(folder: str, plan: dict, log) -> dict:
    """The row of a run that finished training but was stopped before it was scored."""
    cfg, _, lm = load_lm_run(folder, plan["config"]["device"])
    splits = lm_splits(cfg, lm.tokenizer, lambda s: None)
    with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as f:
        result = json.load(f)
    log("  trained before: scoring it")
    return _lm_scores(cfg, lm, SimpleNamespace(validation=splits.validation, test=splits.test),
                      device_of(plan["config"]["device"]), result, plan, log)


# --------------------------------------------------------------------------
# what main prints
# --------------------------------------------------------------------------
def summary(run_dir: str, result: dict) -> str:
    test = result["final"]["test"]
    return (f"done: {run_dir}\n"
            f"  {result['train_examples']} training examples, {len(result['epochs'])} "
            f"epoch(s), {result['seconds_per_step']:.2f} s/step\n"
            f"  test ({result['test_examples']} examples, {test['tokens']} completion tokens): "
            f"completion loss {test['completion_loss']:.4f}, perplexity {test['perplexity']:.2f}")


def eval_report(out: dict) -> List[str]:
    c = out["clean"]
    return [f"{out['data']} ({out['examples']} examples): completion loss "
            f"{c['completion_loss']:.4f}, perplexity {c['perplexity']:.2f}",
            "completion loss under L2 PGD on the prompt's embeddings (epsilon relative to the "
            f"prompt; {out['attack']['examples']} examples, {out['attack']['steps']} steps; "
            "broken: mean token NLL up by more than ln 2):",
            *(f"  epsilon {p['epsilon']:<5g} loss {p['completion_loss']:.4f}, broken "
              f"{p['broken_share']:.3f}" for p in out["robust"])]


def attack_report(attack: str, out: dict) -> List[str]:
    lines = [f"{attack} attack on {out['examples']} examples of {out['data']} "
             f"(seed {out['seed']}):",
             "| epsilon (relative, l2) | completion loss | broken share |\n|---|---|---|"]
    lines += [f"| {p['epsilon']:g} | {p['completion_loss']:.4f} | {p['broken_share']:.4f} |"
              for p in out["curve"]]
    return lines


# The names the registry asks every task's module for.
Run = LMRun
evaluate_run = evaluate_lm_run
attack_run = attack_lm_run

__all__ = ["attack_lm_run", "evaluate_lm_run", "load_lm_run", "LM_ATTACKS"]
