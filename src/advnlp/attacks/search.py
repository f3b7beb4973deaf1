"""Greedy search shared by the character- and word-level attacks, and its report.

Per example (untargeted):

1. one query for the clean prediction; examples already misclassified are
   skipped (they count as wrong, not as attacked);
2. leave-one-out importance: every editable unit is deleted in turn and the
   batch of deleted texts is scored in one pass; units are visited in order of
   how much their deletion hurts the true label;
3. for each unit in that order, every candidate edit (at most
   ``max_candidates``, sampled with the example's seeded RNG) is scored in one
   pass; the best is kept if it raises the attack score, and the search stops
   at the first misclassification, when ``max_change`` of the words are
   edited, or when ``query_budget`` model evaluations are spent.

The loop of step 3 is :func:`greedy_search` over per-text :class:`Search` states with a
pluggable scorer: here the classifier's probabilities, one text at a time;
:class:`advnlp.DiscreteAT` (``search="greedy"``) runs the same loop in training, ranking
words by the clean pass's gradient and scoring each example's loss, all examples at once.

Score: single-label ``1 - p(true class)``, success when the argmax changes.
Multi-label: each label is *right* when its probability is on the same side
of 0.5 as the truth; score = the largest probability of being wrong over the
labels; success = any label flipped (the exact-match prediction is wrong).
"""
from __future__ import annotations

import csv
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple, Union

import torch

from .. import _validate as V
from . import _text as T
from .classifier import TextClassifier, as_classifier

# A candidate edit: unit index -> new value ("" deletes the unit).
Edit = Dict[int, str]
# (segmented text, current unit values, unit index, units already edited) -> edits
# What a search edits: a text's units, and how it renders (a string; a list of words)
Segments = Union[T.Segmented, "Words"]
Proposer = Callable[[Segments, List[str], int, Set[int]], List[Edit]]


@dataclass
class AttackRecord:
    original: str
    perturbed: str
    label: object  # int, or a list of 0/1 for multi-label
    prediction: object  # on the perturbed text (the original when not attacked)
    status: str  # "success" | "failed" | "skipped" (misclassified before the attack)
    queries: int
    changed_fraction: float
    seconds: float


@dataclass
class AttackResult:
    """Per-example records and the summary of one attack run."""

    attack: str
    params: dict
    records: List[AttackRecord] = field(default_factory=list)

    def summary(self) -> dict:
        """clean accuracy, accuracy under attack, success rate over originally-correct
        examples, average fraction of words changed (successful attacks), average
        queries and seconds per example."""
        n = len(self.records)
        attacked = [r for r in self.records if r.status != "skipped"]
        won = [r for r in attacked if r.status == "success"]
        mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
        return {
            "examples": n,
            "clean_accuracy": len(attacked) / n if n else 0.0,
            "attacked_accuracy": (len(attacked) - len(won)) / n if n else 0.0,
            "success_rate": len(won) / len(attacked) if attacked else 0.0,
            "successes": len(won),
            "avg_changed_fraction": mean([r.changed_fraction for r in won]),
            "avg_queries": mean([r.queries for r in attacked]),
            "seconds_per_example": mean([r.seconds for r in self.records]),
        }

    def to_dict(self) -> dict:
        """JSON-ready: ``{"attack", "params", **summary()}``."""
        return {"attack": self.attack, "params": self.params, **self.summary()}

    def rows(self, label_names: Optional[Sequence[str]] = None) -> List[dict]:
        """One dict per example (CSV columns): original, perturbed, label, prediction, ..."""
        def name(y):
            if label_names is None:
                return y
            if isinstance(y, list):
                return ",".join(label_names[j] for j, v in enumerate(y) if v)
            return label_names[y]
        return [{"original": r.original, "perturbed": r.perturbed, "label": name(r.label),
                 "prediction": name(r.prediction), "status": r.status, "queries": r.queries,
                 "changed_fraction": round(r.changed_fraction, 4)} for r in self.records]

    def to_csv(self, path: str, label_names: Optional[Sequence[str]] = None) -> None:
        rows = self.rows(label_names)
        cols = ["original", "perturbed", "label", "prediction", "status", "queries",
                "changed_fraction"]
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------
def check_names(kind: str, names: Sequence[str], known: Sequence[str]) -> List[str]:
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise ValueError(f"no {kind} transformation given; choose from {', '.join(known)}")
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"unknown {kind} transformation(s) {', '.join(map(repr, bad))}; "
                         f"choose from {', '.join(known)}")
    return names


def _labels(labels, n: int, multi_label: bool) -> List[object]:
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    labels = list(labels)
    if len(labels) != n:
        raise ValueError(f"{n} texts but {len(labels)} labels")
    if multi_label:
        return [[int(v > 0.5) for v in y] for y in labels]
    return [int(y) for y in labels]


# ---------------------------------------------------------------------------
# Goal
# ---------------------------------------------------------------------------
def _goal(probs: torch.Tensor, label, multi_label: bool):
    """(score, success, predictions) for a batch of probabilities against one label."""
    if multi_label:
        y = torch.tensor(label, dtype=torch.float32)
        if probs.shape[1] != y.numel():
            raise ValueError(f"predict_proba gives {probs.shape[1]} labels, the label has {y.numel()}")
        wrong = torch.where(y > 0.5, 1 - probs, probs)
        preds = [[int(v) for v in row] for row in (probs > 0.5).tolist()]
        return wrong.amax(1), (wrong > 0.5).any(1), preds
    if not 0 <= label < probs.shape[1]:
        raise ValueError(f"label {label} out of range for {probs.shape[1]} classes")
    top = probs.argmax(1)
    return 1 - probs[:, label], top != label, top.tolist()


class _Oracle:
    def __init__(self, clf: TextClassifier, label, budget: int):
        self.clf, self.label, self.budget, self.used = clf, label, budget, 0

    @property
    def left(self) -> int:
        return self.budget - self.used

    def __call__(self, texts: List[str]):
        self.used += len(texts)
        return _goal(self.clf.predict_proba(texts), self.label, self.clf.multi_label)


# ---------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------
def greedy_attack(classifier: TextClassifier, texts: Sequence[str], labels, propose: Proposer, *,
                  attack: str = "custom", max_change: float = 0.15, query_budget: int = 500,
                  max_candidates: int = 32, seed: int = 0,
                  stopwords: FrozenSet[str] = T.STOPWORDS, min_length: int = 3,
                  params: Optional[dict] = None) -> AttackResult:
    """Run the greedy importance-ordered search with a custom ``propose`` function.

    ``propose(seg, values, i, changed)`` returns candidate edits for unit ``i``
    as ``{unit index: new value}`` dicts; an edit may touch other units (a CJK
    swap touches two), and every touched unit counts towards ``max_change`` and
    can't be edited again.
    """
    classifier = as_classifier(classifier)
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give at least one text to attack")
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be strings (attack one segment; fix the other of a pair)")
    max_change = V.fraction("max_change", max_change)
    query_budget = V.integer("query_budget", query_budget)
    max_candidates = V.integer("max_candidates", max_candidates)
    labels = _labels(labels, len(texts), classifier.multi_label)
    result = AttackResult(attack, dict(params or {}, max_change=max_change,
                                       query_budget=query_budget, max_candidates=max_candidates,
                                       seed=seed, min_length=min_length))
    for index, (text, label) in enumerate(zip(texts, labels)):
        t0 = time.perf_counter()
        # One RNG per example: results don't depend on which examples come before.
        rng = random.Random(seed * 1_000_003 + index)
        rec = _attack_one(classifier, text, label, propose, rng, max_change, query_budget,
                          max_candidates, stopwords, min_length)
        rec.seconds = time.perf_counter() - t0
        result.records.append(rec)
    return result


def _attack_one(clf, text, label, propose, rng, max_change, budget, max_candidates,
                stopwords, min_length) -> AttackRecord:
    oracle = _Oracle(clf, label, budget)
    score, success, preds = oracle([text])
    if bool(success[0]):
        return AttackRecord(text, text, label, preds[0], "skipped", oracle.used, 0.0, 0.0)
    seg = T.Segmented(text)
    editable = [i for i in range(len(seg))
                if T.eligible(seg.units[i], seg.kinds[i], stopwords, min_length)]

    order = importance_order(editable, oracle.left, lambda units: oracle(
        [seg.render([v if j != i else "" for j, v in enumerate(seg.units)]) for i in units])[0])
    search = Search(seg, order, max(1, math.floor(max_change * seg.n_words)), propose, rng,
                    max_candidates=max_candidates, budget=oracle.left, score=float(score[0]),
                    pred=preds[0])
    greedy_search([search], lambda asks: [oracle(texts) for _, texts in asks])
    return AttackRecord(text, seg.render(search.values), label, search.pred,
                        "success" if search.success else "failed", oracle.used,
                        search.changed_fraction, 0.0)


def importance_order(editable: Sequence[int], budget: int,
                     score: Callable[[List[int]], Sequence[float]]) -> List[int]:
    """Leave-one-out ranking: ``score(units)`` rates the text with each unit left out (one
    batch, at most ``budget`` units, the first ones); units are tried in order of that score,
    highest first, ties and the unscored units (last) in text order."""
    scored = list(editable)[:max(0, budget)]
    importance = {i: float(x) for i, x in zip(scored, score(scored))} if scored else {}
    return sorted(editable, key=lambda i: (-importance.get(i, -math.inf), i))


class Words:
    """A text already split into words (a tagged sentence), searched as :class:`Search`
    searches a :class:`~advnlp.attacks._text.Segmented` text: rendering gives the word list
    back, so the scorer gets lists of words. ``n_words``: the words that count towards
    ``max_change`` (punctuation does not)."""

    def __init__(self, words: Sequence[str], n_words: int):
        self.units, self.n_words = list(words), n_words

    def render(self, values: Sequence[str]) -> List[str]:
        return list(values)


class Search:
    """One text's greedy search (the attack's and :class:`advnlp.DiscreteAT`'s): its units
    ``values``, the order its units are tried in, at most ``limit`` units changed, at most
    ``budget`` candidate texts scored, and the best ``score`` reached so far.

    ``candidates()`` gives the next unit's edits (those that fit the word budget, a seeded
    sample of ``max_candidates`` when there are more, cut to the query budget; ``[]`` once
    the search is over); ``take()`` keeps the best of them if it succeeds or raises the
    score. ``key`` is the caller's (what the scorer needs to know of the text)."""

    def __init__(self, seg: Segments, order: Sequence[int], limit: int, propose: Proposer,
                 rng: random.Random, *, max_candidates: Optional[int] = None,
                 budget: float = math.inf, score: float = -math.inf, pred=None, key=None):
        self.seg, self.values, self.order, self.limit = seg, list(seg.units), list(order), limit
        self.propose, self.rng, self.max_candidates = propose, rng, max_candidates
        self.left, self.score, self.pred, self.key = budget, score, pred, key
        self.changed: Set[int] = set()
        self.success = self.done = False
        self._next = 0

    @property
    def text(self) -> Union[str, List[str]]:
        return self.seg.render(self.values)

    @property
    def changed_fraction(self) -> float:
        return len(self.changed) / self.seg.n_words if self.seg.n_words else 0.0

    def render(self, edit: Edit) -> Union[str, List[str]]:
        return self.seg.render([edit.get(j, v) for j, v in enumerate(self.values)])

    def candidates(self) -> List[Edit]:
        while not self.done and self._next < len(self.order):
            if self.left <= 0 or len(self.changed) >= self.limit:
                break
            i = self.order[self._next]
            self._next += 1
            if i in self.changed:
                continue
            cands = [e for e in self.propose(self.seg, self.values, i, self.changed)
                     if not (set(e) & self.changed) and len(self.changed) + len(e) <= self.limit]
            if self.max_candidates is not None and len(cands) > self.max_candidates:
                keep = sorted(self.rng.sample(range(len(cands)), self.max_candidates))
                cands = [cands[k] for k in keep]
            cands = cands[:self.left] if self.left < len(cands) else cands
            if cands:
                return cands
        self.done = True
        return []

    def apply(self, edit: Edit) -> None:
        for j, v in edit.items():
            self.values[j] = v
        self.changed.update(edit)

    def take(self, cands: List[Edit], scores: torch.Tensor, success: torch.Tensor, preds) -> None:
        self.left -= len(cands)
        # A succeeding candidate wins outright; otherwise the highest score.
        best = int(torch.argmax(scores + success.float() * 2.0))
        if bool(success[best]) or float(scores[best]) > self.score:
            self.apply(cands[best])
            self.score, self.pred = float(scores[best]), preds[best]
            if bool(success[best]):
                self.success = self.done = True


# score([(search, candidate texts)]) -> [(scores, success, predictions)], one per search
Scorer = Callable[[List[Tuple["Search", List[str]]]], List[tuple]]


def greedy_search(searches: Sequence[Search], score: Scorer) -> None:
    """The greedy loop, run over ``searches`` in lockstep: each round every search still on
    offers its next unit's candidates, ``score`` rates all of them at once (one batch for
    the attack's one text; across a training batch's examples for DiscreteAT), and each
    search keeps its best."""
    active = list(searches)
    while active:
        asks = [(s, s.candidates()) for s in active]
        asks = [(s, c) for s, c in asks if c]
        if not asks:
            return
        results = score([(s, [s.render(e) for e in c]) for s, c in asks])
        for (s, c), (scores, success, preds) in zip(asks, results):
            s.take(c, scores, success, preds)
        active = [s for s, _ in asks if not s.done]
