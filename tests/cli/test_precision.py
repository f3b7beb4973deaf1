"""--precision bf16 / fp16: autocast forward passes in both engines, fp16 with loss scaling."""
import os

import pytest
import torch
from safetensors.torch import load_file

import advnlp.cli.run as T
import advnlp.cli.tasks.classification.run as CR
from cli_helpers import ctrl_c_after, read_json, run


def weights(run_dir):
    return load_file(os.path.join(run_dir, "model", "model.safetensors"))


def args(model, data, out, *extra):
    return ["train", "--model", model, "--train", data, "--epochs", 2, "--lr", 0.01,
            "--batch-size", 16, "--output-dir", out, "--quiet", *extra]


@pytest.fixture
def training_dtypes(monkeypatch):
    """The dtype of an encoder Linear's output in every training-mode forward pass."""
    seen = []
    build = CR.build

    def build_and_watch(*a, **kw):
        clf = build(*a, **kw)
        layer = clf.model.bert.encoder.layer[0].intermediate.dense
        layer.register_forward_hook(lambda m, i, o: seen.append(o.dtype) if m.training else None)
        return clf

    monkeypatch.setattr(CR, "build", build_and_watch)
    return seen


@pytest.mark.parametrize("engine", ["loop", "trainer"])
def test_bf16_runs_every_training_pass_in_bf16(tmp_path, sentiment_csv, tiny_bert, training_dtypes,
                                               engine):
    out = tmp_path / engine
    assert run(*args(tiny_bert, sentiment_csv, out, "--method", "fgm", "--precision", "bf16",
                     "--engine", engine)) == 0
    # 96 examples / 16 = 6 steps an epoch, 2 forward passes (clean, adversarial) a step
    assert training_dtypes == [torch.bfloat16] * 24
    assert read_json(out, "config.json")["precision"] == "bf16"
    assert all(torch.isfinite(w).all() for w in weights(out).values())


def test_fp16_scales_the_loss_and_resumes_exactly(tmp_path, monkeypatch, sentiment_csv, tiny_bert,
                                                  training_dtypes):
    """fp16 (CPU autocast here): the GradScaler's state travels in the checkpoint, so an
    interrupted run resumes to the uninterrupted run's weights."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    extra = ["--method", "fgm", "--precision", "fp16"]
    assert run(*args(tiny_bert, sentiment_csv, whole, *extra)) == 0
    assert set(training_dtypes) == {torch.float16}
    with monkeypatch.context() as m:
        ctrl_c_after(m, 4)
        assert run(*args(tiny_bert, sentiment_csv, cut, *extra)) == 130
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    assert run("train", "--resume", cut, "--quiet") == 0
    want, got = weights(whole), weights(cut)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=lambda msg: f"{k}: {msg}")


def test_fp16_overflow_skips_the_step_and_the_schedule(tmp_path, sentiment_csv, tiny_bert, monkeypatch):
    """An inf gradient: the scaler skips the optimizer step, halves its scale, and the
    learning-rate schedule does not advance for that step."""
    scalers = []
    init = T.Run.__init__

    def keep(self, *a, **kw):
        init(self, *a, **kw)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)  # overflows at once
        scalers.append(self)

    monkeypatch.setattr(T.Run, "__init__", keep)
    out = tmp_path / "r"
    assert run(*args(tiny_bert, sentiment_csv, out, "--precision", "fp16", "--method", "none",
                     "--epochs", 1)) == 0
    trainer = scalers[0]
    skipped = 100 - torch.log2(torch.tensor(trainer.scaler.get_scale())).item()
    assert skipped >= 1
    assert trainer.scheduler.last_epoch == 6 - skipped  # 6 steps, the skipped ones not counted


def test_fp16_with_the_trainer_engine_on_cpu_is_refused(tmp_path, sentiment_csv, tiny_bert, capsys):
    assert run(*args(tiny_bert, sentiment_csv, tmp_path / "r", "--precision", "fp16",
                     "--engine", "trainer")) == 2
    err = capsys.readouterr().err
    assert "needs a GPU" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
