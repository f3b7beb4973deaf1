"""FGM: Fast Gradient Method (Miyato, Dai & Goodfellow, ICLR 2017,
"Adversarial Training Methods for Semi-Supervised Text Classification").

Perturbs the input-embedding output by one normalised gradient step::

    g = dL/d(embedding output)          (clean pass)
    r = epsilon * g / ||g||_2           (per example by default; padding gets 0)
    grad += grad L(x) + adv_weight * grad L(x + r)

Arguments (defaults): ``epsilon=1.0`` (radius, embedding units), ``norm="l2"``,
``scope="example"``, ``target="output"``, ``adv_weight=1.0``, ``adv_only=False``,
``embedding=None`` (found with ``get_input_embeddings()``).

Cost: 2 forward + 2 backward passes.

Example::

    adv = FGM(model, epsilon=1.0)
    loss = adv.backward(lambda: model(**batch).loss)
    optimizer.step(); optimizer.zero_grad()
"""
from __future__ import annotations

from typing import List

import torch

from .._passes import EmbeddingStep
from ._gradient import GradientAdversary


class FGM(GradientAdversary):
    """Fast Gradient Method: ``r = epsilon * g / ||g||``.

    Args: see :class:`advnlp.GradientAdversary` (``epsilon=1.0``, ``norm="l2"``,
    ``scope="example"``, ``target="output"``, ``adv_weight=1.0``). With
    ``norm="linf"`` the step is ``epsilon * sign(g)`` (that is FGSM).
    """

    default_norm = "l2"

    def perturb(self, step: EmbeddingStep, grads: List[torch.Tensor]) -> List[torch.Tensor]:
        return [self.epsilon * d for d in self._direction(grads)]
