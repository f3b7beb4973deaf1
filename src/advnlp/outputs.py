"""What a closure may return, and how advnlp reads it.

Every method calls the user's closure and needs either the loss (FGM, PGD, ...)
or the model's logits (SMART, VAT: ``needs_logits`` is True). These two
functions are the one place where a closure's result is interpreted; the
integrations use them too.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def as_loss(out: object, needs_grad: bool = True) -> torch.Tensor:
    """The scalar loss inside a closure's result.

    Accepts a tensor, an object with ``.loss`` (Hugging Face ``ModelOutput``),
    a dict with ``"loss"`` or a tuple/list whose first item is the loss.
    ``needs_grad=False`` is for a loss measured under ``torch.no_grad()`` (a score).
    """
    if isinstance(out, torch.Tensor):
        loss = out
    elif getattr(out, "loss", None) is not None:
        loss = out.loss
    elif isinstance(out, dict) and out.get("loss") is not None:
        loss = out["loss"]
    elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        loss = out[0]
    else:
        hint = (
            " It has no .loss: pass labels= to the model or compute the loss in the closure."
            if hasattr(out, "logits") or isinstance(out, dict)
            else ""
        )
        raise TypeError(
            f"the closure returned {type(out).__name__}; it must return the loss (a scalar "
            f"tensor), an object with .loss, or a (loss, ...) tuple.{hint}"
        )
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"the closure's loss is a {type(loss).__name__}, not a tensor")
    if loss.numel() != 1:
        raise ValueError(
            f"the closure returned a loss of shape {tuple(loss.shape)}; it must be a scalar. "
            "Reduce it (e.g. loss.mean()) inside the closure."
        )
    if needs_grad and not loss.requires_grad:
        raise RuntimeError(
            "the closure's loss does not require grad: the forward pass ran under "
            "torch.no_grad()/inference_mode, or the loss was detached (.item(), .detach()). "
            "Run the model inside the closure with gradients enabled."
        )
    return loss.reshape(())


def _tensor_pair(out) -> bool:
    return (isinstance(out, (tuple, list)) and len(out) >= 2 and isinstance(out[0], torch.Tensor)
            and out[0].dim() == 0 and isinstance(out[1], torch.Tensor))


def split_output(out, check_loss: bool = True) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """``(task_loss or None, logits)`` from a closure's result.

    Accepted: logits (a tensor with a batch dimension), an object or dict with
    ``.logits`` (and optionally ``.loss``), ``(loss, logits, ...)`` with a 0-dim loss,
    or ``(logits, ...)``.
    """
    loss = None
    if isinstance(out, torch.Tensor):
        logits = out
    elif isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        logits, loss = out["logits"], out.get("loss")
    elif isinstance(getattr(out, "logits", None), torch.Tensor):
        logits, loss = out.logits, getattr(out, "loss", None)
    elif _tensor_pair(out):
        loss, logits = out[0], out[1]
    elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        logits = out[0]
    else:
        raise TypeError(
            f"the closure returned {type(out).__name__}; it must return the logits, an object "
            "with .logits (and .loss), or a (loss, logits) tuple."
        )
    if logits.dim() == 0:
        raise ValueError(
            "the closure returned a scalar where logits were expected: return the model output "
            "(logits, an object with .logits, or (loss, logits)), not only the loss."
        )
    if loss is not None and check_loss:
        loss = as_loss(loss)
    return loss, logits
