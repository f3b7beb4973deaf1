"""NEFTune: noisy embeddings for instruction fine-tuning (Jain, Chiang, Wen, Kirchenbauer, Chu,
Somepalli, Bartoldson, Kailkhura, Schwarzschild, Saha, Goldblum, Geiping & Goldstein, ICLR 2024,
"NEFTune: Noisy Embeddings Improve Instruction Finetuning").

Random, not adversarial: one training pass with uniform noise on the embedding output::

    noise = U(-1, 1) * alpha / sqrt(L * d)     (per coordinate; L = the example's real
                                                positions, d = hidden size; padding gets 0)
    grad += grad L(x + noise)                  (one forward + one backward; no clean pass)

In advnlp it is the *control* for every adversarial method: noise of a comparable size at
the cost of a plain step, with no gradient in its direction. If FGM does not beat NEFTune,
the gradient direction bought nothing.

Same distribution as transformers' ``neftune_noise_alpha`` (``TrainingArguments``, TRL's
``SFTConfig``) on a batch without padding; with padding, transformers scales by the padded
length and noises the padding too, while advnlp (as the paper's code) uses each example's
real length and leaves padding alone. "Real" means not ``padding_idx`` of the embedding and,
with ``backward(..., mask=batch["attention_mask"])``, inside the mask: pass it for models
whose embedding has no ``padding_idx`` (most causal LMs). Training mode only, as
transformers: in eval mode the pass is a plain one. Both NEFTunes at once would add the
noise twice: an embedding that carries transformers' ``neftune_noise_alpha`` is refused.

Size: the noise's L2 norm per example is about ``alpha / sqrt(3)`` (``L * d`` coordinates of
variance ``alpha^2 / (3 L d)``), so ``alpha = sqrt(3) * epsilon`` is noise of FGM's ``epsilon``
size; with ``relative=True`` both are fractions of each example's embedding norm.

Arguments (defaults): ``alpha=5.0`` (the paper sweeps 5, 10, 15), ``generator=None``,
``embedding=None``, ``relative=False``.

Cost: 1 forward + 1 backward, a plain step's.

Example::

    adv = NEFTune(model, alpha=5.0)
    loss = adv.backward(lambda: model(**batch).loss, mask=batch["attention_mask"])
    optimizer.step(); optimizer.zero_grad()
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import _perturb as P
from .. import _validate as V
from .._base import EmbeddingAdversary
from .._passes import EmbeddingStep, Offsets
from ..outputs import as_loss


class NEFTune(EmbeddingAdversary):
    """Uniform embedding noise of size ``alpha / sqrt(L * d)``, one pass.

    Args:
        model, embedding: see :class:`advnlp.EmbeddingAdversary`.
        alpha: the noise scale (the paper's alpha). Default 5.0.
        generator: ``torch.Generator`` for the noise.
        relative: the noise times each example's embedding L2 norm (over its real tokens),
            so its expected L2 size is ``alpha / sqrt(3)`` of the embedding's, the unit of
            the other methods' ``relative=True``. Default False (the paper's noise).
    """

    def __init__(self, model: nn.Module, alpha: float = 5.0, *,
                 generator: Optional[torch.Generator] = None, embedding=None,
                 relative: bool = False):
        self.alpha = V.positive("alpha", alpha)
        self.generator = generator
        super().__init__(model, embedding=embedding, relative=relative)
        _refuse_double_noise(self.embedding)

    def _step(self, step: EmbeddingStep) -> torch.Tensor:
        _refuse_double_noise(self.embedding)  # a Trainer activates its NEFTune in train()
        if not P.unwrap(self.model).training:
            with step.local(sync=True):
                loss = as_loss(step.closure())
                step.backward(loss)
            return loss.detach()
        loss, _ = step.record(Offsets(draw=self._noise))
        step.adv_loss = loss
        return loss

    def _noise(self, ids, out: torch.Tensor) -> torch.Tensor:
        return P.length_scaled_uniform(out, self._hook.mask(ids, out), self.alpha, self.generator)

    def _settings(self) -> str:
        return f"alpha={self.alpha}" + (", relative=True" if self.relative else "")


def _refuse_double_noise(embedding: nn.Module) -> None:
    alpha = getattr(embedding, "neftune_noise_alpha", None)
    if alpha is not None:
        raise RuntimeError(
            f"transformers' NEFTune is active on this embedding (neftune_noise_alpha={alpha}): "
            "with advnlp's NEFTune the noise would be added twice. Use one: drop "
            "neftune_noise_alpha from TrainingArguments / SFTConfig, or use another advnlp method.")
