"""--overwrite replaces an advnlp run only when the new one works, and nothing else ever."""
import os

import pytest

from cli_helpers import ctrl_c_after, file_tree, run, write_csv

ARGS = ["--model", "textcnn", "--epochs", "1", "--batch-size", "16", "--quiet"]


@pytest.fixture
def old_run(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", out) == 0
    capsys.readouterr()
    return out


def test_bad_input_during_an_overwrite_keeps_the_old_run(old_run, tmp_path, capsys):
    before = file_tree(old_run)
    # One class only: refused while the run is being built, after the folder was checked.
    one_class = write_csv(tmp_path / "one.csv", ["text", "label"], [[f"text {i}", "a"] for i in range(30)])
    assert run("train", *ARGS, "--train", one_class, "--output-dir", old_run, "--overwrite") == 2
    assert "fewer than 2 classes" in capsys.readouterr().err
    assert file_tree(old_run) == before
    missing = write_csv(tmp_path / "cols.csv", ["body", "label"], [["x", "a"], ["y", "b"]])
    assert run("train", *ARGS, "--train", missing, "--output-dir", old_run, "--overwrite") == 2
    assert file_tree(old_run) == before


def test_an_error_in_a_fresh_folder_leaves_no_folder(tmp_path, capsys):
    one_class = write_csv(tmp_path / "one.csv", ["text", "label"], [[f"text {i}", "a"] for i in range(30)])
    assert run("train", *ARGS, "--train", one_class, "--output-dir", tmp_path / "new") == 2
    assert not (tmp_path / "new").exists()


def test_a_crash_during_an_overwrite_puts_the_old_run_back(old_run, sentiment_csv, monkeypatch):
    from advnlp.cli.tasks.classification import classify

    before = file_tree(old_run)
    step, calls = classify.train_step, {"n": 0}

    def crash_at_two(*a):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory (simulated)")
        return step(*a)

    monkeypatch.setattr(classify, "train_step", crash_at_two)
    with pytest.raises(RuntimeError, match="simulated"):
        run("train", *ARGS, "--train", sentiment_csv, "--output-dir", old_run, "--overwrite")
    assert file_tree(old_run) == before


def test_a_model_folder_is_never_written_over(tiny_bert, sentiment_csv, capsys):
    before = file_tree(tiny_bert)
    for extra in ([], ["--overwrite"]):
        assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", tiny_bert, *extra) == 2
        err = capsys.readouterr().err
        assert "'config.json', which is not an advnlp run's" in err and "Traceback" not in err
    assert file_tree(tiny_bert) == before


def test_an_interrupted_overwrite_leaves_no_old_model_to_score(old_run, sentiment_csv, monkeypatch,
                                                               capsys):
    with monkeypatch.context() as m:
        ctrl_c_after(m, 1)
        assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", old_run,
                   "--overwrite") == 130
    assert (old_run / "checkpoint.pt").exists() and not (old_run / "model").exists()
    capsys.readouterr()
    assert run("eval", old_run) == 2  # the old model is not scored on the new run's data
    assert "--resume" in capsys.readouterr().err
    assert run("train", "--resume", old_run) == 0
    assert (old_run / "model").is_dir() and not (old_run / ".replaced").exists()


def test_a_finished_overwrite_leaves_nothing_of_the_old_run(old_run, sentiment_csv, capsys):
    assert run("attack", old_run, "--attack", "char", "--limit", "3") == 0
    (old_run / "notes.txt").write_text("mine", encoding="utf-8")  # the user's own file
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", old_run, "--overwrite") == 0
    names = sorted(os.listdir(old_run))
    assert not [n for n in names if n.startswith(("attack-", "adversarial-", ".replaced"))], names
    assert (old_run / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_a_compare_overwrite_drops_the_methods_it_no_longer_runs(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "cmp"
    common = ["compare", *ARGS, "--train", sentiment_csv, "--output-dir", out, "--attack-samples", "4"]
    assert run(*common, "--methods", "none,fgm") == 0
    assert run(*common, "--methods", "none", "--overwrite") == 0
    assert sorted(os.listdir(out)) == ["compare-config.json", "compare.json", "compare.png", "none"]


def _crash_at(monkeypatch, n):
    """The n-th training step raises, as an out-of-memory error would."""
    from advnlp.cli.tasks.classification import classify

    step, calls = classify.train_step, {"n": 0}

    def crash(*a):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("out of memory (simulated)")
        return step(*a)

    monkeypatch.setattr(classify, "train_step", crash)


def test_a_crash_after_a_checkpoint_keeps_it_for_resume(sentiment_csv, tmp_path, monkeypatch):
    out = tmp_path / "new"
    with monkeypatch.context() as m:
        _crash_at(m, 8)  # 6 steps an epoch: epoch 1's checkpoint exists
        with pytest.raises(RuntimeError, match="simulated"):
            run("train", *ARGS, "--epochs", "2", "--train", sentiment_csv, "--output-dir", out)
    assert (out / "checkpoint.pt").is_file()
    assert run("train", "--resume", out) == 0


def test_a_crash_in_a_compare_keeps_the_methods_that_finished(sentiment_csv, tmp_path, monkeypatch,
                                                             capsys):
    out = tmp_path / "cmp"
    argv = ["compare", *ARGS, "--methods", "none,fgm", "--train", sentiment_csv, "--output-dir", out,
            "--attack-samples", "4"]
    with monkeypatch.context() as m:
        _crash_at(m, 6 + 2)  # inside fgm, after none finished
        with pytest.raises(RuntimeError, match="simulated"):
            run(*argv)
    finished = out / "none" / "model" / "model.safetensors"
    stamp = finished.stat().st_mtime_ns
    assert run("compare", "--resume", out, "--quiet") == 0
    assert finished.stat().st_mtime_ns == stamp


def test_files_that_only_look_like_advnlps_are_never_moved(old_run, sentiment_csv, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tmp").write_text("draft", encoding="utf-8")
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", mine) == 0
    assert (mine / "thesis.tmp").read_text(encoding="utf-8") == "draft"
    # A separate run the user keeps inside an older run's folder survives its --overwrite.
    nested = old_run / "ablation"
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", nested) == 0
    before = file_tree(nested)
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", old_run, "--overwrite") == 0
    assert file_tree(nested) == before


def test_a_second_overwrite_does_not_drop_the_run_the_first_one_kept(old_run, sentiment_csv,
                                                                     monkeypatch, capsys):
    with monkeypatch.context() as m:
        ctrl_c_after(m, 1)
        assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", old_run,
                   "--overwrite") == 130
    kept = file_tree(old_run / ".replaced")
    capsys.readouterr()
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", old_run, "--overwrite") == 2
    assert ".replaced/" in capsys.readouterr().err
    assert file_tree(old_run / ".replaced") == kept


def test_overwriting_a_compare_from_before_plans_moves_its_method_runs(sentiment_csv, tmp_path):
    """A compare folder written before compare-config.json existed lists its methods only in
    compare.json; --overwrite must still move their runs aside, not train over them."""
    out = tmp_path / "cmp"
    common = ["compare", *ARGS, "--train", sentiment_csv, "--output-dir", out, "--attack-samples", "4"]
    assert run(*common, "--methods", "none") == 0
    (out / "compare-config.json").unlink()
    (out / "none" / "eval.json").write_text("{}", encoding="utf-8")  # a file only the old run had
    assert run(*common, "--methods", "none", "--overwrite") == 0
    assert not (out / "none" / "eval.json").exists()
