"""SMART: smoothness-inducing adversarial regularisation (Jiang, He, Chen, Liu, Gao & Zhao,
ACL 2020, "SMART: Robust and Efficient Fine-Tuning for Pre-trained Natural Language
Models through Principled Regularized Optimization").

Adds a smoothness term to the task loss; delta on the embedding output::

    delta_0 = N(0, noise_var^2) per coordinate          (padding gets 0)
    repeat steps times:
        g     = d D(f(x) || f(x + delta)) / d delta     (f(x) constant; input-only backward;
                                                        mt-dnn uses its "stable_kl" here)
        v     = delta + step_size * g
        delta = radius * v / (||v||_token + epsilon)     (per-token L-inf by default)
    loss  = task + alpha * [ D(f(x) || f(x+delta)) + D(f(x+delta) || f(x)) ]

The per-token L-inf normalisation is the released code's (mt-dnn
``SmartPerturbation``): the paper's ``epsilon`` is a division stabiliser, not a
radius, and ``radius`` makes the scale explicit. ``norm="l2"`` normalises each
token by its L2 norm instead. With the defaults delta is essentially the rescaled
random start; raise ``step_size`` / ``steps`` for an adversarial one, and use a
smaller radius (0.05-0.1) on word embeddings (why, measured: docs/methods.md).

The symmetric term follows the reference ``SymKlCriterion``: each direction
differentiates only through its second argument, so both the clean and the
perturbed pass get gradient. Divergence D by ``output_type``: ``"softmax"``
(KL, classification), ``"sigmoid"`` (Bernoulli KL per logit, multi-label) or
``"regression"`` (squared error, counted once). The Bregman proximal point
part is optional (below).

The closure returns the model output (not a loss): logits, an object with
``.logits`` (HF ``ModelOutput``, whose ``.loss`` is the task loss), or
``(loss, logits)``; or pass ``labels=`` to ``backward`` and SMART applies
``loss_fn(logits, labels)`` (default: cross-entropy / BCE / MSE by
``output_type``). Returns the task loss (detached); ``last_adv_loss`` holds the
symmetric divergence.

Bregman proximal point (optional, ``bregman=mu > 0``; the paper's momentum
variant): a teacher ``theta~ <- beta * theta~ + (1 - beta) * theta`` (started at
theta, updated at the start of every ``backward()`` call, i.e. per micro-batch)
adds ``mu * [D(f(x; theta~) || f(x; theta)) + D(f(x; theta) || f(x; theta~))]``
to the loss (gradient through the student in both terms). The teacher forward
runs under ``no_grad`` with the teacher tensors swapped in (``p.data``, restored
bit-for-bit). Costs one more forward and one copy of the trainable parameters;
``last_bregman_loss`` holds the term. Paper: mu=1, beta=0.99. Off by default.

Arguments (defaults, the paper's and released code's): ``alpha=1.0``,
``noise_var=1e-5`` (a standard deviation, as in the code), ``step_size=1e-3``,
``epsilon=1e-5``, ``radius=1.0``, ``steps=1``, ``norm="linf"``,
``output_type="softmax"``, ``loss_fn=None``, ``generator=None``, ``bregman=0``,
``bregman_beta=0.99``, ``embedding=None``.

Cost: 2 + steps forward passes (+1 with ``bregman``), steps input-only backwards, 1 full backward
through the clean and final graphs (two forwards' activations alive at once).

Example::

    adv = SMART(model, alpha=1.0, radius=0.1)
    loss = adv.backward(lambda: model(**batch))          # batch has labels: .loss is the task
    optimizer.step(); optimizer.zero_grad()
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import nn

from .. import _perturb as P
from .. import _validate as V
from .._passes import EmbeddingStep
from ..outputs import split_output
from ._consistency import ConsistencyAdversary
from ._divergence import proximal_divergence, symmetric_divergence


class SMART(ConsistencyAdversary):
    """Smoothness-inducing adversarial regulariser (symmetric divergence at an adversarial delta).

    Args:
        model, embedding: see :class:`advnlp.EmbeddingAdversary`.
        loss_fn: ``loss_fn(logits, labels)`` used when ``backward(..., labels=)`` is given.
        alpha: weight lambda_s of the regulariser. Default 1.0.
        noise_var: std of the Gaussian start. Default 1e-5.
        step_size: ascent step. Default 1e-3.
        epsilon: stabiliser of the per-token normalisation, the paper's name; not a
            radius (kept as ``.stabilizer``). Default 1e-5.
        radius: per-token size of the final delta (L-inf or L2). Default 1.0 (reference).
        steps: ascent steps (>= 1). Default 1.
        norm: ``"linf"`` (default, reference) or ``"l2"``; always per token.
        output_type: ``"softmax"`` (default), ``"sigmoid"`` or ``"regression"``.
        generator: ``torch.Generator`` for the Gaussian start.
        bregman: weight mu of the Bregman proximal (momentum teacher) term; 0 = off. Default 0.
        bregman_beta: teacher momentum, in [0, 1). Default 0.99.
    """

    default_norm = "linf"

    def __init__(self, model, loss_fn: Optional[Callable] = None, *, alpha: float = 1.0,
                 noise_var: float = 1e-5, step_size: float = 1e-3, epsilon: float = 1e-5,
                 radius: float = 1.0, steps: int = 1, norm: str = "linf",
                 output_type: str = "softmax", generator: Optional[torch.Generator] = None,
                 bregman: float = 0.0, bregman_beta: float = 0.99, embedding=None):
        self.noise_var = V.positive("noise_var", noise_var)
        self.step_size = V.positive("step_size", step_size)
        self.stabilizer = V.positive("epsilon", epsilon)
        self.radius = V.positive("radius", radius)
        self.steps = V.integer("steps", steps)
        self.bregman = V.positive("bregman", bregman, allow_zero=True)
        self.bregman_beta = V.positive("bregman_beta", bregman_beta, allow_zero=True)
        if self.bregman_beta >= 1:
            raise ValueError(f"bregman_beta must be in [0, 1), got {self.bregman_beta}")
        self.teacher: Optional[List[torch.Tensor]] = None
        self.last_bregman_loss: Optional[torch.Tensor] = None
        super().__init__(model, loss_fn=loss_fn, alpha=alpha, output_type=output_type,
                         generator=generator, norm=norm, embedding=embedding)

    def _step(self, step: EmbeddingStep, labels=None) -> torch.Tensor:
        task, clean, zeros = self._clean(step, labels)
        if task is None:
            raise ValueError(
                "SMART needs a task loss: return an output with .loss or (loss, logits) "
                "from the closure, or pass labels= to backward() (with loss_fn= for a "
                "custom loss). For unlabelled data use VAT."
            )
        total = task
        if self.bregman > 0:
            total = total + self.bregman * self._bregman_term(step, clean)
        with step.skippable():
            delta = step.space.mask([self._randn(z) * self.noise_var for z in zeros])
            for _ in range(self.steps):
                g = self._ascent_grad(step, delta, clean)
                delta = step.space.mask([self._normalise(d + self.step_size * gi)
                                         for d, gi in zip(delta, g)])
            reg = symmetric_divergence(clean, self._logits_at(step, delta), self.kind,
                                       self._weights)
            step.adv_loss = reg.detach()
            total = total + self.alpha * reg
        step.backward_fn(total)
        return task.detach()

    def _normalise(self, v: torch.Tensor) -> torch.Tensor:
        return v * (self.radius / (P.norm(v, self.norm, "token") + self.stabilizer))

    # -- the Bregman proximal point term ------------------------------------------------
    def _bregman_term(self, step: EmbeddingStep, clean: torch.Tensor) -> torch.Tensor:
        self._update_teacher()
        prox = proximal_divergence(self._teacher_logits(step), clean, self.kind, self._weights)
        self.last_bregman_loss = prox.detach()
        return prox

    def _trainable(self) -> List[nn.Parameter]:
        return [p for p in P.unwrap(self.model).parameters() if p.requires_grad]

    def _update_teacher(self) -> None:
        params = self._trainable()
        with torch.no_grad():
            if self.teacher is None or len(self.teacher) != len(params):
                self.teacher = [p.detach().clone() for p in params]
            else:
                for t, p in zip(self.teacher, params):
                    t.lerp_(p.detach(), 1.0 - self.bregman_beta)

    def _teacher_logits(self, step: EmbeddingStep) -> torch.Tensor:
        params = self._trainable()
        saved = [p.data for p in params]
        try:
            with torch.no_grad(), step.local():
                for p, t in zip(params, self.teacher):
                    p.data = t
                _, logits = split_output(step.closure(), check_loss=False)
        finally:
            for p, s in zip(params, saved):
                p.data = s
        return logits.detach()

    def __repr__(self) -> str:
        return (f"SMART(alpha={self.alpha}, radius={self.radius}, norm={self.norm!r}, "
                f"steps={self.steps}, output_type={self.output_type!r}, "
                f"embedding={self.embedding_name!r})")
