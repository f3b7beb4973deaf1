"""Free adversarial training, "FreeAT" (Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis,
Taylor & Goldstein, NeurIPS 2019, "Adversarial Training for Free!"), on the input
embeddings as in the NLP baselines of Zhu et al. (FreeLB, ICLR 2020).

The caller replays each batch ``replays`` (m) times, with an optimizer step after
every replay; one ``backward()`` per replay does ONE forward/backward at the
current delta, whose single backward both adds the parameter gradient and gives
the ascent direction for delta::

    delta = 0                                   (new batch)
    every call:  grad += grad_theta L(x + delta)              (1 forward + 1 backward)
                 delta <- Proj_eps(delta + step_size * g/||g||)   (L2, per example;
                                                        L-inf: step_size * sign(g), clamp)

delta persists across the m replays of a batch and resets every ``replays`` calls,
when the embedding output's shape changes, or on :meth:`new_batch` (call it if
your loop does not replay exactly ``replays`` times; with fixed-length padding
the shape check cannot see a new batch). Train for ``epochs / m`` epochs to keep
the cost of standard training (the paper's point). Gradients are *not* clean +
adversarial: each call's gradient is the one at the current delta (the first
replay's is the clean gradient). Returns the loss at the current delta.

Arguments (defaults, the FreeAT text baseline released with FreeLB; provenance:
docs/methods.md): ``epsilon=0.6``, ``replays=2``, ``step_size=epsilon / 6``
(``epsilon`` for ``norm="linf"``, Shafahi et al.'s image recipe), ``norm="l2"``,
``scope="example"``, ``embedding=None``. delta starts at 0.

Cost per call: 1 forward + 1 backward (the same as plain training).

Example::

    adv = FreeAT(model, epsilon=0.6, replays=2)
    for batch in loader:                      # run epochs / 4 epochs
        for _ in range(adv.replays):
            loss = adv.backward(lambda: model(**batch).loss)
            optimizer.step(); optimizer.zero_grad()
"""
from __future__ import annotations

from typing import List, Optional

import torch

from .. import _perturb as P
from .. import _validate as V
from .._base import EmbeddingAdversary
from .._passes import EmbeddingStep, Offsets


class FreeAT(EmbeddingAdversary):
    """Free adversarial training: one pass per replay updates both the model and delta.

    Args:
        model, scope, embedding: see :class:`advnlp.EmbeddingAdversary`.
        epsilon: radius of delta (per example for L2, per coordinate for L-inf). Default 0.6.
        replays: m, how many times the caller replays each batch (delta resets after
            that many calls). Default 2.
        step_size: delta's ascent step. Default ``epsilon / 6`` for L2, ``epsilon`` for L-inf.
        norm: ``"l2"`` (default, per-example g/||g|| step) or ``"linf"`` (sign step).
        relative: ``epsilon`` and ``step_size`` as fractions of each example's embedding
            (see :class:`advnlp.EmbeddingAdversary`). Default False.
    """

    skip_then = "delta reset to 0"
    skip_note = ("The parameter gradients of this call are non-finite too: a GradScaler "
                 "skips the step.")

    def __init__(self, model, epsilon: float = 0.6, replays: int = 2, *,
                 step_size: Optional[float] = None, norm: str = "l2", **kwargs):
        if V.boolean("adv_only", kwargs.pop("adv_only", False)) or kwargs.pop("adv_weight", 1.0) != 1.0:
            raise ValueError("FreeAT trains on the perturbed loss only, once per call; "
                             "adv_weight/adv_only do not apply")
        V.output_target(kwargs.get("target", "output"), "FreeAT")
        self.epsilon = V.positive("epsilon", epsilon)
        self.replays = V.integer("replays", replays)
        if step_size is None:
            step_size = self.epsilon if norm == "linf" else self.epsilon / 6
        self.step_size = V.positive("step_size", step_size)
        self.delta: Optional[List[torch.Tensor]] = None
        self.calls_on_batch = 0
        super().__init__(model, norm=norm, **kwargs)

    def new_batch(self) -> None:
        """Forget delta: the next call starts a new batch at delta = 0."""
        self.delta, self.calls_on_batch = None, 0

    def _step(self, step: EmbeddingStep) -> torch.Tensor:
        """One forward/backward at the current delta; updates delta. Returns that loss."""
        if self.calls_on_batch >= self.replays:
            self.new_batch()
        carried = None if self.delta is None else Offsets(self.delta, restart_on_new_shape=True)
        loss, grads = step.record(carried)
        if carried is not None and carried.restarted:  # another shape: a new batch at delta = 0
            self.new_batch()
        self.calls_on_batch += 1
        step.adv_loss = loss  # FreeAT's one pass is also its adversarial pass
        if not P.all_finite(grads):
            step.skipped = True
            self.delta = None
            return loss
        delta = self.delta or [torch.zeros_like(g, dtype=torch.float32) for g in grads]
        moved = [d + self.step_size * u for d, u in zip(delta, self._direction(grads))]
        self.delta = step.space.mask(self._project(moved, self.epsilon))
        return loss

    def __repr__(self) -> str:
        return (f"FreeAT(epsilon={self.epsilon}, replays={self.replays}, step_size={self.step_size}, "
                f"norm={self.norm!r}, embedding={self.embedding_name!r})")
