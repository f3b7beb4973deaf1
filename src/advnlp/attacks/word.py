"""Word-level attack without external resources.

Edits whole words (CJK: whole characters): ``delete`` the word, ``duplicate``
it, or ``substitute`` it with one of its nearest neighbours in the model's own
input-embedding space (cosine >= ``threshold``, top ``k``; only whole-word
tokens of the tokenizer's vocabulary or the scratch vocabulary; no
downloads). Words the vocabulary does not hold as one token get no
substitutes. Same search, constraints and defaults as the character attack:
at most 15% of the words edited, one edit per word, stopwords, numbers,
punctuation and words shorter than 3 letters untouched.

    from advnlp.attacks import word_attack, advnlp_classifier
    res = word_attack(advnlp_classifier(clf), texts, labels, threshold=0.6)
    res.to_csv("adversarial-word.csv")
"""
from __future__ import annotations

from typing import FrozenSet, List, Optional, Sequence, Set

from .. import _validate as V
from . import _text as T
from .classifier import as_classifier
from .search import AttackResult, Edit, check_names, greedy_attack

WORD_TRANSFORMATIONS = ("delete", "duplicate", "substitute")


def word_proposer(transformations: Sequence[str] = WORD_TRANSFORMATIONS, neighbours=None,
                  k: int = 8, threshold: float = 0.6):
    """The candidate generator :func:`word_attack` gives the greedy search."""
    names = check_names("word", transformations, WORD_TRANSFORMATIONS)
    if "substitute" in names and neighbours is None:
        raise ValueError("word substitution needs embedding neighbours: pass neighbours= "
                         "(an EmbeddingNeighbours) or a classifier built with them "
                         "(hf_classifier / advnlp_classifier), or drop 'substitute'")

    def propose(seg: T.Segmented, values: List[str], i: int, changed: Set[int]) -> List[Edit]:
        w, out = values[i], []
        for name in names:
            if name == "delete":
                out.append({i: ""})
            elif name == "duplicate":
                out.append({i: w + ("" if seg.kinds[i] == T.CJK else " ") + w})
            else:
                out += [{i: T.match_case(w, s)} for s in neighbours(w, k, threshold)]
        return out

    return propose


def word_attack(classifier, texts: Sequence[str], labels, *,
                transformations: Optional[Sequence[str]] = None, neighbours=None,
                threshold: float = 0.6, k: int = 8, max_change: float = 0.15,
                query_budget: int = 500, max_candidates: int = 32, seed: int = 0,
                stopwords: FrozenSet[str] = T.STOPWORDS, min_length: int = 3,
                multi_label=None) -> AttackResult:
    """Greedy word-level attack (see the module docstring).

    ``transformations`` defaults to delete + duplicate, plus substitute when
    neighbours are available (``neighbours=`` or ``classifier.neighbours``).
    ``threshold`` is the minimum cosine similarity of a substitute (0.5-0.8 are
    sensible: lower finds more attacks that change meaning more). Other
    arguments as :func:`advnlp.attacks.char_attack`.
    """
    clf = as_classifier(classifier, multi_label)
    V.in_range("threshold", threshold, -1, 1, "a cosine similarity")
    V.integer("k", k)
    neighbours = neighbours if neighbours is not None else clf.neighbours
    if transformations is None:
        transformations = WORD_TRANSFORMATIONS if neighbours is not None else ("delete", "duplicate")
    propose = word_proposer(transformations, neighbours, k, threshold)
    if set(transformations) == {"substitute"}:
        _check_substitutes(texts, neighbours, k, threshold, stopwords, min_length)
    return greedy_attack(clf, texts, labels, propose, attack="word", max_change=max_change,
                         query_budget=query_budget, max_candidates=max_candidates, seed=seed,
                         stopwords=stopwords, min_length=min_length,
                         params={"transformations": list(transformations),
                                 "threshold": threshold, "k": k})


def _check_substitutes(texts, neighbours, k, threshold, stopwords, min_length) -> None:
    """A substitution-only attack with nothing to substitute would report every text as
    robust; refuse it instead."""
    words = (u for t in texts if isinstance(t, str)
             for u, kind in zip(*_units(t)) if T.eligible(u, kind, stopwords, min_length))
    if not any(neighbours(w, k, threshold) for w in words):
        raise ValueError(f"no editable word of these texts has a substitute (an embedding "
                         f"neighbour with cosine >= {threshold:g} among its {k} nearest): lower "
                         f"threshold, or allow 'delete' / 'duplicate'")


def _units(text: str):
    seg = T.Segmented(text)
    return seg.units, seg.kinds
