"""A tagger's robustness: entity F1 under the embedding attack (checked against a hand-made
FGSM step) and under the character attack (non-entity words only by default), through
advnlp eval / attack / compare; and SMART/VAT's per-token masks through the command line."""
import json

import pytest
import torch

from advnlp.attacks import perturbed_outputs, word_typos
from advnlp.cli.tasks.tagging import tag as TG
from advnlp.cli.tasks.tagging.tag_attacks import tag_char_attack, tag_embedding_robustness
from cli_helpers import read_json, run
from tagging_data import sentences as _sentences
from test_tag_cli import BILSTM, _files

NAMES = ["O", "B-ENT", "I-ENT"]


def _tagger(sentences, crf=False, seed=0):
    torch.manual_seed(seed)
    tagger = TG.build_tagger("bilstm", NAMES, [s for s, _ in sentences], 32, crf=crf)
    tagger.model.eval()
    return tagger


# --------------------------------------------------------------------------
# the embedding attack
# --------------------------------------------------------------------------
def test_perturbed_outputs_takes_one_normalised_step_per_example_and_restores_the_model():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4, padding_idx=0)
    head = torch.nn.Linear(4, 3)
    model = torch.nn.Sequential(emb, head)
    model.train()
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    y = torch.tensor([[0, 1, 2], [2, 1, 0]])
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def loss_fn(logits):
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="sum")

    out = perturbed_outputs(model, model, loss_fn, ids, [0.7], steps=1)
    # by hand: g = d loss / d embedding output, padding zeroed, delta = 0.7 g / ||g|| per row
    e = emb(ids).detach().requires_grad_(True)
    g, = torch.autograd.grad(loss_fn(head(e)), e)
    g = g * (ids != 0).unsqueeze(-1)
    delta = 0.7 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
    assert torch.allclose(out[0.7], head(e + delta), atol=1e-6)
    assert torch.allclose(out[0.0], head(e), atol=1e-6)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_a_tagger_under_fgsm_is_tagged_as_by_hand():
    sentences = _sentences(12, 3)
    tagger = _tagger(_sentences(40, 0))
    words, gold = [s for s, _ in sentences], [t for _, t in sentences]
    eps = 8.0
    res = tag_embedding_robustness(tagger, words, gold, [eps], 1, 32, "cpu", "BIO")
    # by hand: the embedding output replaced by e + eps g/||g|| through a forward hook
    model = tagger.model
    batch, word_ids = tagger.encode(words)
    index = {n: i for i, n in enumerate(NAMES)}
    labels = torch.tensor([TG.align(w, [index[t] for t in g]) for w, g in zip(word_ids, gold)])
    e = model.embedding(batch["input_ids"]).detach().requires_grad_(True)
    handle = model.embedding.register_forward_hook(lambda m, a, o: state["value"])
    try:
        state = {"value": e}
        logits = model(**batch).logits
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels,
                                                 ignore_index=-100, reduction="sum")
        g, = torch.autograd.grad(loss, e)
        g = g * (batch["input_ids"] != 0).unsqueeze(-1)
        state["value"] = e.detach() + eps * g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
        with torch.no_grad():
            attacked = model(**batch).logits.argmax(-1).tolist()
    finally:
        handle.remove()
    expected = [[NAMES[t] for t in row[: len(w)]] for row, w in zip(attacked, words)]
    assert res["predictions"][eps] == expected
    clean = tagger.predict(words, 32, "cpu")
    assert res["predictions"][0.0] == clean
    assert expected != clean  # the attack changed some tags: the check above is not vacuous
    from seqeval.metrics import f1_score

    assert res["robust_entity_f1"][eps] == pytest.approx(f1_score(gold, expected))
    assert res["curve"][0]["entity_f1"] == pytest.approx(f1_score(gold, clean))


def test_the_embedding_attack_climbs_a_crf_taggers_likelihood():
    sentences = _sentences(12, 3)
    tagger = _tagger(_sentences(40, 0), crf=True)
    words, gold = [s for s, _ in sentences], [t for _, t in sentences]
    res = tag_embedding_robustness(tagger, words, gold, [0.5, 20.0], 3, 32, "cpu", "BIO")
    assert [p["epsilon"] for p in res["curve"]] == [0.0, 0.5, 20.0]
    assert res["curve"][-1]["token_accuracy"] < res["curve"][0]["token_accuracy"]


# --------------------------------------------------------------------------
# the character attack
# --------------------------------------------------------------------------
def _loss(tagger, words, gold):
    index = {n: i for i, n in enumerate(NAMES)}
    batch, word_ids = tagger.encode(words)
    labels = torch.tensor([TG.align(w, [index[t] for t in g]) for w, g in zip(word_ids, gold)])
    with torch.no_grad():
        return tagger.sentence_losses(tagger.model(**batch).logits, labels,
                                      batch["attention_mask"]).tolist()


@pytest.mark.parametrize("crf", [False, True], ids=["softmax", "crf"])
def test_the_char_attack_types_on_non_entity_words_only_and_raises_the_loss(crf):
    sentences = _sentences(15, 5)
    tagger = _tagger(_sentences(40, 0), crf=crf)
    words, gold = [s for s, _ in sentences], [t for _, t in sentences]
    res = tag_char_attack(tagger, words, gold, "cpu", "BIO", max_change=0.3, seed=1)
    assert res["edits"].startswith("non-entity")
    records = res["records"]
    assert sum(bool(r["changed"]) for r in records) == res["sentences_changed"] > 0
    for r in records:
        assert len(r["perturbed"]) == len(r["tokens"])
        differ = [i for i, (a, b) in enumerate(zip(r["tokens"], r["perturbed"])) if a != b]
        assert differ == r["changed"]
        for i in differ:
            assert r["tags"][i] == "O"
            assert r["perturbed"][i] in word_typos(r["tokens"][i])
        assert len(differ) <= max(1, int(0.3 * len(r["tokens"])))
    clean = _loss(tagger, [r["tokens"] for r in records], gold)
    attacked = _loss(tagger, [r["perturbed"] for r in records], gold)
    for r, c, a in zip(records, clean, attacked):
        assert a > c if r["changed"] else a == c
    from seqeval.metrics import f1_score

    again = tagger.predict([r["perturbed"] for r in records], 32, "cpu")
    assert [r["attacked_prediction"] for r in records] == again
    assert res["attacked_entity_f1"] == pytest.approx(f1_score(gold, again))


def test_edit_entities_lets_the_char_attack_type_on_entity_words_too():
    sentences = [(["the", w, "of"], ["O", "B-ENT", "O"]) for w in
                 ["Alice", "Paris", "London", "Google", "Berlin", "Carol", "Acme", "Bob"]]
    tagger = _tagger(_sentences(40, 0))
    words, gold = [s for s, _ in sentences], [t for _, t in sentences]
    plain = tag_char_attack(tagger, words, gold, "cpu", "BIO", seed=0)
    assert plain["sentences_changed"] == 0  # only stopwords are tagged O
    both = tag_char_attack(tagger, words, gold, "cpu", "BIO", seed=0, edit_entities=True)
    assert both["sentences_changed"] > 0
    assert all(r["changed"] in ([], [1]) for r in both["records"])
    assert all(r["tags"] == ["O", "B-ENT", "O"] for r in both["records"])  # gold kept


def test_the_char_attack_swaps_adjacent_cjk_characters_and_never_drops_one():
    sentence = (list("我在北京工作很好"), ["O", "O", "B-LOC", "I-LOC", "O", "O", "O", "O"])
    torch.manual_seed(0)
    names = ["O", "B-LOC", "I-LOC"]
    tagger = TG.build_tagger("bilstm", names, [sentence[0]], 32)
    tagger.model.eval()
    res = tag_char_attack(tagger, [sentence[0]] * 6, [sentence[1]] * 6, "cpu", "BIO",
                          max_change=0.5, seed=0)
    for r, s in zip(res["records"], range(6)):
        assert sorted(r["perturbed"]) == sorted(r["tokens"])  # a permutation: nothing dropped
        for i in r["changed"]:
            assert r["tags"][i] == "O" and i not in (1, 2, 3)  # 在 is a stopword; 北京 an entity
    changed = [r for r in res["records"] if r["changed"]]
    assert changed, "no sentence was attacked: the swap path went untested"
    for r in changed:
        for i in r["changed"]:
            j = i + 1 if i + 1 in r["changed"] else i - 1
            assert r["perturbed"][i] == r["tokens"][j]


# --------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------
@pytest.fixture
def tag_run(ner, tmp_path):
    out = tmp_path / "run"
    assert run("train", *BILSTM, *_files(ner), "--method", "fgm", "--epochs", "4", "--lr", "1e-2",
               "--output-dir", out) == 0
    return out


def test_eval_and_attack_a_tagger_run(tag_run, capsys):
    assert run("eval", tag_run, "--epsilons", "1,20", "--attack-steps", "3") == 0
    ev = read_json(tag_run, "eval.json")
    metrics = read_json(tag_run, "metrics.json")["final"]["test"]
    assert ev["task"] == "token-classification" and ev["examples"] == 30
    assert ev["clean"]["entity_f1"] == pytest.approx(metrics["entity_f1"])
    assert ev["robust"][0]["entity_f1"] == pytest.approx(metrics["entity_f1"])
    assert [p["epsilon"] for p in ev["robust"]] == [0.0, 1.0, 20.0]
    assert "entity F1 under L2 PGD" in capsys.readouterr().out

    assert run("attack", tag_run, "--attack", "char", "--limit", "12") == 0
    out = capsys.readouterr().out
    assert "non-entity words only" in out and "entity F1 under attack" in out
    att = read_json(tag_run, "attack-char.json")
    rows = [json.loads(line) for line in open(tag_run / "adversarial-char.jsonl", encoding="utf-8")]
    assert att["examples"] == len(rows) == 12
    from seqeval.metrics import f1_score

    assert att["attacked_entity_f1"] == pytest.approx(
        f1_score([r["tags"] for r in rows], [r["attacked_prediction"] for r in rows]))
    assert all(r["tags"][i] == "O" for r in rows for i in r["changed"])

    assert run("attack", tag_run, "--attack", "embedding", "--epsilons", "2", "--steps", "2") == 0
    assert read_json(tag_run, "attack-embedding.json")["curve"][1]["epsilon"] == 2.0


def test_eval_and_char_attack_a_hugging_face_tagger(ner, tmp_path, tiny_tagger, capsys):
    out = tmp_path / "hf"
    assert run("train", "--task", "token-classification", "--model", tiny_tagger, *_files(ner),
               "--method", "fgm", "--epochs", "1", "--batch-size", "16", "--quiet",
               "--output-dir", out) == 0
    assert run("eval", out, "--epsilons", "0.5", "--attack-steps", "2") == 0
    ev = read_json(out, "eval.json")
    assert ev["clean"]["entity_f1"] == pytest.approx(
        read_json(out, "metrics.json")["final"]["test"]["entity_f1"])
    assert run("attack", out, "--attack", "char", "--limit", "6", "--edit-entities") == 0
    rows = [json.loads(line) for line in open(out / "adversarial-char.jsonl", encoding="utf-8")]
    assert len(rows) == 6 and all(len(r["perturbed"]) == len(r["tokens"]) for r in rows)
    assert read_json(out, "attack-char.json")["edits"] == "all words"


@pytest.mark.parametrize("args, message", [
    (["--attack", "word"], "--attack word is not for taggers"),
    (["--attack", "embedding", "--edit-entities"], "--edit-entities goes with --attack char"),
])
def test_attack_refuses_what_a_tagger_cannot_take(tag_run, capsys, args, message):
    assert run("attack", tag_run, *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_eval_data_with_a_tag_the_run_never_saw_exits_2(tag_run, tmp_path, capsys):
    bad = tmp_path / "bad.conll"
    bad.write_text("Alice B-PER\nmet O\n", encoding="utf-8")
    assert run("eval", tag_run, "--data", bad) == 2
    assert f"{bad}:1: tag 'B-PER' is not one of the run's tags" in capsys.readouterr().err


def test_attack_data_with_a_lone_surrogate_exits_2(tag_run, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tokens": ["Alice", "\\ud83d"], "tags": ["O", "O"]}\n', encoding="utf-8")
    assert run("attack", tag_run, "--attack", "char", "--data", bad) == 2
    assert f"{bad}:1: \\ud83d is half of a UTF-16 surrogate pair" in capsys.readouterr().err
    assert not (tag_run / "attack-char.json").exists()


def test_compare_taggers_with_seeds_char_attack_and_resume(ner, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", *BILSTM, *_files(ner), "--methods", "none,fgm", "--seeds", "2",
            "--epochs", "2", "--lr", "1e-2", "--attack", "char", "--attack-limit", "8",
            "--attack-epsilon", "1,10", "--attack-samples", "20", "--cost-rounds", "1",
            "--output-dir", out]
    assert run(*args) == 0
    table = capsys.readouterr().out
    assert "entity F1 under char attack" in table and "robust entity F1 (eps=10)" in table
    c = read_json(out, "compare.json")
    assert c["task"] == "token-classification" and c["score"] == "entity_f1"
    assert {"entity_f1", "robust_entity_f1@1", "robust_entity_f1@10",
            "attacked_entity_f1@char", "validation_entity_f1"} <= set(c["metrics"])
    for row in c["methods"]:
        f1s = [read_json(out, row["method"], f"seed-{s}", "metrics.json")["final"]["test"]["entity_f1"]
               for s in (42, 43)]
        assert row["entity_f1"] == pytest.approx(sum(f1s) / 2)
    assert "entity_f1" in c["versus_none"]["fgm"]
    assert (out / "compare.png").exists()

    # a run trained but not scored when the compare stopped: --resume scores it the same way
    row_file = out / "fgm" / "seed-43" / "compare-row.json"
    before = json.loads(row_file.read_text())
    row_file.unlink()
    assert run("compare", "--resume", out, "--quiet") == 0
    after = json.loads(row_file.read_text())
    for key in ("entity_f1", "robust_entity_f1@10", "attacked_entity_f1@char"):
        assert after[key] == pytest.approx(before[key])


@pytest.mark.parametrize("extra, message", [
    (["--typo-rate", "0.1"], "--typo-rate is for classifiers"),
    (["--attack", "word"], "for taggers (the word attack edits whole texts)"),
    (["--attack", "char", "--attack-limit", "0"], "--attack-limit must be >= 1"),
])
def test_compare_refuses_classifier_only_scores_for_taggers(ner, tmp_path, capsys, extra,
                                                            message):
    assert run("compare", *BILSTM, *_files(ner), "--methods", "none,fgm", *extra,
               "--output-dir", tmp_path / "c") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("method", ["smart", "vat"])
def test_smart_and_vat_divergences_are_per_real_token_through_the_cli(ner, tmp_path, monkeypatch,
                                                                      method):
    from advnlp.cli.tasks.tagging.tag_run import TagRun
    from advnlp.methods import _consistency

    seen, batches = [], []
    weights = _consistency.row_weights  # SMART and VAT's shared weighting of per-token outputs
    monkeypatch.setattr(_consistency, "row_weights",
                        lambda masks, logits: seen.append(weights(masks, logits)) or seen[-1])
    batch = TagRun.batch
    monkeypatch.setattr(TagRun, "batch", lambda self, idx: batches.append(batch(self, idx)) or batches[-1])
    assert run("train", *BILSTM, *_files(ner), "--method", method, "--epochs", "1",
               "--output-dir", tmp_path / "r") == 0
    assert seen and len(batches) == 10
    real = [(b["input_ids"] != 0).reshape(-1).float() for b in batches]
    assert all(w is not None for w in seen)  # per-token logits were weighted, not averaged flat
    # every divergence of a step is weighted by that step's real tokens, and padding exists
    for w in seen:
        assert any(w.shape == r.shape and torch.equal(w, r) for r in real)
    assert any(bool((r == 0).any()) for r in real)
