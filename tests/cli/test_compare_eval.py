"""`advnlp compare` and `advnlp eval` on textcnn."""
import pytest

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
        assert 0 <= r["robust_accuracy@5"] <= 1
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


def test_eval_uses_the_attack_library_and_leaves_gradients_alone(sentiment_csv, tmp_path):
    import torch

    from advnlp.cli.robustness import embedding_robustness
    from advnlp.cli.rundir import load_run

    out = tmp_path / "run"
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--method", "none",
               "--epochs", "1", "--output-dir", out, "--quiet") == 0
    _, _, clf = load_run(str(out), "cpu")
    before = {k: v.clone() for k, v in clf.model.state_dict().items()}
    texts = [("the movie was great",), ("awful plot",)]
    res = embedding_robustness(clf, texts, torch.tensor([1, 0]), False, [0.1, 100.0], 3, 2, "cpu")
    assert all(p.grad is None for p in clf.model.parameters())
    assert all(before[k].equal(v) for k, v in clf.model.state_dict().items())
    assert res["attack"] == "embedding" and res["norm"] == "l2" and res["alpha"] == 2.5 / 3
    acc = [p["accuracy"] for p in res["curve"]]
    assert acc == sorted(acc, reverse=True) and acc[-1] < 1  # non-increasing, and it bites


def test_eval_and_attack_embedding_agree(sentiment_csv, tmp_path):
    out = tmp_path / "run"
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--method", "none",
               "--epochs", "2", "--output-dir", out, "--quiet") == 0
    assert run("eval", out, "--epsilons", "0.5,5", "--attack-steps", "4") == 0
    assert run("attack", out, "--attack", "embedding", "--epsilons", "0.5,5", "--steps", "4") == 0
    assert read_json(out, "eval.json")["robust"] == read_json(out, "attack-embedding.json")["curve"]


def test_compare_with_a_char_attack_column(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run("compare", "--methods", "none,fgm", "--model", "textcnn", "--train", sentiment_csv,
               "--epochs", "1", "--attack", "char", "--attack-limit", "10", "--output-dir", out,
               "--quiet") == 0
    result = read_json(out, "compare.json")
    assert result["discrete_attack"]["attacks"] == ["char"]
    assert result["discrete_attack"]["examples"] == 10
    for r in result["methods"]:
        assert 0 <= r["attacked_accuracy@char"] <= 1
        assert 0 <= r["attack_success_rate@char"] <= 1
    assert "| acc under char attack |" in capsys.readouterr().out.splitlines()[0]


def test_compare_with_char_and_word_attacks_matches_advnlp_attack(sentiment_csv, tmp_path, capsys):
    """Each discrete attack of --attack char,word is the one `advnlp attack` runs on the saved
    run (same examples, same seed): the columns agree with it, attack by attack."""
    out = tmp_path / "cmp"
    assert run("compare", "--methods", "none,online-char", "--model", "textcnn", "--train",
               sentiment_csv, "--epochs", "1", "--attack", "char,word", "--attack-limit", "10",
               "--output-dir", out, "--quiet") == 0
    result = read_json(out, "compare.json")
    assert result["discrete_attack"]["attacks"] == ["char", "word"]
    assert "| acc under char attack | acc under word attack |" in capsys.readouterr().out
    for r in result["methods"]:
        for attack in ("char", "word"):
            assert run("attack", out / r["method"], "--attack", attack, "--limit", "10") == 0
            alone = read_json(out, r["method"], f"attack-{attack}.json")
            assert r[f"attacked_accuracy@{attack}"] == alone["attacked_accuracy"]
            assert r[f"attack_success_rate@{attack}"] == alone["success_rate"]


@pytest.mark.parametrize("attack, message", [("char,char", "more than once"), ("char,emoji", "--attack"),
                                             (",", "--attack")])
def test_compare_refuses_a_bad_attack_list(sentiment_csv, tmp_path, capsys, attack, message):
    assert run("compare", "--methods", "none", "--model", "textcnn", "--train", sentiment_csv,
               "--attack", attack, "--output-dir", tmp_path / "cmp", "--quiet") == 2
    assert message in capsys.readouterr().err and not (tmp_path / "cmp").exists()


def test_compare_scores_several_radii_and_a_typod_test_copy(sentiment_csv, tmp_path, capsys):
    import torch

    from advnlp.attacks import random_typos
    from advnlp.cli.data import load_splits
    from advnlp.cli.rundir import load_run
    from advnlp.cli.tasks.classification.classify import predict

    out = tmp_path / "cmp"
    assert run("compare", "--methods", "none,fgm", "--model", "textcnn", "--train", sentiment_csv,
               "--epochs", "2", "--attack-epsilon", "2,0.5", "--attack-steps", "2",
               "--attack-samples", "1000", "--typo-rate", "0.3", "--output-dir", out,
               "--quiet") == 0
    result = read_json(out, "compare.json")
    assert result["attack"]["epsilons"] == [0.5, 2.0]
    assert result["typos"]["rate"] == 0.3
    printed = capsys.readouterr().out
    assert "robust acc (eps=0.5)" in printed and "robust acc (eps=2)" in printed
    assert "acc on typo'd test (p=0.3)" in printed
    for r in result["methods"]:
        # The whole test split is attacked: robust at a bigger radius <= at a smaller <= clean.
        assert r["robust_accuracy@2"] <= r["robust_accuracy@0.5"] <= r["accuracy"]
        v = {k: r[f"validation_{k}"] for k in ("accuracy", "robust_accuracy@2",
                                                "robust_accuracy@0.5", "typo_accuracy")}
        assert 0 <= v["robust_accuracy@2"] <= v["robust_accuracy@0.5"] <= 1, v
        cfg, labels, clf = load_run(r["run_dir"], "cpu")
        test = load_splits(cfg.data, cfg.seed).test
        noisy = [(t,) for t in random_typos([t[0] for t, _ in test], 0.3, seed=0)]
        assert noisy != [t for t, _ in test]
        pred = predict(clf, noisy, 8, torch.device("cpu")).argmax(-1)
        gold = labels.encode([lab for _, lab in test], "test")
        assert r["typo_accuracy"] == pytest.approx((pred == gold).float().mean().item())
    assert (out / "compare.png").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--attack-epsilon", "0.5,0.5"], "more than once"),
    (["--attack-epsilon", "0"], "radii > 0"),
    (["--attack-epsilon", ","], "radii > 0"),
    (["--typo-rate", "0"], "--typo-rate"),
    (["--typo-rate", "1.5"], "--typo-rate"),
])
def test_bad_radii_and_typo_rates_are_refused_before_training(sentiment_csv, tmp_path, capsys,
                                                              flags, message):
    out = tmp_path / "cmp"
    assert run("compare", "--methods", "none", "--model", "textcnn", "--train", sentiment_csv,
               "--output-dir", out, "--quiet", *flags) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_validation_scores_clean_skips_the_validation_attacks_only(sentiment_csv, tmp_path, capsys):
    args = ["compare", "--methods", "none,fgm", "--model", "textcnn", "--train", sentiment_csv,
            "--epochs", "1", "--attack-steps", "2", "--attack-samples", "8", "--typo-rate", "0.3",
            "--cost-rounds", "0", "--quiet"]
    assert run(*args, "--output-dir", tmp_path / "full") == 0
    assert run(*args, "--validation-scores", "clean", "--output-dir", tmp_path / "clean") == 0
    full, clean = read_json(tmp_path / "full", "compare.json"), read_json(tmp_path / "clean",
                                                                             "compare.json")
    for f, c in zip(full["methods"], clean["methods"]):
        # the same runs: every test score and the clean validation metrics agree
        for k in ("accuracy", "robust_accuracy@0.5", "typo_accuracy", "validation_accuracy"):
            assert c[k] == f[k], k
        assert "validation_robust_accuracy@0.5" in f and "validation_typo_accuracy" in f
        assert "validation_robust_accuracy@0.5" not in c and "validation_typo_accuracy" not in c
    assert read_json(tmp_path / "clean", "compare-config.json")["validation_scores"] == "clean"
    assert run(*args, "--validation-scores", "some", "--output-dir", tmp_path / "x") == 2


def test_eval_strategy_end_validates_after_the_last_epoch_only(sentiment_csv, tmp_path, capsys):
    args = ["train", "--model", "textcnn", "--train", sentiment_csv, "--epochs", "3",
            "--method", "fgm"]
    assert run(*args, "--output-dir", tmp_path / "every") == 0
    assert run(*args, "--eval-strategy", "end", "--output-dir", tmp_path / "end") == 0
    every, end = read_json(tmp_path / "every", "metrics.json"), read_json(tmp_path / "end",
                                                                          "metrics.json")
    assert [e["validation"] == {} for e in end["epochs"]] == [True, True, False]
    assert end["epochs"][-1]["validation"] == every["epochs"][-1]["validation"]
    assert end["final"] == every["final"]  # validating changes nothing it trains on
    assert [e["step_losses"] for e in end["epochs"]] == [e["step_losses"] for e in every["epochs"]]
    assert (tmp_path / "end" / "plot.png").is_file()
    assert run(*args, "--eval-strategy", "never", "--output-dir", tmp_path / "x") == 2


def test_compare_scores_the_word_swap_attack_as_advnlp_attack_does(sentiment_csv, tiny_bert,
                                                                    tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run("compare", "--methods", "none", "--model", tiny_bert, "--train", sentiment_csv,
               "--epochs", "8", "--lr", "5e-3", "--batch-size", "16", "--max-length", "16",
               "--attack", "word,word-swap", "--attack-limit", "12", "--output-dir", out,
               "--quiet") == 0
    row = read_json(out, "compare.json")["methods"][0]
    assert "| acc under word attack | acc under word-swap attack |" in capsys.readouterr().out
    assert run("attack", out / "none", "--attack", "word-swap", "--limit", "12") == 0
    alone = read_json(out, "none", "attack-word-swap.json")
    assert alone["params"]["transformations"] == ["substitute"]
    assert row["attacked_accuracy@word-swap"] == alone["attacked_accuracy"]
    assert row["attack_success_rate@word-swap"] == alone["success_rate"]
