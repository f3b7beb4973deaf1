"""``--report-to``: a run's numbers in the tool people watch training in, written locally.

``tensorboard`` writes ``<run>/tensorboard/`` (``tensorboard --logdir <run or compare
folder>``; a compare's runs sit in ``<method>/seed-<s>/`` folders, so their curves overlay,
named by method and seed): per step the training loss (clean), the adversarial loss of the
methods that have one and the learning rate; per epoch the validation metrics; at the end
the test metrics, and in a compare every score of the run's row (robust accuracy per radius,
accuracy under each discrete attack, ...). Both engines report the same way (the run books
its steps and epochs itself, whatever loop drives it). Nothing is sent anywhere.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Dict

from .errors import InputError

REPORTERS = ("none", "tensorboard")
FOLDER = "tensorboard"


class Tracker:
    """``--report-to none``: every call does nothing."""

    def scalars(self, values: Dict[str, object], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoard(Tracker):
    def __init__(self, run_dir: str):
        self.writer = _summary_writer()(log_dir=os.path.join(run_dir, FOLDER))

    def scalars(self, values: Dict[str, object], step: int) -> None:
        for name, value in values.items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self.writer.add_scalar(name, float(value), step)
        self.writer.flush()  # watched while it runs: every point visible at once

    def close(self) -> None:
        self.writer.close()


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError("--report-to tensorboard needs the tensorboard package: "
                         "pip install 'advnlp[track]'") from None
    return SummaryWriter


def check_reporter(report_to: str) -> None:
    """A known reporter whose package is installed (before anything trains)."""
    if report_to not in REPORTERS:
        raise InputError(f"--report-to takes {', '.join(REPORTERS)}, got {report_to!r}")
    if report_to == "tensorboard":
        _summary_writer()


def tracker(report_to: str, run_dir: str) -> Tracker:
    return TensorBoard(run_dir) if report_to == "tensorboard" else Tracker()


def numeric(prefix: str, values: dict) -> Dict[str, float]:
    """The numbers of a metrics dict under ``prefix/`` (nested dicts flattened with ``/``)."""
    out: Dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(numeric(f"{prefix}/{key}", value))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = float(value)
    return out
