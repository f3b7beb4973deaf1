"""compare --jobs N: runs trained and scored N at a time in worker processes give the table of
--jobs 1; a SIGTERM stops every worker at a checkpoint and compare --resume finishes it."""
import os
import signal
import subprocess
import sys
import time

import pytest

from cli_helpers import read_json, run

ARGS = ["--methods", "none,fgm", "--seeds", "2", "--model", "textcnn", "--epochs", "2",
        "--attack-samples", "8", "--attack-steps", "2", "--cost-rounds", "0"]
TIMING = ("seconds_per_step", "relative_cost", "run_dir")


def _rows(folder):
    out = read_json(folder, "compare.json")
    return [{k: v for k, v in r.items() if k not in TIMING} for r in out["runs"]], out


def test_jobs_2_gives_the_table_of_jobs_1(sentiment_csv, tmp_path, capsys):
    assert run("compare", *ARGS, "--train", sentiment_csv, "--output-dir", tmp_path / "one",
               "--quiet") == 0
    assert run("compare", *ARGS, "--train", sentiment_csv, "--output-dir", tmp_path / "two",
               "--jobs", "2") == 0
    one, a = _rows(tmp_path / "one")
    two, b = _rows(tmp_path / "two")
    assert one == two  # every score, every seed, in the plan's order
    assert a["versus_none"] == b["versus_none"]
    err = capsys.readouterr().err
    assert "4 runs, 2 at a time" in err and "== fgm, seed 43" in err
    assert read_json(tmp_path / "two", "compare-config.json")["jobs"] == 2


def test_sigterm_stops_the_workers_and_resume_finishes(sentiment_csv, tmp_path, capsys):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run("compare", *ARGS, "--train", sentiment_csv, "--output-dir", whole, "--quiet") == 0
    proc = subprocess.Popen([sys.executable, "-m", "advnlp.cli", "compare", *ARGS, "--train",
                             sentiment_csv, "--output-dir", str(cut), "--jobs", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        first = proc.stderr.readline()
        assert "4 runs, 2 at a time" in first, first
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "compare --resume" in err and "Traceback" not in err, err
    assert not (cut / "compare.json").exists()
    assert run("compare", "--resume", cut, "--jobs", "2") == 0
    assert _rows(cut)[0] == _rows(whole)[0]


SLOW_SCORING = """
import os, time
if os.environ.get("ADVNLP_TEST_SCORING_MARKS"):
    import advnlp.cli.robustness as R
    real = R.embedding_robustness
    def scoring_for_minutes(*args, **kwargs):
        marks = os.environ["ADVNLP_TEST_SCORING_MARKS"]
        open(os.path.join(marks, str(os.getpid())), "w").close()
        time.sleep(600)  # a long attack: only a signal that stops scoring ends it early
        return real(*args, **kwargs)
    R.embedding_robustness = scoring_for_minutes
"""


def _compare_scoring_for_minutes(sentiment_csv, tmp_path):
    """A ``compare --jobs 2`` subprocess whose workers' scoring takes 10 minutes (a hook in
    their fresh interpreters); returns it once a worker scores, and the folder where each
    scoring worker left its pid."""
    cut, marks, hook = (tmp_path / n for n in ("cut", "marks", "hook"))
    marks.mkdir()
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_SCORING)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ADVNLP_TEST_SCORING_MARKS": str(marks),
           "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "advnlp.cli", "compare", *ARGS, "--train",
                             sentiment_csv, "--output-dir", str(cut), "--jobs", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while not os.listdir(marks) and proc.poll() is None:  # until a worker scores
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
    except BaseException:
        proc.kill()
        raise
    return proc, cut, marks


def test_sigterm_while_a_worker_scores_stops_the_scoring(sentiment_csv, tmp_path):
    """A worker scoring a run (which can take many minutes: the char and word attacks) stops
    on the compare's SIGTERM as a sequential compare does: the run's model is kept unscored,
    no row is written, and --resume scores it to the uninterrupted compare's rows."""
    whole = tmp_path / "whole"
    assert run("compare", *ARGS, "--train", sentiment_csv, "--output-dir", whole, "--quiet") == 0
    proc, cut, _ = _compare_scoring_for_minutes(sentiment_csv, tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "compare --resume" in err and "Traceback" not in err, err
    scored = [p for p in cut.glob("*/seed-*") if (p / "compare-row.json").exists()]
    assert scored == []  # the scoring runs stopped rather than finish their attacks
    assert any((p / "model").is_dir() for p in cut.glob("*/seed-*"))  # trained, kept
    # The pool hands a worker its next run before the current one ends; after the stop that
    # run (none's, started last) never began: no checkpoint, no model, no file at all.
    assert [p for p in (cut / "none").rglob("*") if p.is_file()] == []
    assert run("compare", "--resume", cut, "--jobs", "2") == 0
    assert _rows(cut)[0] == _rows(whole)[0]


def _exited(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (a container's init may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads worker states from /proc")
def test_workers_of_a_killed_compare_stop_instead_of_running_on(sentiment_csv, tmp_path):
    """SIGKILL (the OOM killer) gives the compare no chance to pass a signal on, and its lock
    dies with it: its workers, in process groups of their own, notice they are orphans and
    stop, so nothing keeps writing the folders a compare --resume now owns."""
    proc, cut, marks = _compare_scoring_for_minutes(sentiment_csv, tmp_path)
    proc.kill()
    proc.communicate()
    workers = [int(p) for p in os.listdir(marks)]
    assert workers
    deadline = time.monotonic() + 300  # they would score for 10 minutes if nobody stopped them
    while not all(_exited(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_exited(p) for p in workers), "a killed compare's worker is still running"
    assert not list(cut.glob("*/seed-*/compare-row.json"))
    assert run("compare", "--resume", cut, "--jobs", "2") == 0  # scores what was trained


def test_bad_jobs_are_refused(sentiment_csv, tmp_path, capsys):
    assert run("compare", *ARGS, "--train", sentiment_csv, "--output-dir", tmp_path / "x",
               "--jobs", "0") == 2
    assert "--jobs" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_runs_start_longest_first_plain_none_last():
    from advnlp.cli.parallel import start_order

    runs = {("none", 42): 0, ("none", 43): 0, ("typo-defence", 42): 0, ("fgm", 42): 0,
            ("fgm", 43): 0}
    assert start_order(runs) == [("typo-defence", 42), ("fgm", 42), ("fgm", 43), ("none", 42),
                                 ("none", 43)]
