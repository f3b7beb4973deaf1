"""The commands behind ``advnlp train``, ``compare``, ``eval`` and ``attack``, as functions.

Each takes plain values (a :class:`~advnlp.cli.config.TrainConfig`, a run directory),
raises :class:`~advnlp.cli.errors.InputError` on bad input before any file is written
where it can, and returns a JSON-ready dict that is also written into the run
directory. ``main.py`` parses the command line and prints; nothing here prints.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, Sequence

from .config import AUGMENT_ATTACKS, METHODS, TrainConfig, check_environment, default_run_dir
from .data import load_splits, read_file
from .distributed import DistInfo, device_of, on_rank0
from .engines import engine
from .errors import InputError
from .files import write_json
from .robustness import ATTACKS, discrete_attack, embedding_robustness, robust_accuracy
from .run import Run
from .rundir import check_output_dir, discard_replaced, load_run, read_config, replacing
from .tasks.classify import check_single_segment, metrics, predict


def fit(run: Run) -> Optional[dict]:
    """Train ``run`` with its engine to the last epoch and finish it (Ctrl-C or SIGTERM:
    checkpoint and ``Interrupted``); returns the metrics on rank 0."""
    with run.stopping_on_signals():
        engine(run.cfg.engine).fit(run)
    result = run.finish()
    if run.is_main:
        discard_replaced(run.run_dir)
    return result


def _start(cfg: TrainConfig, progress: bool, log, dist_info: Optional[DistInfo] = None) -> Run:
    """A new run of a resolved ``cfg`` in its (checked, replaced) output folder."""
    run = Run(cfg, progress, log, dist_info)
    if run.is_main:
        os.makedirs(cfg.output_dir, exist_ok=True)
        write_json(os.path.join(cfg.output_dir, "config.json"), cfg.to_json())
        write_json(os.path.join(cfg.output_dir, "labels.json"), run.labels.to_json())
    return run


def train(cfg: TrainConfig, overwrite: bool = False, progress: bool = False,
          log: Callable[[str], None] = lambda s: None,
          dist_info: Optional[DistInfo] = None) -> Optional[dict]:
    """Train into ``cfg.output_dir``; returns the metrics (also in metrics.json).

    With ``dist_info`` (``setup_distributed``) this is one rank of a torchrun job:
    rank 0 returns the metrics, the other ranks None."""
    cfg = cfg.resolved()
    if dist_info is not None:
        cfg.world_size = dist_info.world_size
    on_rank0(dist_info, lambda: check_output_dir(cfg.output_dir, overwrite))
    with replacing(cfg.output_dir, here=dist_info is None or dist_info.rank == 0):
        return fit(_start(cfg, progress, log, dist_info))


def compare(cfg: TrainConfig, methods, attack_epsilon: float, attack_steps: int,
            attack_samples: int, overwrite: bool = False, progress: bool = False,
            log: Callable[[str], None] = lambda s: None, attack: Optional[str] = None,
            attack_limit: int = 50) -> dict:
    """Train once per method with the same data, model, seed and budget; one row each.

    Each method gets only the parameters it takes, so ``--steps`` for PGD does not
    stop FGM from running. Runs go to ``<output_dir>/<method>/``. ``attack`` (char /
    word) also runs that discrete attack on the first ``attack_limit`` test examples.
    """
    if attack is not None:
        if attack not in AUGMENT_ATTACKS:
            raise InputError(f"--attack takes {' or '.join(AUGMENT_ATTACKS)}, got {attack!r}")
        check_single_segment(attack, cfg.data.text_columns)
        if attack_limit < 1:
            raise InputError("--attack-limit must be >= 1")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"unknown method {', '.join(map(repr, unknown)) or '(none)'}; "
                         f"choose from {', '.join(METHODS)}")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise InputError(f"--methods lists {', '.join(repeated)} more than once; each method "
                         "is one run (one row)")
    out_dir = cfg.output_dir or default_run_dir("compare")
    runs = {}
    for m in methods:
        params = {k: getattr(cfg, k) if k in METHODS[m][1] else None
                  for k in ("epsilon", "alpha", "steps", "adv_weight")}
        params["relative_epsilon"] = cfg.relative_epsilon and "relative_epsilon" in METHODS[m][1]
        runs[m] = dataclasses.replace(cfg, method=m, output_dir=os.path.join(out_dir, m), **params)
        runs[m] = runs[m].resolved()  # every method's arguments, before the first run and the folder
    check_output_dir(out_dir, overwrite)
    with replacing(out_dir):
        out = _compare_runs(cfg, runs, attack_epsilon, attack_steps, attack_samples, progress, log,
                            attack, attack_limit)
        write_json(os.path.join(out_dir, "compare.json"), out)
    discard_replaced(out_dir)
    return {**out, "path": os.path.join(out_dir, "compare.json")}


def _compare_runs(cfg: TrainConfig, runs: dict, attack_epsilon: float, attack_steps: int,
                  attack_samples: int, progress: bool, log, attack: Optional[str],
                  attack_limit: int) -> dict:
    rows = []
    for m, run in runs.items():
        log(f"== {m}")
        trained = _start(run, progress, log)
        result = fit(trained)
        test = trained.splits.test[:attack_samples]
        robust = robust_accuracy(trained.clf, [t for t, _ in test], trained.targets["test"][: len(test)],
                                 cfg.data.multi_label, attack_epsilon, attack_steps,
                                 trained.cfg.batch_size, trained.device)
        row = {"method": m, **result["final"]["test"], "robust_accuracy": robust,
               "seconds_per_step": result["seconds_per_step"], "run_dir": run.output_dir}
        if attack is not None:
            sample = trained.splits.test[:attack_limit]
            res = discrete_attack(attack, trained.clf, trained.labels, [t[0] for t, _ in sample],
                                  trained.targets["test"][: len(sample)], trained.device,
                                  seed=cfg.seed, batch_size=trained.cfg.batch_size * 2).summary()
            row.update(attacked_accuracy=res["attacked_accuracy"],
                       attack_success_rate=res["success_rate"])
            log(f"  {attack} attack: accuracy {res['clean_accuracy']:.4f} -> "
                f"{res['attacked_accuracy']:.4f} on {res['examples']} test examples")
        rows.append(row)
    cost = next((r["seconds_per_step"] for r in rows if r["method"] == "none"), None)
    for r in rows:
        r["relative_cost"] = r["seconds_per_step"] / cost if cost else None
    out = {"attack": {"norm": "l2", "epsilon": attack_epsilon, "steps": attack_steps,
                      "examples": min(attack_samples, len(trained.splits.test))},
           "methods": rows}
    if attack is not None:
        out["discrete_attack"] = {"attack": attack, "seed": cfg.seed, "max_change": 0.15,
                                  "query_budget": 500,
                                  "examples": min(attack_limit, len(trained.splits.test))}
    return out


def resume(run_dir: str, progress: bool = False, log: Callable[[str], None] = lambda s: None,
           dist_info: Optional[DistInfo] = None, allow_changed_data: bool = False) -> Optional[dict]:
    """Continue an interrupted run from its checkpoint, to the same end as an uninterrupted one.
    Its data files must be those it started with (size and sha256) unless ``allow_changed_data``."""
    cfg = read_config(run_dir)
    cfg.output_dir = run_dir  # the directory may have moved since
    found, what = engine(cfg.engine).has_checkpoint(run_dir)
    if not found:
        done = os.path.exists(os.path.join(run_dir, "metrics.json"))
        raise InputError(f"{run_dir}: " + ("the run already finished" if done else
                                           f"no {what} to resume from"))
    world = dist_info.world_size if dist_info else 1
    if cfg.world_size != world:  # another world size would change the batches and step counts
        how = (f"torchrun --nproc_per_node {cfg.world_size} -m advnlp.cli train --resume {run_dir}"
               if cfg.world_size > 1 else f"advnlp train --resume {run_dir} (one process)")
        raise InputError(f"{run_dir} was trained with {cfg.world_size} process(es), not {world}; "
                         f"resume it with: {how}")
    if not allow_changed_data:
        cfg.data.check_unchanged()
    check_environment(cfg)
    run = Run(cfg, progress, log, dist_info)
    engine(cfg.engine).resume(run)
    log(f"resuming at epoch {run.epoch + 1}, step {run.step}")
    return fit(run)


def _examples(run_dir: str, data, device: str, allow_changed_data: bool):
    cfg, labels, clf = load_run(run_dir, device)
    if data is None and not allow_changed_data:
        cfg.data.check_unchanged()
    examples = read_file(data, cfg.data) if data else load_splits(cfg.data, cfg.seed).test
    targets = labels.encode([lab for _, lab in examples], data or "test split")
    return cfg, labels, clf, device_of(device), examples, targets


def evaluate_run(run_dir: str, data: str = None, epsilons: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
                 steps: int = 5, samples: int = 100, batch_size: int = 32,
                 device: str = "auto", allow_changed_data: bool = False) -> dict:
    """Clean metrics and a robustness curve for a saved run; also written to eval.json.
    Without ``data``, the run's own test split (its files unchanged unless ``allow_changed_data``)."""
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
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


def attack_run(run_dir: str, attack: str, data: str = None, limit: int = 100, *,
               max_change: float = 0.15, query_budget: int = 500, threshold: float = 0.6,
               seed: int = None, epsilons: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
               norm: str = "l2", steps: int = 10, random_start: bool = False,
               batch_size: int = 32, device: str = "auto", allow_changed_data: bool = False) -> dict:
    """Attack a saved run; writes ``attack-<name>.json`` (and ``adversarial-<name>.csv``)."""
    if attack not in ATTACKS:
        raise InputError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    check_single_segment(attack, read_config(run_dir).data.text_columns)
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
        res.to_csv(csv_path, labels.names)
        files["csv"] = csv_path
        out = {**res.to_dict(), **source}
    path = os.path.join(run_dir, f"attack-{attack}.json")
    out["files"] = {"json": path, **files}
    write_json(path, out)
    return out
