"""The run directory: what files a run owns, and reading a finished or interrupted run back.

A run directory holds ``config.json`` (everything to reproduce the run),
``labels.json``, while training a checkpoint (``checkpoint.pt`` for the loop engine,
``checkpoints/checkpoint-<step>/`` for the Trainer engine), and at the end
``model/``, ``metrics.json`` and, if matplotlib is installed, ``plot.png``.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Tuple

from .config import TrainConfig
from .data import Labels
from .distributed import device_of
from .errors import InputError
from .models import SCRATCH, Classifier, load

CHECKPOINT = "checkpoint.pt"  # --engine loop
CHECKPOINTS = "checkpoints"  # --engine trainer: the Trainer's checkpoint folders
RUN_FILES = ("config.json", "labels.json", "metrics.json", CHECKPOINT, CHECKPOINTS, "eval.json",
             "compare.json")


def prepare_run_dir(path: str, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory unless told to replace the old one."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"--output-dir {path} exists and is not a directory")
    old = [f for f in RUN_FILES if os.path.exists(os.path.join(path, f))]
    if old and not overwrite:
        raise InputError(f"--output-dir {path} holds a previous run ({old[0]}); "
                         "pass --overwrite to replace it or --resume to continue it")
    for f in old:
        if os.path.isdir(os.path.join(path, f)):
            shutil.rmtree(os.path.join(path, f))
        else:
            os.remove(os.path.join(path, f))
    os.makedirs(path, exist_ok=True)


def has_checkpoint(run_dir: str) -> bool:
    """A checkpoint of either engine (``checkpoint.pt``, ``checkpoints/checkpoint-*``)."""
    if os.path.isfile(os.path.join(run_dir, CHECKPOINT)):
        return True
    folder = os.path.join(run_dir, CHECKPOINTS)
    return os.path.isdir(folder) and any(n.startswith("checkpoint-") for n in os.listdir(folder))


def read_config(run_dir: str) -> TrainConfig:
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise InputError(f"{run_dir} is a file; give the run's directory (the --output-dir "
                         "of advnlp train), and a data file with --data")
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return TrainConfig.from_json(json.load(f))
    except FileNotFoundError:
        raise InputError(f"{run_dir} is not a run directory (no config.json)") from None
    except (ValueError, TypeError, KeyError) as e:
        raise InputError(f"{path}: not an advnlp run config ({e})") from None


def load_run(run_dir: str, device: str = "auto") -> Tuple[TrainConfig, Labels, Classifier]:
    """The configuration, labels and trained classifier of a finished run."""
    cfg = read_config(run_dir)
    try:
        with open(os.path.join(run_dir, "labels.json"), encoding="utf-8") as f:
            labels = Labels.from_json(json.load(f))
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{run_dir}: cannot read labels.json ({e})") from None
    model_dir = os.path.join(run_dir, "model")
    if not os.path.isdir(model_dir):
        if has_checkpoint(run_dir):
            raise InputError(f"{run_dir}: no model/ (the run did not finish); continue it with "
                             f"advnlp train --resume {run_dir}")
        raise InputError(f"{run_dir}: no model/ and no checkpoint (the run stopped before its "
                         "first checkpoint); train it again with --overwrite")
    clf = load(model_dir, cfg.model if cfg.model in SCRATCH else "hf", len(labels.names),
               cfg.max_length)
    clf.model.to(device_of(device))
    return cfg, labels, clf
