"""The plumbing every method shares: the ``backward(closure)`` contract.

A method subclasses :class:`Adversary` and implements ``perturb(step, grads)``:
given the clean-pass gradient with respect to the perturbation space (a list of
tensors), return the perturbation to train on. Everything else lives here:
argument validation, turning a closure's result into a loss, which passes add to
parameter gradients, DDP ``no_sync``, non-finite skipping, exact restoration of
weights and buffers, and the seed-style ``attack()/restore()`` calls.
"""
from __future__ import annotations

import contextlib
import numbers
import warnings
from typing import Callable, List, Optional, Union

import torch
from torch import nn

from . import _perturb as P

Closure = Callable[[], object]
BackwardFn = Callable[[torch.Tensor], None]


class _Skip(Exception):
    """A gradient was NaN/inf: the adversarial part of this step is skipped."""


def as_loss(out: object) -> torch.Tensor:
    """The scalar loss inside a closure's result.

    Accepts a tensor, an object with ``.loss`` (Hugging Face ``ModelOutput``),
    a dict with ``"loss"`` or a tuple/list whose first item is the loss.
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
    if not loss.requires_grad:
        raise RuntimeError(
            "the closure's loss does not require grad: the forward pass ran under "
            "torch.no_grad()/inference_mode, or the loss was detached (.item(), .detach()). "
            "Run the model inside the closure with gradients enabled."
        )
    return loss.reshape(())


def _check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (value >= 0 if allow_zero else value > 0) or value != value or value == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name}={value!r}; choose one of {', '.join(map(repr, choices))}")
    return value


def skip_adversarial(adv, what: str, then: str, note: str = "", stacklevel: int = 3) -> None:
    """A NaN/inf gradient: count the skipped adversarial part (``adv.skipped_steps``), say
    so once per step with a RuntimeWarning, and clear ``adv.last_adv_loss``. Every method
    reports a skip through here."""
    adv.skipped_steps += 1
    adv.last_adv_loss = None
    warnings.warn(f"{type(adv).__name__}: non-finite (NaN/inf) {what}; {then} "
                  f"({adv.skipped_steps} so far).{' ' + note if note else ''}",
                  RuntimeWarning, stacklevel=stacklevel)


def _default_backward(loss: torch.Tensor) -> None:
    loss.backward()


def local_grads(model: nn.Module, sync: bool = False):
    """``model.no_sync()`` for DDP unless ``sync``: passes before a step's last one keep
    their gradients local, so a step costs one all-reduce round as in plain training."""
    if not sync and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def snapshot_buffers(model: nn.Module) -> List[tuple]:
    """``(buffer, copy)`` pairs; :func:`restore_buffers` puts the values back (BatchNorm
    statistics and counters must end as after the clean pass alone)."""
    return [(b, b.detach().clone()) for b in P.unwrap(model).buffers()]


def restore_buffers(saved: List[tuple]) -> None:
    with torch.no_grad():
        for b, copy in saved:
            b.copy_(copy)


class _OutputSpace:
    """Perturbation on the embedding *output*: one float32 tensor per embedding call."""

    def __init__(self, hook: P.EmbeddingHook, scope: str):
        self.hook, self.scope = hook, scope
        self.masks: List[torch.Tensor] = []

    def begin_clean(self) -> None:
        self.hook.start("record")

    def end_clean(self) -> List[torch.Tensor]:
        self.hook.stop()
        self.masks = self.hook.masks
        if not self.hook.deltas:
            raise RuntimeError(
                "the closure never called the input embedding; check that it runs the model "
                "the adversary was built for. With torch.compile, build the adversary before "
                "the compiled model's first call (hooks added later are not seen by the "
                "compiled graph)."
            )
        grads = [
            (d.grad if d.grad is not None else torch.zeros_like(d)) * m
            for d, m in zip(self.hook.deltas, self.masks)
        ]
        self.hook.deltas = []  # drop the zero leaves; keep nothing between steps
        return grads

    def mask(self, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
        return [t * m for t, m in zip(tensors, self.masks)]

    def leaves(self, delta: List[torch.Tensor]) -> List[torch.Tensor]:
        leaves = [d.detach().requires_grad_(True) for d in delta]
        self.hook.start("apply", leaves)
        return leaves

    def apply(self, delta: List[torch.Tensor]) -> None:
        self.hook.start("apply", [d.detach() for d in delta])

    def grads_of(self, loss: torch.Tensor, leaves: List[torch.Tensor]) -> List[torch.Tensor]:
        gs = torch.autograd.grad(loss, leaves, allow_unused=True)
        return self.mask([torch.zeros_like(l) if g is None else g for g, l in zip(gs, leaves)])

    def grads_after_backward(self, leaves: List[torch.Tensor]) -> List[torch.Tensor]:
        return self.mask([torch.zeros_like(l) if l.grad is None else l.grad for l in leaves])

    def end_pass(self) -> None:
        self.hook.stop()

    def restore(self) -> None:
        self.hook.clear()
        self.masks = []


class _WeightSpace:
    """The seed's target: the embedding *weight*, but only the rows the batch uses.

    The perturbation is one ``(rows, hidden)`` float32 tensor with one global
    norm (as in the seed). The gradient for those rows is rebuilt from the
    embedding-output gradient (scatter-add over positions), so it is this
    batch's input-path gradient only: not mixed with gradients accumulated from
    earlier micro-batches, nor with a tied output layer's gradient.
    """

    def __init__(self, hook: P.EmbeddingHook, weight: nn.Parameter):
        self.hook, self.weight = hook, weight
        self.rows: Optional[torch.Tensor] = None
        self.inverse: List[torch.Tensor] = []
        self.backup: Optional[torch.Tensor] = None
        self.masks: List[torch.Tensor] = []

    def begin_clean(self) -> None:
        self.hook.start("record")

    def _row_grad(self, out_grads: List[torch.Tensor]) -> torch.Tensor:
        G = torch.zeros(
            self.rows.numel(), self.weight.shape[1], device=self.weight.device, dtype=torch.float32
        )
        for g, inv, m in zip(out_grads, self.inverse, self.masks):
            flat = (g.float() * m).reshape(-1, g.shape[-1])
            G.index_add_(0, inv, flat)
        return G

    def end_clean(self) -> List[torch.Tensor]:
        self.hook.stop()
        if not self.hook.deltas:
            raise RuntimeError("the closure never called the input embedding")
        self.masks = self.hook.masks
        ids = self.hook.ids
        if any(i is None for i in ids):
            raise RuntimeError(
                "target='weight' needs the embedding to be called with token ids; "
                "use target='output'"
            )
        real = torch.cat([i.reshape(-1)[m.reshape(-1) > 0] for i, m in zip(ids, self.masks)])
        self.rows = torch.unique(real)
        # position -> row index; padding positions point at row 0 with a zero mask.
        self.inverse = [
            torch.searchsorted(self.rows, i.reshape(-1).clamp(min=0)).clamp(max=self.rows.numel() - 1)
            for i in ids
        ]
        grads = [d.grad if d.grad is not None else torch.zeros_like(d) for d in self.hook.deltas]
        self.hook.deltas = []
        return [self._row_grad(grads)]

    def mask(self, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
        return tensors

    def _set(self, delta: torch.Tensor) -> None:
        w = self.weight.data
        if self.backup is None:
            self.backup = w.index_select(0, self.rows)
        w.index_copy_(0, self.rows, (self.backup.float() + delta).to(w.dtype))

    def leaves(self, delta: List[torch.Tensor]) -> List[torch.Tensor]:
        self._set(delta[0])
        self.hook.start("record")
        return []

    def apply(self, delta: List[torch.Tensor]) -> None:
        self._set(delta[0])

    def grads_of(self, loss: torch.Tensor, leaves) -> List[torch.Tensor]:
        self.hook.stop()
        zeros = self.hook.deltas
        gs = torch.autograd.grad(loss, zeros, allow_unused=True)
        self.hook.deltas = []
        return [self._row_grad([torch.zeros_like(z) if g is None else g for g, z in zip(gs, zeros)])]

    def grads_after_backward(self, leaves) -> List[torch.Tensor]:
        zeros, self.hook.deltas = self.hook.deltas, []
        return [self._row_grad([torch.zeros_like(z) if z.grad is None else z.grad for z in zeros])]

    def end_pass(self) -> None:
        self.hook.stop()

    def restore(self) -> None:
        if self.backup is not None:
            self.weight.data.index_copy_(0, self.rows, self.backup)
        self.backup, self.rows, self.inverse, self.masks = None, None, [], []
        self.hook.clear()


class _Step:
    """One ``backward(closure)`` call: the passes a method may ask for."""

    def __init__(self, adv: "Adversary", closure: Closure, backward_fn: BackwardFn):
        self.adv, self.closure, self.backward_fn = adv, closure, backward_fn
        self.space = adv._space
        self.buffers: List[tuple] = []
        self.clean_loss: Optional[torch.Tensor] = None

    def _local(self, sync: bool = False):
        return local_grads(self.adv.model, sync)

    def _finite(self, grads: List[torch.Tensor]) -> List[torch.Tensor]:
        if not P.all_finite(grads):
            raise _Skip()
        return grads

    def clean(self, param_grads: bool = True):
        """Clean pass. Adds grad(clean loss) to parameters unless ``param_grads`` is False.

        Returns the detached clean loss and the gradient w.r.t. the perturbation space.
        """
        space = self.space
        space.begin_clean()
        try:
            with self._local():
                loss = as_loss(self.closure())
                if param_grads:
                    self.backward_fn(loss)
                    grads = space.end_clean()
                else:
                    zeros = space.hook.deltas
                    gs = torch.autograd.grad(loss, zeros, allow_unused=True)
                    for z, g in zip(zeros, gs):
                        z.grad = g
                    grads = space.end_clean()
        finally:
            space.end_pass()
        # Buffers (BatchNorm statistics, counters) must end as a plain step leaves them.
        self.buffers = snapshot_buffers(self.adv.model)
        self.clean_loss = loss.detach()
        return self.clean_loss, self._finite(grads)

    def grad_at(self, delta: List[torch.Tensor]):
        """Loss and gradient w.r.t. the perturbation at ``delta``; parameter grads untouched."""
        leaves = self.space.leaves(delta)
        try:
            with self._local():
                loss = as_loss(self.closure())
            try:
                grads = self.space.grads_of(loss, leaves)
            except RuntimeError as e:
                if "use_reentrant" not in str(e):
                    raise
                raise RuntimeError(
                    f"{type(self.adv).__name__} takes inner gradients w.r.t. the perturbation only "
                    "(torch.autograd.grad), which reentrant activation checkpointing does not "
                    "support. Use non-reentrant checkpointing, e.g. model.gradient_checkpointing_"
                    "enable(gradient_checkpointing_kwargs={'use_reentrant': False}) (transformers "
                    "5: activation_checkpointing_enable, non-reentrant by default), or FGM/FreeLB, "
                    "which need no inner gradient."
                ) from e
        finally:
            self.space.end_pass()
        return loss.detach(), self._finite(grads)

    def accumulate(self, delta: List[torch.Tensor], weight: float, sync: bool = False):
        """A pass at ``delta`` that adds ``weight`` x grad to parameters *and* returns
        the gradient w.r.t. the perturbation from the same backward (FreeLB, Free-AT).

        ``sync=False`` keeps DDP gradients local; the last pass of a step syncs.
        """
        leaves = self.space.leaves(delta)
        try:
            with self._local(sync):
                loss = as_loss(self.closure())
                self.backward_fn(loss * weight if weight != 1.0 else loss)
            self.space.end_pass()
            grads = self.space.grads_after_backward(leaves)
        finally:
            self.space.end_pass()
        return loss.detach(), grads

    def final(self, delta: List[torch.Tensor], weight: float, sync: bool = True):
        """Adversarial pass at ``delta``: adds ``weight`` x grad(adv loss) to parameters."""
        self.space.apply(delta)
        try:
            with self._local(sync):
                loss = as_loss(self.closure())
                self.backward_fn(loss * weight if weight != 1.0 else loss)
        finally:
            self.space.end_pass()
        return loss.detach()

    def restore(self) -> None:
        self.space.restore()
        restore_buffers(self.buffers)
        self.buffers = []


class Adversary:
    """Base class: owns the embedding hook, the ``backward(closure)`` contract and restoration.

    Args:
        model: the model (a DDP / ``torch.compile`` wrapper is fine; the hook goes
            on the wrapped model's embedding).
        epsilon: radius of the perturbation (absolute, in embedding units). Default 1.0.
        norm: ``"l2"`` or ``"linf"``.
        scope: what one norm covers for ``target="output"``: ``"example"`` (default,
            one norm per sequence), ``"token"`` or ``"batch"``.
        target: ``"output"`` (default; a per-example delta added to the embedding
            output, padding masked) or ``"weight"`` (the seed's weight-matrix
            perturbation, global norm, only the batch's rows backed up).
        adv_weight: weight of the adversarial loss's gradient. Default 1.0.
        adv_only: train on the adversarial loss alone (Madry-style): the clean
            pass then computes no parameter gradients (cheaper). Default False.
        embedding: the input embedding module, or its dotted name, when it cannot
            be found automatically.
    """

    default_norm = "l2"

    def __init__(
        self,
        model: nn.Module,
        epsilon: float = 1.0,
        *,
        norm: Optional[str] = None,
        scope: str = "example",
        target: str = "output",
        adv_weight: float = 1.0,
        adv_only: bool = False,
        embedding: Union[None, str, nn.Module] = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.epsilon = _check_positive("epsilon", epsilon)
        self.norm = _check_choice("norm", norm or self.default_norm, P.NORMS)
        self.scope = _check_choice("scope", scope, P.SCOPES)
        self.target = _check_choice("target", target, P.TARGETS)
        self.adv_weight = _check_positive("adv_weight", adv_weight, allow_zero=True)
        self.adv_only = bool(adv_only)
        _reject_zero3(model)
        self.embedding_name, self.embedding = P.find_embedding(model, embedding)
        self._hook = P.EmbeddingHook(P.embedding_modules(model, self.embedding))
        if self.target == "weight":
            weight = getattr(self.embedding, "weight", None)
            if not isinstance(weight, nn.Parameter) or weight.dim() != 2:
                raise ValueError(
                    f"target='weight' needs an embedding with a 2-D .weight; "
                    f"{self.embedding_name} has none. Use target='output'."
                )
            owners = P.tied_parameter_owners(model, weight)
            if len(owners) > 1:
                warnings.warn(
                    f"target='weight': the embedding weight is tied to {', '.join(owners)}; "
                    "perturbing it also perturbs the output layer during the adversarial pass. "
                    "target='output' perturbs the input side only.",
                    stacklevel=2,
                )
            self._space = _WeightSpace(self._hook, weight)
        else:
            self._space = _OutputSpace(self._hook, self.scope)
        self.skipped_steps = 0
        self.last_adv_loss: Optional[torch.Tensor] = None
        self._compat = _SeedCompat(self)

    # -- the contract ---------------------------------------------------------------
    def backward(self, closure: Closure, backward_fn: Optional[BackwardFn] = None) -> torch.Tensor:
        """Run the clean and adversarial passes; return the clean loss (detached).

        ``closure()`` runs a full forward pass and returns the loss (or an object
        with ``.loss``). On return every parameter's ``.grad`` has been *added
        to* by grad(clean) + adv_weight * grad(adversarial); weights and buffers
        are as a plain step leaves them. ``backward_fn(loss)`` replaces
        ``loss.backward()`` (e.g. ``lambda l: scaler.scale(l).backward()``).
        """
        if not callable(closure):
            raise TypeError("backward() needs a closure: a function that runs the forward pass and returns the loss")
        step = _Step(self, closure, backward_fn or _default_backward)
        try:
            _, grads = step.clean(param_grads=not self.adv_only)
            delta = self.perturb(step, grads)
            self.last_adv_loss = step.final(delta, self.adv_weight)
        except _Skip:
            skip_adversarial(self, "gradient w.r.t. the embedding",
                             "adversarial part of this step skipped",
                             "With fp16 this is usually a loss-scale overflow that the GradScaler "
                             "also skips.")
        finally:
            step.restore()
        return step.clean_loss

    def perturb(self, step: _Step, grads: List[torch.Tensor]) -> List[torch.Tensor]:
        """Method-specific: the perturbation to train on (same structure as ``grads``)."""
        raise NotImplementedError

    # helpers for methods -------------------------------------------------------------
    def _scope(self) -> str:
        return "batch" if self.target == "weight" else self.scope

    def _direction(self, grads: List[torch.Tensor]) -> List[torch.Tensor]:
        return [P.normalize(g, self.norm, self._scope()) for g in grads]

    def _project(self, delta: List[torch.Tensor], epsilon: float) -> List[torch.Tensor]:
        return [P.project(d, epsilon, self.norm, self._scope()) for d in delta]

    # -- lifecycle ----------------------------------------------------------------------
    def remove(self) -> None:
        """Remove the forward hook from the embedding (the adversary is unusable after)."""
        self._hook.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(epsilon={self.epsilon}, norm={self.norm!r}, "
            f"scope={self.scope!r}, target={self.target!r}, embedding={self.embedding_name!r})"
        )

    # -- seed-compatible low-level calls --------------------------------------------------
    def attack(self, epsilon: Optional[float] = None, emb_name: Optional[str] = None,
               is_first_attack: bool = False, alpha: Optional[float] = None) -> None:
        """Seed-style: perturb the embedding *weight* in place from its current ``.grad``.

        After ``attack()`` you must run a **new forward pass** and backward the
        adversarial loss, then call :meth:`restore`. (The seed's own example
        reuses the old logits, which trains on the clean loss twice; advnlp
        warns when ``restore()`` sees no forward pass since ``attack()``.)
        """
        self._compat.attack(epsilon, emb_name, is_first_attack, alpha)

    def restore(self, emb_name: Optional[str] = None) -> None:
        """Undo :meth:`attack` exactly (bit-for-bit)."""
        self._compat.restore(emb_name)

    def backup_grad(self) -> None:
        """Seed-style PGD: set parameter gradients aside (by reference, no copy)."""
        self._compat.backup_grad()

    def restore_grad(self) -> None:
        """Seed-style PGD: put the gradients saved by :meth:`backup_grad` back."""
        self._compat.restore_grad()

    def _compat_step(self, G: torch.Tensor, current: torch.Tensor, epsilon: float,
                     alpha: Optional[float], first: bool) -> torch.Tensor:
        """New weight-row perturbation for the seed-style API (global norm)."""
        return P.normalize(G, self.norm, "batch") * epsilon


def _reject_zero3(model: nn.Module) -> None:
    for p in P.unwrap(model).parameters():
        if hasattr(p, "ds_id") or hasattr(p, "ds_status"):
            raise NotImplementedError(
                "DeepSpeed ZeRO-3 partitions the embedding weight across ranks, so a hook on "
                "its output sees gathered activations but advnlp cannot guarantee correct "
                "restoration; ZeRO-3 is not supported. Use ZeRO-1/2 or DDP."
            )
        break


class _SeedCompat:
    """State for the seed-style ``attack()/restore()/backup_grad()/restore_grad()`` calls."""

    def __init__(self, adv: Adversary):
        self.adv = adv
        self.module: Optional[nn.Module] = None
        self.rows: Optional[torch.Tensor] = None
        self.backup: Optional[torch.Tensor] = None
        self.calls_at_attack = 0
        self.grad_backup: Optional[List[tuple]] = None

    def _module(self, emb_name: Optional[str]) -> nn.Module:
        if emb_name is None:
            return self.adv.embedding
        return P.resolve_emb_name(self.adv.model, emb_name)[1]

    def attack(self, epsilon, emb_name, is_first_attack, alpha) -> None:
        adv = self.adv
        eps = adv.epsilon if epsilon is None else _check_positive("epsilon", epsilon)
        module = self._module(emb_name)
        weight = module.weight
        grad = weight.grad
        if grad is None and self.grad_backup is not None:
            grad = next((g for p, g in self.grad_backup if p is weight), None)
        if grad is None:
            raise RuntimeError(
                "attack() needs the embedding's gradient: call loss.backward() on the clean "
                "loss first (or use adv.backward(closure), which runs every pass for you)."
            )
        if self.backup is None or self.module is not module:
            if self.backup is not None:
                raise RuntimeError("attack() on a different embedding before restore()")
            ids = adv._hook.last_ids if module in adv._hook.modules else None
            pad = getattr(module, "padding_idx", None)
            if ids is not None:
                ids = ids.reshape(-1)
                rows = torch.unique(ids[ids != pad] if pad is not None else ids)
            else:  # the hook never saw this module: fall back to the rows with a gradient
                rows = grad.ne(0).any(dim=1).nonzero().squeeze(1)
            self.module, self.rows = module, rows
            self.backup = weight.data.index_select(0, rows)
        G = grad.index_select(0, self.rows).float()
        n = G.norm()
        if not torch.isfinite(n):
            adv.skipped_steps += 1
            warnings.warn("attack(): non-finite embedding gradient; no perturbation applied",
                          RuntimeWarning, stacklevel=3)
            return
        current = weight.data.index_select(0, self.rows).float() - self.backup.float()
        delta = adv._compat_step(G, current, eps, alpha, is_first_attack)
        weight.data.index_copy_(0, self.rows, (self.backup.float() + delta).to(weight.dtype))
        self.calls_at_attack = adv._hook.calls

    def restore(self, emb_name) -> None:
        if self.backup is None:
            raise RuntimeError("restore() called before attack(): there is nothing to restore")
        if emb_name is not None and self._module(emb_name) is not self.module:
            raise ValueError(f"restore(emb_name={emb_name!r}) names another embedding than attack()")
        if self.module in self.adv._hook.modules and self.adv._hook.calls == self.calls_at_attack:
            warnings.warn(
                "restore(): no forward pass ran since attack(), so no adversarial loss was "
                "computed. Recompute the loss with a new forward pass after attack() (reusing "
                "the old logits trains on the clean loss twice).",
                UserWarning,
                stacklevel=3,
            )
        self.module.weight.data.index_copy_(0, self.rows, self.backup)
        self.module = self.rows = self.backup = None

    def backup_grad(self) -> None:
        # Moving references instead of cloning: the inner passes then write fresh
        # .grad tensors and restore_grad() puts the originals back, as the seed does.
        params = [p for p in P.unwrap(self.adv.model).parameters() if p.requires_grad]
        self.grad_backup = [(p, p.grad) for p in params]
        for p in params:
            p.grad = None

    def restore_grad(self) -> None:
        if self.grad_backup is None:
            raise RuntimeError("restore_grad() called before backup_grad()")
        for p, g in self.grad_backup:
            p.grad = g
        self.grad_backup = None
