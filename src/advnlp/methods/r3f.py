"""R3F: noise plus a symmetric KL between the clean and the noised outputs (Aghajanyan,
Shrivastava, Gupta, Goyal, Zettlemoyer & Gupta, ICLR 2021, "Better Fine-Tuning by Reducing
Representational Collapse").

SMART without the ascent step::

    z     = U(-epsilon, epsilon) per coordinate    (noise="normal": N(0, epsilon^2); padding 0)
    loss  = task(x) + alpha * [ KL(f(x) || f(x + z)) + KL(f(x + z) || f(x)) ]

The symmetric KL is the reference's (fairseq ``sentence_prediction_r3f``, ``_get_symm_kl``):
the gradient flows through both outputs in both terms (SMART's reference stops it on each
term's first argument). It is averaged over examples, or over the real tokens of per-token
outputs (as SMART and VAT; fairseq sums over the batch and divides by its size). The task
loss is the clean pass's; the noise has no gradient in it, so R3F is the noise control for
SMART as NEFTune is for FGM.

The closure returns the model output, as for SMART: an object with ``.logits`` and
``.loss``, ``(loss, logits)``, or logits with ``backward(..., labels=)`` and ``loss_fn``.
Divergence by ``output_type``: ``"softmax"`` (KL), ``"sigmoid"`` (Bernoulli KL per logit) or
``"regression"`` (squared error). Returns the task loss; ``last_adv_loss`` is the divergence.

Arguments (defaults, the paper's / fairseq's): ``alpha=1.0`` (``r3f_lambda``),
``epsilon=1e-5`` (``eps``), ``noise="uniform"``, ``loss_fn=None``, ``output_type="softmax"``,
``generator=None``, ``embedding=None``.

Cost: 2 forward passes and 1 backward through both graphs (two forwards' activations alive).

Example::

    adv = R3F(model, alpha=1.0, epsilon=1e-5)
    loss = adv.backward(lambda: model(**batch))          # batch has labels: .loss is the task
    optimizer.step(); optimizer.zero_grad()
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .. import _perturb as P
from .. import _validate as V
from .._passes import EmbeddingStep
from ._consistency import ConsistencyAdversary
from ._divergence import full_symmetric_divergence

NOISES = ("uniform", "normal")


class R3F(ConsistencyAdversary):
    """Task loss plus a symmetric KL between the clean and the noised outputs.

    Args:
        model, embedding: see :class:`advnlp.EmbeddingAdversary`.
        loss_fn: ``loss_fn(logits, labels)`` used when ``backward(..., labels=)`` is given.
        alpha: weight of the symmetric KL (fairseq's ``r3f_lambda``). Default 1.0.
        epsilon: noise size: half-width of the uniform, or the normal's std. Default 1e-5.
        noise: ``"uniform"`` (default) or ``"normal"``.
        output_type: ``"softmax"`` (default), ``"sigmoid"`` or ``"regression"``.
        generator: ``torch.Generator`` for the noise.
    """

    def __init__(self, model, loss_fn: Optional[Callable] = None, *, alpha: float = 1.0,
                 epsilon: float = 1e-5, noise: str = "uniform", output_type: str = "softmax",
                 generator: Optional[torch.Generator] = None, embedding=None):
        self.epsilon = V.positive("epsilon", epsilon)
        self.noise = V.choice("noise", noise, NOISES)
        super().__init__(model, loss_fn=loss_fn, alpha=alpha, output_type=output_type,
                         generator=generator, embedding=embedding)

    def _step(self, step: EmbeddingStep, labels=None) -> torch.Tensor:
        task, clean, zeros = self._clean(step, labels)
        if task is None:
            raise ValueError(
                "R3F needs a task loss: return an output with .loss or (loss, logits) from the "
                "closure, or pass labels= to backward() (with loss_fn= for a custom loss).")
        if self.noise == "uniform":
            z = [(P.sample("rand", t, self.generator) * 2 - 1) * self.epsilon for t in zeros]
        else:
            z = [P.sample("randn", t, self.generator) * self.epsilon for t in zeros]
        noised = self._logits_at(step, step.space.mask(z))
        reg = full_symmetric_divergence(clean, noised, self.kind, self._weights)
        step.adv_loss = reg.detach()
        step.backward_fn(task + self.alpha * reg)
        return task.detach()

    def __repr__(self) -> str:
        return (f"R3F(alpha={self.alpha}, epsilon={self.epsilon}, noise={self.noise!r}, "
                f"output_type={self.output_type!r}, embedding={self.embedding_name!r})")
