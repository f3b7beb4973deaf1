"""FGM, FGSM and PGD's base: clean pass, one perturbation, one adversarial pass, plus
the seed's ``attack()/restore()`` calls (:mod:`advnlp._seed_compat`)."""
from __future__ import annotations

from typing import List, Optional, Union

import torch
from torch import nn

from .. import _validate as V
from .._base import EmbeddingAdversary
from .._passes import EmbeddingStep
from .._seed_compat import SeedCompatMixin


class GradientAdversary(SeedCompatMixin, EmbeddingAdversary):
    """Clean pass, one perturbation from :meth:`perturb`, one adversarial pass.

    ``grad += grad L(x) + adv_weight * grad L(x + perturb(...))`` (with ``adv_only``
    the clean pass adds nothing: Madry-style training on the adversarial loss alone).

    Args:
        epsilon: radius of the perturbation (in embedding units, or a fraction of each
            example's embedding with ``relative=True``). Default 1.0.
        adv_weight: weight of the adversarial loss's gradient. Default 1.0.
        adv_only: train on the adversarial loss alone; the clean pass then computes
            no parameter gradients (cheaper). Default False.
        norm, scope, target, embedding, relative: see :class:`EmbeddingAdversary`.
    """

    skip_note = "With fp16 this is usually a loss-scale overflow that the GradScaler also skips."

    def __init__(self, model: nn.Module, epsilon: float = 1.0, *, norm: Optional[str] = None,
                 scope: str = "example", target: str = "output", adv_weight: float = 1.0,
                 adv_only: bool = False, embedding: Union[None, str, nn.Module] = None,
                 relative: bool = False):
        self.epsilon = V.positive("epsilon", epsilon)
        self.adv_weight = V.positive("adv_weight", adv_weight, allow_zero=True)
        self.adv_only = V.boolean("adv_only", adv_only)
        super().__init__(model, norm=norm, scope=scope, target=target, embedding=embedding,
                         relative=relative)

    def _step(self, step: EmbeddingStep) -> torch.Tensor:
        with step.skippable():
            _, grads = step.clean(param_grads=not self.adv_only)
            delta = self.perturb(step, grads)
            step.adv_loss = step.final(delta, self.adv_weight)
        return step.clean_loss

    def perturb(self, step: EmbeddingStep, grads: List[torch.Tensor]) -> List[torch.Tensor]:
        """The method: the perturbation to train on (same structure as ``grads``, the
        clean-pass gradient w.r.t. the perturbation space)."""
        raise NotImplementedError

    def _settings(self) -> str:
        return f"epsilon={self.epsilon}, {super()._settings()}"
