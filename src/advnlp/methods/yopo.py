"""YOPO: PGD whose inner steps stop early in the network (Zhang et al., NeurIPS 2019, "You
Only Propagate Once: Accelerating Adversarial Training via Maximal Principle").

Exact PGD pays an input-only backward through the whole network for every inner step.
YOPO's observation: by the chain rule the gradient w.r.t. the perturbation is
``J_k(x + delta)^T p`` with ``p = dL/dh_k`` the adjoint at the output ``h_k`` of layer k.
Freeze ``p`` at the clean pass's value and each inner step needs only the embedding ->
layer k sub-network::

    L = closure(); backward(L)                       clean pass; keeps p = dL/dh_k and
                                                     g_0 = dL/d delta (both exact)
    delta_1 = Proj_eps(delta_0 + alpha * g_0 / ||g_0||)
    for t = 1 .. steps-1:                            forward stops after layer k
        g_t = d (p . h_k(x + delta_t)) / d delta_t   (a backward through layers 1..k only)
        delta_{t+1} = Proj_eps(delta_t + alpha * g_t / ||g_t||)
    grad += grad L(x) + adv_weight * grad L(x + delta_steps)   a normal adversarial pass

What is approximated: only ``p``. Steps t >= 1 ascend the first-order model of the loss
around the clean point (``p`` held at ``delta = 0``) instead of the loss itself; the
first step and the final pass are exact. This is YOPO-m-n with m = 1 (one full backward,
the clean one) and n = ``steps``. With ``layers="all"`` the sub-network is the whole model
and its adjoint is dL/dL = 1, so every step is exact: YOPO is then PGD.

"Layer k" is the k-th module of the model's stack of layers, found without model-specific
code as the longest ``nn.ModuleList`` of modules of one class named ``layer``, ``layers``,
``h``, ``block`` or ``blocks`` (BERT, RoBERTa, DeBERTa,
ELECTRA, MiniLM: ``encoder.layer``; Llama, Qwen2: ``model.layers``; GPT-2:
``transformer.h``); pass ``layer_list=`` (the ``nn.ModuleList`` or its name) for anything
else. The inner forward is stopped by raising from a forward hook on layer k, so the
closure must not swallow exceptions.

Arguments (defaults): ``epsilon=1.0``, ``alpha=0.3``, ``steps=3``, ``layers=1``,
``layer_list=None``; ``random_start``, ``generator`` as for PGD; ``norm``, ``scope``,
``adv_weight``, ``adv_only``, ``embedding``, ``relative`` as for FGM (``target`` is
``"output"`` only).

Cost: 2 full forwards and backwards, plus ``steps - 1`` forwards and input-only backwards
through the first ``layers`` of L layers (about ``layers / L`` of a pass each).

Example::

    adv = YOPO(model, epsilon=1.0, alpha=0.3, steps=3, layers=1)
    loss = adv.backward(lambda: model(**batch).loss)
    optimizer.step(); optimizer.zero_grad()
"""
from __future__ import annotations

from typing import List, Optional, Union

import torch
from torch import nn

from .. import _perturb as P
from .. import _validate as V
from .._passes import EmbeddingStep
from .pgd import PGD


class _Stopped(Exception):
    """Raised by the hook on layer k to end an inner forward there."""

    def __init__(self, output: torch.Tensor):
        super().__init__("advnlp.YOPO: inner forward stopped after layer k")
        self.output = output


# What the transformer families call their stack of layers; a list of parallel branches
# (a TextCNN's convolutions) is not one, so the name is required too.
STACK_NAMES = ("layer", "layers", "h", "block", "blocks")


def find_layer_list(model: nn.Module, layer_list: Union[None, str, nn.ModuleList] = None):
    """``(name, nn.ModuleList)`` of the model's stack of layers: ``layer_list`` if given (a
    module or its name), else the longest ``nn.ModuleList`` whose modules share one class
    named ``layer``, ``layers``, ``h``, ``block`` or ``blocks`` (the first of equals)."""
    root = P.unwrap(model)
    if isinstance(layer_list, nn.ModuleList):
        for name, m in root.named_modules():
            if m is layer_list:
                return name, m
        raise ValueError("layer_list is not a module of this model")
    if isinstance(layer_list, str):
        m = dict(root.named_modules()).get(layer_list)
        if not isinstance(m, nn.ModuleList) or not len(m):
            raise ValueError(f"layer_list={layer_list!r} is not a non-empty nn.ModuleList of the "
                             "model")
        return layer_list, m
    if layer_list is not None:
        raise TypeError(f"layer_list must be None, a name or an nn.ModuleList, got "
                        f"{type(layer_list).__name__}")
    best = None
    for name, m in root.named_modules():
        if name.rsplit(".", 1)[-1] in STACK_NAMES and isinstance(m, nn.ModuleList) \
                and len(m) and len({type(c) for c in m}) == 1:
            if best is None or len(m) > len(best[1]):
                best = (name, m)
    if best is None:
        raise ValueError(f"YOPO found no stack of layers in {type(root).__name__} (no nn.ModuleList "
                         f"named {'/'.join(STACK_NAMES)} of modules of one class); pass "
                         "layer_list= the nn.ModuleList "
                         "(or its name) whose first layers the inner steps should run through")
    return best


class YOPO(PGD):
    """PGD with inner steps through the first ``layers`` layers only (see the module
    docstring for the algorithm, what is approximated, the arguments and their defaults)."""

    def __init__(self, model: nn.Module, epsilon: float = 1.0, alpha: float = 0.3,
                 steps: int = 3, *, layers: Union[int, str] = 1,
                 layer_list: Union[None, str, nn.ModuleList] = None,
                 random_start: bool = False, generator: Optional[torch.Generator] = None,
                 **kwargs):
        if kwargs.get("target", "output") != "output":
            raise ValueError("YOPO perturbs the embedding output (target='output'): its inner "
                             "steps follow the perturbation through the first layers")
        if layers != "all":
            layers = V.integer("layers", layers)
        self.layers = layers
        self._boundary: Optional[nn.Module] = None
        if layers != "all":
            name, stack = find_layer_list(model, layer_list)
            if layers > len(stack):
                raise ValueError(f"layers={layers}, but {name} has {len(stack)} layers; use "
                                 "layers='all' for exact PGD")
            self.layer_name = f"{name}.{layers - 1}"
            self._boundary = stack[layers - 1]
        super().__init__(model, epsilon, alpha, steps, random_start=random_start,
                         generator=generator, **kwargs)
        self._mode: Optional[str] = None
        self._adjoint: Optional[torch.Tensor] = None
        self._boundary_handle = None
        if self._boundary is not None:
            self._boundary_handle = self._boundary.register_forward_hook(self._at_boundary)

    def _step(self, step: EmbeddingStep) -> torch.Tensor:
        self._adjoint = None  # never one left from a step that was skipped
        return super()._step(step)

    def perturb(self, step: EmbeddingStep, grads: List[torch.Tensor]) -> List[torch.Tensor]:
        if self._boundary is not None and self._adjoint is None:
            raise RuntimeError(f"YOPO: the clean pass's gradient never reached {self.layer_name}; "
                               "does the loss depend on it? (pass layer_list= otherwise)")
        return super().perturb(step, grads)

    def _grad_at(self, step: EmbeddingStep, delta: List[torch.Tensor]) -> List[torch.Tensor]:
        """d (p . h_k(x + delta)) / d delta, from a forward that stops after layer k."""
        if self._boundary is None:
            return super()._grad_at(step, delta)
        leaves = step.space.leaves(delta)
        self._mode = "stop"
        try:
            with step.local():
                step.closure()
            raise RuntimeError(f"YOPO: the closure finished without calling {self.layer_name}; "
                               "pass layer_list= the layers the model runs")
        except _Stopped as stopped:
            h = stopped.output
        finally:
            self._mode = None
            step.space.end_pass()
        surrogate = (h.float() * self._adjoint).sum()
        with step.local():  # FSDP2 reads its sync setting at backward time
            return step.check_finite(step.space.grads_of(surrogate, leaves))

    def _at_boundary(self, module, inputs, output):
        h = output[0] if isinstance(output, (tuple, list)) else output
        if self._mode == "stop":
            raise _Stopped(h)
        space = self._space
        if space.hook.mode == "record" and self._adjoint is None and torch.is_tensor(h) \
                and h.requires_grad:
            h.register_hook(self._keep_adjoint)  # fires on .backward() and autograd.grad alike
        return None

    def _keep_adjoint(self, grad: torch.Tensor) -> None:
        if self._adjoint is None:
            self._adjoint = grad.detach().float()

    def remove(self) -> None:
        if self._boundary_handle is not None:
            self._boundary_handle.remove()
            self._boundary_handle = None
        super().remove()

    def _settings(self) -> str:
        return f"layers={self.layers!r}, {super()._settings()}"
