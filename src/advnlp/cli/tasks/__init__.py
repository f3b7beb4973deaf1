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
    table: Dict[str, object] = field(default_factory=dict)  # marks in compare.json
    check: Callable = lambda cfg: None  # checks a configuration (TrainConfig.resolved)
    logits_loss: Callable = lambda cfg: {}  # SMART / VAT's loss_fn and output_type, if any
    attacks: Tuple[str, ...] = ("char", "word")  # compare --attack's discrete attacks
    attacks_note: str = ""  # why --attack takes no more
    check_attack: Callable = lambda attack, cfg: None  # a discrete attack fits cfg's data
    typo_rate: Optional[str] = None  # why compare refuses --typo-rate, if it does
    # The keys (and their robust_*@ε, validation_* forms) where lower is better: a loss
    lower_better: Tuple[str, ...] = ()
    extra_keys: Tuple[str, ...] = ()  # more per-radius row keys: "<key>@<ε>"
    # The task's own options: TrainConfig field -> its Option (help, type, choices; the
    # default is the field's), listed under their own help section, refused for the others.
    options: Dict[str, object] = field(default_factory=dict)
    options_title: str = ""  # that section's title
    engines: Tuple[str, ...] = ("loop", "trainer")  # the --engine values it trains with

    def lower_is_better(self, key: str) -> bool:
        """Whether a row key (``validation_completion_loss``, ``broken_share@0.5``) improves
        by going down, so that a verdict reads a decrease as "helped"."""
        stem = key[len("validation_"):] if key.startswith("validation_") else key
        return stem.split("@")[0] in self.lower_better

    @property
    def parts(self) -> ModuleType:
        return importlib.import_module(self.module)


def _registry() -> Dict[str, Task]:
    from .causal_lm import TASK as causal_lm
    from .classification import TASK as classification
    from .tagging import TASK as tagging

    return {t.name: t for t in (classification, tagging, causal_lm)}


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
