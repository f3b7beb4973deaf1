"""The greedy search on hand-written classifiers whose decision we control."""
import csv

import pytest
import torch

from advnlp.attacks import TextClassifier, char_attack, greedy_attack, word_attack
from advnlp.attacks import _text as T


def keyword(word, multi_label=False):
    """Positive (class 1) iff ``word`` appears as a whole word; anything else is class 0."""
    def predict_proba(texts):
        return torch.tensor([[0.1, 0.9] if word in T.Segmented(t.lower()).units else [0.8, 0.2]
                             for t in texts])
    return TextClassifier(predict_proba, multi_label)


TEXTS = ["this movie is really good overall", "a good story with strong acting",
         "the plot was good"]


def test_finds_the_obvious_char_attack_on_the_keyword():
    res = char_attack(keyword("good"), TEXTS, [1, 1, 1], max_change=0.2, seed=0)
    s = res.summary()
    assert s["clean_accuracy"] == 1.0 and s["success_rate"] == 1.0 and s["attacked_accuracy"] == 0.0
    for r in res.records:
        before, after = T.Segmented(r.original).units, T.Segmented(r.perturbed).units
        # exactly the keyword was edited (one typo), everything else untouched
        assert [b for b, a in zip(before, after) if b != a] == ["good"]
        assert r.prediction == 0 and r.status == "success"
        # importance ranking puts the keyword first: clean + leave-one-out + one candidate batch
        editable = sum(T.eligible(u, k, T.STOPWORDS, 3) for u, k in
                       zip(T.Segmented(r.original).units, T.Segmented(r.original).kinds))
        assert r.queries <= 1 + editable + 32


def test_word_deletion_finds_the_keyword():
    res = word_attack(keyword("good"), TEXTS, [1, 1, 1], max_change=0.2)
    assert all(r.status == "success" and "good" not in r.perturbed.split() for r in res.records)
    assert res.records[2].perturbed in ("the plot was", "the plot was good good")


def test_word_change_budget_is_respected():
    # Needs two words changed: each keyword adds 0.25 to p(positive), the threshold is 0.5.
    both = TextClassifier(lambda ts: torch.tensor(
        [[0.55 - 0.25 * k, 0.45 + 0.25 * k] for k in
         (len({"good", "great"} & set(t.split())) for t in ts)]))
    text = ["good acting and great music in this lovely long movie"]  # 10 words
    res = char_attack(both, text, [1], max_change=0.1)  # 1 word allowed
    assert res.records[0].status == "failed" and res.records[0].changed_fraction <= 0.1
    res = char_attack(both, text, [1], max_change=0.2)  # 2 words allowed
    assert res.records[0].status == "success" and res.records[0].changed_fraction == 0.2
    assert res.summary()["avg_changed_fraction"] == 0.2


@pytest.mark.parametrize("budget", [1, 2, 5, 9])
def test_query_budget_is_respected(budget):
    calls = []

    def counted(texts):
        calls.append(len(texts))
        return keyword("good").predict_proba(texts)

    res = char_attack(TextClassifier(counted), TEXTS, [1, 1, 1], query_budget=budget)
    assert all(r.queries <= budget for r in res.records)
    assert sum(calls) == sum(r.queries for r in res.records)
    # clean + leave-one-out need 5, 5 and 3 queries; one candidate more then suffices
    assert res.summary()["success_rate"] == pytest.approx({1: 0, 2: 0, 5: 1 / 3, 9: 1}[budget])


def test_candidates_are_scored_in_batches():
    sizes = []
    clf = TextClassifier(lambda ts: sizes.append(len(ts)) or keyword("good").predict_proba(ts),
                         batch_size=64)
    char_attack(clf, TEXTS[:1], [1], max_candidates=20)
    assert sizes == [1, 4, 20]  # clean, leave-one-out over the 4 editable words, one batch


def test_deterministic_under_a_seed():
    soft = TextClassifier(lambda ts: torch.stack([torch.tensor(
        [0.3 + 0.01 * (sum(map(ord, t)) % 40), 0.7 - 0.01 * (sum(map(ord, t)) % 40)]) for t in ts]))
    texts = ["an absolutely wonderful and moving picture", "terrible pacing but lovely music"]
    runs = [char_attack(soft, texts, [1, 1], seed=s, max_candidates=4) for s in (3, 3, 4)]
    rows = [[(r.perturbed, r.queries, r.status) for r in run.records] for run in runs]
    assert rows[0] == rows[1]
    assert rows[0] != rows[2]  # the seed drives the candidate sampling


def test_constant_model_is_never_fooled():
    const = TextClassifier(lambda ts: torch.tensor([[0.3, 0.7]] * len(ts)))
    for attack in (char_attack, word_attack):
        res = attack(const, TEXTS, [1, 1, 1])
        s = res.summary()
        assert s["success_rate"] == 0.0 and s["attacked_accuracy"] == 1.0
        assert all(r.status == "failed" for r in res.records)


def test_misclassified_examples_are_skipped_not_attacked():
    res = char_attack(keyword("good"), ["good film", "bad film"], [1, 1])
    assert [r.status for r in res.records] == ["success", "skipped"]
    s = res.summary()
    assert s["clean_accuracy"] == 0.5 and s["success_rate"] == 1.0 and s["attacked_accuracy"] == 0.0
    assert res.records[1].queries == 1 and res.records[1].perturbed == "bad film"


def test_cjk_attack_edits_characters():
    def proba(ts):
        return torch.tensor([[0.1, 0.9] if "好" in t else [0.9, 0.1] for t in ts])
    res = char_attack(proba, ["今天天气很好"], [1])
    r = res.records[0]
    assert r.status == "success" and "好" not in r.perturbed and len(r.perturbed) == 5
    assert r.changed_fraction == pytest.approx(1 / 6)


def test_multi_label_success_is_any_label_flipped():
    # label 0 keys on "good", label 1 on "music": flipping either one is a success.
    def proba(ts):
        return torch.tensor([[0.9 if "good" in t.split() else 0.1,
                              0.9 if "music" in t.split() else 0.1] for t in ts])
    clf = TextClassifier(proba, multi_label=True)
    res = char_attack(clf, ["good movie with music", "plain movie"], [[1, 1], [0, 0]])
    a, b = res.records
    assert a.status == "success" and a.label == [1, 1] and a.prediction in ([0, 1], [1, 0])
    assert b.status == "failed" and b.prediction == [0, 0]  # nothing can switch a label on here


def test_embedding_neighbour_substitution():
    from advnlp.attacks import EmbeddingNeighbours

    words = ["good", "fine", "bad", "movie", "[PAD]", "##ing"]
    vecs = torch.tensor([[1.0, 0.1], [0.9, 0.3], [-1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [1.0, 0.1]])
    nb = EmbeddingNeighbours(words, vecs)
    assert nb("good", k=5, threshold=0.8) == ["fine"]  # never itself, specials or pieces
    assert nb("Good", k=5, threshold=-1.0) == ["fine", "movie", "bad"]
    clf = TextClassifier(keyword("good").predict_proba, neighbours=nb)
    res = word_attack(clf, ["Good movie tonight"], [1], transformations=["substitute"],
                      threshold=0.8)
    assert res.records[0].perturbed == "Fine movie tonight"


def test_substitution_only_attack_with_nothing_to_substitute_is_refused():
    from advnlp.attacks import EmbeddingNeighbours

    # "good" and "fine" are neighbours (cosine 0.97), but neither is in these texts, and the
    # texts' other words have no neighbour above 0.8: the attack could not edit anything.
    words = ["good", "fine", "bad", "movie", "tonight"]
    vecs = torch.tensor([[1.0, 0.1, 0.0], [0.9, 0.3, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0],
                         [0.0, 0.0, 1.0]])
    clf = TextClassifier(keyword("good").predict_proba, neighbours=EmbeddingNeighbours(words, vecs))
    with pytest.raises(ValueError, match="no editable word of these texts has a substitute"):
        word_attack(clf, ["bad movie tonight", "tonight"], [0, 0],
                    transformations=["substitute"], threshold=0.8)
    # One substitutable word anywhere is enough; deletions never need neighbours.
    res = word_attack(clf, ["bad movie tonight", "good movie"], [0, 1],
                      transformations=["substitute"], threshold=0.8)
    assert [r.status for r in res.records] == ["failed", "success"]
    assert res.records[1].perturbed == "fine movie"
    word_attack(clf, ["bad movie tonight"], [0], transformations=["delete"], threshold=0.8)


def test_report_and_csv(tmp_path):
    res = char_attack(keyword("good"), TEXTS + ["bad"], [1, 1, 1, 1])
    s = res.summary()
    assert set(s) >= {"clean_accuracy", "attacked_accuracy", "success_rate", "avg_changed_fraction",
                      "avg_queries", "seconds_per_example"}
    assert res.to_dict()["params"]["max_change"] == 0.15
    path = tmp_path / "adv.csv"
    res.to_csv(str(path), label_names=["neg", "pos"])
    rows = list(csv.DictReader(open(path, encoding="utf-8")))
    assert len(rows) == 4 and rows[0]["label"] == "pos" and rows[0]["prediction"] == "neg"
    assert rows[0]["original"] == TEXTS[0] and rows[0]["perturbed"] != TEXTS[0]


@pytest.mark.parametrize("kwargs, match", [
    ({"query_budget": -1}, "query_budget must be an integer >= 1"),
    ({"query_budget": 0}, "query_budget"),
    ({"max_change": 0}, r"max_change must be a fraction in \(0, 1\]"),
    ({"max_change": 1.5}, "max_change"),
    ({"max_candidates": 0}, "max_candidates"),
    ({"transformations": ["swap", "rot13"]}, "unknown character transformation.*'rot13'"),
    ({"transformations": []}, "no character transformation"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        char_attack(keyword("good"), TEXTS, [1, 1, 1], **kwargs)


def test_bad_inputs_raise_value_error():
    clf = keyword("good")
    with pytest.raises(ValueError, match="texts is empty"):
        char_attack(clf, [], [])
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        char_attack(clf, ["a b", "c d"], [1])
    with pytest.raises(ValueError, match="label 5 out of range"):
        char_attack(clf, ["good"], [5])
    with pytest.raises(ValueError, match="unknown word"):
        word_attack(clf, ["good"], [1], transformations=["synonym"])
    with pytest.raises(ValueError, match="needs embedding neighbours"):
        word_attack(clf, ["good"], [1], transformations=["substitute"])
    with pytest.raises(ValueError, match="threshold"):
        word_attack(clf, ["good"], [1], threshold=2)
    with pytest.raises(ValueError, match="shape"):
        char_attack(lambda ts: torch.zeros(len(ts)), ["good"], [1])


def test_custom_proposer_through_greedy_attack():
    flip = lambda seg, vals, i, changed: [{i: vals[i][::-1]}]  # noqa: E731
    res = greedy_attack(keyword("good").predict_proba, ["so good"], [1], flip, attack="flip")
    assert res.records[0].perturbed == "so doog" and res.attack == "flip"


def test_the_attack_classes_bool_arguments_take_only_a_bool():
    # bool('no') is True: a single-label classifier would be read as multi-label
    from advnlp.attacks import EmbeddingNeighbours
    from advnlp.attacks.classifier import as_classifier

    with pytest.raises(TypeError, match="multi_label must be True or False"):
        keyword("good", multi_label="no")
    with pytest.raises(TypeError, match="multi_label must be True or False"):
        as_classifier(lambda texts: None, multi_label="no")
    with pytest.raises(TypeError, match="lowercase must be True or False"):
        EmbeddingNeighbours(["good"], torch.ones(1, 2), lowercase="no")
    assert as_classifier(lambda texts: None).multi_label is False
