"""--method freeat: each batch replayed m (--steps) times with delta carried across the
replays; an epoch keeps a plain epoch's number of optimizer steps, so E epochs cost E plain
epochs and see the data E/m times; a resumed run goes on exactly mid-replay."""
import os

import pytest
import torch
from safetensors.torch import load_file

import advnlp.cli.tasks.classification.run as R
from advnlp.cli.tasks.classification import classify as T
from cli_helpers import ctrl_c_after, read_json, run

# sentiment_csv: 96 training examples / 16 = 6 batches per pass.
ARGS = ["--model", "textcnn", "--batch-size", "16", "--quiet"]


def _weights(run_dir):
    return load_file(os.path.join(run_dir, "model", "model.safetensors"))


def _record_steps(monkeypatch):
    """Every training step's adversary state before it, and every batch the run encodes."""
    steps, encoded = [], []
    step, encode = T.train_step, R.ClassifyRun.batch

    def recording_step(clf, adv, *args, **kwargs):
        if adv is None:  # the none run beside it
            return step(clf, adv, *args, **kwargs)
        steps.append({"delta_is_zero": adv.delta is None, "calls": adv.calls_on_batch})
        loss = step(clf, adv, *args, **kwargs)
        steps[-1]["delta_norms"] = [d.flatten(1).norm(dim=1) for d in adv.delta]
        return loss

    def recording_batch(self, idx):
        encoded.append(list(idx))
        return encode(self, idx)

    monkeypatch.setattr(T, "train_step", recording_step)
    monkeypatch.setattr(R.ClassifyRun, "batch", recording_batch)
    return steps, encoded


def test_an_epoch_costs_a_plain_epoch_and_m_epochs_see_the_data_once(sentiment_csv, tmp_path,
                                                                    monkeypatch):
    steps, encoded = _record_steps(monkeypatch)
    assert run("train", *ARGS, "--train", sentiment_csv, "--method", "freeat", "--steps", "2",
               "--epochs", "2", "--output-dir", tmp_path / "freeat") == 0
    assert run("train", *ARGS, "--train", sentiment_csv, "--method", "none", "--epochs", "2",
               "--output-dir", tmp_path / "none") == 0
    freeat = read_json(tmp_path / "freeat", "metrics.json")["epochs"]
    none = read_json(tmp_path / "none", "metrics.json")["epochs"]
    assert [e["steps"] for e in freeat] == [e["steps"] for e in none] == [6, 6]
    assert len(steps) == 12  # the freeat run's optimizer steps (the none run has no adversary)
    # 6 distinct batches, 3 per epoch, each replayed twice in a row ...
    freeat_batches = encoded[:6]
    assert len(freeat_batches) == 6
    # ... which together are the 96 training examples, each once (one pass in two epochs)
    seen = sorted(i for b in freeat_batches for i in b)
    assert seen == list(range(96))
    # delta starts at 0 on every batch's first replay and is carried into the second
    assert [s["delta_is_zero"] for s in steps] == [True, False] * 6
    assert [s["calls"] for s in steps] == [0, 1] * 6
    cfg = read_json(tmp_path / "freeat", "config.json")
    assert cfg["steps"] == 2 and cfg["alpha"] == pytest.approx(cfg["epsilon"] / 6)
    eps = cfg["epsilon"]
    assert all(float(n.max()) <= eps * (1 + 1e-5) for s in steps for n in s["delta_norms"])
    assert all(float(n.max()) > 0 for s in steps for n in s["delta_norms"])


def test_three_replays_split_a_pass_into_three_epochs(sentiment_csv, tmp_path, monkeypatch):
    steps, encoded = _record_steps(monkeypatch)
    assert run("train", *ARGS, "--train", sentiment_csv, "--method", "freeat", "--steps", "3",
               "--epochs", "4", "--output-dir", tmp_path) == 0
    history = read_json(tmp_path, "metrics.json")["epochs"]
    assert [e["steps"] for e in history] == [6, 6, 6, 6]  # 2 batches x 3 replays
    assert [s["calls"] for s in steps] == [0, 1, 2] * 8
    first_pass = sorted(i for b in encoded[:6] for i in b)
    assert first_pass == list(range(96))
    assert encoded[6] != encoded[0]  # epoch 4 starts the second pass, in a new order


@pytest.mark.parametrize("stop_after", [3, 9], ids=["mid-replay-epoch-1", "mid-replay-epoch-2"])
def test_resume_mid_replay_reaches_the_uninterrupted_weights(sentiment_csv, tmp_path, monkeypatch,
                                                             stop_after):
    args = [*ARGS, "--train", sentiment_csv, "--method", "freeat", "--steps", "2", "--epochs", "2"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run("train", *args, "--output-dir", straight) == 0
    with monkeypatch.context() as m:
        ctrl_c_after(m, stop_after)  # after the first replay of a batch: delta is mid-way
        assert run("train", *args, "--output-dir", stopped) == 130
    state = torch.load(stopped / "checkpoint.pt", weights_only=True)
    (saved,) = state["replay_state"]
    assert saved["calls"] == 1 and saved["delta"] is not None
    assert run("train", "--resume", stopped, "--quiet") == 0
    a, b = _weights(straight), _weights(stopped)
    assert all(a[k].equal(b[k]) for k in a)


def test_resume_without_the_saved_delta_would_differ(sentiment_csv, tmp_path, monkeypatch):
    # The control for the test above: the saved delta is what makes the resume exact.
    args = [*ARGS, "--train", sentiment_csv, "--method", "freeat", "--steps", "2", "--epochs", "1"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run("train", *args, "--output-dir", straight) == 0
    with monkeypatch.context() as m:
        ctrl_c_after(m, 1)
        assert run("train", *args, "--output-dir", stopped) == 130
    state = torch.load(stopped / "checkpoint.pt", weights_only=True)
    state["replay_state"] = None
    torch.save(state, stopped / "checkpoint.pt")
    assert run("train", "--resume", stopped, "--quiet") == 0
    a, b = _weights(straight), _weights(stopped)
    assert not all(a[k].equal(b[k]) for k in a)


@pytest.mark.parametrize("extra, message", [
    (["--steps", "7"], "a pass has 6 batch(es)"),
    (["--augment-with-attack", "char"], "drop one of the two"),
    (["--online-attack", "char"], "--online-attack combines with --method"),
    (["--steps", "0"], "--steps must be > 0"),
])
def test_freeat_refuses_what_it_cannot_do(sentiment_csv, tmp_path, capsys, extra, message):
    assert run("train", *ARGS, "--train", sentiment_csv, "--method", "freeat", *extra,
               "--output-dir", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model").exists()


def test_freeat_needs_the_loop_engine(sentiment_csv, tiny_bert, tmp_path, capsys):
    assert run("train", "--model", tiny_bert, "--train", sentiment_csv, "--method", "freeat",
               "--engine", "trainer", "--quiet", "--output-dir", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "replays each batch" in err and "drop --engine trainer" in err
    assert not (tmp_path / "run").exists()
