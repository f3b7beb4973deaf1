"""--typo-defence: built from the training text, saved with the model, applied wherever the
run's model is loaded (eval, attack, compare), never silently dropped."""
import os
import shutil

import pytest

from cli_helpers import read_json, run, write_csv

ARGS = ["--model", "textcnn", "--epochs", "3", "--batch-size", "16", "--quiet", "--method", "none"]


@pytest.fixture
def runs(sentiment_csv, tmp_path_factory):
    """The same run with and without the defence."""
    out = tmp_path_factory.mktemp("defence")
    for name, extra in (("plain", []), ("defended", ["--typo-defence"])):
        assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", out / name, *extra) == 0
    return out


def test_the_defence_is_saved_with_the_model(runs):
    assert read_json(runs, "defended", "config.json")["typo_defence"] is True
    assert read_json(runs, "plain", "config.json")["typo_defence"] is False
    saved = read_json(runs, "defended", "model", "typo_defence.json")
    assert saved["format"] == "advnlp.typo-defence"
    assert not (runs / "plain" / "model" / "typo_defence.json").exists()


def test_the_char_attack_queries_the_defence(runs, capsys):
    for name in ("plain", "defended"):
        assert run("attack", runs / name, "--attack", "char", "--limit", "12") == 0
    plain = read_json(runs, "plain", "attack-char.json")
    defended = read_json(runs, "defended", "attack-char.json")
    # The sentiment word decides these texts: a typo in it fools the plain model, and the
    # defended pipeline (text -> defence -> model) maps it back.
    assert plain["success_rate"] >= 0.25
    assert defended["success_rate"] <= plain["success_rate"] - 0.25


def test_loading_a_run_applies_its_defence_and_it_changes_the_scores(runs, capsys):
    """eval's accuracy on typo'd text is the defended pipeline's; without the normalizer the
    same weights score differently (the defence is what is being measured)."""
    from advnlp.cli.rundir import load_run
    from advnlp.cli.tasks.classification.classify import predict

    cfg, labels, clf = load_run(str(runs / "defended"))
    assert clf.normalizer is not None
    typod = [("the moive was xecellent",), ("a terirble film",), ("plot was wonderufl",),
             ("the story was horirble",)] * 3
    with_defence = predict(clf, typod, 4, "cpu")
    # independent of the code under test: the typos mapped back by hand
    by_hand = [("the movie was excellent",), ("a terrible film",), ("plot was wonderful",),
               ("the story was horrible",)] * 3
    assert with_defence.tolist() == predict(clf, by_hand, 4, "cpu").tolist()
    clf.normalizer = None
    assert predict(clf, typod, 4, "cpu").tolist() != with_defence.tolist()


def test_a_defended_run_without_its_defence_file_is_refused(runs, capsys):
    os.remove(runs / "defended" / "model" / "typo_defence.json")
    assert run("eval", runs / "defended", "--attack-samples", "2") == 2
    err = capsys.readouterr().err
    assert "typo_defence.json" in err and "Traceback" not in err


def test_a_defence_file_of_another_tokenizer_is_refused(runs, sentiment_csv, tmp_path, capsys):
    other = write_csv(tmp_path / "other.csv", ["text", "label"],
                      [[f"quite another vocabulary {i} here", "a" if i % 2 else "b"]
                       for i in range(60)])
    assert run("train", *ARGS, "--train", other, "--output-dir", tmp_path / "o",
               "--typo-defence") == 0
    shutil.copy(tmp_path / "o" / "model" / "typo_defence.json",
                runs / "defended" / "model" / "typo_defence.json")
    assert run("attack", runs / "defended", "--attack", "char", "--limit", "2") == 2
    err = capsys.readouterr().err
    assert "typo_defence.json" in err and "tokenizer" in err and "Traceback" not in err


def test_a_corpus_without_spaced_words_is_refused(tmp_path, capsys):
    zh = write_csv(tmp_path / "zh.csv", ["text", "label"],
                   [["这部电影很好看" if i % 2 else "这部电影很难看", "pos" if i % 2 else "neg"]
                    for i in range(40)])
    assert run("train", *ARGS, "--train", zh, "--output-dir", tmp_path / "r", "--typo-defence") == 2
    err = capsys.readouterr().err
    assert "--typo-defence" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_compare_has_a_defence_entry(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run("compare", *ARGS, "--train", sentiment_csv, "--output-dir", out, "--methods",
               "none,typo-defence", "--attack", "char", "--attack-limit", "12",
               "--attack-samples", "4", "--cost-rounds", "0") == 0
    assert read_json(out, "typo-defence", "config.json")["typo_defence"] is True
    rows = {r["method"]: r for r in read_json(out, "compare.json")["methods"]}
    assert rows["typo-defence"]["attacked_accuracy@char"] > rows["none"]["attacked_accuracy@char"]


def test_taggers_refuse_the_defence(ner, tmp_path, capsys):
    assert run("train", "--task", "token-classification", "--model", "bilstm", "--train",
               ner["train"], "--output-dir", tmp_path / "t", "--typo-defence", "--quiet") == 2
    assert "--typo-defence" in capsys.readouterr().err


def test_greedy_online_training_behind_the_defence(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run("compare", *ARGS, "--train", sentiment_csv, "--output-dir", out, "--methods",
               "greedy-char,greedy-char+typo-defence", "--attack-samples", "4",
               "--cost-rounds", "0") == 0
    for name, defended in (("greedy-char", False), ("greedy-char+typo-defence", True)):
        cfg = read_json(out, name, "config.json")
        assert (cfg["online_attack"], cfg["online_search"], cfg["typo_defence"]) == \
            ("char", "greedy", defended)
        assert read_json(out, name, "metrics.json")["online_attack"]["edited_examples"] > 0


def test_the_online_search_goes_with_online_attack(sentiment_csv, tmp_path, capsys):
    assert run("train", *ARGS, "--train", sentiment_csv, "--output-dir", tmp_path / "r",
               "--online-search", "greedy") == 2
    assert "--online-search goes with --online-attack" in capsys.readouterr().err
