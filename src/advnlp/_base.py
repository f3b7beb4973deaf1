"""The bases every method derives from, and the one template of a ``backward()`` call.

* :class:`Adversary` - every method (AWP included). Owns the contract
  ``loss = adv.backward(closure, backward_fn=None)`` as one template: check the
  closure, run the method's :meth:`~Adversary._step` on a :class:`~advnlp._passes.Step`,
  restore what the step changed (also when the closure raises), count and report a step
  whose gradients were NaN/inf. ``stop_check`` (set by a training loop) is asked
  between passes and ends a long step with :class:`StepAborted`. ``needs_logits`` says whether
  the closure returns the model output (SMART, VAT) instead of the loss.
* :class:`EmbeddingAdversary` - methods that perturb the input embedding: finds
  it, registers the one forward hook (the last thing its constructor does, after
  every argument was checked), and gives its steps the passes of
  :class:`~advnlp._passes.EmbeddingStep` in the space chosen by ``target``.

The passes themselves are in ``_passes.py``, the distributed helpers in ``_distributed.py``,
and FGM/FGSM/PGD's base :class:`~advnlp.GradientAdversary` in ``methods/_gradient.py``.
A method's file then holds only its arguments and its algorithm.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Callable, List, Optional, Union

import torch
from torch import nn

from . import _perturb as P
from . import _validate as V
from ._distributed import reject_zero3
from ._passes import BackwardFn, Closure, EmbeddingStep, Step, snapshot_buffers
from ._spaces import OutputSpace, WeightSpace

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


class StepAborted(Exception):
    """Raised by ``backward()`` between two passes of a step when the method's
    ``stop_check()`` returns True. Weights and buffers are as before the step; the
    parameter gradients hold what the passes already run added: discard them
    (``optimizer.zero_grad()``) rather than step on them."""


def caller_stacklevel() -> int:
    """``stacklevel`` for ``warnings.warn`` that points at the first frame outside advnlp."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def _default_backward(loss: torch.Tensor) -> None:
    loss.backward()


class Adversary:
    """Base of every advnlp method: the ``backward(closure, backward_fn)`` contract.

    ``closure()`` runs a full forward pass and returns the loss (or, when
    ``needs_logits`` is True, the model output). On return every parameter's
    ``.grad`` has been *added to* as the method defines; weights and buffers are as a
    plain step leaves them. ``backward_fn(loss)`` replaces ``loss.backward()`` (e.g.
    ``lambda l: scaler.scale(l).backward()``).

    Attributes: ``model``; ``needs_logits``; ``skipped_steps`` (steps whose adversarial
    part was skipped for a NaN/inf gradient); ``last_adv_loss`` (the last step's
    adversarial loss or regulariser, detached; None when skipped).

    Every on/off argument of every method (``relative``, ``adv_only``, ``random_start``,
    ...) takes ``True`` or ``False`` only: a string such as ``'no'``, a number or ``None``
    is a TypeError naming the argument, never silently read as truthy.
    """

    needs_logits = False
    #: None, or ``() -> bool``, asked before every pass of a step but the first: True ends the
    #: step at once with :class:`StepAborted` (a training loop that must stop within one pass
    #: on a signal, however many passes the method makes per step).
    stop_check: Optional[Callable[[], bool]] = None
    # What a skipped step says: "<Method>: non-finite (NaN/inf) <what>; <then> (N so far). <note>"
    skip_what = "gradient w.r.t. the embedding"
    skip_then = "adversarial part of this step skipped"
    skip_note = ""

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.skipped_steps = 0
        self.last_adv_loss: Optional[torch.Tensor] = None

    def backward(self, closure: Closure, backward_fn: Optional[BackwardFn] = None, *,
                 mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run the method's passes; return the clean loss (detached).

        ``mask`` (embedding methods): a ``(batch, length)`` 0/1 or bool tensor of the
        positions that may be perturbed, e.g. ``batch["attention_mask"]`` for a model whose
        embedding has no ``padding_idx`` (most causal LMs), or the prompt's positions only.
        Padding (``padding_idx``) is never perturbed either way; SMART and VAT also compare
        per-token outputs on these positions only."""
        return self._run(closure, backward_fn, mask=mask)

    def _run(self, closure: Closure, backward_fn: Optional[BackwardFn], *,
             mask: Optional[torch.Tensor] = None, **options) -> torch.Tensor:
        """The template: every method's ``backward`` is this around its ``_step``."""
        if not callable(closure):
            returns = "the model output" if self.needs_logits else "the loss"
            raise TypeError("backward() needs a closure: a function that runs the forward pass "
                            f"and returns {returns}")
        self._check_trainable()
        self._set_positions(_check_mask(mask))
        step = self._new_step(self._stoppable(closure), backward_fn or _default_backward)
        # an aborted step leaves the buffers as before it, not as after its clean pass
        start = None if self.stop_check is None else snapshot_buffers(self.model)
        try:
            loss = self._step(step, **options)
        except StepAborted:
            if start is not None:
                step.buffers = start
            raise
        finally:
            step.restore()
            self._set_positions(None)
        self.last_adv_loss = step.adv_loss
        if step.skipped:
            self.skipped_steps += 1
            note = f" {self.skip_note}" if self.skip_note else ""
            warnings.warn(f"{type(self).__name__}: non-finite (NaN/inf) {self.skip_what}; "
                          f"{self.skip_then} ({self.skipped_steps} so far).{note}",
                          RuntimeWarning, stacklevel=caller_stacklevel())
        return loss

    def _new_step(self, closure: Closure, backward_fn: BackwardFn) -> Step:
        return Step(self, closure, backward_fn)

    def _stoppable(self, closure: Closure) -> Closure:
        """``closure`` asking ``stop_check`` before each call but the first: every pass of
        every method runs the closure, so this is the one place a step can be cut short."""
        check = self.stop_check
        if check is None:
            return closure
        calls = [0]

        def run(*args, **kwargs):
            if calls[0] and check():
                raise StepAborted(f"{type(self).__name__}: step aborted after {calls[0]} "
                                  "pass(es), stop_check() asked to stop")
            calls[0] += 1
            return closure(*args, **kwargs)

        return run

    def _set_positions(self, mask: Optional[torch.Tensor]) -> None:
        if mask is not None:
            raise ValueError(f"{type(self).__name__} perturbs weights, not token positions: "
                             "mask= is for the embedding methods")

    def _check_trainable(self) -> None:
        """The two reasons a step can have nothing to train, said before any pass runs
        (later, torch would only report a loss without a graph)."""
        if not torch.is_grad_enabled():
            raise RuntimeError(
                f"{type(self).__name__}.backward() ran under torch.no_grad() or "
                "torch.inference_mode(): training needs gradients. Call it outside that block.")
        if not any(p.requires_grad for p in P.unwrap(self.model).parameters()):
            raise RuntimeError(
                f"{type(self).__name__}: no parameter of the model requires grad (all are "
                "frozen), so there is nothing to train. Unfreeze what should learn "
                "(p.requires_grad_(True)), e.g. the classifier head or LoRA adapters.")

    def _step(self, step: Step, **options) -> torch.Tensor:
        """The method's algorithm: the passes of one step; returns the loss to report."""
        raise NotImplementedError

    def built_on(self, model: nn.Module) -> bool:
        """Whether ``model`` is (a wrapper of) the model this method was built on."""
        return P.unwrap(model) is P.unwrap(self.model)

    def remove(self) -> None:
        """Remove what the method registered on the model (the method is unusable after)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


class EmbeddingAdversary(Adversary):
    """Base of the methods that perturb the input embedding.

    Args:
        model: the model (a DDP / ``torch.compile`` wrapper is fine; the hook goes
            on the wrapped model's embedding).
        norm: ``"l2"`` or ``"linf"``. Default: the method's.
        scope: what one norm covers for ``target="output"``: ``"example"`` (default,
            one norm per sequence), ``"token"`` or ``"batch"``.
        target: ``"output"`` (default; a per-example delta added to the embedding
            output, padding masked) or ``"weight"`` (the seed's weight-matrix
            perturbation, global norm, only the batch's rows backed up).
        embedding: the input embedding module, or its dotted name, when it cannot
            be found automatically.
        relative: every length of the method (radius, step sizes, random start) is a
            fraction of each example's own clean embedding output over its real tokens:
            of its L2 norm (``norm="l2"``) or of its RMS coordinate (``"linf"``), taken
            over ``scope``. So ``epsilon=0.05`` means 5% of the embedding whatever the
            model's embedding scale. Output target only. Default False (absolute units).

    Subclasses check their own arguments *before* calling this constructor, which
    registers the hook only after its own checks: a constructor that raises leaves
    the model as it was.
    """

    default_norm = "l2"

    def __init__(self, model: nn.Module, *, norm: Optional[str] = None, scope: str = "example",
                 target: str = "output", embedding: Union[None, str, nn.Module] = None,
                 relative: bool = False):
        super().__init__(model)
        self.norm = V.choice("norm", norm or self.default_norm, P.NORMS)
        self.scope = V.choice("scope", scope, P.SCOPES)
        self.target = V.choice("target", target, P.TARGETS)
        relative = V.boolean("relative", relative)
        if relative and self.target == "weight":
            raise ValueError("relative=True scales the perturbation of each example's embedding "
                             "output; target='weight' has no such example: use target='output'")
        self.relative = relative
        reject_zero3(model)
        self.embedding_name, self.embedding = P.find_embedding(model, embedding)
        weight = self._weight_target(model) if self.target == "weight" else None
        self._hook = P.EmbeddingHook(P.embedding_modules(model, self.embedding))
        if relative:
            self._hook.relative = (self.norm, self.scope)
        self._space = (OutputSpace(self._hook, self.scope) if weight is None
                       else WeightSpace(self._hook, weight))

    def _weight_target(self, model: nn.Module) -> nn.Parameter:
        weight = getattr(self.embedding, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() != 2:
            raise ValueError(f"target='weight' needs an embedding with a 2-D .weight; "
                             f"{self.embedding_name} has none. Use target='output'.")
        if not weight.requires_grad:
            raise ValueError(
                f"target='weight' perturbs the embedding weight in place, but "
                f"{self.embedding_name}.weight is frozen (requires_grad=False, e.g. the base "
                "model under LoRA): a frozen weight must not be written to. Use "
                "target='output' (the default), which perturbs the embedding output and "
                "needs no gradient on the weight.")
        owners = P.tied_parameter_owners(model, weight)
        if len(owners) > 1:
            warnings.warn(
                f"target='weight': the embedding weight is tied to {', '.join(owners)}; "
                "perturbing it also perturbs the output layer during the adversarial pass. "
                "target='output' perturbs the input side only.",
                stacklevel=caller_stacklevel(),
            )
        return weight

    def _new_step(self, closure: Closure, backward_fn: BackwardFn) -> EmbeddingStep:
        return EmbeddingStep(self, closure, backward_fn)

    def _set_positions(self, mask: Optional[torch.Tensor]) -> None:
        if mask is not None and self.target == "weight":
            raise ValueError("mask= selects positions of the embedding output; target='weight' "
                             "perturbs the weight matrix: use target='output'")
        self._hook.positions = mask

    # helpers for the methods' arithmetic ---------------------------------------------
    def _scope(self) -> str:
        return "batch" if self.target == "weight" else self.scope

    def _direction(self, grads: List[torch.Tensor]) -> List[torch.Tensor]:
        return [P.normalize(g, self.norm, self._scope()) for g in grads]

    def _project(self, delta: List[torch.Tensor], epsilon: float) -> List[torch.Tensor]:
        return [P.project(d, epsilon, self.norm, self._scope()) for d in delta]

    def remove(self) -> None:
        """Remove the forward hook from the embedding (the method is unusable after)."""
        self._hook.remove()

    def _settings(self) -> str:
        rel = ", relative=True" if self.relative else ""
        return f"norm={self.norm!r}, scope={self.scope!r}, target={self.target!r}{rel}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._settings()}, embedding={self.embedding_name!r})"


def _check_mask(mask) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise ValueError("mask= must be a (batch, length) tensor of 0/1 or bool, one entry per "
                         f"token, got {type(mask).__name__}"
                         + (f" of shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else ""))
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask= takes 0/1 or bool entries (1: may be perturbed)")
    return mask.detach()
