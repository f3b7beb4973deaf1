"""advnlp train --task token-classification: CoNLL / JSONL in, seqeval metrics out, every
method, resume, and the clear errors."""
import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from advnlp.cli.tasks.tagging.tag_run import TagRun
from cli_helpers import read_json, run
from tagging_data import conll as _conll, sentences as _sentences

def _files(ner):
    return ["--train", ner["train"], "--validation", ner["validation"], "--test", ner["test"]]


BILSTM = ["--task", "token-classification", "--model", "bilstm", "--batch-size", "16", "--quiet"]


@pytest.mark.parametrize("crf", [False, True], ids=["softmax", "crf"])
def test_a_bilstm_tagger_learns_capitalised_entities(ner, tmp_path, crf):
    out = tmp_path / "run"
    assert run("train", *BILSTM, *_files(ner), *(["--crf"] if crf else []), "--method", "fgm",
               "--epochs", "8", "--lr", "1e-2", "--output-dir", out) == 0
    m = read_json(out, "metrics.json")
    assert m["task"] == "token-classification"
    assert m["final"]["test"]["entity_f1"] > 0.9
    assert set(m["final"]["test"]["per_type"]) == {"ENT"}
    assert read_json(out, "labels.json")["names"] == ["O", "B-ENT", "I-ENT"]


def test_metrics_json_equals_seqeval_on_the_written_predictions(ner, tmp_path):
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    out = tmp_path / "run"
    assert run("train", *BILSTM, *_files(ner), "--method", "none", "--epochs", "2",
               "--output-dir", out) == 0
    rows = [json.loads(line) for line in open(out / "predictions-test.jsonl", encoding="utf-8")]
    assert len(rows) == 30
    gold, pred = [r["tags"] for r in rows], [r["predicted"] for r in rows]
    test = read_json(out, "metrics.json")["final"]["test"]
    assert test["default"]["micro"]["f1"] == pytest.approx(f1_score(gold, pred))
    assert test["default"]["micro"]["precision"] == pytest.approx(precision_score(gold, pred))
    assert test["strict"]["micro"]["recall"] == pytest.approx(
        recall_score(gold, pred, mode="strict", scheme=IOB2))
    tokens = sum(len(g) for g in gold)
    assert test["token_accuracy"] == pytest.approx(
        sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p)) / tokens)
    assert [r["tokens"] for r in rows][0] == [line.split()[0] for line in open(ner["test"])
                                              .read().split("\n\n")[1].splitlines()]


@pytest.mark.parametrize("method", ["fgm", "pgd", "smart", "vat", "awp", "freeat", "atta"])
def test_every_method_trains_a_hugging_face_tagger(ner, tmp_path, tiny_tagger, method):
    out = tmp_path / "run"
    assert run("train", "--task", "token-classification", "--model", tiny_tagger, *_files(ner),
               "--method", method, "--epochs", "1", "--batch-size", "16", "--quiet",
               "--output-dir", out) == 0
    m = read_json(out, "metrics.json")
    assert all(torch.isfinite(torch.tensor(x)) for x in m["epochs"][0]["step_losses"])
    assert 0 <= m["final"]["test"]["entity_f1"] <= 1
    from transformers import AutoModelForTokenClassification

    saved = AutoModelForTokenClassification.from_pretrained(str(out / "model"))
    assert saved.config.id2label == {0: "O", 1: "B-ENT", 2: "I-ENT"}


def test_all_subtokens_labels_the_later_pieces(ner, tmp_path, tiny_tagger, monkeypatch):
    seen = {}
    batch = TagRun.batch

    def recording(self, idx):
        out = batch(self, idx)
        seen.setdefault("labels", out["labels"])
        return out

    monkeypatch.setattr(TagRun, "batch", recording)
    args = ["--task", "token-classification", "--model", tiny_tagger, *_files(ner),
            "--method", "none", "--epochs", "1", "--batch-size", "16", "--quiet"]
    assert run("train", *args, "--output-dir", tmp_path / "first") == 0
    first = seen.pop("labels")
    assert run("train", *args, "--label-all-subtokens", "--output-dir", tmp_path / "all") == 0
    every = seen.pop("labels")
    # the same batch: every first piece labelled alike; the second pieces of London and
    # Berlin (B-ENT or I-ENT words) are -100 by default and I-ENT (id 2) with the option
    both = first != -100
    assert torch.equal(first[both], every[both])
    later = (first == -100) & (every != -100)
    assert later.sum() > 0 and bool((every[later] == 2).all())
    assert bool(((every == -100) == (first == -100) & ~later).all())


def test_resume_of_a_tagger_is_bit_exact(ner, tmp_path, monkeypatch):
    args = [*BILSTM, "--crf", *_files(ner), "--method", "pgd", "--epochs", "2"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run("train", *args, "--output-dir", straight) == 0
    step, calls = TagRun.task_step, {"n": 0}

    def step_then_sigint(self, *a, **k):
        loss = step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 13:  # 10 steps per epoch: inside epoch 2
            signal.raise_signal(signal.SIGINT)
        return loss

    with monkeypatch.context() as m:
        m.setattr(TagRun, "task_step", step_then_sigint)
        assert run("train", *args, "--output-dir", stopped) == 130
    assert run("train", "--resume", stopped, "--quiet") == 0
    a = load_file(os.path.join(straight, "model", "model.safetensors"))
    b = load_file(os.path.join(stopped, "model", "model.safetensors"))
    assert all(a[k].equal(b[k]) for k in a)
    assert read_json(straight, "metrics.json")["final"] == read_json(stopped, "metrics.json")["final"]


def test_split_off_validation_and_test_and_warn_about_invalid_continuations(tmp_path, capsys):
    sentences = _sentences(60, 3) + [(["x", "Bob"], ["O", "I-ENT"])]
    train = _conll(tmp_path / "train.conll", sentences)
    out = tmp_path / "run"
    assert run("train", "--task", "token-classification", "--model", "bilstm", "--train", train,
               "--method", "none", "--epochs", "1", "--output-dir", out) == 0
    err = capsys.readouterr().err
    assert "1 I- tag(s) that continue no entity" in err
    m = read_json(out, "metrics.json")
    assert m["validation_examples"] == m["test_examples"] == 6 and m["train_examples"] == 49


@pytest.mark.parametrize("extra, content, message", [
    ([], "EU B-ORG\nsays\n", "train.conll:2: one column"),
    ([], "EU ORG\n", "tag 'ORG' is neither O nor"),
    (["--model", "textcnn"], None, "--model textcnn classifies texts"),
    (["--augment-with-attack", "char"], None, "does not take --augment-with-attack"),
])
def test_bad_tagging_input_exits_2(ner, tmp_path, capsys, extra, content, message):
    train = ner["train"]
    if content is not None:
        (tmp_path / "bad").mkdir()
        train = str(tmp_path / "bad" / "train.conll")
        open(train, "w").write(content)
    args = ["--task", "token-classification", "--model", "bilstm", "--train", train, *extra]
    assert run("train", *args, "--quiet", "--output-dir", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.parametrize("name, content, line", [
    ("train.jsonl", b'{"tokens": ["EU"], "tags": ["B-ORG"]}\n'
                    b'{"tokens": ["nice", "\\ud83d"], "tags": ["O", "O"]}\n', 2),
    ("train.conll", b"EU B-ORG\n\nnice O\n\xed\xa0\xbd O\n", 4),  # the surrogate's bytes
])
def test_a_lone_surrogate_in_tagger_data_exits_2_before_anything_is_written(
        ner, tmp_path, capsys, name, content, line):
    # Half a UTF-16 pair trained every epoch and then failed to save the vocabulary.
    train = tmp_path / name
    train.write_bytes(content)
    assert run("train", *BILSTM, "--train", train, "--validation", ner["validation"],
               "--output-dir", tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert f"{train}:{line}:" in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()


def test_crf_needs_the_tagging_task(ner, tmp_path, capsys):
    assert run("train", "--model", "bilstm", "--crf", "--train", ner["train"], "--quiet",
               "--output-dir", tmp_path / "a") == 2
    assert "--crf and --label-all-subtokens are for --task token-classification" in capsys.readouterr().err
