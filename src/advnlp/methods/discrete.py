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
                                            at most max_change of its words (at least one),
                                            one random edit each
    L' = closure(x'_S, y_S); backward(adv_weight * L')

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
numbers, one character, an empty text) is counted in ``unedited_examples`` and left out of
L'; a step with nothing edited runs no second pass (under DDP it runs one with weight 0,
so that every rank reaches the same all-reduce).

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
with ``(seed, n)``; ``state_dict()`` holds n); ``embedding=None``.

Cost: ``1 + fraction`` plain steps, plus tokenising, plus ``(candidates - 1)`` no-grad
forwards over the edited examples.

Example::

    adv = DiscreteAT(model, tokenizer, attack="char", max_length=128)
    for texts, y in loader:
        loss = adv.backward(lambda batch, y: model(**batch, labels=y).loss, texts, y)
        optimizer.step(); optimizer.zero_grad()
"""
from __future__ import annotations

import bisect
import math
import random
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Union

import torch
from torch import nn

from .. import _perturb as P
from .. import _validate as V
from .._base import Adversary, EmbeddingAdversary, Step, local_grads
from ..attacks import _text as T
from ..attacks.char import char_proposer
from ..attacks.classifier import EmbeddingNeighbours
from ..attacks.word import WORD_TRANSFORMATIONS, word_proposer
from ..outputs import as_loss
from ..text import UNIT

ATTACKS = ("char", "word")


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
                 seed: int = 0, embedding=None):
        self.attack = V.choice("attack", attack, ATTACKS)
        self.max_change = V.fraction("max_change", max_change)
        self.fraction = V.fraction("fraction", fraction)
        self.adv_weight = V.positive("adv_weight", adv_weight, allow_zero=True)
        self.candidates = V.integer("candidates", candidates)
        self.min_length = V.integer("min_length", min_length, minimum=0)
        self.max_length = None if max_length is None else V.integer("max_length", max_length)
        self.seed = V.integer("seed", seed, minimum=-2 ** 63)
        self.stopwords = frozenset(stopwords)
        if segments != "all" and not (isinstance(segments, int) and not isinstance(segments, bool)) \
                and not (isinstance(segments, (list, tuple)) and all(isinstance(s, int) for s in segments)):
            raise TypeError(f"segments must be 'all', a segment index or a list of them, got {segments!r}")
        self.segments = segments
        if method is not None:
            if not isinstance(method, EmbeddingAdversary):
                raise TypeError("method must be an embedding adversary (FGM, FGSM, PGD, FreeLB, "
                                f"FreeAT, SMART, VAT), got {type(method).__name__}")
            if method.needs_logits:
                raise ValueError(f"method={type(method).__name__} compares logits (its closure "
                                 "returns the model output); DiscreteAT's closure returns the loss. "
                                 "Combine it with FGM, FGSM, PGD, FreeLB or FreeAT")
            if not method.built_on(model):
                raise ValueError("method was built on another model")
        super().__init__(model)
        self.method = method
        self._encode = _encoder(encode, self.max_length)
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
            return step.clean_loss
        importance = grad.detach().float().norm(dim=-1).cpu()  # [B, T]

        chosen = sorted(rng.sample(range(len(texts)), math.ceil(self.fraction * len(texts))))
        edited = []
        for i in chosen:
            variants = [self._edit(segs[i], importance[i], offsets[i], rng)
                        for _ in range(self.candidates)]
            variants = [v for v in variants if v is not None]
            if variants:
                edited.append((i, variants))
            else:
                self.unedited_examples += 1
        self.edited_examples += len(edited)
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

    def _encoded(self, texts):
        """``encode(texts)`` with the batch's tensors on the model's device."""
        batch, offsets = self._encode(texts)
        device = _device(self.model)
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}, offsets

    # -- the edits -------------------------------------------------------------------------
    def _edit(self, parts: tuple, importance: torch.Tensor, offsets, rng: random.Random):
        """One random edit set of an example (tuple of its segments), or None if none fits."""
        wanted = (range(len(parts)) if self.segments == "all" else
                  [self.segments] if isinstance(self.segments, int) else self.segments)
        out, any_edit = list(parts), False
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
            limit = max(1, math.floor(self.max_change * seg.n_words))
            values, changed = list(seg.units), set()
            for u in sorted(editable, key=lambda u: (-score[u], u)):
                if len(changed) >= limit:
                    break
                if u in changed:
                    continue
                edits = [e for e in self._propose(seg, values, u, changed)
                         if not (set(e) & changed) and len(changed) + len(e) <= limit]
                if edits:
                    edit = rng.choice(edits)
                    for j, v in edit.items():
                        values[j] = v
                    changed.update(edit)
            if changed:
                out[s], any_edit = seg.render(values) + text[cut:], True
        return tuple(out) if any_edit else None

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
        return (f"DiscreteAT(attack={self.attack!r}, max_change={self.max_change}, "
                f"fraction={self.fraction}, adv_weight={self.adv_weight}, "
                f"candidates={self.candidates}{inner})")


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
