"""--report-to tensorboard: the scalars a run writes, read back from its event files."""
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cli_helpers import read_json, run

ARGS = ["--model", "textcnn", "--epochs", "2", "--batch-size", "16", "--quiet"]


def _scalars(folder):
    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_a_run_reports_its_losses_and_metrics(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "r"
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", out, "--method", "fgm",
               "--report-to", "tensorboard") == 0
    got, metrics = _scalars(out), read_json(out, "metrics.json")
    losses = [x for e in metrics["epochs"] for x in e["step_losses"]]
    assert [s for s, _ in got["train/loss"]] == list(range(1, len(losses) + 1))
    assert [v for _, v in got["train/loss"]] == pytest.approx(losses, rel=1e-6)
    assert len(got["train/adversarial_loss"]) == len(losses)  # FGM's adversarial pass
    assert len(got["train/learning_rate"]) == len(losses)
    ends = [sum(e["steps"] for e in metrics["epochs"][: i + 1]) for i in range(2)]
    assert [s for s, _ in got["validation/accuracy"]] == ends
    assert [v for _, v in got["validation/accuracy"]] == pytest.approx(
        [e["validation"]["accuracy"] for e in metrics["epochs"]])
    assert got["test/accuracy"] == [(ends[-1], pytest.approx(metrics["final"]["test"]["accuracy"]))]


def test_compare_reports_each_runs_scores_beside_its_curves(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run("compare", *ARGS, "--train", sentiment_csv, "--output-dir", out, "--methods",
               "none,fgm", "--seeds", "2", "--attack-samples", "4", "--cost-rounds", "0",
               "--report-to", "tensorboard") == 0
    result = read_json(out, "compare.json")
    for r in result["runs"]:
        got = _scalars(out / r["method"] / f"seed-{r['seed']}")
        assert got["compare/robust_accuracy@0.5"][0][1] == pytest.approx(r["robust_accuracy@0.5"])
        assert got["compare/accuracy"][0][1] == pytest.approx(r["accuracy"])


def test_the_trainer_engine_reports_the_same_way(tiny_bert, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "r"
    assert run("train", "--model", tiny_bert, "--train", sentiment_csv, "--engine", "trainer",
               "--epochs", "1", "--output-dir", out, "--quiet", "--report-to", "tensorboard") == 0
    got, metrics = _scalars(out), read_json(out, "metrics.json")
    losses = metrics["epochs"][0]["step_losses"]
    assert [v for _, v in got["train/loss"]] == pytest.approx(losses, rel=1e-6)
    assert got["validation/accuracy"][0][0] == len(losses)


def test_no_report_writes_nothing(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "r"
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", out) == 0
    assert not (out / "tensorboard").exists()


def test_a_missing_tensorboard_is_one_line(sentiment_csv, tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", tmp_path / "r",
               "--report-to", "tensorboard") == 2
    err = capsys.readouterr().err
    assert "pip install 'advnlp[track]'" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def _mlflow_metrics(store, run_name):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{store}")
    exp = client.get_experiment_by_name("advnlp")
    (found,) = [r for r in client.search_runs([exp.experiment_id])
                if r.info.run_name == run_name]
    return client, found, {k: [(m.step, m.value) for m in client.get_metric_history(
        found.info.run_id, k)] for k in found.data.metrics}


def test_mlflow_reads_back_what_tensorboard_gets(sentiment_csv, tmp_path, capsys):
    pytest.importorskip("mlflow")
    out = tmp_path / "r"
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", out, "--method", "fgm",
               "--report-to", "mlflow") == 0
    metrics = read_json(out, "metrics.json")
    _, found, got = _mlflow_metrics(out / "mlruns", "r")
    assert found.data.tags["method"] == "fgm" and found.data.tags["seed"] == "42"
    losses = [x for e in metrics["epochs"] for x in e["step_losses"]]
    assert [v for _, v in sorted(got["train/loss"])] == pytest.approx(losses, rel=1e-6)
    assert len(got["train/adversarial_loss"]) == len(losses)
    assert got["test/accuracy"][0][1] == pytest.approx(metrics["final"]["test"]["accuracy"])


def test_mlflow_holds_a_compares_runs_in_one_store_tagged_by_method_and_seed(
        sentiment_csv, tmp_path, capsys):
    pytest.importorskip("mlflow")
    out = tmp_path / "cmp"
    assert run("compare", *ARGS, "--train", sentiment_csv, "--output-dir", out, "--methods",
               "none,fgm", "--seeds", "2", "--attack-samples", "4", "--cost-rounds", "0",
               "--report-to", "mlflow") == 0
    result = read_json(out, "compare.json")
    for r in result["runs"]:
        _, found, got = _mlflow_metrics(out / "mlruns", f"{r['method']}/seed-{r['seed']}")
        assert found.data.tags["method"] == r["method"]
        assert found.data.tags["seed"] == str(r["seed"])
        assert got["compare/robust_accuracy_at_0.5"][0][1] == pytest.approx(r["robust_accuracy@0.5"])
    assert not (out / "none" / "seed-42" / "mlruns").exists()


def test_mlflow_missing_is_one_line(sentiment_csv, tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_mlflow(name, *a, **k):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", tmp_path / "r",
               "--report-to", "mlflow") == 2
    err = capsys.readouterr().err
    assert "pip install 'advnlp[mlflow]'" in err and not (tmp_path / "r").exists()
