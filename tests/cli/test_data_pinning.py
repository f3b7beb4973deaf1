"""A run remembers its data files by absolute path, size and sha256: --resume, eval and
attack never silently use other data."""
import hashlib
import json
import os
import shutil

from cli_helpers import ctrl_c_after, read_json, run, write_csv

ARGS = ["--model", "textcnn", "--epochs", "2", "--batch-size", "16", "--quiet"]


def _interrupted_run(monkeypatch, cwd, data_name="data.csv"):
    """A run started in ``cwd`` with a *relative* --train path, stopped after one step."""
    monkeypatch.chdir(cwd)
    with monkeypatch.context() as m:
        ctrl_c_after(m, 1)
        assert run("train", *ARGS, "--train", data_name, "--output-dir", "run") == 130
    return cwd / "run"


def test_config_stores_absolute_paths_and_fingerprints(sentiment_csv, tmp_path, monkeypatch):
    shutil.copy(sentiment_csv, tmp_path / "data.csv")
    out = _interrupted_run(monkeypatch, tmp_path)
    data = read_json(out, "config.json")["data"]
    path = str(tmp_path / "data.csv")
    assert data["train"] == path
    with open(path, "rb") as f:  # an independent hash of the file
        want = {"size": os.path.getsize(path), "sha256": hashlib.sha256(f.read()).hexdigest()}
    assert data["fingerprints"] == {path: want}


def test_resume_from_another_directory_uses_the_runs_own_file(sentiment_csv, tmp_path, monkeypatch,
                                                             capsys):
    first, elsewhere = tmp_path / "a", tmp_path / "b"
    first.mkdir(), elsewhere.mkdir()
    shutil.copy(sentiment_csv, first / "data.csv")
    # A different file of the same relative name where the resume is launched.
    write_csv(elsewhere / "data.csv", ["text", "label"], [[f"w{i}", "xy"[i % 2]] for i in range(60)])
    out = _interrupted_run(monkeypatch, first)
    monkeypatch.chdir(elsewhere)
    assert run("train", "--resume", out) == 0
    assert read_json(out, "metrics.json")["train_examples"] == 96  # 120 rows less the splits


def test_a_changed_training_file_is_refused_on_resume(sentiment_csv, tmp_path, monkeypatch, capsys):
    shutil.copy(sentiment_csv, tmp_path / "data.csv")
    out = _interrupted_run(monkeypatch, tmp_path)
    lines = (tmp_path / "data.csv").read_bytes().splitlines(keepends=True)
    # The same rows in another order: same size, other content.
    (tmp_path / "data.csv").write_bytes(b"".join([lines[0]] + lines[1:][::-1]))
    capsys.readouterr()
    assert run("train", "--resume", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advnlp: error:") and "\n" not in err
    assert str(tmp_path / "data.csv") in err and "content changed" in err
    assert "--allow-changed-data" in err
    assert not (out / "metrics.json").exists()
    assert run("train", "--resume", out, "--allow-changed-data") == 0


def test_eval_and_attack_refuse_a_changed_or_missing_test_file(sentiment_csv, tmp_path, capsys):
    data = shutil.copy(sentiment_csv, tmp_path / "data.csv")
    out = tmp_path / "run"
    assert run("train", *ARGS, "--epochs", "1", "--train", data, "--output-dir", out) == 0
    assert run("eval", out) == 0
    before = (out / "eval.json").read_bytes()
    with open(data, "a", encoding="utf-8") as f:
        f.write("an extra row,pos\n")
    capsys.readouterr()
    assert run("eval", out) == 2
    assert "size changed" in capsys.readouterr().err
    assert (out / "eval.json").read_bytes() == before  # not overwritten by a refused eval
    assert run("attack", out, "--attack", "char", "--limit", "2") == 2
    assert run("eval", out, "--allow-changed-data") == 0
    assert run("eval", out, "--data", data) == 0  # a file named explicitly is the user's choice
    os.remove(data)
    capsys.readouterr()
    assert run("eval", out) == 2
    assert "data file is gone" in capsys.readouterr().err


def test_allow_changed_data_only_with_resume(sentiment_csv, tmp_path, capsys):
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", tmp_path / "r",
               "--allow-changed-data") == 2
    assert "goes with --resume" in capsys.readouterr().err


def test_configs_without_fingerprints_still_resume(sentiment_csv, tmp_path, monkeypatch):
    shutil.copy(sentiment_csv, tmp_path / "data.csv")
    out = _interrupted_run(monkeypatch, tmp_path)
    cfg = read_json(out, "config.json")
    del cfg["data"]["fingerprints"]  # as written by advnlp before this check existed
    (out / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    assert run("train", "--resume", out) == 0
