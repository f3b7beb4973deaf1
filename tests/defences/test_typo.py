"""The typo defence: every one-edit typo of a known word against a brute-force recomputation,
text plumbing, bad inputs, files, and the char attack through text -> defence -> model."""
import json
import warnings

import pytest
import torch

from advnlp.attacks import STOPWORDS, TextClassifier, char_attack, word_typos
from advnlp.attacks import _text as T
from advnlp.defences import (FILENAME, TypoNormalizer, defended, tokenizer_fingerprint,
                             tokenizer_words)

# Many near neighbours on purpose: good/god/food/goods/gold, bad/bed/bid, cat/cut/cot/act ...
CORPUS = [
    "A good film with a good cast and good food.", "The god of gold was bad.",
    "Goods were sold in bed; a bid, a cat, a cut cot.", "An excellent film, an excellent act.",
    "Films and movies: a movie is a film.", "Terrible acting, awful plot, bad bad film.",
    "Act, cat, actor, factor, fact, facts.", "Great great great movie, grate tea.",
]


def brute_force(norm):
    """Per editable known word: its typo set, the words it shares a non-known typo with,
    and the connected components of that relation (no index, all pairs)."""
    known = lambda w: w in norm.counts or w in STOPWORDS  # noqa: E731
    words = [w for w in norm.counts if T.eligible(w, T.WORD, STOPWORDS, 3)]
    typos = {w: set(word_typos(w)) for w in words}
    parent = {w: w for w in words}

    def root(a):
        while parent[a] != a:
            a = parent[a]
        return a

    for i, a in enumerate(words):
        for b in words[i + 1:]:
            if any(not known(t) for t in typos[a] & typos[b]):
                parent[root(a)] = root(b)
    comps = {}
    for w in words:
        comps.setdefault(root(w), []).append(w)
    rep = {w: min(c, key=lambda x: (-norm.counts[x], x)) for c in comps.values() for w in c}
    return known, typos, rep


def owners(typos, t):
    return [w for w, ts in typos.items() if t in ts]


@pytest.fixture(scope="module")
def components():
    return TypoNormalizer.build(CORPUS, max_cluster_size=None)


@pytest.fixture(scope="module")
def default():
    return TypoNormalizer.build(CORPUS)


def test_connected_components_map_every_typo_to_the_words_representative(components):
    known, typos, rep = brute_force(components)
    assert max(list(rep.values()).count(r) for r in rep.values()) > 2  # real clusters formed
    checked = 0
    for w, ts in typos.items():
        assert components("x " + w + " y") == "x " + rep[w] + " y"
        for t in ts:
            # the rule: a typo that is itself a known word is that word (its own cluster)
            want = (rep.get(t, t) if known(t) else rep[w])
            assert components(t) == want, (w, t)
            assert components(t.upper()) == want.upper()
            checked += 1
    assert checked > 1000


def test_default_maps_typos_back_except_known_words_and_more_frequent_neighbours(default):
    known, typos, _ = brute_force(default)
    counts, exceptions, checked = default.counts, 0, 0
    for w, ts in typos.items():
        assert default(w) == w  # no clusters by default: clean text is untouched
        for t in ts:
            if known(t):
                want = t
            else:
                want = min(owners(typos, t), key=lambda x: (-counts[x], x))
            assert default(t) == want, (w, t)
            exceptions += want != w
            checked += 1
    assert 0 < exceptions < checked / 10


def test_cluster_size_is_capped_and_typos_follow_the_clusters():
    norm = TypoNormalizer.build(CORPUS, max_cluster_size=2)
    known, typos, _ = brute_force(norm)
    reps = [norm.representative(w) for w in typos]
    assert max(reps.count(r) for r in reps) == 2
    for w, ts in typos.items():
        for t in (t for t in ts if not known(t)):
            best = min(owners(typos, t), key=lambda x: (-norm.counts[x], x))
            assert norm(t) == norm.representative(best)


def test_text_keeps_whitespace_punctuation_and_case(default):
    assert default("  Exellent!!\tFLIM, ecxellent act...\n") == "  Excellent!!\tFILM, excellent act...\n"
    assert default.map_batch(["exellent", ("a giod film", "teh cat")]) == \
        ["excellent", ("a good film", "teh cat")]
    with pytest.raises(TypeError, match="list of texts"):
        default.map_batch("exellent film")
    with pytest.raises(TypeError, match="tuple of str"):
        default.map_batch([3])


def test_inputs_with_nothing_to_map(default):
    assert default("") == "" and default.map_batch([]) == []
    assert default(" 42 , ! the of ") == " 42 , ! the of "  # nothing editable
    long = "excellent" * 5  # longer than any vocabulary entry
    assert default(long + " exellent") == long + " excellent"
    assert default("zzzzqqq") == "zzzzqqq"  # unknown, no known word within one typo


def test_mixed_scripts_map_the_words_and_leave_cjk_alone(default):
    assert default("我爱这部 exellent 电影，很好!") == "我爱这部 excellent 电影，很好!"
    assert default.coverage(["我爱 exellent film zzzz"]) == {
        "words": 3, "known": 1 / 3, "typo_mapped": 1 / 3, "unknown": 1 / 3, "cjk_characters": 2}


def test_cjk_only_corpus_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="CJK text is not supported"):
        TypoNormalizer.build(["今天天气很好", "这部电影很好看"])
    with pytest.raises(ValueError, match="min_count=3"):
        TypoNormalizer.build(["one two"], min_count=3)


def test_a_corpus_with_no_overlap_is_reported_and_warned():
    foreign = ["zorblax quintar vemmish plok " * 60]
    norm = TypoNormalizer.build(CORPUS)
    assert norm.coverage(foreign)["known"] == norm.coverage(foreign)["typo_mapped"] == 0.0
    with pytest.warns(RuntimeWarning, match="built on other text"):
        norm.map_batch(foreign)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        norm.map_batch(foreign)  # once per normalizer, not per batch
        # in-domain text, typo'd or not: no warning
        TypoNormalizer.build(CORPUS).map_batch([" ".join(word_typos(w)) for w in norm.editable])


@pytest.mark.parametrize("kwargs, match", [
    ({"min_count": 0}, "min_count"), ({"max_cluster_size": 0}, "max_cluster_size"),
    ({"min_length": 1.5}, "min_length"), ({"vocabulary": [3]}, "vocabulary")])
def test_bad_settings(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TypoNormalizer.build(CORPUS, **kwargs)


class FakeTokenizer:
    def __init__(self, vocab):
        self.vocab, self.all_special_tokens = vocab, ["[CLS]"]

    def get_vocab(self):
        return {t: i for i, t in enumerate(self.vocab)}


def test_vocabulary_words_are_known_and_attract_their_typos():
    tok = FakeTokenizer(["[CLS]", "superb", "##ly", "the", "9", "Splendid"])
    assert tokenizer_words(tok) == ["splendid", "superb", "the"]
    norm = TypoNormalizer.build(CORPUS, vocabulary=tokenizer_words(tok))
    assert norm.counts["superb"] == 0 and norm("a supreb film, splendd") == "a superb film, splendid"


def test_save_load_round_trip(tmp_path, components):
    tok = FakeTokenizer(["[CLS]", "good", "film"])
    norm = TypoNormalizer.build(CORPUS, max_cluster_size=None, tokenizer=tok)
    path = norm.save(str(tmp_path))  # a model directory
    assert path == str(tmp_path / FILENAME)
    data = json.loads((tmp_path / FILENAME).read_text())
    assert data["format"] == "advnlp.typo-defence" and data["tokenizer_sha256"] == tokenizer_fingerprint(tok)
    back = TypoNormalizer.load(str(tmp_path), tokenizer=tok)
    assert back.to_dict() == norm.to_dict()
    texts = [" ".join(word_typos(w)[:5]) for w in norm.editable]
    assert back.map_batch(texts) == norm.map_batch(texts) == components.map_batch(texts)


def test_a_defence_for_another_tokenizer_is_refused(tmp_path):
    norm = TypoNormalizer.build(CORPUS, tokenizer=FakeTokenizer(["good", "film"]))
    norm.save(str(tmp_path / "d.json"))
    with pytest.raises(ValueError, match="another tokenizer"):
        TypoNormalizer.load(str(tmp_path / "d.json"), tokenizer=FakeTokenizer(["good", "films"]))
    TypoNormalizer.load(str(tmp_path / "d.json"))  # no tokenizer to check against: loads


@pytest.mark.parametrize("content, match", [
    ("not json{", "not JSON"), ('{"format": "something-else"}', "not a typo-defence file"),
    ('{"format": "advnlp.typo-defence", "version": 99}', "version 99"),
    ('{"format": "advnlp.typo-defence", "version": 1, "words": {}}', "corrupt"),
    ('{"format": "advnlp.typo-defence", "version": 1, "settings": {}, "words": {"good": 2},'
     ' "representatives": {"good": "gold"}}', "corrupt"),
    ('{"format": "advnlp.typo-defence", "version": 1, "settings": {"pickle": 1}, "words": {},'
     ' "representatives": {}}', "corrupt")])
def test_foreign_or_corrupt_files_are_refused(tmp_path, content, match):
    (tmp_path / "d.json").write_text(content)
    with pytest.raises(ValueError, match=match):
        TypoNormalizer.load(str(tmp_path / "d.json"))


def test_wrap_encode_maps_texts_and_leaves_other_arguments(default):
    seen = []
    enc = default.wrap_encode(lambda *a, **k: seen.append((a, k)) or "ids")
    assert enc(["exellent flim"], 64, text_pair=["giod"], max_length=8) == "ids"
    assert seen == [((["excellent film"], 64), {"text_pair": ["good"], "max_length": 8})]
    with pytest.raises(TypeError, match="callable"):
        default.wrap_encode(None)


def keyword(word):
    def predict_proba(texts):
        return torch.tensor([[0.1, 0.9] if word in T.Segmented(t.lower()).units else [0.8, 0.2]
                             for t in texts])
    return TextClassifier(predict_proba)


def test_the_char_attack_through_the_defence_mostly_fails():
    texts = [f"an excellent {n} with a {a} story" for n in ("film", "movie", "show", "book", "play")
             for a in ("great", "good", "strong", "simple")]
    norm = TypoNormalizer.build(CORPUS + texts)
    plain = char_attack(keyword("excellent"), texts, [1] * len(texts), max_change=0.5, seed=0)
    guarded = char_attack(defended(keyword("excellent"), norm), texts, [1] * len(texts),
                          max_change=0.5, seed=0)
    assert plain.summary()["success_rate"] == 1.0
    assert guarded.summary()["clean_accuracy"] == 1.0 and guarded.summary()["success_rate"] <= 0.1
    with pytest.raises(TypeError, match="TypoNormalizer"):
        defended(keyword("excellent"), lambda t: t)
