"""`advnlp compare` and `advnlp eval` on textcnn."""
from cli_helpers import read_json, run


def test_compare_runs_every_method_on_the_same_budget(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run("compare", "--methods", "none,fgm,fgsm,pgd", "--model", "textcnn", "--train",
               sentiment_csv, "--epochs", "2", "--steps", "2", "--attack-epsilon", "5",
               "--attack-steps", "2", "--output-dir", out, "--quiet") == 0
    result = read_json(out, "compare.json")
    rows = {r["method"]: r for r in result["methods"]}
    assert list(rows) == ["none", "fgm", "fgsm", "pgd"]
    assert rows["none"]["relative_cost"] == 1.0
    assert all(r["relative_cost"] > 0 for r in rows.values())  # wall-clock: no ordering asserted
    for m, r in rows.items():
        assert 0 <= r["robust_accuracy"] <= 1
        cfg = read_json(out, m, "config.json")
        assert cfg["method"] == m and cfg["seed"] == 42 and cfg["epochs"] == 2
    assert read_json(out, "pgd", "config.json")["steps"] == 2
    assert read_json(out, "fgm", "config.json")["steps"] is None  # only PGD takes --steps
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| method | accuracy |") and len(lines) == 2 + 4 + 1
    assert lines[-1].endswith("compare.json")


def test_eval_writes_a_robustness_curve(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--method", "none",
               "--epochs", "3", "--output-dir", out, "--quiet") == 0
    capsys.readouterr()
    assert run("eval", out, "--data", sentiment_csv, "--epsilons", "1,100",
               "--attack-samples", "50") == 0
    result = read_json(out, "eval.json")
    assert result["examples"] == 120 and result["attack"]["examples"] == 50
    curve = [p["epsilon"] for p in result["robust"]]
    assert curve == [0.0, 1.0, 100.0]
    acc = [p["accuracy"] for p in result["robust"]]
    assert acc[2] < acc[0]  # a large enough perturbation flips predictions
    assert "eval.json" in capsys.readouterr().out


def test_attack_leaves_parameter_gradients_alone(sentiment_csv, tmp_path):
    import torch

    from advnlp.evaluate import loss_fn, pgd_attack
    from advnlp.train import load_run

    out = tmp_path / "run"
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--method", "none",
               "--epochs", "1", "--output-dir", out, "--quiet") == 0
    _, _, clf = load_run(str(out), "cpu")
    clf.model.eval()
    batch = clf.encode([("the movie was great",), ("awful plot",)])
    y = torch.tensor([1, 0])
    clean = clf(batch)
    attacked = pgd_attack(lambda: clf(batch), clf.model, y, loss_fn(False), epsilon=3.0, steps=3)
    assert all(p.grad is None for p in clf.model.parameters())
    assert not torch.equal(clean, attacked)
    # The attack raises the loss it climbs.
    assert loss_fn(False)(attacked, y) > loss_fn(False)(clean, y)
