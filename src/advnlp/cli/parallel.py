"""``compare --jobs N``: N runs of a compare at once, each in a process of its own.

Why: on a CPU a small model uses several threads poorly. Measured on this project's 2-core
machine, a MiniLM training step (batch 16 x 64 tokens) takes 0.69 s with 2 threads and
1.06 s with 1, and two single-thread steps side by side take 1.06 s together: two runs at
once do 1.30x the work of one run with both threads. (A GPU busy with one run gains little.)

How: each worker is a fresh (spawned) Python process with torch's CPU threads split evenly
between the workers, in a process group of its own; it trains and scores whole runs with the
function the sequential compare calls (:func:`advnlp.cli.commands.one_row`), writes each
run's row into its folder and returns it. The runs start in the plan's order, ``none``'s
last (no method costs less, and the longest first leave no worker idle at the end); the
table is built from the rows in the plan's order, whatever finished first. Nothing but the
threads per run differs from ``--jobs 1`` (seeds, data order, batches); the threads can
change the last bits of a float sum.

A worker's log lines (its progress lines aside) are printed when its run ends, under the
run's title. Ctrl-C or SIGTERM reaches the compare, which passes it on to every worker once
(their own process groups keep a terminal's Ctrl-C from reaching them twice): each training
run saves its checkpoint, a run being scored stops scoring (its model is saved already), the
compare stops as interrupted, and ``compare --resume`` goes on from there, with ``--jobs``
or without. A compare killed outright (SIGKILL) cannot pass a signal on: its workers notice
they are orphans within a second and stop the same way.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import re
import signal
import threading
import time
from typing import Callable, Dict, List, Tuple

import torch

from .config import TrainConfig
from .errors import InputError, Interrupted
from .plan import run_title

PROGRESS = re.compile(r"^epoch \d+/\d+: step ")  # a progress line, not worth keeping


def check_jobs(jobs) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise InputError(f"--jobs is how many runs train at once, an integer >= 1, got {jobs!r}")


_in_run = False  # whether this worker is busy with a run (not waiting for the next)
_stopped_by = 0  # the first stop signal this worker saw: no run starts after it


def _stop_outside_training(signum, frame) -> None:
    """A worker's answer to Ctrl-C and SIGTERM when no run is training (a training run
    installs its own handler, a checkpoint): a run being loaded or scored stops at once, as
    in a sequential compare (its trained model is kept, and ``compare --resume`` scores it).
    Between runs it is remembered: the pool may already have handed this worker its next
    run, which must not start."""
    global _stopped_by
    _stopped_by = _stopped_by or signum
    if _in_run:
        raise Interrupted("", signum)


def _stop_when_orphaned(parent: int, every: float = 1.0) -> None:
    """A worker whose compare died without passing a signal on (SIGKILL, the OOM killer)
    stops as if it had: its own process group keeps it alive, and the compare's lock died
    with the compare, so a ``compare --resume`` could otherwise train the same run beside it."""
    while os.getppid() == parent:
        time.sleep(every)
    os.kill(os.getpid(), signal.SIGTERM)
    while not _stopped_by or _in_run:  # a training run checkpoints first, a scoring one stops
        time.sleep(0.1)
    os._exit(128 + signal.SIGTERM)  # idle, the pool's queue would wait for its dead compare


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def _stop_signals_held():
    """Ctrl-C and SIGTERM wait while the workers are spawned: one that came while the pool
    was writing a new worker its start-up data would leave it reading half of it (a
    traceback on the terminal). They come right after, where the compare stops the pool.
    The workers start with them held too (the mask is inherited) until their own handler is
    in place."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _start_worker(threads: int) -> None:
    if hasattr(os, "setpgrp"):  # the compare passes signals on: a Ctrl-C must not come twice
        os.setpgrp()
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop_outside_training)
    if hasattr(signal, "pthread_sigmask"):  # held by the compare while it spawned us
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    threading.Thread(target=_stop_when_orphaned, args=(os.getppid(),), daemon=True,
                     name="advnlp-orphan-watch").start()
    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _one_run(one_row: Callable, plan: dict, method: str, seed: int, cfg_json: dict,
             resuming: bool):

    lines: List[str] = []

    def log(line: str) -> None:
        if not PROGRESS.match(line):
            lines.append(line)

    global _in_run, _stopped_by
    if _stopped_by:
        raise Interrupted("", _stopped_by)
    _in_run = True
    try:
        row = one_row(plan, method, seed, TrainConfig.from_json(cfg_json), False, log, resuming)
    except Interrupted as e:  # a training run stopped at its checkpoint counts too
        _stopped_by = _stopped_by or int(e.signal)
        raise
    finally:
        _in_run = False
    return row, lines


def start_order(runs) -> list:
    """The runs' keys ``(entry, seed)`` in the order they start: the plan's, plain ``none``'s
    last. The longest first, so that no worker is left with a long run while the others
    idle: no entry costs less than plain none."""
    return sorted(runs, key=lambda key: key[0] == "none")


def rows(plan: dict, runs: Dict[Tuple[str, int], object], resuming: bool,
         log: Callable[[str], None], one_row: Callable) -> List[dict]:
    """Every run's row, trained ``plan["jobs"]`` at a time by ``one_row`` (the sequential
    compare's function, which a worker imports by name); in the plan's order."""
    jobs = min(plan["jobs"], len(runs))
    threads = max(1, torch.get_num_threads() // jobs)
    log(f"{len(runs)} runs, {jobs} at a time, {threads} thread(s) each")
    pool = concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
        initargs=(threads,))
    futures: Dict[concurrent.futures.Future, Tuple[str, int]] = {}
    done: Dict[Tuple[str, int], dict] = {}
    try:
        with _stop_signals_held():
            for m, s in start_order(runs):
                futures[pool.submit(_one_run, one_row, plan, m, s, runs[m, s].to_json(),
                                    resuming)] = (m, s)
        for future in concurrent.futures.as_completed(futures):
            m, s = futures[future]
            row, lines = future.result()
            log(run_title(plan, m, s))
            for line in lines:
                log(line)
            done[m, s] = row
    except BaseException as e:
        _stop(pool, e)
        if isinstance(e, concurrent.futures.process.BrokenProcessPool):
            raise InputError("a compare --jobs worker died (out of memory?); the finished runs "
                             "are kept: compare --resume with fewer --jobs") from None
        raise
    pool.shutdown()
    return [done[k] for k in runs]


def _stop(pool: concurrent.futures.ProcessPoolExecutor, error: BaseException) -> None:
    """On an interruption or another run's error: the signal (SIGTERM for an error) to every
    worker once, nothing new started, and wait for the running ones' checkpoints."""
    signum = error.signal if isinstance(error, Interrupted) else signal.SIGTERM
    for child in multiprocessing.active_children():
        try:
            os.kill(child.pid, signum)
        except (ProcessLookupError, TypeError):
            pass
    pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["check_jobs", "rows", "start_order"]
