"""VAT: Virtual Adversarial Training (Miyato, Maeda, Koyama & Ishii, TPAMI 2018; for text:
Miyato, Dai & Goodfellow, ICLR 2017, "Adversarial Training Methods for
Semi-Supervised Text Classification").

A label-free smoothness loss on the embedding output, usable on unlabelled
batches (its point: semi-supervised training)::

    d     = random unit direction per example (Gaussian, padding 0, ||d||_2 = 1)
    g     = d KL(f(x) || f(x + xi_n * d)) / d d       (f(x) constant; power iteration)
    r_adv = epsilon * g / ||g||_2                     (per example)
    loss  = task (if any) + alpha * KL(f(x) || f(x + r_adv))     (f(x) detached)

``xi`` is scale-aware: the finite-difference radius is ``xi_n = xi * ||e_n||``
with ``e_n`` the example's clean embedding output (real tokens); 1e-3 rather than
the image code's 1e-6, which is beneath float32 resolution (measured:
docs/methods.md); use ``xi=0.1`` under bf16/fp16 autocast. A zero probe gradient
gives a zero r_adv, never NaN. ``epsilon`` is absolute, in embedding units, as in
the other methods.

The closure returns the model output: logits for an unlabelled batch (no task
loss: only the VAT loss is backpropagated), or an output with ``.loss`` /
``(loss, logits)`` / ``labels=`` + ``loss_fn`` for a labelled one. Returns the
task loss, or the VAT loss when the batch has no task loss; ``last_adv_loss``
is the VAT loss. Divergence by ``output_type``: ``"softmax"`` (KL), ``"sigmoid"``
(Bernoulli KL per logit) or ``"regression"`` (squared error).

Arguments (defaults): ``epsilon=1.0``, ``loss_fn=None``, ``alpha=1.0``,
``xi=1e-3`` (relative), ``power_iters=1``, ``output_type="softmax"``,
``generator=None``, ``norm="l2"``, ``scope="example"``, ``embedding=None``.

Cost: 2 + power_iters forward passes, power_iters input-only backwards, 1 full
backward (through the clean graph only when there is a task loss).

Example::

    adv = VAT(model, epsilon=1.0)
    loss = adv.backward(lambda: model(input_ids=unlabelled_ids).logits)
    optimizer.step(); optimizer.zero_grad()
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch

from .. import _perturb as P
from .. import _validate as V
from .._passes import EmbeddingStep
from ._consistency import ConsistencyAdversary
from ._divergence import divergence


class VAT(ConsistencyAdversary):
    """Virtual adversarial training: KL(f(x) || f(x + r_adv)) with r_adv by power iteration.

    Args:
        model, norm, scope, embedding: see :class:`advnlp.EmbeddingAdversary`
            (``norm="l2"``, ``scope="example"``).
        epsilon: radius of r_adv (embedding units; with ``relative=True`` a fraction of
            each example's embedding norm, see :class:`advnlp.EmbeddingAdversary`). Default 1.0.
        loss_fn: ``loss_fn(logits, labels)`` used when ``backward(..., labels=)`` is given.
        alpha: weight of the VAT loss. Default 1.0.
        xi: finite-difference radius of the power iteration, relative to each example's
            embedding norm. Default 1e-3 (use 0.1 under bf16/fp16 autocast).
        power_iters: power iterations (>= 1). Default 1.
        output_type: ``"softmax"`` (default), ``"sigmoid"`` or ``"regression"``.
        generator: ``torch.Generator`` for the random direction.
    """

    def __init__(self, model, epsilon: float = 1.0, loss_fn: Optional[Callable] = None, *,
                 alpha: float = 1.0, xi: float = 1e-3, power_iters: int = 1,
                 output_type: str = "softmax", generator: Optional[torch.Generator] = None,
                 **kwargs):
        if V.boolean("adv_only", kwargs.pop("adv_only", False)) or kwargs.pop("adv_weight", 1.0) != 1.0:
            raise ValueError("VAT weighs its loss with alpha=; adv_weight/adv_only do not apply")
        V.output_target(kwargs.get("target", "output"), "VAT")
        self.epsilon = V.positive("epsilon", epsilon)
        self.xi = V.positive("xi", xi)
        self.power_iters = V.integer("power_iters", power_iters)
        super().__init__(model, loss_fn=loss_fn, alpha=alpha, output_type=output_type,
                         generator=generator, **kwargs)

    def _step(self, step: EmbeddingStep, labels=None) -> torch.Tensor:
        norms = _EmbeddingNorms(self)
        task, clean, zeros = self._clean(step, labels, norms)
        if task is None:
            clean = clean.detach()  # unlabelled: free the clean graph now
        total = task
        with step.skippable():
            d = self._direction(step.space.mask([self._randn(z) for z in zeros]))
            for _ in range(self.power_iters):
                # xi is relative to ||e_n||; a relative space already multiplies by it.
                probe = [self.xi * di if self.relative else self.xi * n * di
                         for n, di in zip(norms.per_call, d)]
                d = self._direction(self._ascent_grad(step, probe, clean))
            r_adv = [self.epsilon * di for di in d]
            lds = divergence(clean, self._logits_at(step, r_adv), self.kind, self._weights)
            step.adv_loss = lds.detach()
            total = lds * self.alpha if task is None else task + self.alpha * lds
        if total is not None:
            step.backward_fn(total)
        if task is not None:
            return task.detach()
        return step.adv_loss if step.adv_loss is not None else clean.new_zeros((), dtype=torch.float32)

    def __repr__(self) -> str:
        return (f"VAT(epsilon={self.epsilon}, xi={self.xi}, alpha={self.alpha}, "
                f"power_iters={self.power_iters}, norm={self.norm!r}, "
                f"output_type={self.output_type!r}, embedding={self.embedding_name!r})")


class _EmbeddingNorms:
    """An offset that adds nothing: it measures ``||e_n||`` over each example's real
    tokens for every embedding call of the clean pass (the scale of ``xi``)."""

    def __init__(self, adv: VAT):
        self.adv = adv
        self.per_call: List[torch.Tensor] = []

    def __call__(self, i, ids, out: torch.Tensor) -> None:
        e = out.detach().float() * self.adv._hook.mask(ids, out)
        self.per_call.append(P.norm(e, "l2", self.adv._scope()))
        return None
