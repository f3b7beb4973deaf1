"""The base every method derives from, and the one template of a ``backward()`` call.

Three layers, each adding one thing:

* :class:`Adversary` - every method (AWP included). Owns the contract
  ``loss = adv.backward(closure, backward_fn=None)`` as one template: check the
  closure, run the method's :meth:`~Adversary._step` on a :class:`Step`, restore
  what the step changed (also when the closure raises), count and report a step
  whose gradients were NaN/inf. ``stop_check`` (set by a training loop) is asked
  between passes and ends a long step with :class:`StepAborted`. ``needs_logits`` says whether
  the closure returns the model output (SMART, VAT) instead of the loss.
* :class:`EmbeddingAdversary` - methods that perturb the input embedding: finds
  it, registers the one forward hook (the last thing its constructor does, after
  every argument was checked), and gives its steps the passes of
  :class:`EmbeddingStep` in the space chosen by ``target``.
* :class:`GradientAdversary` - FGM, FGSM and PGD: clean pass, ``perturb()``,
  one adversarial pass weighted by ``adv_weight``; plus the seed's
  ``attack()/restore()`` calls.

A method's file then holds only its arguments and its algorithm.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import nn

from . import _perturb as P
from . import _validate as V
from ._seed_compat import SeedCompatMixin
from ._spaces import OutputSpace, WeightSpace
from .outputs import as_loss

Closure = Callable[..., object]  # no arguments; DiscreteAT's takes (batch, labels)
BackwardFn = Callable[[torch.Tensor], None]
Offset = Callable[[int, Optional[torch.Tensor], torch.Tensor], Optional[torch.Tensor]]

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


class StepAborted(Exception):
    """Raised by ``backward()`` between two passes of a step when the method's
    ``stop_check()`` returns True. Weights and buffers are as before the step; the
    parameter gradients hold what the passes already run added: discard them
    (``optimizer.zero_grad()``) rather than step on them."""


class _Skip(Exception):
    """A gradient was NaN/inf: the rest of this step's adversarial part is skipped."""


def caller_stacklevel() -> int:
    """``stacklevel`` for ``warnings.warn`` that points at the first frame outside advnlp."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def _default_backward(loss: torch.Tensor) -> None:
    loss.backward()


def local_grads(model: nn.Module, sync: bool = False):
    """``model.no_sync()`` for DDP, gradient sync off for FSDP2 (``fully_shard``), unless
    ``sync``: passes before a step's last one keep their gradients local, so a step costs
    one gradient all-reduce (DDP) or reduce-scatter (FSDP2) round, as in plain training."""
    if sync:
        return contextlib.nullcontext()
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    if _is_fsdp2(model):
        return _fsdp2_no_sync(model)
    return contextlib.nullcontext()


def _is_fsdp2(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return False
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def _fsdp2_no_sync(model: nn.Module):
    # FSDP2's no_sync is a setting, not a context; leave it alone if the caller had already
    # turned sync off (their own gradient accumulation).
    groups = [g for m in model.modules() if _is_fsdp2(m)
              for g in getattr(m._get_fsdp_state(), "_fsdp_param_groups", [])]
    on = all(getattr(g, "reduce_grads", True) for g in groups)
    if on:
        model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        if on:
            model.set_requires_gradient_sync(True)


def snapshot_buffers(model: nn.Module) -> List[tuple]:
    """``(buffer, copy)`` pairs; :func:`restore_buffers` puts the values back (BatchNorm
    statistics and counters must end as after the clean pass alone)."""
    return [(b, b.detach().clone()) for b in P.unwrap(model).buffers()]


def restore_buffers(saved: List[tuple]) -> None:
    with torch.no_grad():
        for b, copy in saved:
            b.copy_(copy)


# ---------------------------------------------------------------------------------------
# One backward() call
# ---------------------------------------------------------------------------------------
class Step:
    """One ``backward(closure)`` call: the closure, the backward function, and what the
    step must undo before it returns (buffers, weights changed in place).

    ``clean_loss`` and ``adv_loss`` are what the method measured; the template copies
    ``adv_loss`` to the method's ``last_adv_loss``. ``skipped`` marks a NaN/inf step.
    """

    def __init__(self, adv: "Adversary", closure: Closure, backward_fn: BackwardFn):
        self.adv, self.closure, self.backward_fn = adv, closure, backward_fn
        self.buffers: List[tuple] = []
        self.saved_weights: List[tuple] = []
        self.clean_loss: Optional[torch.Tensor] = None
        self.adv_loss: Optional[torch.Tensor] = None
        self.skipped = False

    def local(self, sync: bool = False):
        return local_grads(self.adv.model, sync)

    def backward(self, loss: torch.Tensor, weight: float = 1.0) -> None:
        self.backward_fn(loss * weight if weight != 1.0 else loss)

    def snapshot_buffers(self) -> None:
        """The buffers are restored to their values now (one plain forward's worth)."""
        self.buffers = snapshot_buffers(self.adv.model)

    def save_weight(self, p: nn.Parameter) -> None:
        """Keep a copy of ``p`` before it is changed in place; restored at the end."""
        self.saved_weights.append((p, p.data.clone()))

    def check_finite(self, tensors: Sequence[Optional[torch.Tensor]]):
        if not P.all_finite(tensors):
            raise _Skip()
        return tensors

    @contextlib.contextmanager
    def skippable(self):
        """A NaN/inf gradient inside (``check_finite``) ends the block: the step is
        marked skipped and has no adversarial loss."""
        try:
            yield
        except _Skip:
            self.skipped, self.adv_loss = True, None

    def restore(self) -> None:
        with torch.no_grad():
            for p, saved in self.saved_weights:
                p.data.copy_(saved)
        self.saved_weights = []
        restore_buffers(self.buffers)
        self.buffers = []


class EmbeddingStep(Step):
    """The passes an embedding method may ask for, in its perturbation space."""

    def __init__(self, adv: "EmbeddingAdversary", closure: Closure, backward_fn: BackwardFn):
        super().__init__(adv, closure, backward_fn)
        self.space = adv._space

    def clean(self, param_grads: bool = True):
        """Clean pass. Adds grad(clean loss) to parameters unless ``param_grads`` is False.

        Returns the detached clean loss and the gradient w.r.t. the perturbation space.
        """
        space = self.space
        space.begin_clean()
        try:
            with self.local():
                loss = as_loss(self.closure())
                if param_grads:
                    self.backward_fn(loss)
                else:
                    zeros = space.hook.deltas
                    for z, g in zip(zeros, torch.autograd.grad(loss, zeros, allow_unused=True)):
                        z.grad = g
                grads = space.end_clean()
        finally:
            space.end_pass()
        self.snapshot_buffers()
        self.clean_loss = loss.detach()
        return self.clean_loss, self.check_finite(grads)

    def grad_at(self, delta: List[torch.Tensor]):
        """Loss and gradient w.r.t. the perturbation at ``delta``; parameter grads untouched."""
        leaves = self.space.leaves(delta)
        try:
            # the inner backward inside local() too: FSDP2 reads its sync setting at backward
            # time, and would reduce-scatter the clean pass's gradients here
            try:
                with self.local():
                    loss = as_loss(self.closure())
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
        return loss.detach(), self.check_finite(grads)

    def final(self, delta: List[torch.Tensor], weight: float, sync: bool = True):
        """Adversarial pass at ``delta``: adds ``weight`` x grad(adv loss) to parameters."""
        self.space.apply(delta)
        try:
            with self.local(sync):
                loss = as_loss(self.closure())
                self.backward(loss, weight)
        finally:
            self.space.end_pass()
        return loss.detach()

    def record(self, offset: Optional[Offset] = None, weight: float = 1.0, sync: bool = True):
        """One forward/backward at ``embedding output + offset(i, ids, out)`` (call ``i``;
        None adds nothing) that adds ``weight`` x grad(loss) to parameters *and* gives
        d loss / d embedding-output from the same backward (FreeLB, FreeAT). Returns
        ``(loss, masked gradients per call)``; ``sync=False`` keeps DDP gradients local."""
        space = self.space
        space.begin_clean()
        try:
            with space.hook.offsetting(offset), self.local(sync):
                loss = as_loss(self.closure())
                self.backward(loss, weight)
                grads = space.end_clean()
        finally:
            space.end_pass()
        return loss.detach(), grads

    def restore(self) -> None:
        self.space.restore()
        super().restore()


class Offsets:
    """Offsets added to the embedding output in :meth:`EmbeddingStep.record`, one per call.

    Call ``i`` gets ``tensors[i]``. A call beyond them gets ``draw(ids, out)``, which is
    kept (FreeLB's random start, whose shape is known only inside the forward). With
    ``restart_on_new_shape`` a first call of another shape means a new batch: nothing
    is added in this pass and ``restarted`` is set (FreeAT's carried perturbation).
    """

    def __init__(self, tensors: Sequence[torch.Tensor] = (), draw=None,
                 restart_on_new_shape: bool = False):
        self.tensors = list(tensors)
        self.draw, self.restart_on_new_shape = draw, restart_on_new_shape
        self.restarted = False

    def __call__(self, i: int, ids, out: torch.Tensor) -> Optional[torch.Tensor]:
        if self.restarted:
            return None
        if i < len(self.tensors) and self.tensors[i].shape == out.shape:
            return self.tensors[i]
        if i == 0 and self.restart_on_new_shape:
            self.restarted = True
            return None
        if i == len(self.tensors) and self.draw is not None:
            self.tensors.append(self.draw(ids, out))
            return self.tensors[-1]
        raise RuntimeError(
            "the embedding output changed between passes (call count or shape): the closure "
            "must feed the same batch every call"
            + ("; call adv.new_batch() between batches" if self.restart_on_new_shape else ".")
        )


# ---------------------------------------------------------------------------------------
# The bases
# ---------------------------------------------------------------------------------------
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
        _reject_zero3(model)
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


class GradientAdversary(SeedCompatMixin, EmbeddingAdversary):
    """Clean pass, one perturbation from :meth:`perturb`, one adversarial pass.

    ``grad += grad L(x) + adv_weight * grad L(x + perturb(...))`` (with ``adv_only``
    the clean pass adds nothing: Madry-style training on the adversarial loss alone).

    Args:
        epsilon: radius of the perturbation (in embedding units, or a fraction of each
            example's embedding with ``relative=True``). Default 1.0.
        adv_weight: weight of the adversarial loss's gradient. Default 1.0.
        adv_only: train on the adversarial loss alone; the clean pass then computes
            no parameter gradients (cheaper). Default False.
        norm, scope, target, embedding, relative: see :class:`EmbeddingAdversary`.
    """

    skip_note = "With fp16 this is usually a loss-scale overflow that the GradScaler also skips."

    def __init__(self, model: nn.Module, epsilon: float = 1.0, *, norm: Optional[str] = None,
                 scope: str = "example", target: str = "output", adv_weight: float = 1.0,
                 adv_only: bool = False, embedding: Union[None, str, nn.Module] = None,
                 relative: bool = False):
        self.epsilon = V.positive("epsilon", epsilon)
        self.adv_weight = V.positive("adv_weight", adv_weight, allow_zero=True)
        self.adv_only = V.boolean("adv_only", adv_only)
        super().__init__(model, norm=norm, scope=scope, target=target, embedding=embedding,
                         relative=relative)

    def _step(self, step: EmbeddingStep) -> torch.Tensor:
        with step.skippable():
            _, grads = step.clean(param_grads=not self.adv_only)
            delta = self.perturb(step, grads)
            step.adv_loss = step.final(delta, self.adv_weight)
        return step.clean_loss

    def perturb(self, step: EmbeddingStep, grads: List[torch.Tensor]) -> List[torch.Tensor]:
        """The method: the perturbation to train on (same structure as ``grads``, the
        clean-pass gradient w.r.t. the perturbation space)."""
        raise NotImplementedError

    def _settings(self) -> str:
        return f"epsilon={self.epsilon}, {super()._settings()}"


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


def _reject_zero3(model: nn.Module) -> None:
    for p in P.unwrap(model).parameters():
        if hasattr(p, "ds_id") or hasattr(p, "ds_status"):
            raise NotImplementedError(
                "DeepSpeed ZeRO-3 partitions the embedding weight across ranks, so a hook on "
                "its output sees gathered activations but advnlp cannot guarantee correct "
                "restoration; ZeRO-3 is not supported. Use ZeRO-1/2 or DDP."
            )
        break
