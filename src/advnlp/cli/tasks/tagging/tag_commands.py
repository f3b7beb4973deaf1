"""``advnlp eval``, ``attack`` and ``compare``'s scores for a token-classification run: the
heavy parts of :data:`advnlp.cli.tasks.tagging.TASK`, what :mod:`commands` asks through the
registry. The attacks are :mod:`advnlp.cli.tasks.tag_attacks` (entity F1 under the embedding attack
against ε, and under the character attack on non-entity words).
"""
from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import List, Optional, Sequence

from ...distributed import device_of
from ...errors import InputError
from ...files import write_json, write_jsonl
from ...plan import attack_epsilons, attack_key, attacks_validation, discrete_attacks
from ...rundir import read_config, read_labels, trained_model_dir
from . import tag as TG
from .tag_attacks import tag_char_attack, tag_embedding_robustness
from .tag_data import check_tags, read_tagged
from .tag_run import TagLabels, TagRun, tag_splits

TAG_ATTACKS = ("char", "embedding")
SCORE = "entity_f1"  # the number a tagger's compare rows and curves are about


def load_tag_run(run_dir: str, device: str = "auto"):
    """``(cfg, labels, tagger)`` of a finished token-classification run."""
    cfg = read_config(run_dir)
    raw = read_labels(run_dir)
    if raw.get("task") != "token-classification" or not isinstance(raw.get("names"), list):
        raise InputError(f"{run_dir}: labels.json is not a tagger's (no task/names); "
                         "not a token-classification run")
    labels = TagLabels(raw["names"], raw.get("scheme", "BIO"))
    tagger = TG.load_tagger(trained_model_dir(run_dir), labels.names, cfg.max_length,
                            cfg.label_all_subtokens)
    tagger.model.to(device_of(device))
    return cfg, labels, tagger


def _sentences(run_dir: str, data: Optional[str], cfg, labels: TagLabels,
               allow_changed_data: bool) -> list:
    """``data``'s sentences (every tag one the model knows), or the run's own test split."""
    if data is None:
        if not allow_changed_data:
            cfg.data.check_unchanged()
        return list(tag_splits(cfg.data, cfg.seed, lambda s: None)[2])
    other = read_tagged(data)
    check_tags(labels.names, other, lambda tag: f"tag {tag!r} is not one of the run's tags "
               f"({', '.join(labels.names)}); the model cannot predict it")
    return list(other.sentences)


def _curve_point(p: dict) -> dict:
    return {k: p[k] for k in ("epsilon", "entity_f1", "precision", "recall", "strict_entity_f1",
                              "token_accuracy")}


def evaluate_tag_run(run_dir: str, data: Optional[str], epsilons: Sequence[float], steps: int,
                     samples: int, batch_size: int, device: str,
                     allow_changed_data: bool) -> dict:
    """Clean entity metrics and entity F1 under the embedding attack per ε; eval.json."""
    cfg, labels, tagger = load_tag_run(run_dir, device)
    sentences = _sentences(run_dir, data, cfg, labels, allow_changed_data)
    dev = device_of(device)
    words = [s for s, _ in sentences]
    gold = [t for _, t in sentences]
    clean = TG.tag_metrics(gold, tagger.predict(words, batch_size, dev), labels.scheme)
    n = min(samples, len(sentences))
    att = tag_embedding_robustness(tagger, words[:n], gold[:n], epsilons, steps, batch_size, dev,
                                   labels.scheme, seed=cfg.seed)
    out = {"task": "token-classification", "data": data or "test split",
           "examples": len(sentences), "clean": clean,
           "attack": {"norm": att["norm"], "space": att["space"], "method": att["method"],
                      "objective": att["objective"], "steps": steps, "alpha": att["alpha"],
                      "examples": n},
           "robust": [_curve_point(p) for p in att["curve"]]}
    write_json(os.path.join(run_dir, "eval.json"), out)
    return out


def attack_tag_run(run_dir: str, attack: str, data: Optional[str], limit: int, *,
                   max_change: float, query_budget: int, seed: Optional[int],
                   epsilons: Sequence[float], norm: str, steps: int, random_start: bool,
                   batch_size: int, device: str, allow_changed_data: bool,
                   edit_entities: bool = False, threshold: float = 0.6) -> dict:
    """``advnlp attack`` on a tagger: ``attack-<name>.json``, and for the char attack every
    sentence with its edits in ``adversarial-char.jsonl``. ``threshold`` is the word
    attack's, which a tagger refuses."""
    if attack not in TAG_ATTACKS:
        raise InputError(f"--attack {attack} is not for taggers (it edits whole texts); a "
                         f"token-classification run takes --attack {' or '.join(TAG_ATTACKS)}")
    if edit_entities and attack != "char":
        raise InputError("--edit-entities goes with --attack char")
    cfg, labels, tagger = load_tag_run(run_dir, device)
    sentences = _sentences(run_dir, data, cfg, labels, allow_changed_data)[:limit]
    seed = cfg.seed if seed is None else seed
    dev = device_of(device)
    words, gold = [s for s, _ in sentences], [t for _, t in sentences]
    source = {"run_dir": run_dir, "data": data or "test split", "limit": limit, "seed": seed,
              "task": "token-classification"}
    files = {}
    if attack == "embedding":
        res = tag_embedding_robustness(tagger, words, gold, epsilons, steps, batch_size, dev,
                                       labels.scheme, norm=norm, random_start=random_start,
                                       seed=seed)
        res.pop("predictions")
        res["curve"] = [_curve_point(p) for p in res["curve"]]
        out = {**res, **source}
    else:
        res = tag_char_attack(tagger, words, gold, dev, labels.scheme, max_change=max_change,
                              query_budget=query_budget, edit_entities=edit_entities, seed=seed,
                              batch_size=batch_size)
        path = os.path.join(run_dir, "adversarial-char.jsonl")
        write_jsonl(path, res.pop("records"))
        files["jsonl"] = path
        out = {**res, **source}
    path = os.path.join(run_dir, f"attack-{attack}.json")
    out["files"] = {"json": path, **files}
    write_json(path, out)
    return out


# --------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------
def flat_scores(metrics: dict) -> dict:
    """A compare row's clean numbers from :func:`~advnlp.cli.tasks.tagging.tag.tag_metrics`."""
    micro = metrics["default"]["micro"]
    return {"entity_f1": metrics["entity_f1"], "strict_entity_f1": metrics["strict"]["micro"]["f1"],
            "precision": micro["precision"], "recall": micro["recall"],
            "token_accuracy": metrics["token_accuracy"]}


def split_scores(tagger, sentences: list, epsilons: Sequence[float], steps: int, samples: int,
                 batch_size: int, device, scheme: str, seed: int) -> dict:
    """Entity F1 under the embedding attack at each ε on the first ``samples`` sentences."""
    sample = sentences[:samples]
    att = tag_embedding_robustness(tagger, [s for s, _ in sample], [t for _, t in sample],
                                   epsilons, steps, batch_size, device, scheme, seed=seed)
    return {f"robust_{SCORE}@{p['epsilon']:g}": p["entity_f1"] for p in att["curve"][1:]}


def char_scores(tagger, sentences: list, limit: int, batch_size: int, device, scheme: str,
                seed: int) -> dict:
    """Entity F1 under the character attack on the first ``limit`` sentences."""
    sample = sentences[:limit]
    res = tag_char_attack(tagger, [s for s, _ in sample], [t for _, t in sample], device, scheme,
                          seed=seed, batch_size=batch_size)
    return {"attacked": res["attacked_entity_f1"], "clean": res["clean_entity_f1"],
            "examples": res["examples"]}


def load_for_scoring(folder: str, device: str):
    """A trained tagger run's pieces for compare's scores: cfg, labels, tagger, splits."""
    cfg, labels, tagger = load_tag_run(folder, device)
    _, validation, test, _ = tag_splits(cfg.data, cfg.seed, lambda s: None)
    return cfg, labels, tagger, SimpleNamespace(validation=validation, test=test)


def row(run: TagRun, result: dict, plan: dict, log) -> dict:
    """The compare row of ``run``, just trained."""
    return _tag_scores(run.cfg, run.clf, run.labels, run.splits, run.device, result, plan, log)


def row_of_saved(folder: str, plan: dict, log) -> dict:
    """The row of a run that finished training but was stopped before it was scored."""
    cfg, labels, tagger, splits = load_for_scoring(folder, plan["config"]["device"])
    with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as f:
        result = json.load(f)
    log("  trained before: scoring it")
    return _tag_scores(cfg, tagger, labels, splits, device_of(plan["config"]["device"]),
                       result, plan, log)


def _tag_scores(cfg, tagger, labels, splits, device, result: dict, plan: dict,
                log) -> dict:
    """A tagger's row: clean entity scores, entity F1 under the embedding attack at each
    radius and under the char attack, validation's the same (``validation_*``), the cost."""
    def scored(sentences, metrics_):
        out = flat_scores(metrics_)
        out.update(split_scores(tagger, sentences, attack_epsilons(plan), plan["attack_steps"],
                                   plan["attack_samples"], cfg.batch_size, device, labels.scheme,
                                   cfg.seed))
        return out

    row = scored(splits.test, result["final"]["test"])
    validation = (scored(splits.validation, result["final"]["validation"])
                  if attacks_validation(plan) else flat_scores(result["final"]["validation"]))
    row.update({f"validation_{k}": v for k, v in validation.items()})
    row.update(seconds_per_step=result["seconds_per_step"], run_dir=cfg.output_dir,
               test_examples=len(splits.test))
    for attack in discrete_attacks(plan):  # "char": typos on non-entity words
        res = char_scores(tagger, splits.test, plan["attack_limit"], cfg.batch_size * 2,
                             device, labels.scheme, cfg.seed)
        row[attack_key(attack, "entity_f1")] = res["attacked"]
        row[f"clean_entity_f1@{attack}"] = res["clean"]  # the same sentences, not attacked
        log(f"  char attack: entity F1 {res['clean']:.4f} -> {res['attacked']:.4f} on "
            f"{res['examples']} test sentences")
    return row


# --------------------------------------------------------------------------
# what main prints
# --------------------------------------------------------------------------
def summary(run_dir: str, result: dict) -> str:
    """The lines ``advnlp train`` prints at the end of a run."""
    test = result["final"]["test"]
    micro, strict = test["default"]["micro"], test["strict"]["micro"]
    return (f"done: {run_dir}\n"
            f"  {result['train_examples']} training sentences, {len(result['epochs'])} "
            f"epoch(s), {result['seconds_per_step']:.2f} s/step\n"
            f"  test ({result['test_examples']} sentences): entity F1 {micro['f1']:.4f} "
            f"(P {micro['precision']:.4f}, R {micro['recall']:.4f}; strict F1 "
            f"{strict['f1']:.4f}), token accuracy {test['token_accuracy']:.4f}")


def eval_report(out: dict) -> List[str]:
    """What ``advnlp eval`` prints of ``out`` (eval.json), before the file's name."""
    c = out["clean"]
    return [f"{out['data']} ({out['examples']} sentences): entity F1 {c['entity_f1']:.4f} "
            f"(strict {c['strict']['micro']['f1']:.4f}), token accuracy "
            f"{c['token_accuracy']:.4f}",
            "entity F1 under L2 PGD on the embeddings "
            f"({out['attack']['examples']} sentences, {out['attack']['steps']} steps):",
            *(f"  epsilon {point['epsilon']:<5g} {point['entity_f1']:.4f}"
              for point in out["robust"])]


def attack_report(attack: str, out: dict) -> List[str]:
    """What ``advnlp attack`` prints of ``out`` (attack-<name>.json), before the files."""
    lines = [f"{attack} attack on {out['examples']} sentences of {out['data']} "
             f"(seed {out['seed']}):"]
    if attack == "embedding":
        lines.append(f"| epsilon ({out['norm']}) | entity F1 | precision | recall "
                     "| token accuracy |\n|---|---|---|---|---|")
        lines += [f"| {p['epsilon']:g} | {p['entity_f1']:.4f} | {p['precision']:.4f} "
                  f"| {p['recall']:.4f} | {p['token_accuracy']:.4f} |" for p in out["curve"]]
    else:
        lines.append(f"edits: {out['edits']}")
        lines.append("| clean entity F1 | entity F1 under attack | sentences changed "
                     "| words changed | queries/sentence | s/sentence |\n|---|---|---|---|---|---|")
        lines.append(f"| {out['clean_entity_f1']:.4f} | {out['attacked_entity_f1']:.4f} "
                     f"| {out['sentences_changed']} | {out['avg_changed_fraction']:.3f} "
                     f"| {out['avg_queries']:.1f} | {out['seconds_per_example']:.3f} |")
    return lines


# The names the registry asks every task's module for.
Run = TagRun
evaluate_run = evaluate_tag_run
attack_run = attack_tag_run

__all__ = ["attack_tag_run", "evaluate_tag_run", "load_tag_run", "TAG_ATTACKS"]
