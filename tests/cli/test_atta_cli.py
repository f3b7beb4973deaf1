"""--method atta: every step passes the batch's training-set indices to ATTA, whose store of
perturbations per example is checkpointed, so a run resumed mid-epoch ends where the
uninterrupted one does; what it cannot do is a one-line error."""
import os

import pytest
import torch
from safetensors.torch import load_file

from advnlp import ATTA
from advnlp.cli.tasks.classification import classify as T
from cli_helpers import ctrl_c_after, read_json, run

# sentiment_csv: 96 training examples / 16 = 6 batches per epoch.
ARGS = ["--model", "textcnn", "--batch-size", "16", "--quiet"]


def _weights(run_dir):
    return load_file(os.path.join(run_dir, "model", "model.safetensors"))


def test_each_step_passes_its_examples_and_the_store_fills_in_one_epoch(sentiment_csv, tmp_path,
                                                                        monkeypatch):
    seen = []
    step = T.train_step

    def recording(clf, adv, *args, ids=None, **kwargs):
        known = sum(i in adv.store for i in ids)
        loss = step(clf, adv, *args, ids=ids, **kwargs)
        seen.append({"ids": ids, "known": known, "stored": len(adv.store), "adv": adv})
        return loss

    monkeypatch.setattr(T, "train_step", recording)
    assert run("train", *ARGS, "--train", sentiment_csv, "--method", "atta", "--epochs", "2",
               "--output-dir", tmp_path) == 0
    assert [e["steps"] for e in read_json(tmp_path, "metrics.json")["epochs"]] == [6, 6]
    assert len(seen) == 12 and isinstance(seen[0]["adv"], ATTA)
    assert sorted(i for s in seen[:6] for i in s["ids"]) == list(range(96))
    # epoch 1 meets every example for the first time, epoch 2 at its stored perturbation
    assert [s["known"] for s in seen] == [0] * 6 + [16] * 6
    assert [s["stored"] for s in seen] == [16 * k for k in range(1, 7)] + [96] * 6
    adv = seen[0]["adv"]
    assert adv.relative and adv.epsilon == adv.alpha == 0.03
    cfg = read_json(tmp_path, "config.json")
    assert cfg["relative_epsilon"] is True and cfg["epsilon"] == cfg["alpha"] == 0.03


def test_alpha_defaults_to_the_given_epsilon(sentiment_csv, tmp_path):
    assert run("train", *ARGS, "--train", sentiment_csv, "--method", "atta", "--epsilon", "0.5",
               "--epochs", "1", "--output-dir", tmp_path) == 0
    cfg = read_json(tmp_path, "config.json")
    assert cfg["alpha"] == cfg["epsilon"] == 0.5 and cfg["relative_epsilon"] is False


@pytest.mark.parametrize("stop_after", [3, 9], ids=["mid-epoch-1", "mid-epoch-2"])
def test_resume_mid_epoch_reaches_the_uninterrupted_weights(sentiment_csv, tmp_path, monkeypatch,
                                                            stop_after):
    args = [*ARGS, "--train", sentiment_csv, "--method", "atta", "--epochs", "2"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run("train", *args, "--output-dir", straight) == 0
    with monkeypatch.context() as m:
        ctrl_c_after(m, stop_after)
        assert run("train", *args, "--output-dir", stopped) == 130
    state = torch.load(stopped / "checkpoint.pt", weights_only=True)
    (saved,) = state["example_state"]
    assert len(saved["store"]) == min(16 * stop_after, 96)
    assert run("train", "--resume", stopped, "--quiet") == 0
    a, b = _weights(straight), _weights(stopped)
    assert all(a[k].equal(b[k]) for k in a)


def test_resume_without_the_saved_store_would_differ(sentiment_csv, tmp_path, monkeypatch):
    # The control for the test above: the saved store is what makes the resume exact.
    args = [*ARGS, "--train", sentiment_csv, "--method", "atta", "--epochs", "2"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run("train", *args, "--output-dir", straight) == 0
    with monkeypatch.context() as m:
        ctrl_c_after(m, 7)
        assert run("train", *args, "--output-dir", stopped) == 130
    state = torch.load(stopped / "checkpoint.pt", weights_only=True)
    state["example_state"] = None
    torch.save(state, stopped / "checkpoint.pt")
    assert run("train", "--resume", stopped, "--quiet") == 0
    a, b = _weights(straight), _weights(stopped)
    assert not all(a[k].equal(b[k]) for k in a)


@pytest.mark.parametrize("extra, message", [
    (["--online-attack", "char"], "atta keeps a perturbation per example and position"),
    (["--steps", "2"], "--method atta takes no --steps"),
    (["--alpha", "0"], "--alpha must be > 0"),
])
def test_atta_refuses_what_it_cannot_do(sentiment_csv, tmp_path, capsys, extra, message):
    assert run("train", *ARGS, "--train", sentiment_csv, "--method", "atta", *extra,
               "--output-dir", tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_atta_needs_the_loop_engine(sentiment_csv, tiny_bert, tmp_path, capsys):
    assert run("train", "--model", tiny_bert, "--train", sentiment_csv, "--method", "atta",
               "--engine", "trainer", "--quiet", "--output-dir", tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert "per training example" in err and "drop --engine trainer" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_fixed_shards_cover_every_example_with_no_repeat_in_a_shard():
    """Under torchrun rank r trains the examples r mod W, in the epoch's order; 7 examples on
    2 ranks: rank 1's shorter shard is padded with the first of rank 0's (as DistributedSampler
    pads), never with one of its own (a batch must not hold an example twice)."""
    from types import SimpleNamespace

    from advnlp.cli.run import Run

    order = [5, 2, 6, 1, 0, 3, 4]
    shards = [Run._fixed_shard(SimpleNamespace(world=2, rank=r, shard_size=lambda: 4), order)
              for r in (0, 1)]
    assert shards == [[2, 6, 0, 4], [5, 1, 3, 2]]
