"""FreeLB: "Free" Large-Batch adversarial training (Zhu, Cheng, Gan, Sun, Goldstein & Liu,
ICLR 2020, "FreeLB: Enhanced Adversarial Training for Natural Language Understanding").

Perturbs the input-embedding output with a per-example delta; K = ``adv_steps``
ascent steps, and *every* step's parameter gradient is kept::

    delta_0 = U(-1, 1) * init_mag / sqrt(L * H)     (L = real tokens of the example, H = hidden;
                                                      padding gets 0; L-inf: U(-init_mag, init_mag))
    for t = 0 .. K-1:
        grad += (1/K) * grad_theta L(x + delta_t)     (one forward + one backward)
        delta_{t+1} = Proj_max_norm(delta_t + adv_lr * g_t / ||g_t||)   (g_t from that backward;
                                                      per example; L-inf: g_t / ||g_t||_inf, clamp)

So the parameter gradient is the *mean over the K perturbed passes*; there is no
separate clean pass. FreeLB by definition replaces the ``grad(clean) + adv``
of the other methods: with ``init_mag=0`` pass 0 is the clean pass and the result
is ``(grad clean + sum of K-1 adversarial grads) / K``. ``backward()`` returns
the loss of pass 0 (at ``delta_0``, the clean loss when ``init_mag=0``);
``last_adv_loss`` is the loss of the last pass. Buffers (BatchNorm
statistics) end as after pass 0 alone, i.e. one forward at ``delta_0``. ``max_norm=0`` means no
projection (the released GLUE scripts). A zero delta or gradient norm never
produces inf * 0 (the released code's NaN with ``init_mag=0`` and ``max_norm>0``).

Divide the loss by your gradient-accumulation steps as usual; FreeLB already
divides by K (a ``backward_fn`` receives ``loss / K`` of each pass).

Arguments (defaults, the released SST-2 settings; other tasks': docs/methods.md):
``adv_steps=2``, ``adv_lr=0.1``, ``init_mag=1.0``, ``max_norm=0.6``,
``norm="l2"``, ``generator=None``, ``embedding=None``.

Cost: K forward + K backward passes, no extra memory beyond one delta; only the
last pass syncs gradients under DDP.

Example::

    adv = FreeLB(model, adv_steps=2, adv_lr=0.1, init_mag=0.6)
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


class FreeLB(EmbeddingAdversary):
    """K ascent steps on a per-example embedding perturbation; gradients averaged over all K.

    Args (names as in the paper's code):
        model: the model (wrappers are fine), ``embedding``: see :class:`advnlp.EmbeddingAdversary`.
        adv_steps: K, number of perturbed forward/backward passes (>= 1). Default 2.
        adv_lr: ascent step size (embedding units). Default 0.1.
        init_mag: magnitude of the random start (0 = start at the clean input). Default 1.0.
        max_norm: radius of the per-example ball delta is projected onto after each
            step; 0 = no projection. Default 0.6.
        norm: ``"l2"`` (default; step ``adv_lr * g/||g||_2`` per example, init scaled by
            ``1/sqrt(L*H)``) or ``"linf"`` (as the released code: step
            ``adv_lr * g/||g||_inf`` per example, clamp to ``max_norm``, init
            ``U(-init_mag, init_mag)``).
        generator: ``torch.Generator`` for the random start (reproducibility).
        relative: ``adv_lr``, ``init_mag`` and ``max_norm`` in units of each example's
            embedding norm (see :class:`advnlp.EmbeddingAdversary`). Default False.
    """

    skip_then = "the remaining ascent passes of this step were skipped"
    skip_note = ("The parameter gradients hold the passes already run (non-finite, so a "
                 "GradScaler skips the step).")

    def __init__(self, model, adv_steps: int = 2, adv_lr: float = 0.1, init_mag: float = 1.0,
                 max_norm: float = 0.6, *, norm: str = "l2",
                 generator: Optional[torch.Generator] = None, embedding=None,
                 relative: bool = False):
        self.adv_steps = V.integer("adv_steps", adv_steps)
        self.adv_lr = V.positive("adv_lr", adv_lr)
        self.init_mag = V.positive("init_mag", init_mag, allow_zero=True)
        self.max_norm = V.positive("max_norm", max_norm, allow_zero=True)
        self.generator = generator
        super().__init__(model, norm=norm, embedding=embedding, relative=relative)

    def _step(self, step: EmbeddingStep) -> torch.Tensor:
        """The K perturbed passes; each adds ``grad / K`` to parameters. Returns pass 0's loss."""
        K = self.adv_steps
        delta = Offsets(draw=self._random_start)  # drawn per embedding call in pass 0
        first = None
        with step.skippable():
            for t in range(K):
                loss, grads = step.record(delta, weight=1.0 / K, sync=(t == K - 1))
                if t == 0:
                    first = loss
                    step.snapshot_buffers()
                step.adv_loss = loss
                if t < K - 1:
                    delta = Offsets(self._ascend(delta.tensors, step.check_finite(grads), step))
        return first

    def _random_start(self, ids, out: torch.Tensor) -> torch.Tensor:
        mask = self._hook.mask(ids, out)
        if self.init_mag == 0:
            return torch.zeros(out.shape, device=out.device, dtype=torch.float32)
        if self.norm == "linf":
            return (P.sample("rand", out, self.generator) * 2 - 1) * mask * self.init_mag
        return P.length_scaled_uniform(out, mask, self.init_mag, self.generator)

    def _ascend(self, delta: List[torch.Tensor], grads: List[torch.Tensor],
                step: EmbeddingStep) -> List[torch.Tensor]:
        moved = [d + self.adv_lr * u for d, u in zip(delta, self._step_direction(grads))]
        if self.max_norm > 0:
            moved = self._project(moved, self.max_norm)
        return step.space.mask(moved)

    def _step_direction(self, grads: List[torch.Tensor]) -> List[torch.Tensor]:
        if self.norm == "l2":
            return self._direction(grads)
        out = []
        for g in grads:  # the released code's L-inf step: g / ||g||_inf per example (0 if g == 0)
            n = P.norm(g, "linf", "example")
            out.append(torch.where(n > P._TINY, g.float() / n.clamp_min(P._TINY),
                                   torch.zeros_like(g.float())))
        return out

    def __repr__(self) -> str:
        return (f"FreeLB(adv_steps={self.adv_steps}, adv_lr={self.adv_lr}, init_mag={self.init_mag}, "
                f"max_norm={self.max_norm}, norm={self.norm!r}, embedding={self.embedding_name!r})")
