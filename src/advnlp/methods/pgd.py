"""PGD: Projected Gradient Descent adversarial training (Madry et al., ICLR 2018,
"Towards Deep Learning Models Resistant to Adversarial Attacks"), on the input
embeddings as in the NLP recipes (Zhu et al. 2020 use it as their baseline).

Ascent steps inside an epsilon-ball around the clean embedding output::

    delta_0 = 0                     (or a random point in the ball)
    delta_{t+1} = Proj_eps(delta_t + alpha * g_t / ||g_t||)   (L2; sign(g_t) for L-inf)
    grad += grad L(x) + adv_weight * grad L(x + delta_steps)

g_0 is the clean pass's gradient (no extra pass). The inner steps 1..steps-1
take only d loss / d delta (``torch.autograd.grad``): they never touch or copy
parameter gradients. Only the final pass adds to ``.grad``. With
``steps=1, alpha=epsilon`` PGD equals FGM.

Arguments (defaults): ``epsilon=1.0``, ``alpha=0.3``, ``steps=3``,
``random_start=False``, ``generator=None``, ``norm="l2"``; ``scope``, ``target``,
``adv_weight``, ``adv_only``, ``embedding`` as for FGM.

Cost: ``steps + 1`` forward passes, 2 full backwards and ``steps - 1`` input-only
backwards.

Example::

    adv = PGD(model, epsilon=1.0, alpha=0.3, steps=3)
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


class PGD(GradientAdversary):
    """Projected gradient ascent on the embedding perturbation.

    Args:
        model, epsilon, norm, scope, target, adv_weight, adv_only, embedding:
            see :class:`advnlp.GradientAdversary` (``epsilon=1.0``, ``norm="l2"``).
        alpha: step size of each ascent step (same units as epsilon). Default 0.3.
        steps: number of ascent steps (>= 1). Default 3.
        random_start: start from a random point in the ball instead of 0 (one
            extra input-only pass). Default False.
        generator: a ``torch.Generator`` for the random start.
    """

    def __init__(self, model, epsilon: float = 1.0, alpha: float = 0.3, steps: int = 3, *,
                 random_start: bool = False, generator: Optional[torch.Generator] = None,
                 **kwargs):
        self.alpha = V.positive("alpha", alpha)
        self.steps = V.integer("steps", steps)
        self.random_start = V.boolean("random_start", random_start)
        self.generator = generator
        super().__init__(model, epsilon, **kwargs)

    def perturb(self, step: EmbeddingStep, grads: List[torch.Tensor]) -> List[torch.Tensor]:
        if self.random_start:
            delta = step.space.mask([P.random_like(g, self.epsilon, self.norm, self._scope(),
                                                   self.generator) for g in grads])
            grads = self._grad_at(step, delta)
        else:
            delta = [torch.zeros_like(g, dtype=torch.float32) for g in grads]
        for t in range(self.steps):
            if t > 0:
                grads = self._grad_at(step, delta)
            delta = self._ascend(delta, grads)
        return delta

    def _grad_at(self, step: EmbeddingStep, delta: List[torch.Tensor]) -> List[torch.Tensor]:
        """The ascent direction's gradient at ``delta`` (YOPO replaces it by a cheaper one)."""
        return step.grad_at(delta)[1]

    def _ascend(self, delta: List[torch.Tensor], grads: List[torch.Tensor]) -> List[torch.Tensor]:
        moved = [d + self.alpha * u for d, u in zip(delta, self._direction(grads))]
        return self._project(moved, self.epsilon)

    def _compat_step(self, G, current, epsilon, alpha, first):
        # Seed PGD: add alpha * g/||g|| to the current perturbation, project to epsilon.
        a = self.alpha if alpha is None else V.positive("alpha", alpha)
        if first:
            current = torch.zeros_like(current)
        return P.project(current + a * P.normalize(G, self.norm, "batch"), epsilon, self.norm, "batch")
