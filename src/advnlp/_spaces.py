"""Where a perturbation lives: the two spaces an embedding method can perturb.

Both expose the same passes to :class:`advnlp._base.EmbeddingStep`: record the clean
pass (zero leaves on the embedding output), hand out leaves at a perturbation for
an inner gradient, apply a perturbation for the final pass, and restore.

* :class:`OutputSpace` (``target="output"``, the default): one float32 delta per
  embedding call, added to its output by the hook; padding positions masked.
* :class:`WeightSpace` (``target="weight"``, the seed's recipe): the rows of the
  embedding weight that the batch uses, perturbed in place with one global norm.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from . import _perturb as P


class OutputSpace:
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
        return self.mask([torch.zeros_like(x) if g is None else g for g, x in zip(gs, leaves)])

    def grads_after_backward(self, leaves: List[torch.Tensor]) -> List[torch.Tensor]:
        return self.mask([torch.zeros_like(x) if x.grad is None else x.grad for x in leaves])

    def end_pass(self) -> None:
        self.hook.stop()

    def restore(self) -> None:
        self.hook.clear()
        self.masks = []


class WeightSpace:
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
