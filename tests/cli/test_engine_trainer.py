"""advnlp train --engine trainer: the same run with Hugging Face's Trainer as the loop."""
import os
import signal

import pytest
import torch

pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

import advnlp.cli.engines.hf_trainer as E  # noqa: E402
from cli_helpers import read_json, run, sigterm_after_first_step  # noqa: E402


def weights(run_dir):
    return load_file(os.path.join(run_dir, "model", "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], msg=lambda m: f"{k}: {m}")


def train_args(model, data, out, *extra):
    return ["train", "--model", model, "--train", data, "--epochs", 2, "--lr", 0.01,
            "--batch-size", 16, "--output-dir", out, "--quiet", *extra]


@pytest.mark.parametrize("method,precision", [("none", "fp32"), ("fgm", "fp32"), ("pgd", "fp32"),
                                              ("awp", "fp32"), ("pgd", "bf16")])
def test_both_engines_train_the_same_weights(tmp_path, sentiment_csv, bert_without_dropout, method,
                                             precision):
    """Same data order, optimizer, schedule, clipping, autocast and adversarial step: the same run."""
    loop, hf = tmp_path / "loop", tmp_path / "trainer"
    extra = ["--method", method, "--precision", precision]
    assert run(*train_args(bert_without_dropout, sentiment_csv, loop, *extra)) == 0
    assert run(*train_args(bert_without_dropout, sentiment_csv, hf, *extra, "--engine", "trainer")) == 0
    assert_same_weights(loop, hf)
    a, b = read_json(loop, "metrics.json"), read_json(hf, "metrics.json")
    for ea, eb in zip(a["epochs"], b["epochs"], strict=True):
        assert eb["steps"] == ea["steps"] == len(eb["step_losses"]) == 6  # 96 examples / 16
        torch.testing.assert_close(eb["step_losses"], ea["step_losses"])
        assert eb["validation"] == ea["validation"]
    assert b["final"] == a["final"]
    assert read_json(hf, "config.json")["engine"] == "trainer"
    assert not os.path.exists(hf / "checkpoints")  # removed once model/ is written
    # A trained model really moved (the equality above is not of two untouched models).
    init = load_file(os.path.join(bert_without_dropout, "model.safetensors"))
    moved = weights(hf)["bert.encoder.layer.0.output.dense.weight"]
    assert (moved - init["encoder.layer.0.output.dense.weight"]).abs().max() > 1e-3


def test_methods_differ_under_the_trainer_engine(tmp_path, sentiment_csv, bert_without_dropout):
    """The adversary is really in the Trainer's step: fgm's weights are not none's."""
    for m in ("none", "fgm"):
        assert run(*train_args(bert_without_dropout, sentiment_csv, tmp_path / m, "--method", m,
                               "--engine", "trainer", "--epochs", 1)) == 0
    a, b = weights(tmp_path / "none"), weights(tmp_path / "fgm")
    assert max((a[k] - b[k]).abs().max().item() for k in a) > 1e-4


@pytest.mark.parametrize("method", ["vat", "smart", "freelb"])
def test_trainer_engine_multi_label(tmp_path, multilabel_jsonl, tiny_bert, method):
    """Consistency methods get the model's BCE loss and logits; the run evaluates and saves."""
    out = tmp_path / "run"
    assert run("train", "--model", tiny_bert, "--train", multilabel_jsonl, "--label-column", "tags",
               "--multi-label", "--method", method, "--engine", "trainer", "--epochs", 1,
               "--output-dir", out, "--quiet") == 0
    metrics = read_json(out, "metrics.json")
    assert "micro_f1" in metrics["final"]["test"]
    losses = metrics["epochs"][0]["step_losses"]
    assert len(losses) == metrics["epochs"][0]["steps"] and all(l > 0 for l in losses)
    assert run("eval", out, "--attack-samples", 8) == 0


def interrupt_after(monkeypatch, n):
    """A real SIGINT to this process during the n-th Trainer step."""
    calls = {"n": 0}
    step = E._RunTrainer.training_step

    def step_then_sigint(self, *args, **kwargs):
        loss = step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(E._RunTrainer, "training_step", step_then_sigint)


@pytest.mark.parametrize("stop_at", [4, 6], ids=["mid-epoch", "last-step-of-epoch"])
def test_ctrl_c_then_resume_reaches_the_uninterrupted_weights(tmp_path, monkeypatch, sentiment_csv,
                                                              tiny_bert, capsys, stop_at):
    """With dropout on: the Trainer's checkpoint restores the RNG, the skip and the schedule."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = ["--method", "fgm", "--engine", "trainer"]
    assert run(*train_args(tiny_bert, sentiment_csv, whole, *args)) == 0
    with monkeypatch.context() as m:
        interrupt_after(m, stop_at)
        assert run(*train_args(tiny_bert, sentiment_csv, cut, *args)) == 130
    err = capsys.readouterr().err
    assert f"--resume {cut}" in err
    saved = E.latest_checkpoint(str(cut))
    assert saved is not None and saved.endswith(f"checkpoint-{stop_at}")
    assert os.listdir(os.path.dirname(saved)) == [f"checkpoint-{stop_at}"]
    state = read_json(saved, E.STATE_FILE)
    if stop_at == 6:  # the epoch closed (validated) before the checkpoint
        assert (state["epoch"], state["step"], len(state["history"])) == (1, 0, 1)
    else:
        assert (state["epoch"], state["step"], len(state["partial"]["losses"])) == (0, 4, 4)
    assert run("train", "--resume", cut, "--quiet") == 0
    assert_same_weights(whole, cut)
    a, b = read_json(whole, "metrics.json"), read_json(cut, "metrics.json")
    assert [e["step_losses"] for e in a["epochs"]] == [e["step_losses"] for e in b["epochs"]]
    assert b["final"] == a["final"]


def test_a_crash_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch, sentiment_csv,
                                                         tiny_bert):
    """A crash while the Trainer writes leaves only the staging folder: --resume uses the
    newest complete checkpoint, the leftovers are cleared at the next save, and the run
    still ends with the uninterrupted weights."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run(*train_args(tiny_bert, sentiment_csv, whole, "--engine", "trainer")) == 0
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        assert run(*train_args(tiny_bert, sentiment_csv, cut, "--engine", "trainer")) == 130
    half = cut / "checkpoints" / ".staging" / "checkpoint-5"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"half")
    (half / "rng_state_7.pth").write_bytes(b"stale")
    assert E.latest_checkpoint(str(cut)).endswith("checkpoint-3")
    saved = []
    save = E._RunTrainer._save_checkpoint

    def save_and_look(self, *a, **kw):
        save(self, *a, **kw)
        saved.append(sorted(os.listdir(cut / "checkpoints")))
        saved.append(sorted(os.listdir(cut / "checkpoints" / f"checkpoint-{self.state.global_step}")))

    with monkeypatch.context() as m:
        m.setattr(E._RunTrainer, "_save_checkpoint", save_and_look)
        assert run("train", "--resume", cut, "--quiet") == 0
    assert saved[0] == ["checkpoint-6"] and "rng_state_7.pth" not in saved[1]
    assert_same_weights(whole, cut)


def test_a_staging_link_is_not_written_through(tmp_path, monkeypatch, sentiment_csv, tiny_bert):
    """A link planted as the checkpoints' staging folder is removed, not followed (issue 27)."""
    cut, outside = tmp_path / "cut", tmp_path / "outside"
    (outside / "checkpoint-6").mkdir(parents=True)  # the name the resumed run saves next
    (outside / "keep.txt").write_text("mine", encoding="utf-8")
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        assert run(*train_args(tiny_bert, sentiment_csv, cut, "--engine", "trainer")) == 130
    (cut / "checkpoints" / ".staging").symlink_to(outside, target_is_directory=True)
    assert run("train", "--resume", cut, "--quiet") == 0
    assert sorted(os.listdir(outside)) == ["checkpoint-6", "keep.txt"]
    assert os.listdir(outside / "checkpoint-6") == []
    assert (outside / "keep.txt").read_text(encoding="utf-8") == "mine"


@pytest.mark.parametrize("extra,message", [
    (["--model", "textcnn"], "--engine trainer trains Hugging Face models"),
    (["--augment-with-attack", "char"], "only --engine loop does"),
    (["--device", "cuda:1"], "CUDA_VISIBLE_DEVICES=1"),
])
def test_trainer_engine_refusals(tmp_path, sentiment_csv, tiny_bert, capsys, extra, message):
    argv = ["train", "--model", tiny_bert, "--train", sentiment_csv, "--engine", "trainer",
            "--output-dir", tmp_path / "r", "--quiet", *extra]
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "r" / "config.json")


def test_resume_refuses_a_different_engine_flag(tmp_path, monkeypatch, sentiment_csv, tiny_bert, capsys):
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        assert run(*train_args(tiny_bert, sentiment_csv, cut, "--engine", "trainer")) == 130
    assert run("train", "--resume", cut, "--engine", "trainer") == 2
    assert "drop --engine" in capsys.readouterr().err


@pytest.mark.parametrize("when", ["last-step", "last-validation"])
def test_ctrl_c_at_the_very_end_finishes_the_run(tmp_path, monkeypatch, sentiment_csv, tiny_bert,
                                                 capsys, when):
    """Ctrl-C during the last epoch's last step or validation: the training is done, so the
    run finishes (exit 0) with the uninterrupted weights instead of leaving a checkpoint."""
    import advnlp.cli.tasks.classification.run as T

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run(*train_args(tiny_bert, sentiment_csv, whole, "--engine", "trainer")) == 0
    with monkeypatch.context() as m:
        if when == "last-step":
            interrupt_after(m, 12)  # 2 epochs x 6 steps
        else:
            evaluate, calls = T.ClassifyRun.evaluate, {"n": 0}

            def evaluate_then_sigint(self, split):
                calls["n"] += 1
                if calls["n"] == 2:  # the second epoch's validation
                    signal.raise_signal(signal.SIGINT)
                return evaluate(self, split)

            m.setattr(T.ClassifyRun, "evaluate", evaluate_then_sigint)
        loud = [a for a in train_args(tiny_bert, sentiment_csv, cut, "--engine", "trainer")
                if a != "--quiet"]
        assert run(*loud) == 0
    assert "Ctrl-C during the last epoch's last step or validation: finishing the run" in \
        capsys.readouterr().err
    assert_same_weights(whole, cut)
    assert read_json(cut, "metrics.json")["final"] == read_json(whole, "metrics.json")["final"]
    assert not (cut / "checkpoints").exists()


def test_trainer_engine_needs_accelerate(tmp_path, sentiment_csv, tiny_bert, capsys, monkeypatch):
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_accelerate_available", lambda *a, **k: False)
    assert run(*train_args(tiny_bert, sentiment_csv, tmp_path / "r", "--engine", "trainer")) == 2
    err = capsys.readouterr().err
    assert "needs accelerate" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_several_gpus_without_torchrun_are_refused(tmp_path, sentiment_csv, tiny_bert, capsys,
                                                   monkeypatch):
    """The Trainer would wrap the model in DataParallel, whose threads share one hook."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert run(*train_args(tiny_bert, sentiment_csv, tmp_path / "r", "--engine", "trainer",
                           "--device", "cuda")) == 2
    err = capsys.readouterr().err
    assert "2 GPUs are visible" in err and "torchrun --nproc_per_node" in err
    assert not (tmp_path / "r").exists()


def test_compare_with_the_trainer_engine(tmp_path, sentiment_csv, bert_without_dropout):
    """compare trains each method through the Trainer; its fgm row is the loop engine's run."""
    out = tmp_path / "cmp"
    assert run("compare", "--model", bert_without_dropout, "--train", sentiment_csv, "--methods",
               "none,fgm", "--epochs", 2, "--lr", 0.01, "--batch-size", 16, "--engine", "trainer",
               "--attack-samples", 8, "--output-dir", out, "--quiet") == 0
    rows = {r["method"]: r for r in read_json(out, "compare.json")["methods"]}
    assert set(rows) == {"none", "fgm"}
    assert all(read_json(out / m, "config.json")["engine"] == "trainer" for m in rows)
    loop = tmp_path / "loop"
    assert run(*train_args(bert_without_dropout, sentiment_csv, loop, "--method", "fgm")) == 0
    assert_same_weights(loop, out / "fgm")


def test_an_old_transformers_is_a_one_line_error(tmp_path, sentiment_csv, tiny_bert, capsys,
                                                 monkeypatch):
    """The Trainer's loss normalisation changed within 4.x: below 5.0 the integration refuses
    to import, and --engine trainer says so before writing anything."""
    import importlib
    import sys

    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.46.3")
    monkeypatch.delitem(sys.modules, "advnlp.integrations.transformers")
    with pytest.raises(ImportError, match=r"transformers>=5.0 \(found 4.46.3\)"):
        importlib.import_module("advnlp.integrations.transformers")
    assert run("train", "--model", tiny_bert, "--train", sentiment_csv, "--engine", "trainer",
               "--output-dir", tmp_path / "r", "--quiet") == 2
    err = capsys.readouterr().err
    assert "--engine trainer: advnlp.integrations.transformers needs transformers>=5.0" in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_resume_checks_the_machine_again(tmp_path, monkeypatch, sentiment_csv, tiny_bert, capsys):
    """The machine may have changed since the run started: --resume refuses as a new run would."""
    import transformers.utils

    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        assert run(*train_args(tiny_bert, sentiment_csv, cut, "--engine", "trainer")) == 130
    capsys.readouterr()
    monkeypatch.setattr(transformers.utils, "is_accelerate_available", lambda *a, **k: False)
    assert run("train", "--resume", cut) == 2
    err = capsys.readouterr().err
    assert "needs accelerate" in err and "Traceback" not in err


def test_compare_checks_before_creating_its_folder(tmp_path, sentiment_csv, tiny_bert, capsys,
                                                   monkeypatch):
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_accelerate_available", lambda *a, **k: False)
    assert run("compare", "--model", tiny_bert, "--train", sentiment_csv, "--engine", "trainer",
               "--output-dir", tmp_path / "cmp", "--quiet") == 2
    assert "needs accelerate" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_one_process_torchrun_with_several_gpus_is_allowed(monkeypatch):
    """torchrun sets LOCAL_RANK even for --nproc_per_node 1: the Trainer then uses one GPU."""
    from advnlp.cli.config import TrainConfig, check_environment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = TrainConfig(engine="trainer", device="cuda")
    monkeypatch.setenv("LOCAL_RANK", "0")
    check_environment(cfg)  # no error
    monkeypatch.delenv("LOCAL_RANK")
    with pytest.raises(Exception, match="2 GPUs are visible"):
        check_environment(cfg)


def test_sigterm_saves_a_trainer_checkpoint_and_resumes(tmp_path, sentiment_csv, tiny_bert):
    """SIGTERM stops the Trainer like Ctrl-C: a checkpoint, exit 143, then --resume ends
    with the uninterrupted weights."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    # 4 epochs of 6 steps: the signal lands long before the end, even on a busy machine.
    args = [str(a) for a in train_args(tiny_bert, sentiment_csv, cut, "--engine", "trainer",
                                       "--epochs", 4) if a != "--quiet"]
    code, err = sigterm_after_first_step(args)
    assert code == 143, err
    assert "interrupted; checkpoint saved after SIGTERM" in err and "Traceback" not in err
    assert E.latest_checkpoint(str(cut)) and not (cut / "model").exists()
    assert run(*train_args(tiny_bert, sentiment_csv, whole, "--engine", "trainer", "--epochs", 4)) == 0
    assert run("train", "--resume", cut, "--quiet") == 0
    assert_same_weights(whole, cut)
