"""The passes of one ``backward()`` call: :class:`Step` (the closure, the backward
function, what the step must undo), :class:`EmbeddingStep` (the clean, inner, final and
recording passes of an embedding method, in its perturbation space) and :class:`Offsets`
(what FreeLB/FreeAT add to the embedding output on a recording pass)."""
from __future__ import annotations

import contextlib
from typing import Callable, List, Optional, Protocol, Sequence

import torch
from torch import nn

from . import _perturb as P
from ._distributed import local_grads
from ._spaces import OutputSpace, WeightSpace
from .outputs import as_loss

Closure = Callable[..., object]  # no arguments; DiscreteAT's takes (batch, labels)
BackwardFn = Callable[[torch.Tensor], None]
Offset = Callable[[int, Optional[torch.Tensor], torch.Tensor], Optional[torch.Tensor]]


class Method(Protocol):
    """What a step needs of its method (an :class:`advnlp.Adversary`)."""

    model: nn.Module


class EmbeddingMethod(Method, Protocol):
    """... and of an embedding method (an :class:`advnlp.EmbeddingAdversary`)."""

    _space: OutputSpace | WeightSpace


class _Skip(Exception):
    """A gradient was NaN/inf: the rest of this step's adversarial part is skipped."""


def snapshot_buffers(model: nn.Module) -> List[tuple]:
    """``(buffer, copy)`` pairs; :func:`restore_buffers` puts the values back (BatchNorm
    statistics and counters must end as after the clean pass alone)."""
    return [(b, b.detach().clone()) for b in P.unwrap(model).buffers()]


def restore_buffers(saved: List[tuple]) -> None:
    with torch.no_grad():
        for b, copy in saved:
            b.copy_(copy)


class Step:
    """One ``backward(closure)`` call: the closure, the backward function, and what the
    step must undo before it returns (buffers, weights changed in place).

    ``clean_loss`` and ``adv_loss`` are what the method measured; the template copies
    ``adv_loss`` to the method's ``last_adv_loss``. ``skipped`` marks a NaN/inf step.
    """

    def __init__(self, adv: Method, closure: Closure, backward_fn: BackwardFn):
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

    def __init__(self, adv: EmbeddingMethod, closure: Closure, backward_fn: BackwardFn):
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
