"""--online-attack char|word: DiscreteAT inside every training step, from the command line."""
import math
import os

import pytest
from safetensors.torch import load_file

from cli_helpers import ctrl_c_after, read_json, run, write_csv

ARGS = ["--model", "textcnn", "--epochs", "2", "--batch-size", "16", "--quiet"]


def _weights(run_dir):
    return load_file(os.path.join(run_dir, "model", "model.safetensors"))


def test_every_step_edits_its_share_of_the_batch_and_counts_it(sentiment_csv, tmp_path):
    out = tmp_path / "run"
    assert run("train", *ARGS, "--train", sentiment_csv, "--method", "fgm", "--online-attack",
               "char", "--online-fraction", "0.25", "--output-dir", out) == 0
    metrics = read_json(out, "metrics.json")
    assert read_json(out, "config.json")["online_attack"] == "char"
    # 96 training examples in batches of 16: 6 steps an epoch, ceil(0.25 * 16) = 4 edited each.
    per_epoch = 6 * math.ceil(0.25 * 16)
    assert [e["online_attack"] for e in metrics["epochs"]] == \
        [{"edited_examples": per_epoch, "unedited_examples": 0}] * 2
    assert metrics["online_attack"] == {"attack": "char", "fraction": 0.25,
                                        "edited_examples": 2 * per_epoch, "unedited_examples": 0}


def test_texts_with_nothing_to_edit_are_counted_not_a_crash(tmp_path):
    rows = [[t, lab] for i in range(40) for t, lab in
            [("the a it is" if i % 2 else "12 34 56", "x" if i % 2 else "y")]]
    data = write_csv(tmp_path / "plain.csv", ["text", "label"], rows)
    out = tmp_path / "run"
    assert run("train", *ARGS, "--train", data, "--online-attack", "word", "--method", "none",
               "--online-fraction", "1", "--output-dir", out) == 0
    counts = read_json(out, "metrics.json")["online_attack"]
    assert counts["edited_examples"] == 0
    assert counts["unedited_examples"] == 2 * 32  # every training example, every epoch


def test_multi_label_runs_edit_and_count_like_single_label_ones(multilabel_jsonl, tmp_path):
    out = tmp_path / "run"
    assert run("train", *ARGS, "--train", multilabel_jsonl, "--label-column", "tags",
               "--multi-label", "--online-attack", "char", "--method", "fgm",
               "--output-dir", out) == 0
    metrics = read_json(out, "metrics.json")
    assert "micro_f1" in metrics["final"]["test"]
    n = metrics["train_examples"]  # in batches of 16, ceil(half) of each batch edited
    per_epoch = sum(math.ceil(min(16, n - b) / 2) for b in range(0, n, 16))
    assert metrics["online_attack"]["edited_examples"] == 2 * per_epoch
    assert metrics["online_attack"]["unedited_examples"] == 0


def test_chinese_text_is_edited_character_by_character(chinese_csv, tmp_path):
    out = tmp_path / "run"
    assert run("train", *ARGS, "--train", chinese_csv, "--text-column", "评论", "--label-column",
               "标签", "--online-attack", "char", "--method", "none", "--output-dir", out) == 0
    # 80 training examples, batches of 16: 5 steps of 8 edited examples an epoch; every
    # review holds at least two sentiment characters, which may be edited.
    assert read_json(out, "metrics.json")["online_attack"]["edited_examples"] == 2 * 40


@pytest.mark.parametrize("stop_after", [2, 8], ids=["mid-epoch-1", "mid-epoch-2"])
def test_resume_edits_what_the_uninterrupted_run_edited(sentiment_csv, tmp_path, monkeypatch,
                                                         stop_after):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    argv = ["train", *ARGS, "--train", sentiment_csv, "--online-attack", "char", "--method", "fgm"]
    assert run(*argv, "--output-dir", straight) == 0
    with monkeypatch.context() as m:
        ctrl_c_after(m, stop_after)
        assert run(*argv, "--output-dir", stopped) == 130
    assert run("train", "--resume", stopped, "--quiet") == 0
    a, b = _weights(straight), _weights(stopped)
    assert all(a[k].equal(b[k]) for k in a)
    assert read_json(straight, "metrics.json")["online_attack"] == \
        read_json(stopped, "metrics.json")["online_attack"]


def test_a_pretrained_style_model_and_sentence_pairs(tiny_bert, tmp_path):
    rows = [[f"the movie was {'good' if i % 2 else 'bad'} indeed", "it was a film", "pos" if i % 2 else "neg"]
            for i in range(48)]
    data = write_csv(tmp_path / "pairs.csv", ["a", "b", "label"], rows)
    out = tmp_path / "run"
    assert run("train", "--model", tiny_bert, "--train", data, "--text-columns", "a,b",
               "--online-attack", "char", "--method", "none", "--epochs", "1", "--quiet",
               "--output-dir", out) == 0
    assert read_json(out, "metrics.json")["online_attack"]["edited_examples"] > 0


def test_compare_entries_combine_methods_with_discrete_attacks(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run("compare", *ARGS, "--train", sentiment_csv, "--attack-samples", "8",
               "--attack-steps", "2", "--methods", "none,online-char,fgm+online-char,augment-char",
               "--augment-samples", "8", "--output-dir", out) == 0
    cfg = {m: read_json(out, m, "config.json") for m in
           ("none", "online-char", "fgm+online-char", "augment-char")}
    assert [(c["method"], c["online_attack"], c["augment_with_attack"]) for c in cfg.values()] == [
        ("none", None, None), ("none", "char", None), ("fgm", "char", None), ("none", None, "char")]
    rows = [r["method"] for r in read_json(out, "compare.json")["methods"]]
    assert rows == ["none", "online-char", "fgm+online-char", "augment-char"]


@pytest.mark.parametrize("flags, message", [
    (["--online-attack", "emoji"], "--online-attack takes char or word"),
    (["--online-attack", "char", "--method", "vat"], "combines with --method"),
    (["--online-attack", "char", "--method", "awp"], "combines with --method"),
    (["--online-attack", "char", "--online-fraction", "0"], "--online-fraction"),
    (["--online-attack", "char", "--online-fraction", "1.5"], "--online-fraction"),
])
def test_bad_online_attack_options_exit_2_before_anything_is_written(sentiment_csv, tmp_path, capsys,
                                                                    flags, message):
    out = tmp_path / "run"
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", out, *flags) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_online_attack_needs_the_loop_engine(tiny_bert, sentiment_csv, tmp_path, capsys):
    assert run("train", "--model", tiny_bert, "--train", sentiment_csv, "--engine", "trainer",
               "--online-attack", "char", "--output-dir", tmp_path / "r", "--quiet") == 2
    assert "--engine loop" in capsys.readouterr().err


def test_a_bad_compare_entry_is_refused(sentiment_csv, tmp_path, capsys):
    assert run("compare", *ARGS, "--train", sentiment_csv, "--methods", "none,fgm+online-emoji",
               "--output-dir", tmp_path / "c") == 2
    assert "unknown method 'fgm+online-emoji'" in capsys.readouterr().err
