"""A Hugging Face tagger under --engine trainer and under torchrun: the weights of the
default one-process loop.

Exactness needs what the classifiers' tests need (no dropout, the same global batches) and
one thing more: a tagger's loss is a mean over the batch's labelled sub-tokens, so DDP's
average of the ranks' means is the global batch's mean only when every rank holds as many
labelled tokens. Every sentence here has 6 one-piece words."""
import os
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import read_json, run, save_bert_without_dropout
from tagging_data import CAPS, LOWER, conll

ONE_PIECE = [w for w in LOWER + CAPS if w not in ("London", "Berlin")]
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _fixed_length(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(6):
            if rng.random() < 0.35:
                tokens.append(rng.choice([w for w in CAPS if w in ONE_PIECE]))
                tags.append("I-ENT" if tags and tags[-1] != "O" else "B-ENT")
            else:
                tokens.append(rng.choice(LOWER))
                tags.append("O")
        out.append((tokens, tags))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("tagddp")
    save_bert_without_dropout(d / "bert", sorted({w.lower() for w in ONE_PIECE}))
    files = {name: conll(d / f"{name}.conll", _fixed_length(n, seed))
             for name, n, seed in (("train", 40, 0), ("validation", 12, 1), ("test", 12, 2))}
    common = ["--task", "token-classification", "--model", str(d / "bert"), "--train",
              files["train"], "--validation", files["validation"], "--test", files["test"],
              "--method", "fgm", "--epochs", "2", "--lr", "5e-3", "--device", "cpu", "--quiet"]
    assert run("train", *common, "--batch-size", "8", "--output-dir", d / "single") == 0
    return {"dir": d, "common": common}


def _same_weights(a, b, init_dir):
    got = load_file(str(a / "model" / "model.safetensors"))
    want = load_file(str(b / "model" / "model.safetensors"))
    assert got.keys() == want.keys()
    init = {"bert." + k: v for k, v in load_file(str(init_dir / "model.safetensors")).items()}
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")
    assert any(k in init and not torch.allclose(init[k], want[k]) for k in want)  # not vacuous


def test_the_trainer_engine_trains_a_tagger_to_the_loops_weights(setup, tmp_path):
    d = setup["dir"]
    out = tmp_path / "trainer"
    assert run("train", *setup["common"], "--batch-size", "8", "--engine", "trainer",
               "--output-dir", out) == 0
    _same_weights(out, d / "single", d / "bert")
    a, b = read_json(out, "metrics.json"), read_json(d / "single", "metrics.json")
    for x, y in zip(a["epochs"], b["epochs"], strict=True):
        assert x["step_losses"] == pytest.approx(y["step_losses"], rel=1e-4, abs=1e-5)
    assert a["final"]["test"]["entity_f1"] == pytest.approx(b["final"]["test"]["entity_f1"])
    assert read_json(out, "config.json")["engine"] == "trainer"


def test_two_ranks_train_a_tagger_to_the_weights_of_one_process_with_double_batch(setup):
    d = setup["dir"]
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "advnlp.cli", "train", *setup["common"], "--batch-size", "4",
           "--output-dir", str(d / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("done: ") == 1
    _same_weights(d / "ddp", d / "single", d / "bert")
    ddp, single = read_json(d / "ddp", "metrics.json"), read_json(d / "single", "metrics.json")
    for a, b in zip(ddp["epochs"], single["epochs"], strict=True):
        assert a["steps"] == b["steps"] == 5
        assert a["step_losses"] == pytest.approx(b["step_losses"], rel=1e-4, abs=1e-5)
    assert (d / "ddp" / "predictions-test.jsonl").is_file()
    assert read_json(d / "ddp", "config.json")["world_size"] == 2


def test_a_bilstm_tagger_keeps_the_default_engine(setup, tmp_path, capsys):
    args = [a if a != setup["common"][3] else "bilstm" for a in setup["common"]]
    assert run("train", *args, "--engine", "trainer", "--output-dir", tmp_path / "x") == 2
    assert "--engine trainer trains Hugging Face models" in capsys.readouterr().err
