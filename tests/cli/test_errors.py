"""Bad input: one line on stderr, exit code 2, never a traceback."""
import os
import subprocess
import sys

import pytest

from cli_helpers import one_line_error, run, write_csv


def test_missing_file(tmp_path, capsys):
    assert run("train", "--model", "textcnn", "--train", tmp_path / "nope.csv") == 2
    one_line_error(capsys, "not found", "nope.csv")


def test_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\xe9 ok,a\n".encode("latin-1"))
    assert run("train", "--model", "textcnn", "--train", path) == 2
    one_line_error(capsys, "not valid UTF-8")


def test_missing_column_lists_the_columns(sentiment_csv, capsys):
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--text-column", "review") == 2
    one_line_error(capsys, "'review'", "columns are: text, label")


def test_empty_dataset(tmp_path, capsys):
    data = write_csv(tmp_path / "empty.csv", ["text", "label"], [])
    assert run("train", "--model", "textcnn", "--train", data) == 2
    one_line_error(capsys, "no examples")


def test_single_class(tmp_path, capsys):
    data = write_csv(tmp_path / "one.csv", ["text", "label"], [[f"text {i}", "a"] for i in range(30)])
    assert run("train", "--model", "textcnn", "--train", data) == 2
    one_line_error(capsys, "fewer than 2 classes", "'a'")


def test_test_label_never_seen_in_training(sentiment_csv, tmp_path, capsys):
    test = write_csv(tmp_path / "test.csv", ["text", "label"], [["so so", "neutral"], ["good", "pos"]])
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--test", test,
               "--output-dir", tmp_path / "run") == 2
    one_line_error(capsys, "never seen in training", "'neutral'")


@pytest.mark.parametrize("argv, needle", [
    (["--epsilon", "abc"], "invalid float value: 'abc'"),
    (["--epsilon", "0"], "--epsilon must be > 0"),
    (["--epsilon", "-1"], "--epsilon must be > 0"),
    (["--steps", "3"], "--method fgm takes no --steps"),
    (["--method", "pgd", "--steps", "0"], "--steps must be > 0"),
    (["--method", "magic"], "unknown method 'magic'"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "two"], "invalid int value"),
])
def test_bad_parameters(argv, needle, sentiment_csv, tmp_path, capsys):
    assert run("train", "--model", "textcnn", "--train", sentiment_csv,
               "--output-dir", tmp_path / "run", *argv) == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / "run").exists()  # nothing written for a refused command


def test_output_dir_with_a_previous_run(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "textcnn", "--train", sentiment_csv, "--epochs", "1",
            "--output-dir", out, "--quiet"]
    assert run(*args) == 0
    assert run(*args) == 2
    one_line_error(capsys, "holds a previous run", "--overwrite")
    assert run(*args, "--overwrite") == 0


@pytest.mark.parametrize("model, needle", [
    ("empty_dir", "not a model directory"),
    ("no_such_thing", "not textcnn, bilstm and not a directory"),
])
def test_model_that_is_not_a_model(model, needle, sentiment_csv, tmp_path, capsys):
    path = tmp_path / model
    if model == "empty_dir":
        path.mkdir()
    assert run("train", "--model", path, "--train", sentiment_csv, "--output-dir", tmp_path / "r") == 2
    one_line_error(capsys, needle)


def test_broken_model_directory(sentiment_csv, tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    assert run("train", "--model", tmp_path / "m", "--train", sentiment_csv,
               "--output-dir", tmp_path / "r") == 2
    one_line_error(capsys, "cannot load the model")


def test_eval_and_resume_need_a_run(tmp_path, capsys):
    assert run("eval", tmp_path) == 2
    one_line_error(capsys, "not a run directory")
    assert run("train", "--resume", tmp_path / "missing") == 2
    one_line_error(capsys, "not a run directory")


def test_exit_code_and_no_traceback_from_the_console_script(tmp_path):
    # The real entry point, as a shell sees it.
    proc = subprocess.run([sys.executable, "-m", "advnlp.cli", "train", "--model", "textcnn",
                           "--train", str(tmp_path / "missing.csv")],
                          capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "advnlp.cli", "train", "--lr", "fast"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0


def test_unknown_file_format(tmp_path, capsys):
    (tmp_path / "data.xlsx").write_text("x")
    assert run("train", "--model", "textcnn", "--train", tmp_path / "data.xlsx") == 2
    one_line_error(capsys, "unknown format .xlsx")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(sentiment_csv, tmp_path, capsys):
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--device", "cuda",
               "--output-dir", tmp_path / "r") == 2
    one_line_error(capsys, "CUDA is not available")


def test_resume_refuses_options_it_would_ignore(tmp_path, capsys):
    assert run("train", "--resume", tmp_path, "--epochs", "3") == 2
    one_line_error(capsys, "drop --epochs")


@pytest.mark.parametrize("lr", ["nan", "inf", "-inf"])
def test_a_learning_rate_that_is_not_a_finite_number(lr, sentiment_csv, tmp_path, capsys):
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, f"--lr={lr}",
               "--output-dir", tmp_path / "run") == 2
    one_line_error(capsys, "--lr must be a finite number > 0")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--method", "smart", "--epsilon", "inf"], "--epsilon must be > 0"),
    (["--method", "pgd", "--alpha", "nan"], "--alpha must be > 0"),
])
def test_method_parameters_that_are_not_finite(argv, needle, sentiment_csv, tmp_path, capsys):
    assert run("train", "--model", "textcnn", "--train", sentiment_csv,
               "--output-dir", tmp_path / "run", *argv) == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("methods, extra, needle", [
    ("none,pgd", ["--steps", "0"], "--steps must be > 0"),
    ("fgm,fgm", [], "lists fgm more than once"),
    ("none,fgm,none", [], "lists none more than once"),
])
def test_compare_checks_every_method_before_the_first_run(methods, extra, needle, sentiment_csv,
                                                          tmp_path, capsys):
    assert run("compare", "--methods", methods, "--model", "textcnn", "--train", sentiment_csv,
               "--epochs", "1", "--output-dir", tmp_path / "cmp", *extra) == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / "cmp").exists()  # no run trained, no folder made


def test_a_methods_own_argument_check_runs_before_any_file(sentiment_csv, tmp_path, capsys,
                                                           monkeypatch):
    """Arguments only the method's constructor checks (here SMART's steps) are refused
    before the data and model load and before the output folder exists."""
    from advnlp.cli import config

    monkeypatch.setitem(config.METHODS, "smart", (config.SMART, {"steps": "steps", "alpha": "bregman_beta"}))
    assert run("train", "--method", "smart", "--alpha", "2", "--steps", "1", "--model", "textcnn",
               "--train", sentiment_csv, "--output-dir", tmp_path / "run") == 2
    one_line_error(capsys, "--method smart: bregman_beta must be in [0, 1)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, see", [(["--bogus"], "(see advnlp --help)"),
                                       (["train", "--bogus"], "(see advnlp train --help)")])
def test_the_help_hint_names_the_program_once(argv, see, capsys):
    assert run(*argv) == 2
    one_line_error(capsys, see)


def test_eval_given_a_file_instead_of_a_run(sentiment_csv, capsys):
    assert run("eval", sentiment_csv) == 2
    one_line_error(capsys, "is a file; give the run's directory", "--data")


def test_eval_batch_size_zero(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "r"
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--epochs", "1",
               "--output-dir", out, "--quiet") == 0
    capsys.readouterr()
    assert run("eval", out, "--batch-size", "0") == 2
    one_line_error(capsys, "--batch-size must be >= 1")
    assert not (out / "eval.json").exists()


def test_an_empty_label_delimiter(sentiment_csv, tmp_path, capsys):
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--multi-label",
               "--label-delimiter", "", "--output-dir", tmp_path / "r") == 2
    one_line_error(capsys, "--label-delimiter is empty")
    assert not (tmp_path / "r").exists()


def test_eval_on_a_run_that_died_before_its_first_checkpoint(sentiment_csv, tmp_path, capsys):
    """A run killed (-9) in its first epoch has config.json but nothing to resume from:
    the message must not send the user to --resume, which would fail."""
    out = tmp_path / "r"
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--epochs", "1",
               "--output-dir", out, "--quiet") == 0
    capsys.readouterr()
    import shutil
    shutil.rmtree(out / "model")  # as a kill before the end leaves it
    assert run("eval", out) == 2
    err = one_line_error(capsys, "no checkpoint", "--overwrite")
    assert "--resume" not in err
    assert run("train", "--resume", out) == 2  # and indeed there is nothing to resume
    capsys.readouterr()


# -- inputs that used to end in a traceback ----------------------------------------------
def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _copy_model(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_max_length_above_the_models_position_limit(tiny_bert, tmp_path, capsys):
    # Texts longer than the 64 positions of tiny_bert, so the run would reach them.
    data = write_csv(tmp_path / "long.csv", ["text", "label"],
                     [[" ".join(["good" if i % 2 else "bad"] * 90), "pos" if i % 2 else "neg"]
                      for i in range(40)])
    assert run("train", "--model", tiny_bert, "--train", data, "--max-length", "100",
               "--output-dir", tmp_path / "run") == 2
    one_line_error(capsys, "--max-length 100", "64")
    assert not (tmp_path / "run").exists()


def test_a_truncated_model_given_as_model(tiny_bert, sentiment_csv, tmp_path, capsys):
    model = _copy_model(tiny_bert, tmp_path / "m")
    _truncate(model / "model.safetensors")
    assert run("train", "--model", model, "--train", sentiment_csv,
               "--output-dir", tmp_path / "run") == 2
    one_line_error(capsys, str(model / "model.safetensors"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model", ["textcnn", "bert"])
@pytest.mark.parametrize("command", [["eval"], ["attack", "--attack", "embedding"]])
def test_a_run_with_truncated_weights(model, command, tiny_bert, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", "--model", tiny_bert if model == "bert" else model, "--train", sentiment_csv,
               "--epochs", "1", "--output-dir", out, "--quiet") == 0
    capsys.readouterr()
    _truncate(out / "model" / "model.safetensors")
    assert run(command[0], out, *command[1:]) == 2
    one_line_error(capsys, str(out / "model" / "model.safetensors"))


def test_a_classifier_with_another_number_of_labels(tiny_bert, sentiment_csv, tmp_path, capsys):
    from transformers import AutoConfig, BertForSequenceClassification

    three = _copy_model(tiny_bert, tmp_path / "three")  # its tokenizer, then a 3-label head
    config = AutoConfig.from_pretrained(tiny_bert, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(str(three))
    capsys.readouterr()  # what saving printed (a progress bar) is not the command's output
    assert run("train", "--model", three, "--train", sentiment_csv,
               "--output-dir", tmp_path / "run") == 2
    one_line_error(capsys, "3 labels", "2", "base model", "ignore_mismatched_sizes")
    assert not (tmp_path / "run").exists()


def test_an_output_dir_under_a_file(sentiment_csv, tmp_path, capsys):
    assert run("train", "--model", "textcnn", "--train", sentiment_csv,
               "--output-dir", os.path.join(sentiment_csv, "run")) == 2
    one_line_error(capsys, "--output-dir", f"{sentiment_csv} is a file")


def test_compare_output_dir_under_a_file(sentiment_csv, tmp_path, capsys):
    assert run("compare", "--methods", "none,fgm", "--model", "textcnn", "--train", sentiment_csv,
               "--output-dir", os.path.join(sentiment_csv, "cmp", "deeper")) == 2
    one_line_error(capsys, "--output-dir", f"{sentiment_csv} is a file")


def test_an_output_dir_without_write_permission(sentiment_csv, tmp_path, capsys, monkeypatch):
    """The permission check itself (tests run as root, who may write anywhere: the
    operating system's answer is simulated for the locked folder)."""
    from advnlp.cli import rundir

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(rundir.os, "access",
                        lambda p, mode: False if os.path.samefile(p, locked) else real_access(p, mode))
    assert run("train", "--model", "textcnn", "--train", sentiment_csv,
               "--output-dir", locked / "run") == 2
    one_line_error(capsys, "--output-dir", "cannot write")
    assert not (locked / "run").exists()


def _ctrl_c_run(tmp_path, sentiment_csv, monkeypatch, *extra):
    """An interrupted run (a checkpoint, no model/) to --resume."""
    from cli_helpers import ctrl_c_after

    out = tmp_path / "cut"
    with monkeypatch.context() as m:
        ctrl_c_after(m, 1)
        assert run("train", "--train", sentiment_csv, "--epochs", "2", "--output-dir", out,
                   "--quiet", *extra) == 130
    return out


@pytest.mark.parametrize("content", ["not a dict", "another model"])
def test_resume_from_a_checkpoint_of_the_wrong_structure(content, sentiment_csv, tmp_path, capsys,
                                                         monkeypatch):
    import torch

    out = _ctrl_c_run(tmp_path, sentiment_csv, monkeypatch, "--model", "textcnn")
    capsys.readouterr()
    path = out / "checkpoint.pt"
    if content == "not a dict":
        torch.save({"x": 1}, path)
    else:  # a well-formed checkpoint whose weights are another model's
        state = torch.load(path, weights_only=True)
        state["model"] = torch.nn.Linear(3, 2).state_dict()
        torch.save(state, path)
    assert run("train", "--resume", out) == 2
    one_line_error(capsys, str(path), "not a checkpoint of this run")


@pytest.mark.parametrize("broken", ["model.safetensors", "optimizer.pt"])
def test_resume_from_a_trainer_checkpoint_with_truncated_files(broken, tiny_bert, sentiment_csv,
                                                               tmp_path, capsys, monkeypatch):
    import advnlp.cli.engines.hf_trainer as E

    out = tmp_path / "cut"
    calls = {"n": 0}
    step = E._RunTrainer.training_step

    def step_then_sigint(self, *args, **kwargs):
        loss = step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            import signal
            signal.raise_signal(signal.SIGINT)
        return loss

    with monkeypatch.context() as m:
        m.setattr(E._RunTrainer, "training_step", step_then_sigint)
        assert run("train", "--model", tiny_bert, "--train", sentiment_csv, "--epochs", "2",
                   "--engine", "trainer", "--output-dir", out, "--quiet") == 130
    capsys.readouterr()
    checkpoint = E.latest_checkpoint(str(out))
    _truncate(os.path.join(checkpoint, broken))
    # --quiet: the Trainer loads the optimizer after the "resuming at ..." line.
    assert run("train", "--resume", out, "--quiet") == 2
    one_line_error(capsys, checkpoint, broken)


_BAD_CONFIGS = [({"epochs": "two"}, "field 'epochs'"),
                ({"batch_size": None}, "field 'batch_size'"),
                ({"data": 3}, "field 'data'"),
                ({"colour": "red"}, "unknown field 'colour'"),
                ({"data.text_columns": "text"}, "field 'data.text_columns'"),
                ({"data.multi_label": "no"}, "field 'data.multi_label'")]


def _edit_config(run_dir, edit):
    import json

    path = run_dir / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in edit.items():
        if key.startswith("data."):
            cfg["data"][key[5:]] = value
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("edit, needle", _BAD_CONFIGS)
def test_resume_a_run_whose_config_has_wrong_types(edit, needle, sentiment_csv, tmp_path, capsys,
                                                   monkeypatch):
    out = _ctrl_c_run(tmp_path, sentiment_csv, monkeypatch, "--model", "textcnn")
    capsys.readouterr()
    _edit_config(out, edit)
    assert run("train", "--resume", out) == 2
    one_line_error(capsys, str(out / "config.json"), needle)


@pytest.mark.parametrize("edit, needle", _BAD_CONFIGS)
def test_eval_a_run_whose_config_has_wrong_types(edit, needle, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--epochs", "1",
               "--output-dir", out, "--quiet") == 0
    capsys.readouterr()
    _edit_config(out, edit)
    assert run("eval", out) == 2
    one_line_error(capsys, str(out / "config.json"), needle)
    assert not (out / "eval.json").exists()
