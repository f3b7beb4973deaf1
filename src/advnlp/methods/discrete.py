"""DiscreteAT: online discrete adversarial training - typos and word edits made inside the step.

The attacks of :mod:`advnlp.attacks` run a search per example and cost hundreds of model
calls; as training they are offline augmentation (``--augment-with-attack``). Online
discrete AT (Ivgi & Berant, 2021: online random sampling of discrete edits, ~10x cheaper
than offline augmentation and more robust) makes the edits inside every step instead, and
ranks the words as A2T (Yoo & Qi, 2021) does, by a gradient the step already has::

    L = closure(x, y); backward(L)          the clean pass (or ``method``'s clean +
                                            embedding-adversarial passes); it leaves
                                            g = dL/d(embedding output) per token
    S = a random ceil(fraction * B) of the batch's examples
    for every i in S:                       rank the editable words of x_i by the sum of
                                            ||g_t||_2 over their tokens; edit the top ones,
                                            at most max_change of its words (at least one):
        search="random"                     one random edit each
        search="greedy"                     per word in rank order, score all its candidate
                                            edits (at most max_candidates) and keep the one
                                            that raises l_i, x_i's own loss, most - only if
                                            it raises it; at most `queries` texts scored
    L' = closure(x'_S, y_S); backward(adv_weight * L')

``search="greedy"`` is the search of :mod:`advnlp.attacks` (one loop,
:func:`~advnlp.attacks.search.greedy_search`; the attack ranks by leave-one-out and scores
the classifier's probability, training ranks by the gradient it has and scores the loss),
run for all of S in lockstep: each round, every example's candidates for its next word are
scored together, in no-grad forwards of at most B texts, with the model in eval mode (no
dropout noise; BatchNorm's running statistics, so an example's score does not depend on
the texts scored with it; every module's mode is restored). The choice is per example.
The scores are ``example_loss(batch, labels) -> tensor [n]`` (one loss per example, e.g.
``cross_entropy(..., reduction="none")``); without it the closure scores one text at a
time (its batch's loss is then that text's: exact for any closure, but one forward per
text). Each example's clean text is its first query. The segments of a pair are searched
one after the other, the second from the loss and budget the first left.

Edits (``attack``): ``"char"`` - a typo per word (swap, delete, insert or substitute a
QWERTY neighbour; CJK characters: delete, duplicate, swap), ``"word"`` - delete the word,
duplicate it, or substitute one of its nearest neighbours in the model's own input
embedding (taken when the method is built). The constraints are the attacks': stopwords,
anything with a digit or numeral, punctuation and words under ``min_length`` letters are
never edited.
With ``candidates=k`` the step draws k random edit sets for the selected examples and
trains on the one with the highest loss (k no-grad forwards over the |S| edited texts;
the closure gives a batch's loss, so the choice is per batch, not per example).

Only the words the model reads are edited, and ``max_change`` counts those: a text longer
than ``max_length`` tokens keeps its unread tail as it is.

An example the step selected but could not edit (no editable word: only stopwords,
numbers, one character, an empty text; greedy: no edit raised its loss) is counted in
``unedited_examples`` and left out of L'; a step with nothing edited runs no second pass
(under DDP it runs one with weight 0, so that every rank reaches the same all-reduce).

Contract: ``backward(closure, texts, labels)`` with ``closure(batch, labels) -> loss`` (or
anything with a ``.loss``): ``batch`` is what ``encode`` made of the texts, on the model's
device; ``labels`` is the subset of ``labels`` that goes with it (a tensor is indexed, a
list sliced). Gradients are added (never overwritten); weights and buffers end as after
the clean pass; returns the clean loss, detached. Pairs: ``texts`` may hold tuples
(premise, hypothesis); ``segments`` says which are edited (default all; the word budget is
per segment).

Arguments (defaults): ``model``; ``encode`` - a Hugging Face *fast* tokenizer (its
character offsets align tokens with words; ``max_length`` truncates) or a callable
``encode(texts) -> (batch, offsets)`` with ``offsets[b][t] = (segment, start, end)`` or
None for a special/padding token; ``attack="char"``; ``max_change=0.15``;
``fraction=0.5``; ``adv_weight=1.0``; ``candidates=1``; ``method=None`` (an embedding
adversary, e.g. ``FGM(model)``: the clean part of the step is ``method.backward``);
``segments="all"``; ``max_length=None``; ``neighbours=None`` (word: built from ``encode``'s
vocabulary and the embedding); ``threshold=0.6``, ``k=8`` (word substitutes);
``stopwords``, ``min_length=3``; ``seed=0`` (step n draws from its own generator seeded
with ``(seed, n)``; ``state_dict()`` holds n); ``embedding=None``; ``search="random"``;
greedy only: ``queries=8`` (texts scored per example, its clean text included: the clean
score and one word's candidates), ``max_candidates=7`` (per word; a seeded sample when
there are more), ``example_loss=None``; ``normalizer=None`` - a defence in front of the
tokenizer (:class:`advnlp.defences.TypoNormalizer`): the edits are made on the raw text
and every text the step encodes (clean, scored, edited) passes the defence first, so the
model trains on what the defended pipeline will read.

Cost: ``1 + fraction`` plain steps, plus tokenising, plus ``(candidates - 1)`` no-grad
forwards over the edited examples. Greedy: plus at most ``|S| * queries`` texts scored
without gradients, in forwards of up to B texts (one or more per round of the search):
about ``fraction * queries`` forwards' worth of the batch, a forward being about a third
of a plain step - at the defaults at most ``1 + 0.5 + 0.5 * 8 / 3 = 2.8`` plain steps,
fewer where words have fewer candidates or the word budget ends the search. Without
``example_loss`` the same texts cost one forward each.

References: Ivgi & Berant, "Achieving Model Robustness through Discrete Adversarial
Training", EMNLP 2021 (online random sampling; online search); Yoo & Qi, "Towards
Improving Adversarial Training of NLP Models", Findings of EMNLP 2021 (A2T: gradient-
ranked words, a cheap greedy search, a share of the training data attacked).

Example::

    adv = DiscreteAT(model, tokenizer, attack="char", max_length=128)
    # or the worst edits a search finds, scored with a loss per example:
    # DiscreteAT(model, tokenizer, search="greedy", example_loss=lambda batch, y:
    #            F.cross_entropy(model(**batch).logits, y, reduction="none"))
    for texts, y in loader:
        loss = adv.backward(lambda batch, y: model(**batch, labels=y).loss, texts, y)
        optimizer.step(); optimizer.zero_grad()
"""
from __future__ import annotations

import bisect
import contextlib
import math
import random
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Union

import torch
from torch import nn

from .. import _perturb as P
from .. import _validate as V
from .._base import Adversary, EmbeddingAdversary
from .._distributed import local_grads
from .._passes import Step
from ..attacks import _text as T
from ..attacks.char import char_proposer
from ..attacks.classifier import EmbeddingNeighbours
from ..attacks.search import Search, greedy_search
from ..attacks.word import WORD_TRANSFORMATIONS, word_proposer
from ..outputs import as_loss
from ..text import UNIT

ATTACKS = ("char", "word")
SEARCHES = ("random", "greedy")


class DiscreteAT(Adversary):
    """Online discrete adversarial training (see the module docstring for the algorithm,
    the arguments and their defaults)."""

    skip_what = "clean-pass gradient w.r.t. the embedding"
    skip_then = "no words were ranked and no edited pass ran this step"

    def __init__(self, model: nn.Module, encode, *, attack: str = "char",
                 max_change: float = 0.15, fraction: float = 0.5, adv_weight: float = 1.0,
                 candidates: int = 1, method: Optional[EmbeddingAdversary] = None,
                 segments: Union[str, int, Sequence[int]] = "all",
                 max_length: Optional[int] = None, neighbours=None, threshold: float = 0.6,
                 k: int = 8, stopwords: FrozenSet[str] = T.STOPWORDS, min_length: int = 3,
                 seed: int = 0, embedding=None, search: str = "random",
                 queries: Optional[int] = None, max_candidates: Optional[int] = None,
                 example_loss: Optional[Callable] = None, normalizer=None):
        self.attack = V.choice("attack", attack, ATTACKS)
        self.max_change = V.fraction("max_change", max_change)
        self.fraction = V.fraction("fraction", fraction)
        self.adv_weight = V.positive("adv_weight", adv_weight, allow_zero=True)
        self.candidates = V.integer("candidates", candidates)
        self.search = V.choice("search", search, SEARCHES)
        self.queries, self.max_candidates = _search_budget(self.search, candidates, queries,
                                                           max_candidates, example_loss)
        self.example_loss = example_loss
        self.min_length = V.integer("min_length", min_length, minimum=0)
        self.max_length = None if max_length is None else V.integer("max_length", max_length)
        self.seed = V.integer("seed", seed, minimum=-2 ** 63)
        self.stopwords = V.strings("stopwords", stopwords, "{'the', 'a'}")
        self.segments = _checked_segments(segments)
        _check_inner(method, model)
        if normalizer is not None and not callable(getattr(normalizer, "wrap_offsets_encode", None)):
            raise TypeError("normalizer must be a defence with wrap_offsets_encode (e.g. "
                            f"advnlp.defences.TypoNormalizer), got {type(normalizer).__name__}")
        super().__init__(model)
        self.method = method
        self._encode = _encoder(encode, self.max_length)
        if normalizer is not None:  # edits on the raw text, the model reads the mapped one
            self._encode = normalizer.wrap_offsets_encode(self._encode)
        self.embedding_name, emb = P.find_embedding(model, embedding)
        if self.attack == "word":
            if neighbours is None:
                neighbours = _neighbours(encode, emb)
            if neighbours is not None and not callable(neighbours):
                raise TypeError("neighbours must be an EmbeddingNeighbours or a callable "
                                "(word, k, threshold) -> list of words")
            self._propose = word_proposer(WORD_TRANSFORMATIONS if neighbours else
                                          ("delete", "duplicate"), neighbours, V.integer("k", k),
                                          V.in_range("threshold", threshold, -1, 1, "a cosine similarity"))
        else:
            self._propose = char_proposer()
        self.steps = 0
        self.edited_examples = 0
        self.unedited_examples = 0
        self.last_edits: List[tuple] = []
        self._grads: List[torch.Tensor] = []
        self._capture = False
        self._handles = [m.register_forward_hook(self._keep_grad)
                         for m in P.embedding_modules(model, emb)]

    # -- the contract ----------------------------------------------------------------------
    def backward(self, closure: Callable, texts: Sequence, labels=None,
                 backward_fn: Optional[Callable] = None) -> torch.Tensor:
        """One step on ``texts`` (see the module docstring); returns the clean loss."""
        if isinstance(texts, (str, tuple)) or not isinstance(texts, Sequence) or not len(texts):
            raise TypeError("texts must be a non-empty list of strings (or of tuples of "
                            f"strings, for pairs), got {type(texts).__name__}")
        if labels is not None and len(labels) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        return self._run(closure, backward_fn, texts=list(texts), labels=labels)

    def _step(self, step: Step, texts: list, labels) -> torch.Tensor:
        rng = random.Random(f"{self.seed}/{self.steps}")
        self.steps += 1
        pairs = isinstance(texts[0], tuple)
        segs = [t if pairs else (t,) for t in texts]
        if any(not isinstance(s, str) for t in segs for s in t):
            raise TypeError("texts must be strings (or tuples of strings, for pairs)")
        batch, offsets = self._encoded(texts)
        importance = self._clean_pass(step, batch, labels)
        if importance is None:
            return step.clean_loss

        chosen = sorted(rng.sample(range(len(texts)), math.ceil(self.fraction * len(texts))))
        if self.search == "greedy":
            plans = [(i, self._plans(segs[i], importance[i], offsets[i])) for i in chosen]
            edited = self._searched(step, segs, plans, labels, pairs, rng)
        else:  # per example, its edit sets that found something to edit
            edited = [(i, [v for v in vs if v is not None]) for i, vs in
                      ((i, [self._edit(segs[i], importance[i], offsets[i], rng)
                            for _ in range(self.candidates)]) for i in chosen)]
            edited = [(i, vs) for i, vs in edited if vs]
        self.edited_examples += len(edited)
        self.unedited_examples += len(chosen) - len(edited)
        if not edited:
            self._sync_anyway(step, batch, labels, chosen)
            return step.clean_loss
        if self.candidates > 1:
            edited = self._hardest(step, edited, labels, pairs)
        idx = [i for i, _ in edited]
        new = [v[0] for _, v in edited]
        self.last_edits = [(i, texts[i], n if pairs else n[0]) for i, n in zip(idx, new)]
        adv_batch, _ = self._encoded(new if pairs else [n[0] for n in new])
        adv_loss = as_loss(step.closure(adv_batch, _subset(labels, idx)))
        step.backward(adv_loss, self.adv_weight)
        step.adv_loss = adv_loss.detach()
        return step.clean_loss

    def _clean_pass(self, step: Step, batch, labels) -> Optional[torch.Tensor]:
        """The clean pass (or ``method``'s); the norm of the gradient at the embedding output
        per token [B, T], or None when it is not finite (the step is then over)."""
        self._grads, self._capture = [], True
        try:
            clean = lambda: step.closure(batch, labels)  # noqa: E731
            with local_grads(self.model):  # the edited pass's backward is the one that syncs
                if self.method is not None:
                    loss = self.method.backward(clean, step.backward_fn)
                else:
                    loss = as_loss(clean())
                    step.backward(loss)
        finally:
            self._capture = False
        step.snapshot_buffers()
        step.clean_loss = loss.detach()
        if not self._grads:
            raise RuntimeError("DiscreteAT: the closure never called the model's input embedding "
                               f"({self.embedding_name}): closure(batch, labels) must run the model")
        grad = self._grads[0].grad
        self._grads = []
        if grad is None:
            raise RuntimeError("DiscreteAT: the loss does not depend on the input embedding's "
                               "output, so no word can be ranked; does the closure return the loss "
                               "of this batch?")
        if not P.all_finite([grad]):
            step.skipped = True
            self._sync_anyway(step, batch, labels, [])
            return None
        return grad.detach().float().norm(dim=-1).cpu()

    def _encoded(self, texts):
        """``encode(texts)`` with the batch's tensors on the model's device."""
        batch, offsets = self._encode(texts)
        device = _device(self.model)
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}, offsets

    # -- the edits -------------------------------------------------------------------------
    def _plans(self, parts: tuple, importance: torch.Tensor, offsets) -> list:
        """Per edited segment of an example: ``(segment, its read part as a Segmented, the
        editable units by gradient rank, the word budget, the unread tail)``."""
        wanted = (range(len(parts)) if self.segments == "all" else
                  [self.segments] if isinstance(self.segments, int) else self.segments)
        plans = []
        for s in wanted:
            if not 0 <= s < len(parts):
                raise ValueError(f"segments={self.segments!r}: the texts have {len(parts)} segment(s)")
            text = parts[s]
            mine = [(t, o) for t, o in enumerate(offsets)
                    if o is not None and o[0] == s and t < importance.shape[0]]
            if not mine:  # the segment was truncated away: the model reads none of it
                continue
            # Only what the model reads is edited and counted in the word budget: the text up
            # to the first unit after the last token; the rest is kept as it is.
            spans = [m.span() for m in UNIT.finditer(text)]
            starts = [a for a, _ in spans]
            visible = bisect.bisect_left(starts, max(o[2] for _, o in mine))
            cut = spans[visible][0] if visible < len(spans) else len(text)
            seg, spans, starts = T.Segmented(text[:cut]), spans[:visible], starts[:visible]
            score = [0.0] * len(seg)
            for t, o in mine:
                # the units the token overlaps: those starting before its end, back to the
                # first that ends after its start (units are sorted and do not overlap)
                u = bisect.bisect_left(starts, o[2]) - 1
                while u >= 0 and spans[u][1] > o[1]:
                    score[u] += float(importance[t])
                    u -= 1
            editable = [u for u in range(len(seg)) if score[u] > 0
                        and T.eligible(seg.units[u], seg.kinds[u], self.stopwords, self.min_length)]
            order = sorted(editable, key=lambda u: (-score[u], u))
            plans.append((s, seg, order, max(1, math.floor(self.max_change * seg.n_words)),
                          text[cut:]))
        return plans

    def _edit(self, parts: tuple, importance: torch.Tensor, offsets, rng: random.Random):
        """One random edit set of an example (tuple of its segments), or None if none fits."""
        out, any_edit = list(parts), False
        for s, seg, order, limit, tail in self._plans(parts, importance, offsets):
            search = Search(seg, order, limit, self._propose, rng)
            for cands in iter(search.candidates, []):
                search.apply(rng.choice(cands))
            if search.changed:
                out[s], any_edit = search.text + tail, True
        return tuple(out) if any_edit else None

    def _searched(self, step: Step, segs: list, plans: list, labels, pairs: bool,
                  rng: random.Random) -> list:
        """``search='greedy'``: per example, the edits that raise its loss most, found by
        :func:`~advnlp.attacks.search.greedy_search` with all the examples' candidates
        scored together. Segments are searched one after the other (the second from where
        the first left the example's loss and query budget)."""
        examples = [_Example(i, list(segs[i]), self.queries - 1) for i, p in plans if p]
        if not examples:
            return []
        clean = self._losses(step, [tuple(e.parts) for e in examples],
                             [e.i for e in examples], labels, pairs, len(segs))
        for e, loss in zip(examples, clean.tolist()):
            e.loss = loss
        plans_of = dict(plans)

        def score(asks):
            texts, idx = [], []
            for search, cands in asks:
                e, s, tail = search.key
                texts += [tuple(e.parts[:s] + [c + tail] + e.parts[s + 1:]) for c in cands]
                idx += [e.i] * len(cands)
            losses = self._losses(step, texts, idx, labels, pairs, len(segs)).split(
                [len(c) for _, c in asks])
            return [(x, torch.zeros(len(x), dtype=torch.bool), [None] * len(x)) for x in losses]

        for k in range(max(len(plans_of[e.i]) for e in examples)):
            searches = [Search(seg, order, limit, self._propose, rng, key=(e, s, tail),
                               max_candidates=self.max_candidates, budget=e.left, score=e.loss)
                        for e in examples if k < len(plans_of[e.i])
                        for s, seg, order, limit, tail in [plans_of[e.i][k]]]
            greedy_search(searches, score)
            for search in searches:
                e, s, tail = search.key
                e.left, e.loss = search.left, search.score
                if search.changed:
                    e.parts[s], e.edited = search.text + tail, True
        return [(e.i, [tuple(e.parts)]) for e in examples if e.edited]

    def _losses(self, step: Step, texts: list, idx: List[int], labels, pairs: bool,
                size: int) -> torch.Tensor:
        """Each text's loss (text j has the label of example ``idx[j]``): no gradients, eval
        mode, ``example_loss`` on ``size`` texts at a time, else the closure on one text."""
        size = size if self.example_loss is not None else 1
        out = []
        with torch.no_grad(), _evaluating(self.model):
            for a in range(0, len(texts), size):
                chunk = texts[a:a + size]
                batch, _ = self._encoded(chunk if pairs else [t[0] for t in chunk])
                y = _subset(labels, idx[a:a + size])
                if self.example_loss is None:
                    out.append(as_loss(step.closure(batch, y), needs_grad=False).reshape(1))
                    continue
                loss = self.example_loss(batch, y)
                if not torch.is_tensor(loss) or loss.numel() != len(chunk):
                    raise ValueError(f"example_loss must return one loss per example ("
                                     f"{len(chunk)} here), got {_shape(loss)}")
                out.append(loss.reshape(len(chunk)))
        return torch.cat([x.detach().float().cpu() for x in out])

    def _hardest(self, step: Step, edited: list, labels, pairs: bool) -> list:
        """The hardest of the ``candidates`` edit sets: round j edits every example with its
        j-th variant; one no-grad forward per round, the round with the highest loss wins
        (the closure returns a batch's loss, not each example's)."""
        idx = [i for i, _ in edited]
        rounds = len(edited[0][1])
        best, best_loss = 0, -math.inf
        with torch.no_grad():
            for j in range(rounds):
                texts = [vs[j % len(vs)] for _, vs in edited]
                b, _ = self._encoded(texts if pairs else [t[0] for t in texts])
                loss = float(as_loss(step.closure(b, _subset(labels, idx)), needs_grad=False))
                if loss > best_loss:
                    best, best_loss = j, loss
        return [(i, [vs[best % len(vs)]]) for i, vs in edited]

    def _sync_anyway(self, step: Step, batch, labels, chosen) -> None:
        """Under DDP every rank must reach the all-reduce of the edited pass."""
        if not isinstance(self.model, nn.parallel.DistributedDataParallel):
            return
        idx = chosen or [0]
        sub = {k: v[idx] if torch.is_tensor(v) else v for k, v in batch.items()}
        step.backward(as_loss(step.closure(sub, _subset(labels, idx))), 0.0)

    def _keep_grad(self, module, inputs, out):
        if not self._capture or self._grads or not torch.is_tensor(out):
            return None
        if not out.requires_grad:  # a frozen embedding (LoRA): the gradient is still wanted
            out = out.detach().requires_grad_(True)
            self._grads.append(out)
            out.retain_grad()
            return out
        out.retain_grad()
        self._grads.append(out)
        return None

    # -- bookkeeping -----------------------------------------------------------------------
    def state_dict(self) -> Dict[str, int]:
        """What resumes the edit draws exactly: the step count and the counters."""
        return {"steps": self.steps, "edited_examples": self.edited_examples,
                "unedited_examples": self.unedited_examples}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.steps = int(state["steps"])
        self.edited_examples = int(state.get("edited_examples", 0))
        self.unedited_examples = int(state.get("unedited_examples", 0))

    def remove(self) -> None:
        """Remove the gradient hook (and ``method``'s hook) from the model."""
        for h in self._handles:
            h.remove()
        self._handles = []
        if self.method is not None:
            self.method.remove()

    def __repr__(self) -> str:
        inner = f", method={self.method!r}" if self.method is not None else ""
        if self.search == "greedy":
            inner = (f", search='greedy', queries={self.queries}, "
                     f"max_candidates={self.max_candidates}{inner}")
        return (f"DiscreteAT(attack={self.attack!r}, max_change={self.max_change}, "
                f"fraction={self.fraction}, adv_weight={self.adv_weight}, "
                f"candidates={self.candidates}{inner})")


def _checked_segments(segments):
    if segments != "all" and not (isinstance(segments, int) and not isinstance(segments, bool)) \
            and not (isinstance(segments, (list, tuple)) and all(isinstance(s, int) for s in segments)):
        raise TypeError(f"segments must be 'all', a segment index or a list of them, got {segments!r}")
    return segments


def _check_inner(method, model: nn.Module) -> None:
    """``method=``: an embedding adversary on this model whose closure returns the loss."""
    if method is None:
        return
    if not isinstance(method, EmbeddingAdversary):
        raise TypeError("method must be an embedding adversary (FGM, FGSM, PGD, FreeLB, "
                        f"FreeAT, SMART, VAT), got {type(method).__name__}")
    if method.needs_logits:
        raise ValueError(f"method={type(method).__name__} compares logits (its closure "
                         "returns the model output); DiscreteAT's closure returns the loss. "
                         "Combine it with FGM, FGSM, PGD, FreeLB or FreeAT")
    if not method.built_on(model):
        raise ValueError("method was built on another model")


def _search_budget(search: str, candidates: int, queries, max_candidates, example_loss):
    """``(queries, max_candidates)`` of ``search='greedy'`` (None, None for random)."""
    if search == "random":
        if queries is not None or max_candidates is not None or example_loss is not None:
            raise ValueError("queries, max_candidates and example_loss set the search of "
                             "search='greedy'; search='random' draws its edits unscored")
        return None, None
    if candidates != 1:
        raise ValueError("candidates draws random edit sets (search='random'); "
                         "search='greedy' scores max_candidates edits per word instead")
    if example_loss is not None and not callable(example_loss):
        raise TypeError("example_loss must be a callable (batch, labels) -> a loss per "
                        f"example, got {type(example_loss).__name__}")
    # the clean score + one word's candidates: ~3x a plain step at fraction=0.5
    return (V.integer("queries", 8 if queries is None else queries, minimum=2),
            V.integer("max_candidates", 7 if max_candidates is None else max_candidates))


@contextlib.contextmanager
def _evaluating(model: nn.Module):
    """Eval mode (no dropout, BatchNorm's running statistics: an example's score does not
    depend on the texts scored with it), each module's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class _Example:
    """An example under ``search='greedy'``: its segments as edited so far, its loss there,
    the queries it has left."""

    def __init__(self, i: int, parts: list, left: int):
        self.i, self.parts, self.left, self.loss, self.edited = i, parts, left, 0.0, False


def _shape(x) -> str:
    return f"shape {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__


def _device(model: nn.Module) -> torch.device:
    p = next(P.unwrap(model).parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _subset(labels, idx: List[int]):
    if labels is None:
        return None
    if torch.is_tensor(labels):
        return labels[torch.tensor(idx, dtype=torch.long, device=labels.device)]
    return [labels[i] for i in idx]


def _encoder(encode, max_length: Optional[int]):
    """``texts -> (batch, offsets)`` from a fast tokenizer or the user's callable."""
    if getattr(encode, "is_fast", None) is not None or hasattr(encode, "get_vocab"):
        if not getattr(encode, "is_fast", False):
            raise ValueError("encode: a slow (Python) tokenizer gives no character offsets; use "
                             "the fast one (AutoTokenizer.from_pretrained(..., use_fast=True)) or "
                             "pass encode(texts) -> (batch, offsets)")
        tok = encode

        def hf(texts):
            columns = [list(c) for c in zip(*texts)] if isinstance(texts[0], tuple) else [texts]
            enc = tok(*columns, padding=True, truncation=True, max_length=max_length,
                      return_offsets_mapping=True, return_tensors="pt")
            spans = enc.pop("offset_mapping").tolist()
            offsets = [[None if s is None or a == b else (s, a, b)
                        for s, (a, b) in zip(enc.sequence_ids(i), row)]
                       for i, row in enumerate(spans)]
            return dict(enc), offsets

        return hf
    if not callable(encode):
        raise TypeError("encode must be a Hugging Face fast tokenizer or a callable "
                        "encode(texts) -> (batch, offsets)")

    def custom(texts):
        out = encode(texts)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], dict)):
            raise TypeError("encode(texts) must return (batch dict, offsets), offsets[b][t] = "
                            "(segment, start, end) or None")
        return out

    return custom


def _neighbours(encode, embedding: nn.Module):
    """Word substitutes from a Hugging Face tokenizer's whole-word tokens, or None."""
    if hasattr(encode, "get_vocab") and isinstance(getattr(embedding, "weight", None), torch.Tensor):
        return EmbeddingNeighbours.from_hf(encode, embedding)
    return None
