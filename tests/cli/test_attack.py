"""`advnlp attack`, and adversarial data augmentation with `train --augment-with-attack`."""
import csv
import json
import os

import pytest
from safetensors.torch import load_file

from cli_helpers import ctrl_c_after, read_json, run

CSV_COLUMNS = ["original", "perturbed", "label", "prediction", "status", "queries",
               "changed_fraction"]
SUMMARY = {"examples", "clean_accuracy", "attacked_accuracy", "success_rate", "successes",
           "avg_changed_fraction", "avg_queries", "seconds_per_example"}


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("advnlp: error:") and "\n" not in err, err
    for n in needles:
        assert n in err, err


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def textcnn_run(sentiment_csv, tmp_path):
    out = tmp_path / "run"
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--method", "none",
               "--epochs", "3", "--output-dir", out, "--quiet") == 0
    return out


def test_char_word_and_embedding_attacks_end_to_end(textcnn_run, sentiment_csv, capsys):
    out = textcnn_run
    capsys.readouterr()
    for name in ("char", "word"):
        assert run("attack", out, "--attack", name, "--data", sentiment_csv, "--limit", "20") == 0
        result = read_json(out, f"attack-{name}.json")
        assert SUMMARY <= set(result) and result["attack"] == name
        assert result["examples"] == 20 and result["limit"] == 20
        assert result["seed"] == 42 and result["params"]["seed"] == 42  # the run's seed
        assert result["data"] == sentiment_csv and result["params"]["max_change"] == 0.15
        assert result["attacked_accuracy"] <= result["clean_accuracy"]
        rows = _rows(out / f"adversarial-{name}.csv")
        assert list(rows[0]) == CSV_COLUMNS and len(rows) == 20
        assert {r["label"] for r in rows} <= {"neg", "pos"}  # label names, not indices
        assert {r["status"] for r in rows} <= {"success", "failed", "skipped"}
        text = capsys.readouterr().out
        assert f"{name} attack on 20 examples" in text and "accuracy under attack" in text
        assert f"adversarial-{name}.csv" in text
    assert read_json(out, "attack-word.json")["params"]["threshold"] == 0.6

    assert run("attack", out, "--attack", "embedding", "--epsilons", "0.5,50", "--steps", "2",
               "--norm", "linf", "--random-start", "--seed", "7") == 0
    result = read_json(out, "attack-embedding.json")
    assert result["norm"] == "linf" and result["random_start"] and result["seed"] == 7
    assert [p["epsilon"] for p in result["curve"]] == [0.0, 0.5, 50.0]
    assert result["examples"] == 12 and result["data"] == "test split"
    assert result["curve"][-1]["accuracy"] < result["curve"][0]["accuracy"]
    assert not os.path.exists(out / "adversarial-embedding.csv")
    assert "| epsilon (linf) |" in capsys.readouterr().out


def test_same_seed_same_adversarial_examples(textcnn_run):
    out = textcnn_run
    assert run("attack", out, "--attack", "char", "--limit", "12") == 0
    first = _rows(out / "adversarial-char.csv")
    assert run("attack", out, "--attack", "char", "--limit", "12") == 0
    assert _rows(out / "adversarial-char.csv") == first


def test_chinese_char_attack(chinese_csv, tmp_path):
    out = tmp_path / "run"
    assert run("train", "--model", "textcnn", "--train", chinese_csv, "--text-column", "评论",
               "--label-column", "标签", "--epochs", "3", "--output-dir", out, "--quiet") == 0
    assert run("attack", out, "--attack", "char", "--data", chinese_csv, "--limit", "20",
               "--max-change", "0.3") == 0
    result = read_json(out, "attack-char.json")
    assert result["examples"] == 20 and result["params"]["max_change"] == 0.3
    rows = _rows(out / "adversarial-char.csv")
    assert {r["label"] for r in rows} <= {"正面", "负面"}
    changed = [r for r in rows if r["status"] == "success"]
    assert all(r["perturbed"] != r["original"] for r in changed)


def test_pairs_are_refused_for_discrete_attacks(pairs_tsv, tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", "--model", tiny_bert, "--train", pairs_tsv, "--text-columns",
               "premise,hypothesis", "--method", "none", "--epochs", "1", "--max-length", "16",
               "--output-dir", out, "--quiet") == 0
    capsys.readouterr()
    for name in ("char", "word"):
        assert run("attack", out, "--attack", name) == 2
        _one_line_error(capsys, "sentence pairs", "--attack embedding")
    assert run("attack", out, "--attack", "embedding", "--epsilons", "1", "--steps", "1") == 0
    assert read_json(out, "attack-embedding.json")["method"] == "fgsm"
    common = ["--model", tiny_bert, "--train", pairs_tsv, "--text-columns", "premise,hypothesis",
              "--output-dir", tmp_path / "other"]
    assert run("train", *common, "--augment-with-attack", "char") == 2
    _one_line_error(capsys, "sentence pairs")
    assert run("compare", *common, "--attack", "word") == 2
    _one_line_error(capsys, "sentence pairs")


@pytest.mark.parametrize("argv, needle", [
    (["--attack", "typo"], "unknown attack 'typo'"),
    ([], "--attack"),
    (["--attack", "char", "--limit", "0"], "--limit"),
    (["--attack", "char", "--limit", "ten"], "invalid int value"),
    (["--attack", "char", "--max-change", "1.5"], "--max-change"),
    (["--attack", "char", "--query-budget", "0"], "--query-budget"),
    (["--attack", "word", "--threshold", "2"], "--threshold"),
    (["--attack", "embedding", "--epsilons", "0,1"], "--epsilons"),
    (["--attack", "embedding", "--epsilons", "a,b"], "not a comma-separated list"),
    (["--attack", "embedding", "--norm", "l3"], "--norm"),
    (["--attack", "embedding", "--steps", "0"], "--steps"),
])
def test_bad_attack_options(argv, needle, tmp_path, capsys):
    assert run("attack", tmp_path, *argv) == 2
    _one_line_error(capsys, needle)


def test_attack_needs_a_finished_run(tmp_path, capsys):
    assert run("attack", tmp_path / "missing", "--attack", "char") == 2
    _one_line_error(capsys, "not a run directory")


@pytest.mark.parametrize("argv, needle", [
    (["--augment-with-attack", "embedding"], "--augment-with-attack takes char or word"),
    (["--augment-with-attack", "char", "--augment-samples", "0"], "--augment-samples"),
])
def test_bad_augmentation_options(argv, needle, sentiment_csv, tmp_path, capsys):
    assert run("train", "--model", "textcnn", "--train", sentiment_csv,
               "--output-dir", tmp_path / "run", *argv) == 2
    _one_line_error(capsys, needle)


AUG = ["--model", "textcnn", "--epochs", "3", "--batch-size", "16", "--method", "fgm",
       "--augment-with-attack", "char", "--augment-samples", "48", "--quiet"]


def _weights(run_dir):
    return load_file(os.path.join(run_dir, "model", "model.safetensors"))


def test_augmentation_adds_examples_and_resume_is_exact(sentiment_csv, tmp_path, monkeypatch,
                                                        capsys):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run("train", *AUG, "--train", sentiment_csv, "--output-dir", straight) == 0
    metrics = read_json(straight, "metrics.json")
    rounds = [e.get("augmentation") for e in metrics["epochs"]]
    assert rounds[-1] is None and all(r and r["attacked"] == 48 for r in rounds[:-1])
    added = sum(r["added"] for r in rounds[:-1])
    assert added > 0 and metrics["augmented_examples"] == added
    assert metrics["epochs"][-1]["train_examples"] == 96 + added
    assert metrics["epochs"][-1]["steps"] == -(-(96 + added) // 16)
    assert read_json(straight, "config.json")["augment_with_attack"] == "char"

    # Stopped in epoch 2, after the first augmentation round: the added examples come
    # back from the checkpoint and the run ends with the uninterrupted weights.
    with monkeypatch.context() as m:
        ctrl_c_after(m, 8)
        assert run("train", *AUG, "--train", sentiment_csv, "--output-dir", stopped) == 130
    capsys.readouterr()
    assert run("train", "--resume", stopped, "--quiet") == 0
    a, b = _weights(straight), _weights(stopped)
    assert all(a[k].equal(b[k]) for k in a)
    resumed = read_json(stopped, "metrics.json")["epochs"]
    assert [e.get("augmentation", {}).get("added") for e in resumed] == \
        [r and r["added"] for r in rounds]
    assert [e["step_losses"] for e in resumed] == [e["step_losses"] for e in metrics["epochs"]]


def _neighbours_by_hand(model_dir, k=8):
    """Each whole word's k nearest whole words by cosine of the saved input embeddings,
    computed here from the files (the WordPiece vocabulary, the embedding matrix), not by
    advnlp."""
    weights = load_file(os.path.join(model_dir, "model.safetensors"))
    table = next(v for n, v in weights.items() if n.endswith("word_embeddings.weight"))
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        vocab = json.load(f)["model"]["vocab"]  # token -> row
    words = [(w, i) for w, i in vocab.items() if w.isalpha()]  # no [PAD], no ##pieces
    out = {}
    for w, i in words:
        sims = []
        for v, j in words:
            if v != w:
                a, b = table[i].double(), table[j].double()
                sims.append((float(a @ b / (a.norm() * b.norm())), v))
        out[w] = {v for _, v in sorted(sims, reverse=True)[:k]}
    return out


def test_word_swap_attack_only_substitutes_embedding_neighbours(sentiment_csv, tiny_bert,
                                                                 tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", "--model", tiny_bert, "--train", sentiment_csv, "--method", "none",
               "--epochs", "8", "--lr", "5e-3", "--batch-size", "16", "--max-length", "16",
               "--output-dir", out, "--quiet") == 0
    # threshold -1: every word has its 8 nearest as substitutes, so the search has choices.
    assert run("attack", out, "--attack", "word-swap", "--threshold", "-1", "--data",
               sentiment_csv, "--limit", "30", "--max-change", "0.3") == 0
    result = read_json(out, "attack-word-swap.json")
    assert result["attack"] == "word-swap" and result["params"]["transformations"] == ["substitute"]
    assert "word-swap attack on 30 examples" in capsys.readouterr().out
    near = _neighbours_by_hand(out / "model")
    rows = _rows(out / "adversarial-word-swap.csv")
    won = [r for r in rows if r["status"] == "success"]
    assert won, "the search found no swap at all: the test would check nothing"
    for r in won:
        before, after = r["original"].split(), r["perturbed"].split()
        assert len(after) == len(before)  # no deletion, no duplication
        swapped = [(a, b) for a, b in zip(before, after) if a != b]
        assert 1 <= len(swapped) <= int(0.3 * len(before))
        assert all(b.lower() in near[a.lower()] for a, b in swapped), swapped


def test_word_swap_is_refused_where_it_could_not_mean_what_it_says(textcnn_run, sentiment_csv,
                                                                   tiny_bert, tmp_path, capsys):
    capsys.readouterr()
    assert run("attack", textcnn_run, "--attack", "word-swap") == 2
    _one_line_error(capsys, "--attack word-swap", "from scratch", "--attack word")
    assert run("compare", "--methods", "none", "--model", "textcnn", "--train", sentiment_csv,
               "--attack", "char,word-swap", "--output-dir", tmp_path / "cmp", "--quiet") == 2
    _one_line_error(capsys, "from scratch")
    assert not (tmp_path / "cmp").exists()  # refused before anything was trained
    out = tmp_path / "bert"
    assert run("train", "--model", tiny_bert, "--train", sentiment_csv, "--method", "none",
               "--epochs", "1", "--max-length", "16", "--output-dir", out, "--quiet") == 0
    capsys.readouterr()
    # No two of the tiny model's random embeddings are at cosine 1: nothing to swap.
    assert run("attack", out, "--attack", "word-swap", "--threshold", "1") == 2
    _one_line_error(capsys, "--attack word-swap", "no editable word", "has a substitute")
    assert not (out / "attack-word-swap.json").exists()
