"""FGSM: Fast Gradient Sign Method (Goodfellow, Shlens & Szegedy, ICLR 2015),
with the optional random start of "fast FGSM" (Wong, Rice & Kolter, ICLR 2020,
"Fast is better than free").

Perturbs the input-embedding output with an L-infinity step::

    r = epsilon * sign(g)                                    (random_start=False)
    r = clamp(u + alpha * sign(grad L(x + u)), -eps, eps),   u ~ U(-eps, eps)^d
                                                             (random_start=True)
    grad += grad L(x) + adv_weight * grad L(x + r)

Padding positions get no perturbation.

Arguments (defaults): ``epsilon=1.0`` (per coordinate, so much stronger than an L2
epsilon of 1), ``random_start=False``, ``alpha=1.25 * epsilon`` (Wong et al.),
``generator=None``; ``scope``, ``target``, ``adv_weight``, ``adv_only``,
``embedding`` as for FGM.

Cost: 2 forward + 2 backward passes; the random start adds one forward and one
input-only backward.

Example::

    adv = FGSM(model, epsilon=0.01, random_start=True)
    loss = adv.backward(lambda: model(**batch).loss)
    optimizer.step(); optimizer.zero_grad()
"""
from __future__ import annotations

from typing import List, Optional

import torch

from .. import _perturb as P
from .. import _validate as V
from .._passes import EmbeddingStep
from ._gradient import GradientAdversary


class FGSM(GradientAdversary):
    """Fast Gradient Sign Method: ``r = epsilon * sign(g)``, optionally from a random start.

    Args:
        model, epsilon, scope, target, adv_weight, adv_only, embedding: see
            :class:`advnlp.GradientAdversary`. The norm is always L-infinity.
        random_start: start from ``U(-epsilon, epsilon)`` and take one step of
            size ``alpha`` from there (fast FGSM). Default False.
        alpha: step size with ``random_start``. Default ``1.25 * epsilon``.
        generator: a ``torch.Generator`` for the random start (reproducibility).
    """

    default_norm = "linf"

    def __init__(self, model, epsilon: float = 1.0, *, random_start: bool = False,
                 alpha: Optional[float] = None, generator: Optional[torch.Generator] = None,
                 norm: str = "linf", **kwargs):
        if norm != "linf":
            raise ValueError("FGSM is the L-infinity (sign) method; for L2 use FGM")
        self.random_start = V.boolean("random_start", random_start)
        self.alpha = (1.25 * V.positive("epsilon", epsilon) if alpha is None
                      else V.positive("alpha", alpha))
        self.generator = generator
        super().__init__(model, epsilon, norm="linf", **kwargs)

    def perturb(self, step: EmbeddingStep, grads: List[torch.Tensor]) -> List[torch.Tensor]:
        if not self.random_start:
            return [self.epsilon * torch.sign(g.float()) for g in grads]
        start = step.space.mask(
            [P.random_like(g, self.epsilon, "linf", self._scope(), self.generator) for g in grads]
        )
        _, g_start = step.grad_at(start)
        return [(u + self.alpha * torch.sign(g)).clamp(-self.epsilon, self.epsilon)
                for u, g in zip(start, g_start)]
