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

import json
import math
import numbers
import os
import re
from typing import Dict, Optional

from .errors import InputError

REPORTERS = ("none", "tensorboard", "mlflow")
FOLDER = "tensorboard"
MLFLOW_STORE = "mlruns"  # beside a run, or beside the runs of a compare
MLFLOW_RUN = "mlflow-run.json"  # the run's MLflow run id: resume and compare log into it
EXPERIMENT = "advnlp"


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


class MLflow(Tracker):
    """``--report-to mlflow``: the same scalars in a local MLflow store (no server): the
    ``MLFLOW_TRACKING_URI`` the user set, else a file store ``mlruns/`` beside the run, or
    beside the runs of a compare (one store, so that ``mlflow ui --backend-store-uri <that folder>`` overlays
    them), in the experiment "advnlp", one MLflow run per advnlp run, tagged with its method
    and seed. Metric names keep what MLflow allows (``robust_accuracy@0.5`` becomes
    ``robust_accuracy_at_0.5``)."""

    def __init__(self, run_dir: str, tags: Dict[str, str]):
        mlflow = _mlflow()
        known = _read_json(os.path.join(run_dir, MLFLOW_RUN))
        uri = known.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") \
            or "file:" + os.path.abspath(os.path.join(_store_folder(run_dir), MLFLOW_STORE))
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store (no database, no server: what works offline with
            # mlflow-skinny) behind this switch; a database is MLFLOW_TRACKING_URI's choice.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        self.run_id = known.get("run_id")
        if self.run_id is None:
            exp = self.client.get_experiment_by_name(EXPERIMENT)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(EXPERIMENT)
            run = self.client.create_run(exp_id, run_name=_run_name(run_dir), tags=tags)
            self.run_id = run.info.run_id
            from .files import write_json  # a run folder's file: atomic, no link followed
            write_json(os.path.join(run_dir, MLFLOW_RUN),
                       {"tracking_uri": uri, "run_id": self.run_id})

    def scalars(self, values: Dict[str, object], step: int) -> None:
        for name, value in values.items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self.client.log_metric(self.run_id, _mlflow_name(name), float(value), step=step)

    def close(self) -> None:
        pass  # the run stays open for a later resume or compare's scores


def _mlflow_name(name: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", name.replace("@", "_at_"))


def _run_name(run_dir: str) -> str:
    parts = os.path.abspath(run_dir).split(os.sep)
    return "/".join(parts[-2:]) if parts[-1].startswith("seed-") else parts[-1]


def _store_folder(run_dir: str) -> str:
    """The compare folder a run sits in (``<compare>/<method>/seed-<s>``), else the run's."""
    up = os.path.dirname(os.path.dirname(os.path.abspath(run_dir)))
    return up if os.path.isfile(os.path.join(up, "compare-config.json")) else run_dir


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
        return out if isinstance(out, dict) else {}
    except (OSError, ValueError):
        return {}


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise InputError("--report-to mlflow needs the mlflow package: pip install "
                         "'advnlp[mlflow]' (or mlflow-skinny)") from None
    return mlflow


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
    if report_to == "mlflow":
        _mlflow()


def tracker(report_to: str, run_dir: str, tags: Optional[Dict[str, str]] = None) -> Tracker:
    if report_to == "tensorboard":
        return TensorBoard(run_dir)
    return MLflow(run_dir, tags or {}) if report_to == "mlflow" else Tracker()


def numeric(prefix: str, values: dict) -> Dict[str, float]:
    """The numbers of a metrics dict under ``prefix/`` (nested dicts flattened with ``/``)."""
    out: Dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(numeric(f"{prefix}/{key}", value))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = float(value)
    return out
