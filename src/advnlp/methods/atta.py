"""ATTA: a perturbation carried per example from one epoch to the next (Zheng, Zhang, Gu, Lee &
Prakash, CVPR 2020, "Efficient Adversarial Training with Transferable Adversarial Examples"),
on the input-embedding output.

Adversarial perturbations transfer between the models of neighbouring epochs, so the one an
example got last time is a good start for this time. Each step is ONE forward and ONE
backward: the backward that adds the parameter gradient also gives the gradient at the
embedding output, which moves the example's stored perturbation for its next visit::

    every call backward(closure, ids=ids):
        d_i = store[i], padded / truncated to the batch's length (0 for an example not seen yet)
        one forward at  e(x_i) + d_i  (the first ceil(share * B) rows; the others clean)
        one backward:   grad += grad_theta L   and   g_i = dL/d(embedding output) for free
        store[i] <- Proj_eps(d_i + alpha * g_i / ||g_i||)      (every row; padding kept at 0;
                                                                L-inf: alpha * sign(g_i), clamp)

So the first epoch is plain training that fills the store (an FGM step of size ``alpha`` at
each example), and every later visit trains on the perturbation found at the previous ones:
a PGD whose ascent steps are spread over the epochs. ``backward()`` returns the loss of that
one pass. Gradients are those of that one pass, not clean + adversarial: ``share`` < 1 keeps
part of every batch clean instead.

What identifies an example: ``ids=``, one integer per row of the batch (a list or a 1-D
integer tensor), stable across epochs: the dataset index. The stored perturbation is indexed
by token position, so it is meant for the same tokenisation each visit: shuffling, another
batch size or dynamic padding are fine (a visit pads or truncates it to the batch's length);
re-tokenised text (another tokenizer or ``max_length``) gets perturbations of the old
positions, still inside the ball: call :meth:`reset` then.

Arguments (defaults): ``epsilon=1.0`` (radius, embedding units; the command line's measured
default is ``relative=True, epsilon=0.03``, FGM's), ``alpha=epsilon`` (the step added per
visit), ``share=1.0`` (the fraction of each batch, its first rows, that is perturbed),
``norm="l2"``, ``scope="example"``, ``relative=False``, ``embedding=None``,
``store_dtype=torch.bfloat16``.

Cost: 1 forward + 1 backward per step, as plain training, plus copying the batch's
perturbations from and to the store (CPU memory). Memory: per example, its real tokens x
hidden size x 2 bytes (bfloat16; 4 with ``store_dtype=torch.float32``) per embedding call, for
every example seen, e.g. 48 KiB for 64 tokens of MiniLM (hidden 384): 200 examples ~ 10 MB,
100k examples of 128 tokens of a 768-wide model ~ 19 GB. The store is a dict on the CPU;
under DDP each rank holds the examples it was given only (give each rank the same examples
every epoch: a sampler that shuffles within a fixed shard, as ``advnlp train`` does for this
method). It adds no collective: the step's one backward does the one gradient all-reduce.
:meth:`state_dict` / :meth:`load_state_dict` checkpoint it for an exact resume.

Example::

    adv = ATTA(model, epsilon=0.03, relative=True)
    for batch in loader:                       # batch["idx"]: the examples' dataset indices
        loss = adv.backward(lambda: model(**inputs(batch)).loss, ids=batch["idx"])
        optimizer.step(); optimizer.zero_grad()
"""
from __future__ import annotations

import math
import numbers
from typing import Dict, List, Optional

import torch

from .. import _perturb as P
from .. import _validate as V
from .._base import EmbeddingAdversary
from .._passes import EmbeddingStep

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class ATTA(EmbeddingAdversary):
    """A per-example perturbation carried across epochs: one forward/backward per step.

    Args:
        model, norm, scope, embedding, relative: see :class:`advnlp.EmbeddingAdversary`.
        epsilon: radius of each example's perturbation. Default 1.0.
        alpha: the ascent step added at each visit. Default ``epsilon``.
        share: the fraction (0, 1] of each batch, its first ``ceil(share * B)`` rows, trained
            at its stored perturbation; the other rows are clean (their perturbation still
            moves). Default 1.0.
        store_dtype: ``torch.bfloat16`` (default), ``torch.float16`` or ``torch.float32``:
            the precision the perturbations are stored in (CPU memory).
    """

    skip_then = "the stored perturbations of this batch were kept"
    skip_note = ("The parameter gradients of this call are non-finite too: a GradScaler "
                 "skips the step.")

    def __init__(self, model, epsilon: float = 1.0, *, alpha: Optional[float] = None,
                 share: float = 1.0, norm: str = "l2", store_dtype: torch.dtype = torch.bfloat16,
                 **kwargs):
        adv_only = V.boolean("adv_only", kwargs.pop("adv_only", False))
        if adv_only or kwargs.pop("adv_weight", 1.0) != 1.0:
            raise ValueError("ATTA trains on its one pass only (share= keeps part of the batch "
                             "clean); adv_weight/adv_only do not apply")
        V.output_target(kwargs.get("target", "output"), "ATTA")
        self.epsilon = V.positive("epsilon", epsilon)
        self.alpha = V.positive("alpha", self.epsilon if alpha is None else alpha)
        self.share = V.fraction("share", share)
        if store_dtype not in _DTYPES:
            raise ValueError(f"store_dtype must be one of {', '.join(map(str, _DTYPES))}, "
                             f"got {store_dtype!r}")
        self.store_dtype = store_dtype
        # example id -> its perturbation per embedding call, (real length, hidden), on the CPU
        self.store: Dict[int, List[torch.Tensor]] = {}
        super().__init__(model, norm=norm, **kwargs)

    def backward(self, closure, backward_fn=None, *, ids=None, mask=None) -> torch.Tensor:
        """One forward/backward at the examples' stored perturbations; moves them.

        ``ids``: one integer per row of the batch (list or 1-D integer tensor), distinct,
        the same for an example every time it is seen (e.g. its dataset index). Returns
        the loss of the pass; ``mask``: see :meth:`advnlp.Adversary.backward`."""
        return self._run(closure, backward_fn, mask=mask, ids=_check_ids(ids))

    def reset(self) -> None:
        """Forget every stored perturbation (e.g. after re-tokenising the data)."""
        self.store = {}

    def state_dict(self) -> dict:
        """The store, for a checkpoint (tensors, lists and ints only: ``weights_only`` loads it)."""
        return {"store": {i: list(d) for i, d in self.store.items()}}

    def load_state_dict(self, state: dict) -> None:
        store = state.get("store") if isinstance(state, dict) else None
        if not isinstance(store, dict) or not all(
                isinstance(i, int) and isinstance(d, list)
                and all(isinstance(t, torch.Tensor) and t.dim() == 2 for t in d)
                for i, d in store.items()):
            raise ValueError("not an ATTA state_dict: expected {'store': {id: [2-D tensors]}}")
        self.store = {i: [t.to("cpu", self.store_dtype) for t in d] for i, d in store.items()}

    def memory_bytes(self) -> int:
        """Bytes of tensor data the store holds."""
        return sum(t.numel() * t.element_size() for d in self.store.values() for t in d)

    def _step(self, step: EmbeddingStep, ids: List[int]) -> torch.Tensor:
        carried = _Carried(self, ids)
        loss, grads = step.record(carried)
        step.adv_loss = loss
        if not P.all_finite(grads):
            step.skipped = True
            return loss
        moved = [b + self.alpha * u for b, u in zip(carried.stored, self._direction(grads))]
        self._keep(ids, step.space.mask(self._project(moved, self.epsilon)), step.space.masks)
        return loss

    def _keep(self, ids: List[int], deltas: List[torch.Tensor], masks: List[torch.Tensor]) -> None:
        """Each row's perturbation per call, cut after its last real position, into the store."""
        rows = []
        for delta, mask in zip(deltas, masks):
            real = mask.reshape(mask.shape[0], -1) > 0
            positions = torch.arange(1, real.shape[1] + 1, device=real.device)
            lengths = (real * positions).amax(dim=1).tolist()
            cpu = delta.detach().to("cpu", self.store_dtype)
            rows.append([cpu[b, :n].clone() for b, n in enumerate(lengths)])
        for b, i in enumerate(ids):
            self.store[i] = [call[b] for call in rows]

    def _stored(self, ids: List[int], call: int, out: torch.Tensor) -> torch.Tensor:
        """The rows' stored perturbations of embedding call ``call``, as ``out``'s shape."""
        batch, length, hidden = out.shape
        padded = torch.zeros(batch, length, hidden, dtype=self.store_dtype)
        for b, i in enumerate(ids):
            kept = self.store.get(i)
            if kept is not None and call < len(kept) and kept[call].shape[-1] == hidden:
                n = min(length, kept[call].shape[0])
                padded[b, :n] = kept[call][:n]
        return padded.to(out.device, torch.float32)

    def _settings(self) -> str:
        return (f"epsilon={self.epsilon}, alpha={self.alpha}, share={self.share}, "
                f"{super()._settings()}")


class _Carried:
    """The offset the hook adds in ATTA's one pass: call ``i`` gets the stored perturbations
    (masked; zero on the clean share's rows). ``stored`` keeps them, unshared, for the update."""

    def __init__(self, adv: ATTA, ids: List[int]):
        self.adv, self.ids = adv, ids
        self.stored: List[torch.Tensor] = []

    def __call__(self, i: int, tokens, out: torch.Tensor) -> torch.Tensor:
        if out.dim() != 3:
            raise ValueError(f"ATTA keeps a perturbation per example and position: the embedding "
                             f"output must be (batch, length, hidden), got {tuple(out.shape)}")
        if out.shape[0] != len(self.ids):
            raise ValueError(f"ids= has {len(self.ids)} entries, but the batch has "
                             f"{out.shape[0]} examples: give one id per row of the batch")
        stored = self.adv._stored(self.ids, i, out) * self.adv._hook.mask(tokens, out)
        self.stored.append(stored)
        k = math.ceil(self.adv.share * out.shape[0])
        if k == out.shape[0]:
            return stored
        rows = (torch.arange(out.shape[0], device=out.device) < k).view(-1, 1, 1)
        return stored * rows


def _check_ids(ids) -> List[int]:
    """``ids`` as a list of distinct ints, or a ValueError/TypeError that says the fix."""
    if ids is None:
        raise ValueError("ATTA.backward() needs ids=: one integer per row of the batch that "
                         "identifies the example across epochs (e.g. its dataset index)")
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype.is_complex \
                or ids.dtype == torch.bool:
            raise TypeError(f"ids= must be a 1-D integer tensor or a list of ints, got a "
                            f"{ids.dtype} tensor of shape {tuple(ids.shape)}")
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)) or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in ids):
        raise TypeError(f"ids= must be a list of ints or a 1-D integer tensor, got {ids!r}"[:200])
    ids = [int(i) for i in ids]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"ids= repeats {twice[:5]}: an example appears once per batch (each "
                         "row's perturbation is stored under its id)")
    return ids
