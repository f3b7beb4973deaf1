"""``advnlp train --task causal-lm --fsdp`` under torchrun: the model sharded over 2 CPU
processes (FSDP2, gloo) trains the weights of one unsharded process with the double batch
(as DDP does: tests/cli/test_causal_lm_cli.py), full fine-tuning and LoRA, and a tied Qwen2
as DDP does;
the run folder holds the whole model (gathered), every rank evaluates and generates; a
Ctrl-C on one rank mid-epoch leaves a checkpoint of unsharded tensors that a torchrun
--resume finishes on the uninterrupted run's weights; the refusals."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import one_line_error, read_json, run
from lm_data import rows, save_lm, write_jsonl

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("fsdp-lm")
    # 55 examples: 6 test, 5 validation, 44 to train on: 5 global batches of 8 and one of
    # 4 (2 per rank), so no rank pads its shard with a repeated example
    return {"llama": save_lm(d / "llama", "llama"), "qwen2": save_lm(d / "qwen2", "qwen2"),
            "pairs": write_jsonl(d / "p.jsonl", rows(55)), "dir": d}


def common(setup, model="llama", *extra):
    return ["--task", "causal-lm", "--model", setup[model], "--train", setup["pairs"],
            "--method", "fgm", "--epochs", "2", "--lr", "5e-3", "--max-length", "32",
            "--device", "cpu", "--quiet", *extra]


def torchrun(*argv, sigint=None):
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(sys.path))
    if sigint:
        env.update(ADVNLP_TEST_SIGINT=sigint, ADVNLP_TEST_SLOW_SAVE="1")
    worker = os.path.join(os.path.dirname(__file__), "sigint_worker.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", worker, "train", *map(str, argv)],
                          env=env, capture_output=True, text=True, timeout=300)
    return proc


def assert_same_weights(got_file, want_file, atol=1e-5, rtol=1e-4):
    got, want = load_file(str(got_file)), load_file(str(want_file))
    assert sorted(got) == sorted(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=atol, rtol=rtol, msg=lambda m: f"{k}: {m}")


@pytest.fixture(scope="module")
def sharded(setup):
    out = setup["dir"] / "sharded"
    proc = torchrun(*common(setup), "--batch-size", "4", "--fsdp", "--output-dir", out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("done: ") == 1  # rank 0 alone reports
    return out


def test_sharded_ranks_train_the_weights_of_one_process_with_double_batch(setup, sharded):
    one = setup["dir"] / "one"
    assert run("train", *common(setup), "--batch-size", "8", "--output-dir", one) == 0
    assert_same_weights(sharded / "model" / "model.safetensors", one / "model" / "model.safetensors")
    init = load_file(os.path.join(setup["llama"], "model.safetensors"))
    got = load_file(str(sharded / "model" / "model.safetensors"))
    assert max((got[k] - init[k]).abs().max().item() for k in init) > 1e-3  # it trained
    # every rank evaluated (the forward passes are collective); rank 0's numbers are one
    # process's, validation and test, and its greedy samples were written
    a, b = read_json(sharded, "metrics.json"), read_json(one, "metrics.json")
    for split in ("validation", "test"):
        assert a["final"][split]["completion_loss"] == pytest.approx(
            b["final"][split]["completion_loss"], rel=1e-4)
    with open(sharded / "samples.jsonl", encoding="utf-8") as f:
        samples = [line for line in f if line.strip()]
    with open(one / "samples.jsonl", encoding="utf-8") as f:
        assert samples == [line for line in f if line.strip()]
    assert len(samples) == 3
    assert not (sharded / "checkpoint.pt").exists()


def test_eval_scores_a_sharded_run_in_one_process(sharded, capsys):
    assert run("eval", sharded, "--epsilons", "0.1", "--attack-samples", "4") == 0
    assert "completion loss" in capsys.readouterr().out


def test_lora_shards_and_saves_the_adapters(setup, tmp_path):
    args = common(setup, "llama", "--lora-r", "2", "--method", "pgd", "--steps", "2")
    proc = torchrun(*args, "--batch-size", "4", "--fsdp", "--output-dir", tmp_path / "sh")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert run("train", *args, "--batch-size", "8", "--output-dir", tmp_path / "one") == 0
    assert_same_weights(tmp_path / "sh" / "model" / "adapter_model.safetensors",
                        tmp_path / "one" / "model" / "adapter_model.safetensors")
    assert not (tmp_path / "sh" / "model" / "model.safetensors").exists()  # adapters only


def test_tied_embeddings_shard_as_ddp_trains_them(setup, tmp_path):
    """Qwen2 ties its head to its embedding (one parameter in the root's shard). Its test
    tokenizer gives completions of unequal length, so 2 ranks' mean of means is not one
    process's mean: the reference is DDP on the same 2 ranks."""
    args = common(setup, "qwen2", "--batch-size", "4")
    for name, extra in (("sh", ["--fsdp"]), ("ddp", [])):
        proc = torchrun(*args, *extra, "--output-dir", tmp_path / name)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert_same_weights(tmp_path / "sh" / "model" / "model.safetensors",
                        tmp_path / "ddp" / "model" / "model.safetensors")
    got = load_file(str(tmp_path / "sh" / "model" / "model.safetensors"))
    assert "lm_head.weight" not in got  # saved tied, as the model was


def test_ctrl_c_on_one_rank_checkpoints_and_resumes_exactly(setup, sharded, tmp_path):
    """SIGINT on rank 1 after its 3rd step of 6 in epoch 1: both ranks stop, rank 0 writes
    the gathered (unsharded) weights and optimizer state; --resume shards them again and
    ends on the uninterrupted sharded run's weights and step losses."""
    cut = tmp_path / "cut"
    proc = torchrun(*common(setup), "--batch-size", "4", "--fsdp", "--output-dir", cut,
                    sigint="1,3")
    assert proc.returncode != 0 and "interrupted; checkpoint saved" in proc.stderr, \
        proc.stderr[-3000:]
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3 and state["epoch"] == 0
    full = load_file(os.path.join(setup["llama"], "model.safetensors"))
    for k, v in full.items():  # whole tensors under the unsharded model's names
        assert type(state["model"][k]) is torch.Tensor and state["model"][k].shape == v.shape, k
    proc = torchrun("--resume", cut, "--quiet")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert_same_weights(cut / "model" / "model.safetensors",
                        sharded / "model" / "model.safetensors", atol=1e-6, rtol=1e-5)
    losses = [x for e in read_json(cut, "metrics.json")["epochs"] for x in e["step_losses"]]
    want = [x for e in read_json(sharded, "metrics.json")["epochs"] for x in e["step_losses"]]
    assert losses == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_fsdp_without_torchrun_is_refused(setup, tmp_path, capsys):
    assert run("train", *common(setup), "--fsdp", "--output-dir", tmp_path / "x") == 2
    one_line_error(capsys, "--fsdp", "torchrun --nproc_per_node")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("extra, needle", [(("--engine", "trainer"), "--engine trainer"),
                                           (("--precision", "fp16"), "bf16")])
def test_fsdp_refuses_what_it_cannot_shard(setup, monkeypatch, extra, needle):
    from advnlp.cli.config import TrainConfig
    from advnlp.cli.data import DataSpec
    from advnlp.cli.errors import InputError

    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun: the check comes first
    cfg = TrainConfig(task="causal-lm", model=setup["llama"], fsdp=True, device="cpu",
                      engine="loop", data=DataSpec(train=setup["pairs"]))
    for flag, value in zip(extra[::2], extra[1::2]):
        setattr(cfg, flag.lstrip("-"), value)
    with pytest.raises(InputError, match=needle):
        cfg.resolved()


def test_another_task_refuses_fsdp(tmp_path, capsys):
    assert run("train", "--fsdp", "--output-dir", tmp_path / "x") == 2
    one_line_error(capsys, "--fsdp")
