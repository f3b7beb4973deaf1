"""Issue 27: nothing the user had is lost or written through, and one process writes a folder.

compare applies train's folder rules to every folder it writes; only advnlp's own files are
ever removed; run folders are locked while written; every output is renamed into place.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from cli_helpers import file_tree, read_json, run, write_csv

ARGS = ["--model", "textcnn", "--epochs", "1", "--batch-size", "16", "--quiet"]
SCORE = ["--attack-samples", "4", "--attack-steps", "1", "--cost-rounds", "0"]


def _compare(csv, out, *extra):
    return run("compare", *ARGS, *SCORE, "--train", csv, "--output-dir", out, *extra)


# -- 1. compare applies train's rules to every folder it writes --------------------------
@pytest.mark.parametrize("seeds", ["1", "2"])
def test_compare_refuses_a_previous_train_run_in_a_method_folder(sentiment_csv, tmp_path, capsys,
                                                                  seeds):
    exp = tmp_path / "exp"
    folder = exp / "fgm" / ("seed-43" if seeds == "2" else "")
    assert run("train", *ARGS, "--train", sentiment_csv, "--method", "fgm",
               "--output-dir", folder) == 0
    before = file_tree(exp)
    assert _compare(sentiment_csv, exp, "--methods", "none,fgm", "--seeds", seeds) == 2
    err = capsys.readouterr().err
    assert "previous run" in err and "--overwrite" in err and "Traceback" not in err
    assert file_tree(exp) == before  # nothing trained, nothing written, nothing replaced


def test_compare_overwrite_replaces_a_train_run_only_when_the_new_one_works(sentiment_csv, tmp_path,
                                                                            capsys, monkeypatch):
    exp = tmp_path / "exp"
    assert run("train", *ARGS, "--train", sentiment_csv, "--method", "fgm",
               "--output-dir", exp / "fgm") == 0
    before = file_tree(exp / "fgm")
    from advnlp.cli.tasks.classification import classify

    def broken(*a, **k):
        raise RuntimeError("out of memory")

    with monkeypatch.context() as m:  # the new compare fails at its first step: old run kept
        m.setattr(classify, "train_step", broken)
        with pytest.raises(RuntimeError):
            _compare(sentiment_csv, exp, "--methods", "fgm", "--overwrite")
    assert file_tree(exp / "fgm") == before
    assert _compare(sentiment_csv, exp, "--methods", "fgm", "--overwrite") == 0
    assert read_json(exp, "fgm", "config.json")["data"]["train"] == str(sentiment_csv)
    assert not (exp / "fgm" / ".replaced").exists()


def test_compare_never_writes_over_a_model_folder(sentiment_csv, tmp_path, capsys):
    exp = tmp_path / "exp"
    (exp / "none").mkdir(parents=True)
    hf_config = json.dumps({"model_type": "bert", "hidden_size": 8})
    (exp / "none" / "config.json").write_text(hf_config, encoding="utf-8")
    for extra in ([], ["--overwrite"]):
        assert _compare(sentiment_csv, exp, "--methods", "none,fgm", *extra) == 2
        assert "not an advnlp run" in capsys.readouterr().err
        assert (exp / "none" / "config.json").read_text(encoding="utf-8") == hf_config
        assert not (exp / "fgm").exists()


# -- 2. only advnlp's own files are ever removed ------------------------------------------
def test_compare_resume_keeps_the_users_files_in_a_run_that_starts_again(sentiment_csv, tmp_path,
                                                                        capsys, monkeypatch):
    out = tmp_path / "u2"
    from advnlp.cli import commands

    real_start, calls = commands._start, {"n": 0}

    def stop_before_fgm_checkpoints(cfg, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # fgm's folder made, then stopped before its first checkpoint
            os.makedirs(cfg.output_dir, exist_ok=True)
            (tmp_path / "u2" / "fgm" / "notes.txt").write_text("mine", encoding="utf-8")
            raise KeyboardInterrupt
        return real_start(cfg, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(commands, "_start", stop_before_fgm_checkpoints)
        assert _compare(sentiment_csv, out, "--methods", "none,fgm") == 130
    assert (out / "none" / "compare-row.json").is_file()
    assert run("compare", "--resume", out, "--quiet") == 0
    assert (out / "fgm" / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert (out / "fgm" / "model").is_dir()


def test_compare_overwrite_keeps_the_users_files(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "ow"
    assert _compare(sentiment_csv, out, "--methods", "none,fgm") == 0
    (out / "none" / "mynotes.txt").write_text("mine", encoding="utf-8")
    (out / "fgm" / "mynotes.txt").write_text("also mine", encoding="utf-8")
    assert _compare(sentiment_csv, out, "--methods", "none", "--overwrite") == 0
    assert (out / "none" / "mynotes.txt").read_text(encoding="utf-8") == "mine"
    # fgm is no longer compared: advnlp's files there are gone, the user's stay
    assert sorted(os.listdir(out / "fgm")) == ["mynotes.txt"]


# -- 3. one writer per run folder ---------------------------------------------------------
HOLD = textwrap.dedent("""
    import sys, time
    from advnlp.cli.lock import locked
    with locked(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


@pytest.fixture
def holder():
    """``hold(folder)``: another process that holds ``folder``'s lock (its pid returned)."""
    procs = []

    def hold(folder):
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                             text=True)
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p.pid

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_a_second_writer_of_a_run_folder_is_refused_naming_the_holder(sentiment_csv, tmp_path,
                                                                     capsys, holder):
    out = tmp_path / "run"
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", out) == 0
    before = file_tree(out)
    pid = holder(out)
    capsys.readouterr()
    for argv in (["train", *ARGS, "--train", sentiment_csv, "--output-dir", out, "--overwrite"],
                 ["eval", out, "--attack-samples", "2"],
                 ["attack", out, "--attack", "char", "--limit", "2"]):
        assert run(*argv) == 2, argv
        err = capsys.readouterr().err
        assert f"pid {pid}" in err and err.count("\n") == 1 and "Traceback" not in err
    assert file_tree(out) == {**before, ".advnlp.lock": str(pid).encode()}


def test_train_into_a_folder_of_a_running_compare_is_refused(sentiment_csv, tmp_path, capsys,
                                                            holder):
    out = tmp_path / "cmp"
    assert _compare(sentiment_csv, out, "--methods", "none") == 0
    before = file_tree(out / "none")
    pid = holder(out)  # as a compare working on cmp holds it
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", out / "none",
               "--overwrite") == 2
    assert f"pid {pid}" in capsys.readouterr().err
    assert file_tree(out / "none") == before
    assert run("compare", "--resume", out) == 2


def test_a_lock_left_by_a_killed_process_is_taken_over(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    p.kill()  # kill -9: no clean-up ran, the lock file and its pid stay
    p.wait()
    assert (out / ".advnlp.lock").read_text() == str(p.pid)
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", out) == 0
    assert (out / "model").is_dir() and not (out / ".advnlp.lock").exists()


def test_a_lock_is_reentrant_within_a_process_and_leaves_no_trace(tmp_path):
    from advnlp.cli.errors import InputError
    from advnlp.cli.lock import check_unlocked, locked

    with locked(tmp_path / "a"):
        with locked(tmp_path / "a"), locked(tmp_path / "a" / "b"):
            check_unlocked(tmp_path / "a" / "b")  # our own locks do not refuse us
    assert not (tmp_path / "a").exists()  # made only for the lock: gone with it
    (tmp_path / "c").mkdir()
    with pytest.raises(InputError):
        with locked(tmp_path / "c" / "file"):
            (tmp_path / "c" / "file" / "x").write_text("x")
            raise InputError("the block failed")
    assert os.listdir(tmp_path / "c" / "file") == ["x"]  # what was written stays


# -- 4. no output is written through a link -----------------------------------------------
def test_no_output_is_written_through_a_symlink(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me", encoding="utf-8")
    out.mkdir()
    names = ("plot.png", "metrics.json", "checkpoint.pt", "model")
    for name in names:
        (out / name).symlink_to(precious)
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", out) == 2  # not a run
    for name in names:
        (out / name).unlink()
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", out) == 0
    for name in ("adversarial-char.csv", "attack-char.json", "eval.json", "plot.png"):
        target = out / name
        if target.exists():
            target.unlink()
        target.symlink_to(precious)
    assert run("attack", out, "--attack", "char", "--limit", "3") == 0
    assert run("eval", out, "--attack-samples", "2") == 0
    assert precious.read_text(encoding="utf-8") == "keep me"
    for name in ("adversarial-char.csv", "attack-char.json", "eval.json"):
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0


def test_a_model_folder_link_is_replaced_not_written_through(tmp_path):
    from advnlp.cli.files import atomic_dir, write_json

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "weights").write_text("precious", encoding="utf-8")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model").symlink_to(outside, target_is_directory=True)
    with atomic_dir(run_dir / "model") as staged:
        write_json(os.path.join(staged, "weights"), {"new": 1})
    assert (outside / "weights").read_text(encoding="utf-8") == "precious"
    assert not (run_dir / "model").is_symlink()
    assert read_json(run_dir, "model", "weights") == {"new": 1}
    assert sorted(os.listdir(run_dir)) == ["model"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from advnlp.cli.files import atomic_path, write_json

    write_json(tmp_path / "x.json", {"old": 1})
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "x.json") as tmp:
            with open(tmp, "w") as f:
                f.write("{half")
            raise ValueError("crash mid-write")
    assert read_json(tmp_path, "x.json") == {"old": 1}
    assert os.listdir(tmp_path) == ["x.json"]


# -- 7, 8. compare checks early; a bad folder or row is one line --------------------------
def test_compare_checks_every_method_against_the_model_before_training(sentiment_csv, tmp_path,
                                                                      capsys):
    out = tmp_path / "cmp"
    assert _compare(sentiment_csv, out, "--methods", "none,yopo") == 2
    err = capsys.readouterr().err
    assert "--method yopo" in err and "layer_list" not in err and "Traceback" not in err
    assert not out.exists()  # none was not trained first


@pytest.mark.parametrize("target", ["file", "/dev/null"])
def test_compare_resume_of_a_file_is_one_line(sentiment_csv, tmp_path, capsys, target):
    path = sentiment_csv if target == "file" else target
    assert run("compare", "--resume", path) == 2
    err = capsys.readouterr().err
    assert err.startswith("advnlp: error:") and err.count("\n") == 1 and "not a folder" in err


def test_a_truncated_compare_row_is_one_line(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert _compare(sentiment_csv, out, "--methods", "none,fgm") == 0
    row = out / "fgm" / "compare-row.json"
    row.write_text(row.read_text(encoding="utf-8")[:20], encoding="utf-8")
    assert run("compare", "--resume", out, "--quiet") == 2
    err = capsys.readouterr().err
    assert str(row) in err and "unreadable" in err and "Traceback" not in err


# -- 11. the smaller things ---------------------------------------------------------------
def test_quiet_hides_progress_not_warnings(tiny_bert, tmp_path, capsys):
    # 2 of every 5 words are outside the tiny BERT's vocabulary: a tokenizer warning
    rows = [[f"great film zzq{i} qqz{i} good" if i % 2 else f"bad plot zzq{i} qqz{i} awful",
             "pos" if i % 2 else "neg"] for i in range(40)]
    csv = write_csv(tmp_path / "unk.csv", ["text", "label"], rows)
    common = ["train", "--model", tiny_bert, "--train", csv, "--epochs", "1", "--method", "none"]
    assert run(*common, "--output-dir", tmp_path / "a", "--quiet") == 0
    err = capsys.readouterr().err
    assert "warning: the tokenizer reads" in err and "epoch 1" not in err


@pytest.mark.parametrize("flags, needs", [
    (["--online-fraction", "0.3"], "--online-attack"),
    (["--augment-every", "2"], "--augment-with-attack"),
    (["--augment-samples", "8"], "--augment-with-attack"),
    (["--label-delimiter", ";"], "--multi-label"),
])
@pytest.mark.parametrize("command", ["train", "compare"])
def test_an_option_without_the_option_it_needs_is_refused(sentiment_csv, tmp_path, capsys, flags,
                                                         needs, command):
    out = tmp_path / "out"
    assert run(command, *ARGS, "--train", sentiment_csv, "--output-dir", out, *flags) == 2
    err = capsys.readouterr().err
    assert f"goes with {needs}" in err and not out.exists()


def test_comma_lists_follow_one_rule(sentiment_csv, tmp_path, capsys):
    """A trailing comma is dropped in every list option (radii and attacks alike)."""
    out = tmp_path / "cmp"
    assert _compare(sentiment_csv, out, "--methods", "none,", "--attack", "char,",
                    "--attack-limit", "3", "--attack-epsilon", "0.5,") == 0
    result = read_json(out, "compare.json")
    assert result["attack"]["epsilons"] == [0.5]
    assert result["discrete_attack"]["attacks"] == ["char"]


def test_sigterm_while_compare_scores_says_how_to_resume(sentiment_csv, tmp_path, capsys,
                                                         monkeypatch):
    out = tmp_path / "cmp"
    from advnlp.cli.tasks.classification import commands  # where a classifier's row is scored

    real = commands._scores

    def terminated(*a, **k):
        signal.raise_signal(signal.SIGTERM)
        return real(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(commands, "_scores", terminated)
        assert _compare(sentiment_csv, out, "--methods", "none,fgm") == 143
    err = capsys.readouterr().err
    assert f"advnlp compare --resume {out}" in err and "SIGTERM" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again
    assert run("compare", "--resume", out, "--quiet") == 0
    assert [r["method"] for r in read_json(out, "compare.json")["methods"]] == ["none", "fgm"]


@pytest.mark.parametrize("flags", [["--method", "neftune", "--epsilon", "1e30"],
                                   ["--method", "fgm", "--relative-epsilon", "--epsilon", "5"]])
def test_a_perturbation_larger_than_the_text_is_warned_even_when_quiet(sentiment_csv, tmp_path,
                                                                       capsys, flags):
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", tmp_path / "r", *flags) == 0
    err = capsys.readouterr().err
    assert "warning: --epsilon" in err and "noise" in err


def test_a_usual_perturbation_is_not_warned(sentiment_csv, tmp_path, capsys):
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", tmp_path / "r",
               "--method", "fgm", "--epsilon", "1.0") == 0
    assert "warning" not in capsys.readouterr().err


def test_written_files_keep_the_usual_permissions(tmp_path):
    """Renamed-into-place files and folders get the mode open()/mkdir() give under the
    umask, not mkstemp's private 0600 (a shared run folder stays readable)."""
    from advnlp.cli.files import atomic_dir, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {})
        with atomic_dir(tmp_path / "model") as staged:
            write_json(os.path.join(staged, "w.json"), {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755
