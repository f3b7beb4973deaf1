"""Calling the CLI in-process and reading what a run leaves."""
import csv
import json
import os
import signal

from advnlp.cli.tasks import classify as T
from advnlp.cli import main


def run(*argv):
    """Exit code of ``advnlp argv...``, run in-process."""
    return main([str(a) for a in argv])


def read_json(*parts):
    with open(os.path.join(*map(str, parts)), encoding="utf-8") as f:
        return json.load(f)


def write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def ctrl_c_after(monkeypatch, n):
    """Deliver a real SIGINT to this process after the n-th training step."""
    calls = {"n": 0}
    step = T.train_step

    def step_then_sigint(*args):
        loss = step(*args)
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(T, "train_step", step_then_sigint)
