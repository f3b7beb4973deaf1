"""Character-level attack: one typo per word, guided by word importance.

Latin-script (and any other spaced) words get one edit each: ``swap`` two
adjacent characters, ``delete`` one, ``insert`` a QWERTY neighbour of a
character next to it, or ``substitute`` one by a QWERTY neighbour. CJK
characters (kana, ideographs, Hangul; detected by Unicode range, so mixed
text works) are the units themselves: ``delete``, ``duplicate`` or ``swap``
with the next character.

Constraints (defaults): at most ``max_change`` = 15% of the words (of the
characters for CJK) edited, at least one; one edit per word; stopwords,
anything containing a digit or numeral, punctuation and words with fewer
than 3 letters are never edited.

    from advnlp.attacks import char_attack
    res = char_attack(clf, ["a truly wonderful film"], [1], max_change=0.2, seed=0)
    print(res.summary()["success_rate"], res.records[0].perturbed)
"""
from __future__ import annotations

import random
from typing import FrozenSet, List, Sequence, Set

from . import _text as T
from .classifier import as_classifier
from .search import AttackResult, Edit, check_names, greedy_attack

LATIN_TRANSFORMATIONS = ("swap", "delete", "insert", "substitute")
CJK_TRANSFORMATIONS = ("delete", "duplicate", "swap")

_TYPOS = {"swap": T.typo_swap, "delete": T.typo_delete, "insert": T.typo_insert,
          "substitute": T.typo_substitute}


def word_typos(word: str, transformations: Sequence[str] = LATIN_TRANSFORMATIONS) -> List[str]:
    """Every one-edit variant of ``word`` under the given transformations (no duplicates)."""
    names = check_names("character", transformations, LATIN_TRANSFORMATIONS)
    return T.unique([v for n in names for v in _TYPOS[n](word)], exclude=word)


def token_kind(token: str) -> str:
    """``"cjk"`` (one CJK character), ``"word"`` or ``"punct"``: the unit kind of a token
    that is already one word (a tagger's token), as the discrete attacks read text."""
    seg = T.Segmented(token)
    if len(seg) == 1:
        return seg.kinds[0]
    return T.WORD if any(ch.isalpha() for ch in token) else T.PUNCT


def editable_token(token: str, stopwords: FrozenSet[str] = T.STOPWORDS, min_length: int = 3) -> bool:
    """Whether the char attack may edit ``token`` at all: not punctuation, no digit or
    numeral, not a stopword, at least ``min_length`` letters (a CJK character: not a
    function character)."""
    return T.eligible(token, token_kind(token), stopwords, min_length)


def cjk_edits(seg: T.Segmented, values: List[str], i: int, changed: Set[int],
              transformations: Sequence[str] = CJK_TRANSFORMATIONS) -> List[Edit]:
    """Edits of CJK character ``i``: delete it, duplicate it, swap it with the next one."""
    c, out = values[i], []
    for name in transformations:
        if name == "delete":
            out.append({i: ""})
        elif name == "duplicate":
            out.append({i: c + c})
        elif name == "swap":
            j = i + 1
            if (seg.adjacent(i) and seg.kinds[j] == T.CJK and j not in changed
                    and values[j] != c and T.eligible(values[j], T.CJK, frozenset(), 0)):
                out.append({i: values[j], j: c})
    return out


def char_proposer(transformations: Sequence[str] = LATIN_TRANSFORMATIONS,
                  cjk_transformations: Sequence[str] = CJK_TRANSFORMATIONS):
    """The candidate generator :func:`char_attack` gives the greedy search."""
    latin = check_names("character", transformations, LATIN_TRANSFORMATIONS)
    cjk = check_names("CJK character", cjk_transformations, CJK_TRANSFORMATIONS)

    def propose(seg: T.Segmented, values: List[str], i: int, changed: Set[int]) -> List[Edit]:
        if seg.kinds[i] == T.CJK:
            return cjk_edits(seg, values, i, changed, cjk)
        return [{i: v} for v in word_typos(values[i], latin)]

    return propose


def char_attack(classifier, texts: Sequence[str], labels, *,
                transformations: Sequence[str] = LATIN_TRANSFORMATIONS,
                cjk_transformations: Sequence[str] = CJK_TRANSFORMATIONS,
                max_change: float = 0.15, query_budget: int = 500, max_candidates: int = 32,
                seed: int = 0, stopwords: FrozenSet[str] = T.STOPWORDS,
                min_length: int = 3, multi_label=None) -> AttackResult:
    """Greedy character-level attack (see the module docstring).

    Args:
        classifier: a :class:`TextClassifier`, or a bare ``predict_proba`` callable.
        texts, labels: the examples; labels are class indices (single-label) or
            0/1 vectors (multi-label).
        max_change: fraction of the words (CJK: characters) that may be edited.
        query_budget: model evaluations per example, the clean one included.
        max_candidates: edits scored per word (a seeded sample when there are more).
        seed: makes the sampling, hence the whole attack, deterministic.
    """
    clf = as_classifier(classifier, multi_label)
    propose = char_proposer(transformations, cjk_transformations)
    return greedy_attack(clf, texts, labels, propose, attack="char", max_change=max_change,
                         query_budget=query_budget, max_candidates=max_candidates, seed=seed,
                         stopwords=stopwords, min_length=min_length,
                         params={"transformations": list(transformations),
                                 "cjk_transformations": list(cjk_transformations)})


def random_typos(texts: Sequence[str], rate: float = 0.1, *, seed: int = 0,
                 transformations: Sequence[str] = LATIN_TRANSFORMATIONS,
                 cjk_transformations: Sequence[str] = CJK_TRANSFORMATIONS,
                 stopwords: FrozenSet[str] = T.STOPWORDS, min_length: int = 3) -> List[str]:
    """A typo'd copy of ``texts``: natural noise, not an attack (no model is queried).

    Every unit the attacks may edit (same rules as :func:`char_attack`: no stopwords,
    numbers, punctuation or words shorter than ``min_length`` letters) independently gets
    one random edit of the attack's kinds with probability ``rate``; a unit a CJK swap
    has moved is not edited again. Text ``i`` draws from its own generator seeded with
    ``(seed, i)``, so one text's copy does not depend on the others and the same call
    always gives the same copy.
    """
    if not 0 <= rate <= 1:
        raise ValueError(f"rate is a probability in [0, 1], got {rate!r}")
    latin = check_names("character", transformations, LATIN_TRANSFORMATIONS)
    cjk = check_names("CJK character", cjk_transformations, CJK_TRANSFORMATIONS)
    out = []
    for i, text in enumerate(texts):
        rng = random.Random(f"{seed}/{i}")
        seg = T.Segmented(text)
        values, changed = list(seg.units), set()
        for j, (unit, kind) in enumerate(zip(seg.units, seg.kinds)):
            if j in changed or not T.eligible(unit, kind, stopwords, min_length):
                continue
            if rng.random() >= rate:
                continue
            edits = (cjk_edits(seg, values, j, changed, cjk) if kind == T.CJK
                     else [{j: v} for v in word_typos(unit, latin)])
            if edits:
                edit = rng.choice(edits)
                for k, v in edit.items():
                    values[k] = v
                changed.update(edit)
        out.append(seg.render(values))
    return out
