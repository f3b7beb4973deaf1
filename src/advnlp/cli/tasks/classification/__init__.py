"""Sequence classification: a label (softmax) or a label set (sigmoid) per text.

:mod:`.classify` is its loss, metrics, prediction and training step, :mod:`.commands` its
``eval``, ``attack`` and compare scores, :mod:`.run` its run (:class:`.run.ClassifyRun`, a
peer of the other tasks' runs on the task-free :class:`advnlp.cli.run.Run`).
"""
from __future__ import annotations

from ...errors import InputError
from ...robustness import DISCRETE_ATTACKS
from .. import Task
from .classify import check_attack, loss_fn


def _check(cfg) -> None:
    if cfg.crf or cfg.label_all_subtokens:
        raise InputError("--crf and --label-all-subtokens are for --task token-classification")


def _logits_loss(cfg) -> dict:
    """SMART and VAT compare logits; their divergence's loss is the task's, from labels=y."""
    crit = loss_fn(cfg.data.multi_label)
    # In float32 whatever dtype autocast gave the logits (--precision).
    return {"loss_fn": lambda logits, y: crit(logits.float(), y),
            "output_type": "sigmoid" if cfg.data.multi_label else "softmax"}


TASK = Task(
    name="classification",
    help="classification (default): a label (or label set) per text",
    module=f"{__name__}.commands", loader="advnlp.cli.rundir.load_run",
    check=_check, logits_loss=_logits_loss, attacks=DISCRETE_ATTACKS,
    check_attack=check_attack)
