"""The divergences of the output-consistency methods (SMART, VAT), in float32.

``D(target || pred)`` over rows (examples, or real tokens with ``weights``) of the
sum over the last dimension: softmax KL (``"kl"``), Bernoulli KL per logit
(``"bce"``, multi-label) or squared error (``"mse"``, regression).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

DIVERGENCES = ("kl", "bce", "mse")


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


def full_symmetric_divergence(a: torch.Tensor, b: torch.Tensor, kind: str,
                              weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``D(a || b) + D(b || a)`` with the gradient through *both* arguments of both terms
    (R3F's symmetric KL, fairseq ``_get_symm_kl``); squared error counted once."""
    if kind == "mse":
        return _sq(a, b, weights)
    return _kl(a, b, kind, weights) + _kl(b, a, kind, weights)


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
