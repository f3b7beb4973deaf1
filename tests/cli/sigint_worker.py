"""torchrun entry point for the tests: advnlp's CLI, with a real SIGINT delivered to one
rank after its n-th training step when ADVNLP_TEST_SIGINT="rank,step" is set, and every
checkpoint save slowed by ADVNLP_TEST_SLOW_SAVE seconds (a real model's save takes time;
the other ranks must wait for it)."""
import os
import signal
import sys
import time

import advnlp.cli.engines.hf_trainer as E
import advnlp.cli.engines.loop as L
from advnlp.cli import main


def _after(step, at):
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        out = step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == at:
            signal.raise_signal(signal.SIGINT)
        return out

    return wrapped


if os.environ.get("ADVNLP_TEST_SIGINT"):
    rank, at = map(int, os.environ["ADVNLP_TEST_SIGINT"].split(","))
    if int(os.environ["RANK"]) == rank:
        L.train_step = _after(L.train_step, at)  # the loop's step, whatever the task
        E._RunTrainer.training_step = _after(E._RunTrainer.training_step, at)


def _slow(save, seconds):
    def wrapped(*args, **kwargs):
        time.sleep(seconds)
        return save(*args, **kwargs)

    return wrapped


if os.environ.get("ADVNLP_TEST_SLOW_SAVE"):
    delay = float(os.environ["ADVNLP_TEST_SLOW_SAVE"])
    L.save_checkpoint = _slow(L.save_checkpoint, delay)
    E._RunTrainer._save_checkpoint = _slow(E._RunTrainer._save_checkpoint, delay)

sys.exit(main(sys.argv[1:]))
