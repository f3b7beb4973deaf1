"""The tasks, one folder each, found through one registry: :data:`TASKS`.

A task's folder holds what that task needs: reading its data, its model (encode, predict,
save, load), its run (set-up, the training step's closure, evaluation, headline metric),
its scores (compare row keys; clean, embedding-attack and discrete-attack scores) and what
``eval`` / ``attack`` print. Its ``__init__`` makes a light :class:`Task` (checks, names,
keys: what the configuration needs before anything is built); the heavy parts are one module
(:attr:`Task.module`), imported when a run asks for them. Everything outside ``tasks/``
asks this registry and never names a task, so a new task is a new folder and one line here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable, Dict, Optional, Tuple

from ..errors import InputError


@dataclass(frozen=True)
class Task:
    """What the command line asks of a task before it builds anything.

    ``module`` is the dotted name of the module with the task's heavy parts: ``Run`` (its
    run class), ``evaluate`` and ``attack`` (``advnlp eval`` / ``attack`` on a saved run),
    ``row`` and ``row_of_saved`` (a compare row of a trained run, or of a saved one),
    ``summary``, ``eval_report`` and ``attack_report`` (what ``main`` prints)."""

    name: str
    help: str  # the --task help line
    module: str
    loader: str  # the function that loads a finished run of this task (named in errors)
    score: str = "accuracy"  # what a compare's rows and curves score
    clean_keys: Tuple[str, ...] = ("accuracy", "macro_f1")  # a compare row's clean numbers
    table: Dict[str, str] = field(default_factory=dict)  # marks in compare.json
    check: Callable = lambda cfg: None  # checks a configuration (TrainConfig.resolved)
    logits_loss: Callable = lambda cfg: {}  # SMART / VAT's loss_fn and output_type, if any
    attacks: Tuple[str, ...] = ("char", "word")  # compare --attack's discrete attacks
    attacks_note: str = ""  # why --attack takes no more
    check_attack: Callable = lambda attack, cfg: None  # a discrete attack fits cfg's data
    typo_rate: Optional[str] = None  # why compare refuses --typo-rate, if it does

    @property
    def parts(self) -> ModuleType:
        return importlib.import_module(self.module)


def _registry() -> Dict[str, Task]:
    from .classification import TASK as classification
    from .tagging import TASK as tagging

    return {t.name: t for t in (classification, tagging)}


TASKS: Dict[str, Task] = _registry()
DEFAULT_TASK = next(iter(TASKS))


def task_named(name: str) -> Task:
    """The task called ``name`` (a config's ``task``)."""
    if name not in TASKS:
        raise InputError(f"--task takes {' or '.join(TASKS)}, got {name!r}")
    return TASKS[name]


def task_of(cfg) -> Task:
    """The task of a TrainConfig, or of a plan's config dict."""
    return task_named(cfg.get("task", DEFAULT_TASK) if isinstance(cfg, dict) else cfg.task)


__all__ = ["Task", "TASKS", "DEFAULT_TASK", "task_named", "task_of"]
