"""AWP: Adversarial Weight Perturbation (Wu, Xia & Wang, NeurIPS 2020, "Adversarial Weight
Perturbation Helps Robust Generalization"), in the form popular for fine-tuning
transformers (Kaggle recipes): perturb *weights*, not embeddings.

For each selected weight tensor w, with g = d L_clean / d w of *this* batch::

    r    = adv_lr * ||w|| * g / ||g||                  (per tensor; 0 if g == 0)
    w'   = clamp(w + r, w - adv_eps * |w|, w + adv_eps * |w|)   (elementwise, relative)
    grad += grad L(x; w) + adv_weight * grad L(x; w')  ;  then w is restored bit-for-bit

Which weights: by default the ``.weight`` of every ``nn.Linear`` module
(attention, feed-forward and the classifier head; as in the paper, which perturbs
every layer). Embeddings, LayerNorm and biases are left alone. Choose with
``module_types=`` or exact ``params=`` names; names are never matched by substring
(the Kaggle ``adv_param="weight"`` silently caught LayerNorm and embeddings).

This batch's clean gradient is read from autograd hooks on the selected tensors,
so gradients accumulated from earlier micro-batches neither leak into the
direction nor get copied; ``.grad`` is only ever added to. ``start_step`` counts
``backward()`` calls (micro-batches); before it, ``backward()`` is a plain
backward. (How this differs from the common Kaggle class: docs/methods.md.)

Arguments (defaults): ``adv_lr=1.0``, ``adv_eps=0.01`` (with ``adv_lr=1`` the clamp
binds, so ``adv_eps`` is the real size), ``params=None``,
``module_types=(nn.Linear,)``, ``exclude=()``, ``start_step=0``, ``adv_weight=1.0``.

Cost: 2 forward + 2 backward passes; extra memory: one copy of the selected
weights plus their clean gradient (freed tensor by tensor).

Example::

    adv = AWP(model, adv_lr=1.0, adv_eps=0.01, start_step=1000)
    loss = adv.backward(lambda: model(**batch).loss)
    optimizer.step(); optimizer.zero_grad()
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from .. import _perturb as P
from .. import _validate as V
from .._base import Adversary
from .._passes import Step
from ..outputs import as_loss


class AWP(Adversary):
    """Adversarial weight perturbation with the ``backward(closure)`` contract.

    Args:
        model: the model (DDP / ``torch.compile`` wrappers are fine).
        adv_lr: step relative to each tensor's norm (``||r|| = adv_lr * ||w||`` before the
            clamp). Default 1.0.
        adv_eps: elementwise bound relative to ``|w|``. Default 0.01.
        params: exact names (as in ``model.named_parameters()`` of the unwrapped model)
            or the parameters themselves. Overrides ``module_types``.
        module_types: perturb the ``.weight`` of every module of these types. Default
            ``(nn.Linear,)``.
        exclude: exact parameter names to leave out (e.g. the classifier's weight).
        start_step: number of ``backward()`` calls that are plain backwards before AWP
            starts. Default 0.
        adv_weight: weight of the adversarial loss's gradient. Default 1.0.
    """

    skip_what = "clean gradient of the perturbed weights"

    def __init__(self, model: nn.Module, adv_lr: float = 1.0, adv_eps: float = 0.01, *,
                 params: Optional[Sequence[Union[str, nn.Parameter]]] = None,
                 module_types: Union[Type[nn.Module], Tuple[Type[nn.Module], ...]] = (nn.Linear,),
                 exclude: Iterable[str] = (), start_step: int = 0, adv_weight: float = 1.0):
        super().__init__(model)
        self.adv_lr = V.positive("adv_lr", adv_lr)
        self.adv_eps = V.positive("adv_eps", adv_eps)
        self.adv_weight = V.positive("adv_weight", adv_weight, allow_zero=True)
        self.start_step = V.integer("start_step", start_step, minimum=0)
        self.params = _select(model, params, module_types, exclude)
        self.calls = 0

    def _step(self, step: Step) -> torch.Tensor:
        """Clean pass, weight perturbation, adversarial pass; the weights are restored by
        the template. Returns the clean loss."""
        self.calls += 1
        if self.calls <= self.start_step:
            loss = as_loss(step.closure())
            step.backward(loss)
            return loss.detach()
        grads = self._clean_pass(step)
        with step.skippable():
            step.check_finite(grads)
            self._perturb_weights(step, grads)
            del grads
            adv_loss = as_loss(step.closure())
            step.backward(adv_loss, self.adv_weight)
            step.adv_loss = adv_loss.detach()
        return step.clean_loss

    def _clean_pass(self, step: Step) -> List[Optional[torch.Tensor]]:
        """The clean forward/backward; returns this batch's gradient of each selected tensor,
        caught on its way into ``.grad`` (gradients accumulated from earlier micro-batches
        are not involved)."""
        catcher = _GradCatcher(self.params.values())
        try:
            with step.local():
                loss = as_loss(step.closure())
                step.backward(loss)
        finally:
            catcher.remove()
        step.clean_loss = loss.detach()
        step.snapshot_buffers()
        return catcher.grads()

    def _perturb_weights(self, step: Step, grads: List[Optional[torch.Tensor]]) -> None:
        """``w' = clamp(w + adv_lr * ||w|| * g / ||g||, w -+ adv_eps * |w|)`` in place."""
        with torch.no_grad():
            for p, g in zip(self.params.values(), grads):
                if g is None:
                    continue
                wf, gf = p.data.float(), g.float()
                gn = gf.norm()
                if not gn > P._TINY:  # no direction: leave the tensor alone (never g/0)
                    continue
                step.save_weight(p)
                # never in place on g: it may be the very tensor that became p.grad
                r = gf * (self.adv_lr * wf.norm() / gn)
                bound = wf.abs().mul_(self.adv_eps)
                p.data.copy_(torch.minimum(torch.maximum(wf + r, wf - bound), wf + bound)
                             .to(p.dtype))

    def __repr__(self) -> str:
        return (f"AWP(adv_lr={self.adv_lr}, adv_eps={self.adv_eps}, params={len(self.params)} "
                f"tensors, start_step={self.start_step})")


class _GradCatcher:
    """Tensor hooks that sum the gradient flowing into each parameter during one backward."""

    def __init__(self, params: Iterable[nn.Parameter]):
        self.params = list(params)
        self.caught: Dict[int, torch.Tensor] = {}
        self.handles = [p.register_hook(self._catch(p)) for p in self.params]

    def _catch(self, p: nn.Parameter):
        def hook(g: torch.Tensor) -> torch.Tensor:
            key = id(p)
            self.caught[key] = g.detach() if key not in self.caught else self.caught[key] + g.detach()
            return g
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def grads(self) -> List[Optional[torch.Tensor]]:
        return [self.caught.pop(id(p), None) for p in self.params]


def _select(model, params, module_types, exclude) -> Dict[str, nn.Parameter]:
    inner = P.unwrap(model)
    named = dict(inner.named_parameters())
    if isinstance(params, str):
        raise ValueError(
            f"params={params!r}: give a list of exact parameter names, not a substring. "
            f"To mimic Kaggle's adv_param={params!r}: "
            f"params=[n for n, _ in model.named_parameters() if {params!r} in n]"
        )
    if params is not None:
        chosen = {}
        for p in params:
            if isinstance(p, nn.Parameter):
                name = next((n for n, q in named.items() if q is p), None)
                if name is None:
                    raise ValueError("params contains a parameter that is not in this model")
                chosen[name] = p
            elif p in named:
                chosen[p] = named[p]
            else:
                close = [n for n in named if n.endswith(str(p)) or str(p) in n][:5]
                raise ValueError(
                    f"params: {p!r} is not a parameter name of this model (exact names only"
                    f"{'; did you mean one of ' + ', '.join(close) if close else ''})."
                )
    else:
        types = module_types if isinstance(module_types, tuple) else (module_types,)
        if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
            raise ValueError("module_types must be an nn.Module subclass or a tuple of them, "
                             "e.g. (nn.Linear,)")
        chosen = {}
        for mname, m in inner.named_modules():
            w = getattr(m, "weight", None)
            if isinstance(m, types) and isinstance(w, nn.Parameter):
                chosen[f"{mname}.weight" if mname else "weight"] = w
    exclude = list(exclude) if not isinstance(exclude, str) else [exclude]
    for n in exclude:
        if n not in chosen:
            raise ValueError(f"exclude: {n!r} is not among the selected parameters "
                             f"(exact names only): {', '.join(list(chosen)[:8])}...")
        del chosen[n]
    chosen = {n: p for n, p in chosen.items() if p.requires_grad}
    if not chosen:
        raise ValueError("AWP selected no trainable parameters; pass params=[exact names] "
                         "or module_types=(...)")
    # tied weights appear once
    seen, unique = set(), {}
    for n, p in chosen.items():
        if id(p) not in seen:
            seen.add(id(p))
            unique[n] = p
    return unique
