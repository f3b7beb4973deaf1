"""The shared base of the output-consistency methods (SMART, VAT).

Their closure returns the model *output* (logits, an object with ``.logits`` and
maybe ``.loss``, or ``(loss, logits)``), not a loss (``needs_logits = True``): the
regulariser compares the clean logits with the logits at a perturbed embedding.
The task loss comes from the output's ``.loss`` / tuple loss, or from
``loss_fn(logits, labels)`` when ``backward(..., labels=...)`` is given.

Per-token logits (batch, tokens, classes) of a model with one embedding call are
averaged over the real tokens only: padding rows (``padding_idx`` of the
embedding) do not enter the divergence.

All forward passes but the last run under DDP ``no_sync``; one backward of
``task + alpha * regulariser`` runs at the end (both graphs are alive then, so
memory is about two forward passes' activations).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch

from .. import _perturb as P
from .. import _validate as V
from .._base import EmbeddingAdversary
from .._passes import EmbeddingStep
from ..outputs import split_output
from ._divergence import default_task_loss, divergence, row_weights

OUTPUT_TYPES = {"softmax": "kl", "sigmoid": "bce", "regression": "mse"}


class ConsistencyAdversary(EmbeddingAdversary):
    """Arguments shared by SMART and VAT (checked here, before the hook exists):

    loss_fn: ``loss_fn(logits, labels)`` used when ``backward(..., labels=)`` is given.
    alpha: weight of the regulariser in the loss (>= 0).
    output_type: ``"softmax"`` (KL), ``"sigmoid"`` (Bernoulli KL per logit) or
        ``"regression"`` (squared error).
    generator: ``torch.Generator`` for the random start.
    """

    needs_logits = True
    skip_then = "the regulariser of this step was skipped"

    def __init__(self, model, *, loss_fn: Optional[Callable] = None, alpha: float = 1.0,
                 output_type: str = "softmax", generator: Optional[torch.Generator] = None,
                 **kwargs):
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError("loss_fn must be a callable loss_fn(logits, labels)")
        self.loss_fn = loss_fn
        self.output_type = V.choice("output_type", output_type, tuple(OUTPUT_TYPES))
        self.kind = OUTPUT_TYPES[output_type]
        self.alpha = V.positive("alpha", alpha, allow_zero=True)
        self.generator = generator
        self._weights: Optional[torch.Tensor] = None  # row weights of the current step
        super().__init__(model, **kwargs)

    def backward(self, closure: Callable[[], object], backward_fn=None, *,
                 labels=None, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Task loss (if any) + alpha * regulariser, one backward. ``labels=`` gives the task
        loss as ``loss_fn(logits, labels)``; ``mask=`` the positions perturbed and, for
        per-token outputs, compared (see :meth:`advnlp.Adversary.backward`). Returns the
        task loss (detached)."""
        return self._run(closure, backward_fn, labels=labels, mask=mask)

    # -- the passes -------------------------------------------------------------------
    def _task(self, out, labels) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        loss, logits = split_output(out)
        if labels is not None:
            if loss is not None:
                raise ValueError(
                    "the closure's output already carries a loss and labels= was given too; "
                    "either let the model compute the loss (no labels=) or return logits only."
                )
            loss = (self.loss_fn or self._default_loss)(logits, labels)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError("loss_fn(logits, labels) must return a scalar tensor")
            loss = loss.reshape(())
        elif self.loss_fn is not None and loss is None:
            raise ValueError(f"{type(self).__name__} has a loss_fn: pass labels= to backward()")
        return loss, logits

    def _default_loss(self, logits: torch.Tensor, labels) -> torch.Tensor:
        return default_task_loss(logits, labels, self.kind)

    def _clean(self, step: EmbeddingStep, labels, offset=None):
        """Clean forward (no backward yet): task loss, logits, per-call zeros. Sets
        ``self._weights``: per-token logits count their real tokens only."""
        space = step.space
        space.begin_clean()
        try:
            with step.local(), space.hook.offsetting(offset):
                task, logits = self._task(step.closure(), labels)
            zeros = space.end_clean()  # no backward ran: these are zeros of the right shapes
        finally:
            space.end_pass()
        step.snapshot_buffers()
        self._weights = row_weights(space.masks, logits)
        return task, logits, zeros

    def _ascent_grad(self, step: EmbeddingStep, delta: List[torch.Tensor], clean_logits):
        """d D(f(x) || f(x + delta)) / d delta (clean side constant), masked; params untouched."""
        space = step.space
        leaves = space.leaves(delta)
        try:
            with step.local():  # the backward too (FSDP2 reads its sync setting then)
                _, logits = split_output(step.closure())
                d = divergence(clean_logits, logits, self.kind, self._weights)
                grads = space.grads_of(d, leaves)
        finally:
            space.end_pass()
        return step.check_finite(grads)

    def _logits_at(self, step: EmbeddingStep, delta: List[torch.Tensor]) -> torch.Tensor:
        step.space.apply(delta)
        try:
            _, logits = split_output(step.closure())
        finally:
            step.space.end_pass()
        return logits

    def _randn(self, like: torch.Tensor) -> torch.Tensor:
        return P.sample("randn", like, self.generator)
