"""Shared plumbing of the output-consistency methods (SMART, VAT).

Their closure returns the model *output* (logits, an object with ``.logits`` and
maybe ``.loss``, or ``(loss, logits)``), not a loss: the regulariser compares the
clean logits with the logits at a perturbed embedding. The task loss comes from
the output's ``.loss`` / tuple loss, or from ``loss_fn(logits, labels)`` when
``backward(..., labels=...)`` is given.

Per-token logits (batch, tokens, classes) of a model with one embedding call are
averaged over the real tokens only: padding rows (``padding_idx`` of the
embedding) do not enter the divergence.

All forward passes but the last run under DDP ``no_sync``; one backward of
``task + alpha * regulariser`` runs at the end (both graphs are alive then, so
memory is about two forward passes' activations).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .._base import Adversary, _check_choice, _check_positive, _Step, skip_adversarial
from ._common import (default_task_loss, divergence, offsets, row_weights, sample,
                      snapshot_buffers, split_output)

OUTPUT_TYPES = {"softmax": "kl", "sigmoid": "bce", "regression": "mse"}


class _Consistency(Adversary):
    def _setup(self, loss_fn, output_type, alpha, generator) -> None:
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError("loss_fn must be a callable loss_fn(logits, labels)")
        self.loss_fn = loss_fn
        self.output_type = _check_choice("output_type", output_type, tuple(OUTPUT_TYPES))
        self.kind = OUTPUT_TYPES[output_type]
        self.alpha = _check_positive("alpha", alpha, allow_zero=True)
        self.generator = generator
        self._weights: Optional[torch.Tensor] = None  # row weights of the current step

    def _task(self, out, labels) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        loss, logits = split_output(out)
        if labels is not None:
            if loss is not None:
                raise ValueError(
                    "the closure's output already carries a loss and labels= was given too; "
                    "either let the model compute the loss (no labels=) or return logits only."
                )
            fn = self.loss_fn or (lambda lg, y: default_task_loss(lg, y, self.kind))
            loss = fn(logits, labels)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError("loss_fn(logits, labels) must return a scalar tensor")
            loss = loss.reshape(())
        elif self.loss_fn is not None and loss is None:
            raise ValueError(f"{type(self).__name__} has a loss_fn: pass labels= to backward()")
        return loss, logits

    def _clean(self, step: _Step, labels, fn=None):
        """Clean forward (no backward yet): task loss, logits, per-call zeros and masks.
        Sets ``self._weights``: per-token logits count their real tokens only."""
        space = step.space
        space.begin_clean()
        try:
            with step._local(), offsets(self, fn or (lambda i, ids, out: None)):
                task, logits = self._task(step.closure(), labels)
            zeros = space.end_clean()  # no backward ran: these are zeros of the right shapes
        finally:
            space.end_pass()
        snapshot_buffers(step)
        self._weights = row_weights(space.masks, logits)
        return task, logits, zeros

    def _ascent_grad(self, step: _Step, delta: List[torch.Tensor], clean_logits):
        """d D(f(x) || f(x + delta)) / d delta (clean side constant), masked; params untouched."""
        space = step.space
        leaves = space.leaves(delta)
        try:
            with step._local():
                _, logits = split_output(step.closure())
                d = divergence(clean_logits, logits, self.kind, self._weights)
            grads = space.grads_of(d, leaves)
        finally:
            space.end_pass()
        return step._finite(grads)

    def _logits_at(self, step: _Step, delta: List[torch.Tensor]) -> torch.Tensor:
        step.space.apply(delta)
        try:
            _, logits = split_output(step.closure())
        finally:
            step.space.end_pass()
        return logits

    def _warn_skip(self) -> None:
        skip_adversarial(self, "gradient w.r.t. the embedding",
                         "the regulariser of this step was skipped", stacklevel=4)

    def _mask(self, step: _Step, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
        return step.space.mask(tensors)

    def _randn(self, like: torch.Tensor) -> torch.Tensor:
        return sample("randn", like, self.generator)
