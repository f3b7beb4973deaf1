"""Helpers shared by the multi-pass and consistency methods (FreeLB, FreeAT, SMART, VAT).

Kept out of ``_base.py`` on purpose: nothing here changes how FGM/FGSM/PGD run.

* :func:`offsets` / :func:`record_pass`: a pass in the base hook's *record* mode
  (a fresh zero leaf per embedding call, so ``d loss / d delta`` comes out of the
  same backward that fills parameter gradients) with an extra offset that the same
  hook adds to the embedding output. FreeLB uses it for its random start (whose
  shape is only known inside the forward), FreeAT for a perturbation that persists
  across calls.
* :func:`split_output`, :func:`divergence`, :func:`symmetric_divergence`: turn a
  closure's model output into ``(task_loss or None, logits)`` and compare two sets
  of logits (softmax KL, sigmoid/Bernoulli KL or squared error), in float32.
"""
from __future__ import annotations

import contextlib
import numbers
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .._base import Adversary, _Step, as_loss
from .._base import snapshot_buffers as _snapshot

OffsetFn = Callable[[int, Optional[torch.Tensor], torch.Tensor], Optional[torch.Tensor]]
DIVERGENCES = ("kl", "bce", "mse")


@contextlib.contextmanager
def unhook_on_error(adv: Adversary):
    """Argument checks after ``Adversary.__init__``: a failure must not leave the hook behind."""
    try:
        yield
    except BaseException:
        adv.remove()
        raise


def check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def require_output_target(target: str, method: str) -> None:
    """Call *before* ``Adversary.__init__`` (which registers the hook)."""
    if target != "output":
        raise ValueError(f"{method} perturbs the embedding output; use target='output' (the default)")


@contextlib.contextmanager
def offsets(adv: Adversary, fn: OffsetFn):
    """While active, in the base hook's record mode, embedding call ``i`` returns
    ``out + delta + fn(i, ids, out)`` (float32 offset cast to the output dtype; ``None``
    adds nothing)."""
    hook = adv._hook
    hook.offset = fn
    try:
        yield
    finally:
        hook.offset = None


def sample(kind: str, like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """``torch.rand`` / ``torch.randn`` shaped like ``like`` (float32, on its device). A
    generator on another device (a CPU generator, a CUDA model) draws on its own device,
    so a seeded CPU generator gives the same numbers whatever the model's device."""
    fn = torch.rand if kind == "rand" else torch.randn
    device = like.device if generator is None else generator.device
    return fn(like.shape, device=device, dtype=torch.float32, generator=generator).to(like.device)


def example_mask(adv: Adversary, ids, out: torch.Tensor) -> torch.Tensor:
    """Float32 mask (…, 1) of the real (non-padding) positions of one embedding call."""
    return adv._hook._mask(ids, out)


def apply_offsets(delta: List[torch.Tensor]) -> OffsetFn:
    def fn(i, ids, out):
        if i >= len(delta) or delta[i].shape != out.shape:
            raise RuntimeError(
                "the embedding output changed between passes (call count or shape): the "
                "closure must feed the same batch every call."
            )
        return delta[i]
    return fn


def record_pass(step: _Step, fn: OffsetFn, weight: float = 1.0, sync: bool = True):
    """One forward/backward at ``embedding + fn(...)``: adds ``weight`` x grad(loss) to
    parameters and returns ``(loss, masked d loss / d embedding-output per call)``.
    Also sets ``step.space.masks``. ``sync=False`` keeps DDP gradients local."""
    space = step.space
    space.begin_clean()
    try:
        with offsets(step.adv, fn), step._local(sync):
            loss = as_loss(step.closure())
            step.backward_fn(loss * weight if weight != 1.0 else loss)
            grads = space.end_clean()
    finally:
        space.end_pass()
    return loss.detach(), grads


def snapshot_buffers(step: _Step) -> None:
    """Buffers are restored to this point by ``step.restore()`` (one plain forward's worth)."""
    step.buffers = _snapshot(step.adv.model)


# -- consistency losses (SMART, VAT) ---------------------------------------------------------
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


def _rows(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x.reshape(-1, x.shape[-1]) if x.dim() >= 2 else x.reshape(-1, 1)


def _log_probs(x: torch.Tensor, kind: str) -> List[torch.Tensor]:
    x = _rows(x)
    if kind == "kl":
        return [F.log_softmax(x, dim=-1)]
    return [F.logsigmoid(x), F.logsigmoid(-x)]  # Bernoulli per logit


def _mean(per_row: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    if weights is None:
        return per_row.mean()
    return (per_row * weights).sum() / weights.sum().clamp_min(1.0)


def _kl(a: torch.Tensor, b: torch.Tensor, kind: str,
        weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(a || b) of the distributions given by logits a, b; gradients through both."""
    return _mean(sum((la.exp() * (la - lb)) for la, lb in zip(_log_probs(a, kind),
                                                              _log_probs(b, kind))).sum(-1),
                 weights)


def _sq(a: torch.Tensor, b: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    return _mean((_rows(a) - _rows(b)).pow(2).sum(-1), weights)


def row_weights(masks: List[torch.Tensor], logits: torch.Tensor) -> Optional[torch.Tensor]:
    """Per-token logits (batch, tokens, classes) of a one-call model: the padding mask
    of its embedding call, flattened, so padding rows do not enter the divergence. None
    (every row counts) for per-example logits or when positions cannot be matched."""
    if len(masks) != 1 or logits.dim() < 3 or masks[0].shape[:-1] != logits.shape[:-1]:
        return None
    return masks[0].reshape(-1).to(torch.float32)


def divergence(target: torch.Tensor, pred: torch.Tensor, kind: str,
               weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """D(target || pred), mean over rows (examples / tokens; ``weights`` leaves padding
    rows out) of the sum over the last dim, in float32; ``target`` is treated as a
    constant (detached).

    kl: softmax KL(p_t || p_pred); bce: Bernoulli KL per logit (multi-label, sigmoid);
    mse: squared error (regression).
    """
    if kind == "mse":
        return _sq(target.detach(), pred, weights)
    return _kl(target.detach(), pred, kind, weights)


def proximal_divergence(anchor: torch.Tensor, live: torch.Tensor, kind: str,
                        weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Symmetric ``D(anchor || live) + D(live || anchor)`` with ``anchor`` constant and the
    full gradient through ``live`` in *both* terms (SMART's Bregman proximal term)."""
    anchor = anchor.detach()
    if kind == "mse":
        return _sq(anchor, live, weights)
    return _kl(anchor, live, kind, weights) + _kl(live, anchor, kind, weights)


def symmetric_divergence(a: torch.Tensor, b: torch.Tensor, kind: str,
                         weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SMART's symmetric loss: ``D(a || b) + D(b || a)`` where each term differentiates only
    through its second argument (the released code's ``SymKlCriterion``). For ``mse`` it
    is the plain squared error with gradients through both sides (it is already symmetric)."""
    if kind == "mse":
        return _sq(a, b, weights)
    return divergence(a, b, kind, weights) + divergence(b, a, kind, weights)


def default_task_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "kl":
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return F.mse_loss(logits.float().reshape(labels.shape), labels.float())
