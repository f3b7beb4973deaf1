"""The commands behind ``advnlp train``, ``compare``, ``eval`` and ``attack``, as functions.

Each takes plain values (a :class:`~advnlp.cli.config.TrainConfig`, a run directory),
raises :class:`~advnlp.cli.errors.InputError` on bad input before any file is written
where it can, and returns a JSON-ready dict that is also written into the run
directory. ``main.py`` parses the command line and prints; nothing here prints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
from typing import Callable, Dict, Optional, Sequence

from . import cost, parallel
from .config import (
    AUGMENT_ATTACKS,
    METHODS,
    TrainConfig,
    check_environment,
    default_run_dir,
)
from .distributed import DistInfo
from .engines import engine
from .errors import InputError, Interrupted
from .files import write_json
from .lock import locked
from .plan import (
    TYPO_SEED,
    VALIDATION_SCORES,
    attack_epsilons,
    attack_key,
    discrete_attacks,
    robust_key,
    run_title,
    success_key,
)
from .report import compare_plot
from .robustness import ATTACKS
from .run import STOP_SIGNALS, Run
from .rundir import (
    claiming,
    clear_run,
    compare_run_folders,
    discard_replaced,
    has_checkpoint,
    read_config,
    remove_empty,
)
from .statistics import LEVEL, paired_difference, require_scipy, summary
from .tasks import task_of
from .tracking import tracker


def fit(run: Run) -> Optional[dict]:
    """Train ``run`` with its engine to the last epoch and finish it (Ctrl-C or SIGTERM:
    checkpoint and ``Interrupted``); returns the metrics on rank 0."""
    with run.stopping_on_signals():
        engine(run.cfg.engine).fit(run)
    result = run.finish()
    if run.is_main:
        discard_replaced(run.run_dir)
    return result


def new_run(cfg: TrainConfig, progress: bool = False, log: Callable[[str], None] = lambda s: None,
            dist_info: Optional[DistInfo] = None) -> Run:
    """The Run of ``cfg``'s task (its module's ``Run``)."""
    return task_of(cfg).parts.Run(cfg, progress, log, dist_info)


def _start(cfg: TrainConfig, progress: bool, log, dist_info: Optional[DistInfo] = None) -> Run:
    """A new run of a resolved ``cfg`` in its (checked, replaced) output folder."""
    run = new_run(cfg, progress, log, dist_info)
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
    with claiming([cfg.output_dir], overwrite, dist_info):
        return fit(_start(cfg, progress, log, dist_info))


PLAN = "compare-config.json"  # what a compare runs, for compare --resume
ROW = "compare-row.json"  # one finished run's row, kept in its run directory


def plan_task(plan: dict):
    """The task of a compare plan (a plan's config without one: the default task)."""
    return task_of(plan.get("config", {}))


def metric_keys(plan: dict) -> list:
    """The per-run numbers a compare reports with mean, spread and a paired difference."""
    task = plan_task(plan)
    keys = [*task.clean_keys, *(robust_key(e, task.score) for e in attack_epsilons(plan)),
            *(f"{k}@{e:g}" for k in task.extra_keys for e in attack_epsilons(plan))]
    score = task.score
    if plan.get("typo_rate"):
        keys.append("typo_accuracy")
    validation = [f"validation_{k}" for k in keys]
    keys += (attack_key(a, score) for a in discrete_attacks(plan))
    return keys + validation


def compare_entry(name: str):
    """``(method, config overrides)`` of one ``--methods`` entry: a method (``fgm``), a
    discrete-attack training alone (``online-char``: none + ``--online-attack char``;
    ``greedy-char``: the same with ``--online-search greedy``; ``augment-word``: none +
    ``--augment-with-attack word``), ``typo-defence`` (none + ``--typo-defence``),
    ``synonym-defence`` (none + ``--synonym-defence``), or a method and these joined by
    ``+`` (``fgm+online-char``, ``online-char+typo-defence``)."""
    parts = name.split("+")
    method = parts[0] if parts[0] in METHODS else "none"
    overrides: Dict[str, object] = {}
    for extra in parts[1:] if parts[0] in METHODS else parts:
        defence = {"typo-defence": "typo_defence", "synonym-defence": "synonym_defence"}.get(extra)
        if defence is not None and defence not in overrides:
            overrides[defence] = True
            continue
        kind, _, attack = extra.partition("-")
        key = {"online": "online_attack", "greedy": "online_attack",
               "augment": "augment_with_attack"}.get(kind)
        if key is None or attack not in AUGMENT_ATTACKS or key in overrides:
            raise InputError(
                f"unknown method {name!r}; choose from {', '.join(METHODS)}, or online-char, "
                "online-word, greedy-char, greedy-word, augment-char, augment-word, "
                "typo-defence, synonym-defence, alone or after a method and '+' (e.g. "
                "fgm+online-char, greedy-char+typo-defence)")
        overrides[key] = attack
        if kind == "greedy":  # online, each edit the worst a search finds (--online-search)
            overrides["online_search"] = "greedy"
    return method, overrides


def compare(cfg: TrainConfig, methods, attack_epsilon, attack_steps: int,
            attack_samples: int, overwrite: bool = False, progress: bool = False,
            log: Callable[[str], None] = lambda s: None, attack: Optional[Sequence[str]] = None,
            attack_limit: int = 50, seeds: int = 1, typo_rate: Optional[float] = None,
            cost_rounds: int = 5, validation_scores: str = "full", jobs: int = 1) -> dict:
    """Train every method on the same data, model and budget, ``seeds`` times each
    (seeds ``cfg.seed .. cfg.seed + seeds - 1``, seed s of every method paired with seed s
    of the others); one row per method, and with several seeds the paired difference of
    every method against ``none`` with its 95% interval and verdict (:mod:`statistics`).

    Each method gets only the parameters it takes, so ``--steps`` for PGD does not
    stop FGM from running. Runs go to ``<output_dir>/<method>/`` (one seed) or
    ``<output_dir>/<method>/seed-<s>/``. Every run is scored on the test split: clean,
    under the embedding attack at each radius of ``attack_epsilon`` (one number or
    several) on the first ``attack_samples`` examples, with ``typo_rate`` on a typo'd copy
    of the whole split (:func:`advnlp.attacks.random_typos`, one copy for every run), and
    with ``attack`` (``"char"``, ``"word"`` or a list of them) under each discrete attack
    on the first ``attack_limit``.
    The validation split's scores are in every row too: choose settings by those
    (``validation_scores="clean"``: only its clean metrics, which training computed anyway;
    the attacks are not run on it). ``jobs`` > 1 trains and scores that many runs at once,
    each in its own process with its share of the CPU threads (:mod:`advnlp.cli.parallel`).

    Cost: every row has its wall-clock seconds per step while it trained and, unless
    ``cost_rounds`` is 0, its step cost against ``none`` measured after training by
    :mod:`advnlp.cli.cost` (all methods' steps interleaved on one batch, ``cost_rounds``
    rounds): the figure to read, as wall clock moves with the machine's other load.
    """
    attacks = _checked_attacks(task_of(cfg), cfg, attack, attack_limit, typo_rate)
    epsilons = _checked_radii(attack_epsilon)
    _check_entries(methods, seeds, cost_rounds)
    parallel.check_jobs(jobs)
    if validation_scores not in VALIDATION_SCORES:
        raise InputError(f"--validation-scores takes {' or '.join(VALIDATION_SCORES)}, got "
                         f"{validation_scores!r}")
    out_dir = cfg.output_dir or default_run_dir("compare")
    if seeds > 1:
        require_scipy()  # before hours of training, not after
    plan = {"config": dataclasses.replace(cfg, output_dir=out_dir).to_json(),
            "methods": list(methods), "seeds": seeds, "attack_epsilon": epsilons,
            "attack_steps": attack_steps, "attack_samples": attack_samples,
            "attack": attacks or None,
            "attack_limit": attack_limit, "typo_rate": typo_rate, "cost_rounds": cost_rounds,
            "validation_scores": validation_scores, "jobs": jobs}
    runs = _planned_runs(plan)  # every run's arguments checked before the first run and the folder
    first = next(iter(runs.values()))  # the model and the data, resolved and fingerprinted
    plan["config"]["model"], plan["config"]["data"] = first.model, dataclasses.asdict(first.data)
    _check_methods_fit(runs, plan["methods"])
    folders = _compare_folders(out_dir, runs)
    # A previous compare's runs that this one does not make again are replaced by nothing:
    # advnlp's files there go (at the end, with the rest), the user's stay.
    dropped = [f for f in compare_run_folders(out_dir) if f not in folders]
    with claiming(folders + dropped, overwrite):
        write_json(os.path.join(out_dir, PLAN), plan)
        out = _compare_runs(plan, runs, progress, log, resuming=False)
    discard_replaced(*folders, *dropped)
    remove_empty(*dropped)
    return out


def _checked_attacks(task, cfg: TrainConfig, attack, attack_limit: int, typo_rate) -> list:
    """compare's discrete attacks (and the typo rate) as the task allows them."""
    attacks = discrete_attacks({"attack": attack})
    if attack is not None:
        bad = [a for a in attacks if a not in task.attacks]
        if bad or not attacks:
            raise InputError(f"--attack takes {' and/or '.join(task.attacks)} (comma-separated)"
                             f"{task.attacks_note}, got {attack!r}")
        if len(set(attacks)) < len(attacks):
            raise InputError(f"--attack lists an attack more than once: {attack!r}")
        for a in attacks:
            task.check_attack(a, cfg)
        if attack_limit < 1:
            raise InputError("--attack-limit must be >= 1")
    if task.typo_rate is not None and typo_rate is not None:
        raise InputError(task.typo_rate)
    if typo_rate is not None and not 0 < typo_rate <= 1:
        raise InputError(f"--typo-rate is a probability in (0, 1], got {typo_rate:g}")
    return attacks


def _checked_radii(attack_epsilon) -> list:
    """The embedding attack's radii, sorted (robust at a radius = at it and every smaller one)."""
    epsilons = [attack_epsilon] if isinstance(attack_epsilon, (int, float)) else list(attack_epsilon)
    if not epsilons or any(isinstance(e, bool) or not 0 < e < math.inf for e in epsilons):
        raise InputError(f"--attack-epsilon takes one or more radii > 0, got {attack_epsilon!r}")
    if len(set(epsilons)) < len(epsilons):
        raise InputError(f"--attack-epsilon lists a radius more than once: {attack_epsilon!r}")
    return sorted(epsilons)


def _check_entries(methods, seeds, cost_rounds) -> None:
    if not methods:
        raise InputError(f"--methods is empty; choose from {', '.join(METHODS)}")
    for m in methods:
        compare_entry(m)
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise InputError(f"--methods lists {', '.join(repeated)} more than once; each method "
                         "is one run (one row)")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"--seeds takes a number of seeds >= 1, got {seeds!r}")
    if isinstance(cost_rounds, bool) or not isinstance(cost_rounds, int) or cost_rounds < 0:
        raise InputError(f"--cost-rounds takes a number of rounds >= 0 (0: no step-cost "
                         f"measurement), got {cost_rounds!r}")


def _check_methods_fit(runs: dict, methods) -> None:
    """Every entry's method built on the compare's model (once, untrained) before the first
    run trains: a method the model cannot take (YOPO on a model without a stack of layers)
    stops the compare now, not after hours of other methods' training."""
    seed = next(iter(runs))[1]
    probe = new_run(runs[methods[0], seed])
    try:
        for m in methods[1:]:
            cfg = runs[m, seed]
            adv = probe.build_adversary(cfg.seed, cfg)  # the task's own (a tagger's words)
            if adv is not None:
                adv.remove()
    finally:
        if probe.adv is not None:
            probe.adv.remove()


def _compare_folders(out_dir: str, runs: dict) -> list:
    """Every folder a compare writes, each before the folders inside it: its own, the method
    folders (which hold the seeds' folders with several seeds), and the runs'."""
    folders = [out_dir]
    for cfg in runs.values():
        for folder in (os.path.dirname(cfg.output_dir), cfg.output_dir):
            if folder not in folders:
                folders.append(folder)
    return folders


def resume_compare(out_dir: str, progress: bool = False,
                   log: Callable[[str], None] = lambda s: None, jobs: Optional[int] = None) -> dict:
    """Finish an interrupted compare: finished runs are kept, an interrupted one resumes from
    its checkpoint, the others are trained; the table covers every run. ``jobs``: how many
    runs train at once from now on (None: as the compare started)."""
    if jobs is not None:
        parallel.check_jobs(jobs)
    if not os.path.isdir(out_dir):
        raise InputError(f"{out_dir} is not a folder; give the --output-dir of the compare "
                         "to resume")
    with locked(out_dir):
        try:
            with open(os.path.join(out_dir, PLAN), encoding="utf-8") as f:
                plan = json.load(f)
            plan["config"]["output_dir"] = out_dir  # the folder may have moved since
            if jobs is not None:  # the machine's to choose, not the comparison's
                plan["jobs"] = jobs
            TrainConfig.from_json(plan["config"]).data.check_unchanged()  # one table, one dataset
            runs = _planned_runs(plan)
        except FileNotFoundError:
            raise InputError(f"{out_dir} is not a compare folder (no {PLAN})") from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{os.path.join(out_dir, PLAN)}: unreadable ({e})") from None
        if plan["seeds"] > 1:
            require_scipy()
        out = _compare_runs(plan, runs, progress, log, resuming=True)
    discard_replaced(*_compare_folders(out_dir, runs))
    return out


def _planned_runs(plan: dict) -> dict:
    """``{(method, seed): resolved config}`` of a compare plan."""
    cfg = TrainConfig.from_json(plan["config"])
    runs = {}
    for m in plan["methods"]:
        method, overrides = compare_entry(m)
        params = {k: getattr(cfg, k) if k in METHODS[method][1] else None
                  for k in ("epsilon", "alpha", "steps", "adv_weight")}
        if cfg.relative_epsilon is None:  # every method its own measured default
            params["relative_epsilon"] = None
        else:
            params["relative_epsilon"] = cfg.relative_epsilon and "relative_epsilon" in METHODS[method][1]
        for s in range(cfg.seed, cfg.seed + plan["seeds"]):
            folder = os.path.join(cfg.output_dir, m) if plan["seeds"] == 1 else \
                os.path.join(cfg.output_dir, m, f"seed-{s}")
            runs[m, s] = dataclasses.replace(cfg, method=method, seed=s, output_dir=folder,
                                             **params, **overrides).resolved()
    return runs


def _compare_runs(plan: dict, runs: dict, progress: bool, log, resuming: bool) -> dict:
    try:
        with _signals_interrupt():
            return _run_all(plan, runs, progress, log, resuming)
    except Interrupted as e:  # the comparison continues as a whole, not run by run
        raise Interrupted(plan["config"]["output_dir"], e.signal, command="compare") from None


@contextlib.contextmanager
def _signals_interrupt():
    """Ctrl-C or SIGTERM between the runs' training (scoring, step-cost timing) ends the
    compare as an interruption, with its resume command, not a silent death: the finished
    rows are on disk. While a run trains, the run's own handler (a checkpoint) is in charge."""
    def interrupt(signum, frame):
        raise Interrupted("", signum)

    previous = {}
    try:
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup's choice stays
                previous[signum] = signal.signal(signum, interrupt)
    except ValueError:  # not the main thread: no signal reaches us
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _run_all(plan: dict, runs: dict, progress: bool, log, resuming: bool) -> dict:
    if plan.get("jobs", 1) > 1:
        rows = parallel.rows(plan, runs, resuming, log, one_row)
    else:
        rows = []
        for (m, seed), run_cfg in runs.items():
            log(run_title(plan, m, seed))
            rows.append(one_row(plan, m, seed, run_cfg, progress, log, resuming))
    out = _tabulate(plan, rows, _step_cost(plan, runs, log))
    path = os.path.join(plan["config"]["output_dir"], "compare.json")
    write_json(path, out)
    compare_plot(os.path.dirname(path), out, log)
    return {**out, "path": path}


def one_row(plan: dict, m: str, seed: int, run_cfg: TrainConfig, progress: bool, log,
            resuming: bool) -> dict:
    """One run of a compare trained (or resumed, or kept) and scored; its row, also written
    to its folder."""
    row_path = os.path.join(run_cfg.output_dir, ROW)
    if resuming and os.path.isfile(row_path):
        log("  finished before: kept")
        return _upgraded(_read_row(row_path), plan)
    folder = run_cfg.output_dir
    if resuming and os.path.isdir(os.path.join(folder, "model")):  # trained, not yet scored
        row = {"method": m, "seed": seed,
               **plan_task(plan).parts.row_of_saved(folder, plan, log)}
    else:
        if resuming and has_checkpoint(folder):
            trained = _resumed_run(folder, progress, log)
        else:
            if resuming and os.path.isdir(folder):  # stopped before its first checkpoint:
                clear_run(folder)  # train it again (the user's files there stay)
            trained = _start(run_cfg, progress, log)
        result = fit(trained)
        if trained.stop_requested:  # came during the last step: the run finished, but the
            # compare was asked to stop, so it stops before the minutes of scoring (--resume)
            raise Interrupted(folder, trained.stop_requested)
        row = {"method": m, "seed": seed,
               **plan_task(plan).parts.row(trained, result, plan, log)}
    _report_row(run_cfg, row, plan)
    write_json(row_path, row)
    return row


def _report_row(cfg: TrainConfig, row: dict, plan: dict) -> None:
    """--report-to: the row's scores beside the run's curves (at its last step)."""
    if cfg.report_to == "none":
        return
    with open(os.path.join(cfg.output_dir, "metrics.json"), encoding="utf-8") as f:
        last = sum(e["steps"] for e in json.load(f)["epochs"])
    board = tracker(cfg.report_to, cfg.output_dir)
    board.scalars({f"compare/{k}": row[k] for k in metric_keys(plan) if k in row}, last)
    board.close()


def _read_row(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            row = json.load(f)
        if not isinstance(row, dict):
            raise ValueError("not a JSON object")
        return row
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({e}); delete it and run compare --resume again "
                         "to score that run anew") from None


def _step_cost(plan: dict, runs: dict, log) -> Optional[dict]:
    """Every row's training step timed against none's, interleaved (:mod:`cost`), on fresh
    untrained runs of the first seed's configurations (none's added if it is not a row)."""
    if not plan.get("cost_rounds"):
        return None
    seed = plan["config"]["seed"]
    configs = {m: runs[m, seed] for m in plan["methods"]}
    if "none" not in configs:
        first = next(iter(configs.values()))
        configs["none"] = dataclasses.replace(
            first, method="none", epsilon=None, alpha=None, steps=None, adv_weight=None,
            relative_epsilon=False, online_attack=None, augment_with_attack=None,
            online_search="random", typo_defence=False, synonym_defence=False)
    fresh = {m: new_run(c) for m, c in configs.items()}
    try:
        return cost.measure(fresh, plan["cost_rounds"], log)
    finally:
        for r in fresh.values():
            if r.adv is not None:
                r.adv.remove()


def _upgraded(row: dict, plan: dict) -> dict:
    """A row written before compare took several radii or several discrete attacks: its
    one robust accuracy and its one attacked accuracy, renamed."""
    row = dict(row)
    if isinstance(row.get("robust_accuracy"), (int, float)):
        row[robust_key(attack_epsilons(plan)[0])] = row.pop("robust_accuracy")
    if "attacked_accuracy" in row and discrete_attacks(plan):
        attack = discrete_attacks(plan)[0]
        row[attack_key(attack)] = row.pop("attacked_accuracy")
        row[success_key(attack)] = row.pop("attack_success_rate")
    return row


def _tabulate(plan: dict, runs: list, step_cost: Optional[dict] = None) -> dict:
    """compare.json: one row per method (means over seeds), every run, with several
    seeds each method's paired difference against ``none``, and the measured step cost."""
    methods, n_test = plan["methods"], runs[0]["test_examples"]
    by_method = {m: [r for r in runs if r["method"] == m] for m in methods}
    keys = [k for k in metric_keys(plan) if all(k in r for r in runs)]
    rows = []
    for m in methods:
        mine = by_method[m]
        row = {"method": m}
        rates = [success_key(a) for a in discrete_attacks(plan)]
        for k in keys + ["micro_f1", *rates, "seconds_per_step"]:
            if k in mine[0]:
                row[k] = summary([r[k] for r in mine])["mean"]
        if plan["seeds"] == 1:
            row["run_dir"] = mine[0]["run_dir"]
        else:
            row["std"] = {k: summary([r[k] for r in mine])["std"] for k in keys}
        rows.append(row)
    cost = next((r["seconds_per_step"] for r in rows if r["method"] == "none"), None)
    for r in rows:
        r["relative_cost"] = r["seconds_per_step"] / cost if cost else None  # wall clock
        if step_cost is not None:
            r["step_cost"] = step_cost["ratios"][r["method"]]
    out = {"attack": {"norm": "l2", "epsilons": attack_epsilons(plan), "steps": plan["attack_steps"],
                      "examples": min(plan["attack_samples"], n_test)},
           "metrics": keys, "methods": rows}
    out.update(plan_task(plan).table)  # e.g. a tagger's rows score entity F1
    if step_cost is not None:
        out["step_cost"] = step_cost
    if plan.get("typo_rate"):
        out["typos"] = {"rate": plan["typo_rate"], "seed": TYPO_SEED, "examples": n_test,
                        "what": "every run scored on one typo'd copy of the test split "
                                "(advnlp.attacks.random_typos; no model queried)"}
    if discrete_attacks(plan):
        out["discrete_attack"] = {"attacks": discrete_attacks(plan), "max_change": 0.15,
                                  "seed": plan["config"]["seed"] if plan["seeds"] == 1 else "each run's",
                                  "query_budget": 500, "examples": min(plan["attack_limit"], n_test)}
    if plan["seeds"] > 1:
        out["seeds"] = sorted({r["seed"] for r in runs})
        out["runs"] = runs
        out["interval"] = {"kind": "paired t-interval over seeds", "level": LEVEL}
        if "none" in by_method:
            base = {r["seed"]: r for r in by_method["none"]}
            out["versus_none"] = {
                m: {k: paired_difference([r[k] for r in by_method[m]],
                                         [base[r["seed"]][k] for r in by_method[m]],
                                         lower_is_better=plan_task(plan).lower_is_better(k))
                    for k in keys}
                for m in methods if m != "none"}
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
    lock = locked(run_dir) if dist_info is None or dist_info.rank == 0 else contextlib.nullcontext()
    with lock:
        return fit(_resumed_run(run_dir, progress, log, dist_info, cfg))


def _resumed_run(run_dir: str, progress: bool, log, dist_info: Optional[DistInfo] = None,
                 cfg: Optional[TrainConfig] = None) -> Run:
    """The run of ``run_dir`` rebuilt and loaded from its newest checkpoint."""
    if cfg is None:
        cfg = read_config(run_dir)
        cfg.output_dir = run_dir
        cfg.data.check_unchanged()
    run = new_run(cfg, progress, log, dist_info)
    engine(cfg.engine).resume(run)
    log(f"resuming at epoch {run.epoch + 1}, step {run.step}")
    return run


def _writing_run(command: Callable) -> Callable:
    """``command(run_dir, ...)`` holds ``run_dir``'s lock while it runs (it writes there);
    a folder that is no run is refused first, so the lock makes no folder."""
    @functools.wraps(command)
    def locked_command(run_dir: str, *args, **kwargs):
        read_config(run_dir)
        with locked(run_dir):
            return command(run_dir, *args, **kwargs)
    return locked_command


@_writing_run
def evaluate_run(run_dir: str, data: str = None, epsilons: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
                 steps: int = 5, samples: int = 100, batch_size: int = 32,
                 device: str = "auto", allow_changed_data: bool = False) -> dict:
    """Clean metrics and a robustness curve for a saved run; also written to eval.json.
    Without ``data``, the run's own test split (its files unchanged unless ``allow_changed_data``)."""
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    return task_of(read_config(run_dir)).parts.evaluate_run(
        run_dir, data, epsilons, steps, samples, batch_size, device, allow_changed_data)


@_writing_run
def attack_run(run_dir: str, attack: str, data: str = None, limit: int = 100, *,
               max_change: float = 0.15, query_budget: int = 500, threshold: float = 0.6,
               seed: int = None, epsilons: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
               norm: str = "l2", steps: int = 10, random_start: bool = False,
               batch_size: int = 32, device: str = "auto", allow_changed_data: bool = False,
               edit_entities: bool = False) -> dict:
    """Attack a saved run; writes ``attack-<name>.json`` (and ``adversarial-<name>.csv``; a
    tagger's char attack ``adversarial-char.jsonl``). ``edit_entities``: a tagger's char
    attack edits entity words too (by default only words tagged O)."""
    if attack not in ATTACKS:
        raise InputError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    return task_of(read_config(run_dir)).parts.attack_run(
        run_dir, attack, data, limit, max_change=max_change, query_budget=query_budget,
        threshold=threshold, seed=seed, epsilons=epsilons, norm=norm, steps=steps,
        random_start=random_start, batch_size=batch_size, device=device,
        allow_changed_data=allow_changed_data, edit_entities=edit_entities)
