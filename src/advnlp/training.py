"""One training step's gradients, with or without an adversary: :func:`backward_step`.

A training loop that may run with no method, with a method that takes the loss (FGM, PGD,
FreeLB, AWP, ...) or with one that compares outputs (SMART, VAT, R3F: ``needs_logits``)
writes its two closures and lets this function pick:

    from advnlp import backward_step
    loss = backward_step(adv, lambda: criterion(model(x), y),   # adv may be None
                         output=lambda: model(x), labels=y)
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ._base import Adversary
from .methods.discrete import DiscreteAT
from .outputs import as_loss


def backward_step(adversary: Optional[Adversary], loss: Callable[[], object],
                  output: Optional[Callable[[], object]] = None,
                  backward_fn: Optional[Callable[[torch.Tensor], None]] = None, *,
                  labels=None, **options) -> torch.Tensor:
    """Add one step's gradients to ``.grad``; return the clean loss (detached).

    * ``adversary`` is None: plain training, ``backward_fn(loss())``.
    * ``adversary.needs_logits`` (SMART, VAT, R3F): ``adversary.backward(output, backward_fn,
      labels=labels, **options)``.
    * any other method: ``adversary.backward(loss, backward_fn, **options)``.

    Args:
        adversary: an advnlp method, or None. DiscreteAT, whose ``backward`` takes the
            texts, is refused: call its ``backward`` yourself.
        loss: ``() -> loss``, one forward pass (anything :func:`advnlp.as_loss` reads).
        output: ``() -> model output``, one forward pass returning what
            :func:`advnlp.split_output` reads (logits, an object with ``.logits`` and
            ``.loss``, ``(loss, logits)``). Needed for a method whose ``needs_logits`` is
            True; never called otherwise.
        backward_fn: replaces ``loss.backward()`` (e.g. a GradScaler's), as in
            :meth:`advnlp.Adversary.backward`.
        labels: the targets a method that compares outputs computes its task loss from when
            ``output()`` gives none (SMART's and VAT's ``labels=``); not passed otherwise.
        **options: passed to ``adversary.backward`` (``mask=``, ATTA's ``ids=``); an option
            whose value is None is left out, so a method without it runs too.
    """
    if adversary is None:
        value = as_loss(loss())
        (backward_fn or torch.Tensor.backward)(value)
        return value.detach()
    if isinstance(adversary, DiscreteAT):
        raise TypeError("backward_step: DiscreteAT edits the texts of each batch; call "
                        "adv.backward(closure, texts, labels, backward_fn) yourself")
    options = {k: v for k, v in options.items() if v is not None}
    if not adversary.needs_logits:
        return adversary.backward(loss, backward_fn, **options)
    if output is None:
        raise ValueError(f"backward_step: {type(adversary).__name__} compares model outputs "
                         "(needs_logits): pass output=, a closure returning the model output")
    if labels is not None:
        options["labels"] = labels
    return adversary.backward(output, backward_fn, **options)


__all__ = ["backward_step"]
