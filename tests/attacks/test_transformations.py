"""Each transformation on fixed strings, Latin and CJK."""
import pytest

from advnlp.attacks import KEYBOARD, STOPWORDS, word_typos
from advnlp.attacks import _text as T
from advnlp.attacks.char import cjk_edits, char_proposer
from advnlp.attacks.word import word_proposer


def damerau1(a, b):
    """Independent check: a and b differ by exactly one insert/delete/substitute/adjacent swap."""
    if a == b:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    s, l = sorted((a, b), key=len)
    return len(l) == len(s) + 1 and any(l[:i] + l[i + 1:] == s for i in range(len(l)))


def test_swap_delete_on_fixed_word():
    assert word_typos("cat", ["swap"]) == ["act", "cta"]
    assert word_typos("cat", ["delete"]) == ["at", "ct", "ca"]
    assert word_typos("good", ["delete"]) == ["ood", "god", "goo"]  # no duplicates


def test_substitute_uses_keyboard_neighbours_and_keeps_case():
    assert word_typos("at", ["substitute"]) == ["qt", "wt", "st", "zt", "ar", "ay", "af", "ag"]
    assert all(v[0] in "QWSZ" for v in word_typos("At", ["substitute"])[:4])


def test_insert_is_a_neighbouring_key():
    out = word_typos("ok", ["insert"])
    assert "iok" in out and "okl" in out and "oka" not in out
    for v in out:
        assert len(v) == 3 and damerau1("ok", v)


def test_every_typo_is_one_edit():
    for w in ["wonderful", "Terrible", "naïve", "movie"]:
        variants = word_typos(w)
        assert variants and len(set(variants)) == len(variants)
        assert all(damerau1(w, v) for v in variants)


def test_keyboard_table_is_symmetric_and_complete():
    assert set(KEYBOARD) == set("abcdefghijklmnopqrstuvwxyz")
    assert all(a in KEYBOARD[b] for a in KEYBOARD for b in KEYBOARD[a])


def test_cjk_delete_duplicate_swap():
    seg = T.Segmented("今天天气很好")
    assert seg.kinds == [T.CJK] * 6 and seg.n_words == 6
    vals = list(seg.units)
    render = lambda e: seg.render([e.get(j, v) for j, v in enumerate(vals)])  # noqa: E731
    assert [render(e) for e in cjk_edits(seg, vals, 0, set())] == \
        ["天天气很好", "今今天天气很好", "天今天气很好"]
    # identical neighbours: swapping them changes nothing, so it is not proposed
    assert [render(e) for e in cjk_edits(seg, vals, 1, set())] == ["今天气很好", "今天天天气很好"]
    # a swap touches the next character too, so it is refused when that one is already edited
    assert {4, 5} not in [set(e) for e in cjk_edits(seg, vals, 4, {5})]
    assert [render(e) for e in cjk_edits(seg, vals, 4, set(), ["swap"])] == ["今天天气好很"]
    assert cjk_edits(seg, vals, 5, set(), ["swap"]) == []  # last character


def test_mixed_script_text_uses_each_scripts_edits():
    seg = T.Segmented("我爱 movies")
    assert seg.kinds == [T.CJK, T.CJK, T.WORD]
    propose = char_proposer(["delete"], ["duplicate"])
    assert propose(seg, list(seg.units), 0, set()) == [{0: "我我"}]
    assert {2: "ovies"} in propose(seg, list(seg.units), 2, set())


def test_render_deleting_words_leaves_no_double_space():
    seg = T.Segmented("The movie was good.")
    vals = list(seg.units)
    assert seg.render([v if i != 1 else "" for i, v in enumerate(vals)]) == "The was good."
    assert seg.render([v if i != 0 else "" for i, v in enumerate(vals)]) == "movie was good."
    assert seg.render(vals[:3] + ["", "."]) == "The movie was."
    assert seg.render(vals) == "The movie was good."


def test_constraints_stopwords_numbers_short_words_punctuation():
    ok = lambda u, k=T.WORD: T.eligible(u, k, STOPWORDS, 3)  # noqa: E731
    assert ok("movie") and ok("Movie")
    assert not ok("the") and not ok("The") and not ok("because")
    assert not ok("2024") and not ok("3rd") and not ok("ok") and not ok("!", T.PUNCT)
    assert ok("好", T.CJK) and not ok("的", T.CJK) and not ok("三", T.CJK)


def test_word_delete_duplicate_and_substitute():
    seg = T.Segmented("Great movie")
    nb = lambda w, k, t: ["good", "fine"] if w.lower() == "great" else []  # noqa: E731
    propose = word_proposer(["delete", "duplicate", "substitute"], nb)
    vals = list(seg.units)
    out = [seg.render([e.get(j, v) for j, v in enumerate(vals)]) for e in propose(seg, vals, 0, set())]
    assert out == ["movie", "Great Great movie", "Good movie", "Fine movie"]
    cjk = T.Segmented("天气很好")
    out = word_proposer(["duplicate"])(cjk, list(cjk.units), 3, set())
    assert out == [{3: "好好"}]


def test_unknown_transformation_is_a_value_error():
    with pytest.raises(ValueError, match="unknown character transformation.*'shuffle'"):
        word_typos("cat", ["shuffle"])
    with pytest.raises(ValueError, match="unknown CJK character"):
        char_proposer(cjk_transformations=["insert"])
    with pytest.raises(ValueError, match="unknown word"):
        word_proposer(["synonym"])
    with pytest.raises(ValueError, match="needs embedding neighbours"):
        word_proposer(["substitute"], None)


def test_token_kind_and_editable_token_read_one_tagger_token():
    from advnlp.attacks import editable_token, token_kind

    assert [token_kind(t) for t in ["Paris", "北", ",", "U.S.", "--"]] == \
        ["word", "cjk", "punct", "word", "punct"]
    assert [editable_token(t) for t in ["Paris", "the", "on", "2024", "北", "的", "二", ","]] == \
        [True, False, False, False, True, False, False, False]
