"""The run directory: what files a run owns, and reading a finished or interrupted run back.

A run directory holds ``config.json`` (everything to reproduce the run),
``labels.json``, while training a checkpoint (``checkpoint.pt`` for the loop engine,
``checkpoints/checkpoint-<step>/`` for the Trainer engine), and at the end
``model/``, ``metrics.json`` and, if matplotlib is installed, ``plot.png``.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
from typing import Optional, Sequence, Tuple

from .config import TrainConfig
from .data import Labels
from .distributed import DistInfo, device_of, on_rank0
from .errors import InputError, Interrupted
from .files import TMP_PREFIX
from .lock import LOCK, locked
from .models import SCRATCH, Classifier, load
from .tasks import task_named

CHECKPOINT = "checkpoint.pt"  # --engine loop
CHECKPOINTS = "checkpoints"  # --engine trainer: the Trainer's checkpoint folders
RUN_FILES = ("config.json", "labels.json", "metrics.json", CHECKPOINT, CHECKPOINTS, "eval.json",
             "compare.json", "compare-config.json", "compare-row.json", "compare.png")


REPLACED = ".replaced"  # the previous run, moved aside while --overwrite builds the new one
# Exactly what advnlp writes into a run folder; nothing else is ever moved or deleted. A
# compare's method folders are not in it: each is a run folder of its own, and what the
# user keeps in one stays.
_WRITTEN = set(RUN_FILES) | {"model", "plot.png", "predictions-test.jsonl", "tensorboard"}
_WRITTEN_TMP = {f + ".tmp" for f in _WRITTEN}  # the staging names of earlier releases
_WRITTEN_PATTERNS = ("attack-*.json", "adversarial-*.csv", "adversarial-*.jsonl", TMP_PREFIX + "*")


def is_run_dir(path: str) -> bool:
    """An advnlp run (its config.json reads as one) or an advnlp compare folder."""
    if any(os.path.isfile(os.path.join(path, f)) for f in ("compare.json", "compare-config.json")):
        return True
    try:
        read_config(path)
    except InputError:
        return False
    return True


def _written_names(names) -> list:
    """Those of ``names`` (in a run folder) that advnlp writes there."""
    return [n for n in names if n in _WRITTEN or n in _WRITTEN_TMP
            or any(fnmatch.fnmatch(n, p) for p in _WRITTEN_PATTERNS)]


def compare_run_folders(path: str) -> list:
    """The run folders of the compare in ``path`` as they are on disk: each method folder its
    plan lists (or the compare.json of a comparison written before plans existed) and the
    ``seed-*`` folders in it; each folder before the folders inside it."""
    methods = []
    for name, read in (("compare-config.json", lambda d: d["methods"]),
                       ("compare.json", lambda d: [r["method"] for r in d["methods"]])):
        try:
            with open(os.path.join(path, name), encoding="utf-8") as f:
                methods += [m for m in read(json.load(f)) if isinstance(m, str) and m not in methods]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    folders = []
    for m in methods:
        folder = os.path.join(path, m)
        if os.path.isdir(folder) and not os.path.islink(folder) and os.path.basename(folder) == m:
            folders.append(folder)
            folders += sorted(os.path.join(folder, n) for n in os.listdir(folder)
                              if n.startswith("seed-") and os.path.isdir(os.path.join(folder, n)))
    return folders


def remove_empty(*paths: str) -> None:
    """Remove those of ``paths`` that are empty folders, the inner ones first."""
    for path in sorted(paths, key=len, reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def clear_run(path: str) -> None:
    """Delete what advnlp wrote in ``path`` (a run that must start again); the user's files,
    and a previous run kept aside by --overwrite, stay."""
    for n in _written_names(os.listdir(path)):
        _remove(os.path.join(path, n))


def check_output_dir(path: str, overwrite: bool) -> None:
    """A new run may go into a new folder, a folder none of whose names it writes (the
    files there stay), or over an advnlp run with --overwrite; never over files of the
    names it writes that are not an advnlp run's (a model folder's config.json, say).
    Changes nothing."""
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise InputError(f"--output-dir {path}: {parent} is a file, so no folder can be made "
                             "inside it; choose another --output-dir")
        if not os.access(parent, os.W_OK | os.X_OK):  # always true for root
            raise InputError(f"--output-dir {path}: cannot write in {parent} (permission denied); "
                             "choose another --output-dir")
        return
    if not os.path.isdir(path):
        raise InputError(f"--output-dir {path} exists and is not a directory")
    if os.path.lexists(os.path.join(path, REPLACED)):
        raise InputError(f"--output-dir {path} holds {REPLACED}/, the run an earlier --overwrite "
                         "replaced and that run has not finished yet: --resume it, or move "
                         f"{REPLACED}/ away if you no longer need the old run")
    names = sorted(os.listdir(path))
    if is_run_dir(path):
        old = _written_names(names)
        if old and not overwrite:
            raise InputError(f"--output-dir {path} holds a previous run ({old[0]}); "
                             "pass --overwrite to replace it or --resume to continue it")
        return
    clash = [n for n in names if n in _WRITTEN]
    if clash:
        raise InputError(f"--output-dir {path} holds {clash[0]!r}, which is not an advnlp run's "
                         "(a model folder?); advnlp will not write over it, with or without "
                         "--overwrite: choose another --output-dir")


def has_progress(path: str) -> bool:
    """A checkpoint, a trained model or a scored compare run anywhere in ``path``: work
    that a failure must not throw away (it can be resumed)."""
    for folder, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != REPLACED]
        if (CHECKPOINT in files or "compare-row.json" in files or "model" in dirs
                or (CHECKPOINTS in dirs and has_checkpoint(folder))):
            return True
    return False


class Replacement:
    """``--overwrite``: the previous run's files (exactly those advnlp wrote) are moved
    aside into ``.replaced/`` (renames, not copies) before the new run starts. If the new
    run fails before it made anything resumable, the old one is put back; once the new run
    finishes, the old one is deleted. A new run that stopped with a checkpoint keeps the
    old one aside until its ``--resume`` finishes, so ``eval`` never scores the old model
    beside the new run's files."""

    def __init__(self, path: str):
        self.path, self.aside = path, os.path.join(path, REPLACED)
        self.created = not os.path.exists(path)
        self.before = set() if self.created else set(os.listdir(path))
        self.moved = []
        try:
            os.makedirs(path, exist_ok=True)
            if not self.created and is_run_dir(path):
                self.moved = _written_names(sorted(self.before))
            if self.moved:
                os.makedirs(self.aside)
                for n in self.moved:
                    os.replace(os.path.join(path, n), os.path.join(self.aside, n))
        except OSError as e:
            raise InputError(f"--output-dir {path}: cannot prepare it ({e.strerror})") from None

    def restore(self) -> None:
        """The new run failed: delete what it wrote, put the old run back."""
        if self.created:  # nothing was there: leave nothing behind
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for n in os.listdir(self.path):  # what the new run wrote; the user's files stay
            if n not in (REPLACED, LOCK) and (n not in self.before or n in self.moved):
                _remove(os.path.join(self.path, n))
        for n in self.moved:
            os.replace(os.path.join(self.aside, n), os.path.join(self.path, n))
        if self.moved:
            os.rmdir(self.aside)


@contextlib.contextmanager
def replacing(*paths: str, here: bool = True):
    """New runs in ``paths`` (each checked by :func:`check_output_dir`; a folder before the
    folders inside it): the old runs moved aside while inside; put back when the block
    fails before a new run made anything resumable (:func:`has_progress`).
    ``here=False`` (a rank but 0) does nothing."""
    replacements = [Replacement(p) for p in paths] if here else []
    try:
        yield
    except Interrupted:
        raise
    except BaseException:
        if replacements and not any(has_progress(p) for p in paths):
            for r in reversed(replacements):
                r.restore()
        raise


@contextlib.contextmanager
def claiming(paths: Sequence[str], overwrite: bool, dist_info: Optional[DistInfo] = None):
    """New runs into ``paths`` (the first holds the others, or is the only one): while
    inside, the first is locked (:mod:`lock`), each was checked by :func:`check_output_dir`
    under that lock, and the previous runs are moved aside (:func:`replacing`). On rank 0
    only; an error there stops every rank."""
    with contextlib.ExitStack() as stack:
        def claim():
            for p in paths:  # before the lock makes the first folder
                check_output_dir(p, overwrite)
            stack.enter_context(locked(paths[0]))
            for p in paths:  # again: nothing changes them now
                check_output_dir(p, overwrite)

        on_rank0(dist_info, claim)
        with replacing(*paths, here=dist_info is None or dist_info.rank == 0):
            yield


def discard_replaced(*paths: str) -> None:
    """The new runs finished: the previous ones they replaced are no longer needed."""
    for path in paths:
        shutil.rmtree(os.path.join(path, REPLACED), ignore_errors=True)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


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


def read_labels(run_dir: str) -> dict:
    """labels.json of a run, as written."""
    try:
        with open(os.path.join(run_dir, "labels.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{run_dir}: cannot read labels.json ({e})") from None


def trained_model_dir(run_dir: str) -> str:
    """``run_dir/model``, or a clear error saying how to get there."""
    model_dir = os.path.join(run_dir, "model")
    if not os.path.isdir(model_dir):
        if has_checkpoint(run_dir):
            raise InputError(f"{run_dir}: no model/ (the run did not finish); continue it with "
                             f"advnlp train --resume {run_dir}")
        raise InputError(f"{run_dir}: no model/ and no checkpoint (the run stopped before its "
                         "first checkpoint); train it again with --overwrite")
    return model_dir


def load_run(run_dir: str, device: str = "auto") -> Tuple[TrainConfig, Labels, Classifier]:
    """The configuration, labels and trained classifier of a finished run."""
    cfg = read_config(run_dir)
    loader = task_named(cfg.task).loader
    if loader != f"{__name__}.load_run":  # another task's model is no Classifier
        raise InputError(f"{run_dir} is a {cfg.task} run, not a classifier's; load it with "
                         f"{loader}")
    try:
        labels = Labels.from_json(read_labels(run_dir))
    except (KeyError, TypeError) as e:
        raise InputError(f"{run_dir}: cannot read labels.json (no {e})") from None
    model_dir = trained_model_dir(run_dir)
    clf = load(model_dir, cfg.model if cfg.model in SCRATCH else "hf", len(labels.names),
               cfg.max_length)
    if cfg.typo_defence and clf.normalizer is None:  # never scored without its defence
        raise InputError(f"{run_dir} was trained with --typo-defence, but {model_dir} has no "
                         "typo_defence.json (it is part of the model): restore it, or train "
                         "the run again")
    clf.model.to(device_of(device))
    return cfg, labels, clf
