"""Checkpoints: Ctrl-C saves one and exits 130 (SIGTERM: 143); --resume ends where an
uninterrupted run ends."""
import os
import signal

import pytest
from safetensors.torch import load_file

from cli_helpers import ctrl_c_after, read_json, run, sigterm_after_first_step

ARGS = ["--model", "textcnn", "--epochs", "2", "--batch-size", "16", "--quiet"]


def _weights(run_dir):
    return load_file(os.path.join(run_dir, "model", "model.safetensors"))


@pytest.mark.parametrize("stop_after", [2, 8], ids=["mid-epoch-1", "mid-epoch-2"])
def test_resume_reaches_the_uninterrupted_weights(sentiment_csv, tmp_path, monkeypatch, capsys,
                                                  stop_after):
    # 96 training examples / 16 = 6 steps per epoch, so step 8 is inside epoch 2.
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    before = signal.getsignal(signal.SIGINT)
    assert run("train", *ARGS, "--train", sentiment_csv, "--method", "pgd", "--steps", "2",
               "--output-dir", straight) == 0
    with monkeypatch.context() as m:
        ctrl_c_after(m, stop_after)
        assert run("train", *ARGS, "--train", sentiment_csv, "--method", "pgd", "--steps", "2",
                   "--output-dir", stopped) == 130
    assert "--resume" in capsys.readouterr().err
    assert (stopped / "checkpoint.pt").is_file() and not (stopped / "model").exists()
    assert signal.getsignal(signal.SIGINT) is before  # handler restored

    assert run("train", "--resume", stopped, "--quiet") == 0
    a, b = _weights(straight), _weights(stopped)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert read_json(straight, "metrics.json")["final"] == read_json(stopped, "metrics.json")["final"]


def test_checkpoint_loads_without_pickle(sentiment_csv, tmp_path, monkeypatch):
    import torch

    with monkeypatch.context() as m:
        ctrl_c_after(m, 1)
        assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", tmp_path) == 130
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 1 and state["epoch"] == 0
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_real_ctrl_c_in_a_subprocess(sentiment_csv, tmp_path):
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "advnlp.cli", "train", "--model", "textcnn",
                             "--train", sentiment_csv, "--epochs", "10000", "--quiet",
                             "--output-dir", str(out)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.strip().startswith("advnlp: interrupted; checkpoint saved") and "Traceback" not in err
    assert (out / "checkpoint.pt").is_file()


def test_ignored_signals_stay_ignored(sentiment_csv, tmp_path, monkeypatch):
    # Started under nohup or a script's `&`, SIGINT is ignored: the run must not undo that.
    from advnlp.cli.tasks.classification import classify as T

    seen = []
    step = T.train_step

    def step_and_signal(*args):
        seen.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
        return step(*args)

    monkeypatch.setattr(T, "train_step", step_and_signal)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert run("train", *ARGS, "--epochs", "1", "--train", sentiment_csv,
                   "--output-dir", tmp_path) == 0
        assert seen and all(h == (signal.SIG_IGN, signal.SIG_IGN) for h in seen)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert (tmp_path / "model").is_dir() and not (tmp_path / "checkpoint.pt").exists()


def test_sigterm_saves_a_checkpoint_and_resumes(sentiment_csv, tmp_path, engine="loop"):
    # What schedulers, `timeout` and container runtimes send: stop like Ctrl-C, exit 143.
    # 5 epochs of 6 steps: the signal lands long before the end, even on a busy machine.
    args = ["train", "--model", "textcnn", "--engine", engine, "--train", sentiment_csv,
            "--epochs", "5", "--batch-size", "16", "--method", "pgd", "--steps", "2"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    code, err = sigterm_after_first_step([*args, "--output-dir", stopped])
    assert code == 143, err
    assert "interrupted; checkpoint saved after SIGTERM" in err and "Traceback" not in err
    assert (stopped / "checkpoint.pt").is_file() and not (stopped / "model").exists()

    assert run(*args, "--quiet", "--output-dir", straight) == 0
    assert run("train", "--resume", stopped, "--quiet") == 0
    a, b = _weights(straight), _weights(stopped)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def _sigterm_on_forward(monkeypatch, n):
    """Deliver a real SIGTERM during the n-th forward pass of the training steps; returns the
    count of forward passes run."""
    from advnlp.cli.tasks.classification import classify as T

    calls = {"n": 0}
    step = T.train_step

    class Counting:
        def __init__(self, clf):
            self.clf = clf

        def __getattr__(self, name):
            return getattr(self.clf, name)

        def __call__(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                signal.raise_signal(signal.SIGTERM)
            return self.clf(*args, **kwargs)

    monkeypatch.setattr(T, "train_step", lambda clf, *a, **kw: step(Counting(clf), *a, **kw))
    return calls


def test_sigterm_stops_a_long_step_between_two_passes_and_resumes_exactly(
        sentiment_csv, tmp_path, monkeypatch, capsys):
    # --steps 150: each step is 151 passes. SIGTERM in the 10th pass of step 3 must not wait
    # for its 141 others: the step is dropped, the checkpoint is step 2's, and resuming from
    # it ends with the uninterrupted run's weights (so the dropped step left nothing behind:
    # no gradient, no random draw, no BatchNorm statistic).
    args = ["train", *ARGS, "--epochs", "1", "--train", sentiment_csv, "--method", "pgd",
            "--steps", "150"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run(*args, "--output-dir", straight) == 0
    assert "advnlp: warning: --steps 150 is far above" in capsys.readouterr().err  # --quiet too
    with monkeypatch.context() as m:
        calls = _sigterm_on_forward(m, 2 * 151 + 10)
        assert run(*args, "--output-dir", stopped) == 143
        assert calls["n"] == 2 * 151 + 10  # not one pass more
    err = capsys.readouterr().err
    assert "checkpoint saved after SIGTERM" in err and "--resume" in err
    import torch

    state = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 2)
    assert run("train", "--resume", stopped, "--quiet") == 0
    a, b = _weights(straight), _weights(stopped)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
