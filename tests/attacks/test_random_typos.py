"""random_typos: a typo'd copy of texts, the edits of the char attack at random."""
import pytest

from advnlp.attacks import STOPWORDS, random_typos
from advnlp.text import units

TEXTS = ["The government announced 25 new measures for the economy on Tuesday.",
         "Shares in the company rose sharply after strong quarterly results were published.",
         "A quick brown fox jumps over the lazy dog, twice!"]


def _damerau_one(a: str, b: str) -> bool:
    """b is one deletion, insertion, substitution or adjacent swap away from a."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def _editable(word: str) -> bool:
    return (word.lower() not in STOPWORDS and not any(c.isdigit() for c in word)
            and sum(c.isalpha() for c in word) >= 3)


def test_every_edited_word_is_one_typo_of_an_editable_word():
    for seed in range(20):
        for before, after in zip(TEXTS, random_typos(TEXTS, 0.5, seed=seed)):
            a, b = before.split(), after.split()
            assert len(a) == len(b)  # Latin typos never drop a whole word
            for x, y in zip(a, b):
                if x != y:
                    assert _editable(x.strip(".,!")), (x, y)
                    assert _damerau_one(x, y), (x, y)


def test_rate_one_edits_every_editable_word_and_rate_zero_none():
    before = TEXTS[1].split()
    after = random_typos([TEXTS[1]], 1.0, seed=3)[0].split()
    assert [x != y for x, y in zip(before, after)] == [_editable(x.strip(".")) for x in before]
    assert random_typos(TEXTS, 0.0, seed=3) == TEXTS


def test_the_rate_is_the_probability_a_word_is_edited():
    words = ["economy", "market", "football", "computer", "election", "profits"] * 200
    text = " ".join(words)
    edited = sum(x != y for x, y in zip(words, random_typos([text], 0.2, seed=1)[0].split()))
    # Binomial(1200, 0.2): mean 240, sd 13.9; a 5-sd band.
    assert 170 < edited < 310


def test_a_copy_is_deterministic_and_does_not_depend_on_the_other_texts():
    a = random_typos(TEXTS, 0.5, seed=7)
    assert random_typos(TEXTS, 0.5, seed=7) == a
    assert random_typos(TEXTS[:1] + ["other text entirely"] + TEXTS[2:], 0.5, seed=7)[2] == a[2]
    assert random_typos(TEXTS, 0.5, seed=8) != a


def test_chinese_characters_are_edited_and_stopwords_kept():
    text = "我们今天去北京看电影的时候很高兴"
    out = random_typos([text], 1.0, seed=0)[0]
    assert out != text
    assert "的" in out  # a CJK stopword is never edited
    assert all(u in set(units(text)) for u in units(out))  # delete, duplicate, swap: no new characters


def test_a_rate_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="probability"):
        random_typos(TEXTS, 1.5)
