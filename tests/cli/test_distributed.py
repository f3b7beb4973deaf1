"""`advnlp train` under torchrun: 2 CPU processes (gloo) against one process.

The exact check: 2 ranks with per-rank batch B train the same weights as one
process with batch 2B. The global batches are the same examples (rank r takes
every 2nd example of the epoch order from position r, so batch k of both ranks
together is positions [2Bk, 2B(k+1)) of that order, as for one process), the
loss is a mean over equal shards, so DDP's gradient average is the global
batch's gradient, and FGM's perturbation is per example. Dropout would break
this (each rank draws its own masks), so the model is a tiny BERT with every
dropout at 0: what is compared is then the loop, not the random numbers.
"""
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import read_json, run, save_bert_without_dropout, write_csv

WORDS = ("great good excellent wonderful fine nice bad awful terrible poor horrible ugly "
         "the a movie film plot actor scene story it was").split()
POS, NEG, FILLER = WORDS[:6], WORDS[6:12], WORDS[12:]
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _rows(rng, n):
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = rng.choices(FILLER, k=6) + rng.choices(POS if label == "pos" else NEG, k=2)
        rng.shuffle(words)
        rows.append([" ".join(words), label])
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    save_bert_without_dropout(d / "bert", sorted(WORDS), seed=None)
    rng = random.Random(7)
    # 44 training examples: 5 full global batches of 8 and a last one of 4 (2 per rank).
    files = {name: write_csv(d / f"{name}.csv", ["text", "label"], _rows(rng, n))
             for name, n in (("train", 44), ("validation", 16), ("test", 16))}
    common = ["--model", str(d / "bert"), "--train", files["train"], "--validation",
              files["validation"], "--test", files["test"], "--method", "fgm", "--epochs", "2",
              "--lr", "5e-3", "--device", "cpu", "--quiet"]

    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "advnlp.cli", "train", *common, "--batch-size", "4", "--output-dir", str(d / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    assert run("train", *common, "--batch-size", "8", "--output-dir", d / "single") == 0
    return {"dir": d, "proc": proc, "common": common}


def test_two_ranks_train_the_weights_of_one_process_with_double_batch(setup):
    d = setup["dir"]
    got = load_file(str(d / "ddp" / "model" / "model.safetensors"))
    want = load_file(str(d / "single" / "model" / "model.safetensors"))
    assert got.keys() == want.keys()
    init = {"bert." + k: v for k, v in load_file(str(d / "bert" / "model.safetensors")).items()}
    moved = 0
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")
        if k in init and not torch.allclose(init[k], want[k]):
            moved += 1
    assert moved > 0  # training really changed the encoder (the comparison is not vacuous)
    ddp, single = read_json(d / "ddp", "metrics.json"), read_json(d / "single", "metrics.json")
    for a, b in zip(ddp["epochs"], single["epochs"]):
        assert a["steps"] == b["steps"] == 6  # ceil(44 / 8): the same global batches
        # the logged loss is the global batch's, averaged over the ranks
        assert a["step_losses"] == pytest.approx(b["step_losses"], rel=1e-4, abs=1e-5)
        assert a["validation"] == pytest.approx(b["validation"])
    assert ddp["final"]["test"] == pytest.approx(single["final"]["test"])
    assert ddp["epochs"][-1]["train_loss"] < ddp["epochs"][0]["train_loss"]


def test_rank_0_alone_writes_a_complete_run(setup):
    out, proc = setup["dir"] / "ddp", setup["proc"]
    for f in ("config.json", "labels.json", "metrics.json", "model/model.safetensors",
              "model/config.json", "model/tokenizer_config.json"):
        assert (out / f).is_file(), f
    assert not (out / "checkpoint.pt").exists()
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    cfg = read_json(out, "config.json")
    assert cfg["world_size"] == 2 and cfg["batch_size"] == 4  # per rank: 8 per step in all
    assert read_json(setup["dir"] / "single", "config.json")["world_size"] == 1
    assert proc.stdout.count("done: ") == 1  # one summary, from rank 0
    assert proc.stderr.count("advnlp: error") == 0


def test_distributed_without_torchrun_is_a_one_line_error(setup, monkeypatch, capsys, tmp_path):
    for v in TORCHRUN_ENV:
        monkeypatch.delenv(v, raising=False)
    assert run("train", "--distributed", *setup["common"], "--output-dir", tmp_path / "x") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "torchrun" in err
    assert not (tmp_path / "x").exists()


def test_other_commands_refuse_several_processes(setup, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run("compare", *setup["common"], "--output-dir", tmp_path / "c") == 2
    assert "runs in one process" in capsys.readouterr().err


def test_resume_needs_the_world_size_the_run_had(setup, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(setup["dir"] / "ddp", run_dir)
    (run_dir / "checkpoint.pt").write_bytes(b"")  # as if interrupted
    assert run("train", "--resume", run_dir) == 2
    err = capsys.readouterr().err.strip()
    assert "2 process(es), not 1" in err and "--nproc_per_node 2" in err and "\n" not in err



def torchrun(setup, *argv, sigint=None):
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(sys.path))
    if sigint:
        env.update(ADVNLP_TEST_SIGINT=sigint, ADVNLP_TEST_SLOW_SAVE="2")
    worker = os.path.join(os.path.dirname(__file__), "sigint_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           worker, "train", *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ddp_trainer(setup):
    out = setup["dir"] / "ddp-trainer"
    proc = torchrun(setup, *setup["common"], "--batch-size", "4", "--engine", "trainer",
                    "--output-dir", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("done: ") == 1
    return out


def test_trainer_engine_under_torchrun_trains_the_weights_of_one_process(setup, ddp_trainer):
    """--engine trainer: the Trainer's own DDP, fed each rank's shard of the epoch order
    by the engine (not by accelerate, which would top a short last batch up), gives the
    weights of the one-process --engine loop run with the double batch; the 44 examples
    end with a short global batch of 4 (2 per rank)."""
    d = setup["dir"]
    got = load_file(str(ddp_trainer / "model" / "model.safetensors"))
    want = load_file(str(d / "single" / "model" / "model.safetensors"))
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")
    ddp, single = read_json(ddp_trainer, "metrics.json"), read_json(d / "single", "metrics.json")
    for a, b in zip(ddp["epochs"], single["epochs"], strict=True):
        assert a["steps"] == b["steps"] == 6
        assert a["step_losses"] == pytest.approx(b["step_losses"], rel=1e-4, abs=1e-5)
    assert read_json(ddp_trainer, "config.json")["engine"] == "trainer"
    assert not (ddp_trainer / "checkpoints").exists()


@pytest.mark.parametrize("engine", ["loop", "trainer"])
def test_ctrl_c_on_one_rank_stops_both_and_resumes_exactly(setup, ddp_trainer, tmp_path, engine):
    """SIGINT reaches rank 1 alone, after its 3rd step: both ranks agree to stop after the
    same step (no hang), rank 0's save (slowed by 2 s, as a real model's) completes
    before the job ends, and a torchrun --resume reaches the weights of the
    uninterrupted 2-process run."""
    cut = tmp_path / "cut"
    proc = torchrun(setup, *setup["common"], "--batch-size", "4", "--engine", engine,
                    "--output-dir", str(cut), sigint="1,3")
    assert proc.returncode != 0 and "interrupted; checkpoint saved" in proc.stderr, proc.stderr[-3000:]
    assert f"--nproc_per_node 2 -m advnlp.cli train --resume {cut}" in proc.stderr
    assert not (cut / "model").exists()
    proc = torchrun(setup, "--resume", str(cut), "--quiet")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    whole = setup["dir"] / "ddp" if engine == "loop" else ddp_trainer
    got = load_file(str(cut / "model" / "model.safetensors"))
    want = load_file(str(whole / "model" / "model.safetensors"))
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5, msg=lambda m: f"{k}: {m}")
    losses = [x for e in read_json(cut, "metrics.json")["epochs"] for x in e["step_losses"]]
    want_losses = [x for e in read_json(whole, "metrics.json")["epochs"] for x in e["step_losses"]]
    assert losses == pytest.approx(want_losses, rel=1e-5, abs=1e-6)


def test_freeat_under_torchrun_matches_one_process_and_resumes_mid_replay(setup, tmp_path):
    """FreeAT's delta is per example and its step g/||g|| does not see the loss's scale, so
    2 ranks with batch 4 replay the batches of one process with batch 8 and train its
    weights; a stop after rank 1's 3rd step (between the two replays of a batch) saves
    both ranks' deltas, and the resumed run ends where the uninterrupted one does."""
    freeat = [*setup["common"], "--method", "freeat", "--steps", "2"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    proc = torchrun(setup, *freeat, "--batch-size", "4", "--output-dir", str(whole))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert run("train", *freeat, "--batch-size", "8", "--output-dir", tmp_path / "single") == 0
    got = load_file(str(whole / "model" / "model.safetensors"))
    want = load_file(str(tmp_path / "single" / "model" / "model.safetensors"))
    # Looser than FGM's test: delta's step g/||g|| carries the rounding of the two
    # reductions (a mean over 4 per rank vs over 8) into every later replay.
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-4, rtol=1e-3, msg=lambda m: f"{k}: {m}")
    fgm = load_file(str(setup["dir"] / "ddp" / "model" / "model.safetensors"))
    assert max((fgm[k] - want[k]).abs().max().item() for k in want) > 1e-2  # not vacuous
    assert [e["steps"] for e in read_json(whole, "metrics.json")["epochs"]] == [6, 6]

    proc = torchrun(setup, *freeat, "--batch-size", "4", "--output-dir", str(cut), sigint="1,3")
    assert proc.returncode != 0 and "interrupted; checkpoint saved" in proc.stderr, proc.stderr[-3000:]
    saved = torch.load(cut / "checkpoint.pt", weights_only=True)["replay_state"]
    assert [s["calls"] for s in saved] == [1, 1]
    assert not saved[0]["delta"][0].equal(saved[1]["delta"][0])  # each rank's own examples
    proc = torchrun(setup, "--resume", str(cut), "--quiet")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    got = load_file(str(cut / "model" / "model.safetensors"))
    want = load_file(str(whole / "model" / "model.safetensors"))
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5, msg=lambda m: f"{k}: {m}")


def test_atta_keeps_each_ranks_examples_there_and_resumes_mid_epoch(setup, tmp_path):
    """ATTA's store stays on the rank that trained the example: rank r is given the examples
    with index r mod 2 every epoch (no exchange of perturbations between ranks), so after a
    stop mid-epoch 2 each rank's saved store holds its 22 examples only; a torchrun
    --resume ends on the uninterrupted 2-process run's weights."""
    atta = [*setup["common"], "--method", "atta"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    proc = torchrun(setup, *atta, "--batch-size", "4", "--output-dir", str(whole))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    proc = torchrun(setup, *atta, "--batch-size", "4", "--output-dir", str(cut), sigint="1,8")
    assert proc.returncode != 0 and "interrupted; checkpoint saved" in proc.stderr, proc.stderr[-3000:]
    saved = torch.load(cut / "checkpoint.pt", weights_only=True)["example_state"]
    assert [sorted(s["store"]) for s in saved] == [list(range(0, 44, 2)), list(range(1, 44, 2))]
    proc = torchrun(setup, "--resume", str(cut), "--quiet")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    got = load_file(str(cut / "model" / "model.safetensors"))
    want = load_file(str(whole / "model" / "model.safetensors"))
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5, msg=lambda m: f"{k}: {m}")
