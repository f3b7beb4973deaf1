"""The seed recipe's low-level calls, for code written against the blog post's classes.

The seed's ``FGM``/``PGD`` classes are driven by hand: ``loss.backward()``, then
``attack()`` perturbs the embedding *weight* in place from its ``.grad``, a new
forward and backward of the adversarial loss, then ``restore()``; PGD adds
``backup_grad()``/``restore_grad()`` around its inner steps. :class:`SeedCompatMixin`
gives FGM, FGSM and PGD those four calls, with the seed's defects fixed: only the
rows the batch used are backed up (not the whole matrix), ``emb_name`` matches
whole dotted components (never a substring), the restore is bit-exact, and a
``restore()`` with no forward pass since ``attack()`` warns (the seed's own usage
example reuses the old logits, which trains on the clean loss twice).
"""
from __future__ import annotations

import warnings
from typing import List, Optional

import torch
from torch import nn

from . import _perturb as P
from . import _validate as V


class SeedCompatMixin:
    """``attack()/restore()/backup_grad()/restore_grad()`` on an embedding method.

    The class it is mixed into provides ``model``, ``embedding``, ``epsilon``,
    ``norm``, ``skipped_steps``, the embedding hook ``_hook``, and
    :meth:`_compat_step` (the weight-row update; FGM's by default).
    """

    def _compat(self) -> "_SeedState":
        if not hasattr(self, "_seed_state"):
            self._seed_state = _SeedState()
        return self._seed_state

    def attack(self, epsilon: Optional[float] = None, emb_name: Optional[str] = None,
               is_first_attack: bool = False, alpha: Optional[float] = None) -> None:
        """Seed-style: perturb the embedding *weight* in place from its current ``.grad``.

        After ``attack()`` you must run a **new forward pass** and backward the
        adversarial loss, then call :meth:`restore`.
        """
        state = self._compat()
        is_first_attack = V.boolean("is_first_attack", is_first_attack)
        eps = self.epsilon if epsilon is None else V.positive("epsilon", epsilon)
        module = self._seed_module(emb_name)
        weight = module.weight
        grad = weight.grad
        if grad is None and state.grad_backup is not None:
            grad = next((g for p, g in state.grad_backup if p is weight), None)
        if grad is None:
            raise RuntimeError(
                "attack() needs the embedding's gradient: call loss.backward() on the clean "
                "loss first (or use adv.backward(closure), which runs every pass for you)."
            )
        if state.backup is None or state.module is not module:
            if state.backup is not None:
                raise RuntimeError("attack() on a different embedding before restore()")
            state.module, state.rows = module, self._batch_rows(module, grad)
            state.backup = weight.data.index_select(0, state.rows)
        G = grad.index_select(0, state.rows).float()
        if not torch.isfinite(G.norm()):
            self.skipped_steps += 1
            warnings.warn("attack(): non-finite embedding gradient; no perturbation applied",
                          RuntimeWarning, stacklevel=2)
            return
        current = weight.data.index_select(0, state.rows).float() - state.backup.float()
        delta = self._compat_step(G, current, eps, alpha, is_first_attack)
        weight.data.index_copy_(0, state.rows, (state.backup.float() + delta).to(weight.dtype))
        state.calls_at_attack = self._hook.calls

    def restore(self, emb_name: Optional[str] = None) -> None:
        """Undo :meth:`attack` exactly (bit-for-bit)."""
        state = self._compat()
        if state.backup is None:
            raise RuntimeError("restore() called before attack(): there is nothing to restore")
        if emb_name is not None and self._seed_module(emb_name) is not state.module:
            raise ValueError(f"restore(emb_name={emb_name!r}) names another embedding than attack()")
        if state.module in self._hook.modules and self._hook.calls == state.calls_at_attack:
            warnings.warn(
                "restore(): no forward pass ran since attack(), so no adversarial loss was "
                "computed. Recompute the loss with a new forward pass after attack() (reusing "
                "the old logits trains on the clean loss twice).",
                UserWarning,
                stacklevel=2,
            )
        state.module.weight.data.index_copy_(0, state.rows, state.backup)
        state.module = state.rows = state.backup = None

    def backup_grad(self) -> None:
        """Seed-style PGD: set parameter gradients aside (by reference, no copy)."""
        # Moving references instead of cloning: the inner passes then write fresh
        # .grad tensors and restore_grad() puts the originals back, as the seed does.
        params = [p for p in P.unwrap(self.model).parameters() if p.requires_grad]
        self._compat().grad_backup = [(p, p.grad) for p in params]
        for p in params:
            p.grad = None

    def restore_grad(self) -> None:
        """Seed-style PGD: put the gradients saved by :meth:`backup_grad` back."""
        state = self._compat()
        if state.grad_backup is None:
            raise RuntimeError("restore_grad() called before backup_grad()")
        for p, g in state.grad_backup:
            p.grad = g
        state.grad_backup = None

    def _compat_step(self, G: torch.Tensor, current: torch.Tensor, epsilon: float,
                     alpha: Optional[float], first: bool) -> torch.Tensor:
        """New weight-row perturbation from the rows' gradient ``G`` (global norm): FGM's."""
        return P.normalize(G, self.norm, "batch") * epsilon

    def _seed_module(self, emb_name: Optional[str]) -> nn.Module:
        if emb_name is None:
            return self.embedding
        return P.resolve_emb_name(self.model, emb_name)[1]

    def _batch_rows(self, module: nn.Module, grad: torch.Tensor) -> torch.Tensor:
        """The weight rows of the tokens of the last forward pass (padding excluded)."""
        ids = self._hook.last_ids if module in self._hook.modules else None
        if ids is None:  # the hook never saw this module: the rows with a gradient
            return grad.ne(0).any(dim=1).nonzero().squeeze(1)
        ids = ids.reshape(-1)
        pad = getattr(module, "padding_idx", None)
        return torch.unique(ids[ids != pad] if pad is not None else ids)


class _SeedState:
    """Between ``attack()`` and ``restore()``: which rows were changed and their backup."""

    def __init__(self):
        self.module: Optional[nn.Module] = None
        self.rows: Optional[torch.Tensor] = None
        self.backup: Optional[torch.Tensor] = None
        self.calls_at_attack = 0
        self.grad_backup: Optional[List[tuple]] = None
