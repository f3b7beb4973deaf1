"""FGSM / PGD on the input-embedding output: robust accuracy as a function of ε.

The perturbation lives where advnlp's training methods put theirs: added to
the output of the input embedding by the same :class:`advnlp._perturb.EmbeddingHook`
(one ball per example, padding positions never perturbed), with the same
float32 normalize / project / random-start helpers. Only the perturbation gets
gradients (``torch.autograd.grad``): parameters, their ``.grad`` and buffers
are left bit-identical, and the model runs in eval mode (its train/eval flag
is restored afterwards).

Each step climbs the loss (cross-entropy; BCE-with-logits for multi-label) by
``alpha * ε`` along the normalised gradient (L2: g/||g||; L∞: sign g) and
projects back onto the ε ball. ``steps=1, alpha=1`` (the default for one step)
is FGSM. An example counts as robust at ε only if it is classified correctly
at every point the attack evaluated, for this ε *and every smaller ε* (a
point in a smaller ball is in the bigger one), so the curve is non-increasing
by construction. Multi-label: correct = exact match of the logits > 0
predictions, so an attack succeeds when any label flips.

    from advnlp.attacks import embedding_attack
    out = embedding_attack(model, lambda b: model(**b).logits, [(batch, labels)], [0.1, 0.5, 1.0])
    print(out["clean_accuracy"], out["robust_accuracy"])
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .. import _perturb as P
from .. import _validate as V


def _correct(logits: torch.Tensor, y: torch.Tensor, multi_label: bool) -> torch.Tensor:
    if multi_label:
        return ((logits > 0) == (y > 0.5)).all(-1)
    return logits.argmax(-1) == y


def _loss(logits: torch.Tensor, y: torch.Tensor, multi_label: bool) -> torch.Tensor:
    # Summed, not averaged: each example's gradient must not shrink with batch size
    # (irrelevant after normalisation, but it keeps tiny gradients away from _TINY).
    if multi_label:
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), y.float(),
                                                              reduction="sum")
    return nn.functional.cross_entropy(logits.float(), y, reduction="sum")


def _check_epsilons(epsilons) -> List[float]:
    if isinstance(epsilons, (int, float)):
        epsilons = [epsilons]
    eps = list(epsilons)
    if not eps:
        raise ValueError("epsilons is empty: give at least one radius")
    for e in eps:
        try:
            V.positive("epsilon", e)
        except (TypeError, ValueError):
            raise ValueError(f"every epsilon must be a finite number > 0, got {e!r}") from None
    return sorted({float(e) for e in eps})


def _check_settings(epsilons, norm: str, steps: int, alpha: Optional[float]):
    """The radii (sorted), steps and step size (a multiple of epsilon; default 1 for one
    step, else 2.5 / steps) of an attack, checked."""
    eps_list = _check_epsilons(epsilons)
    V.choice("norm", norm, P.NORMS)
    steps = V.integer("steps", steps)
    if alpha is None:
        alpha = 1.0 if steps == 1 else 2.5 / steps
    return eps_list, steps, V.positive("alpha (a multiple of epsilon)", alpha)


def embedding_attack(model: nn.Module, model_fn: Callable[[object], torch.Tensor],
                     batches: Iterable[Tuple[object, torch.Tensor]],
                     epsilons: Union[float, Sequence[float]], *, norm: str = "l2",
                     steps: int = 10, alpha: Optional[float] = None, random_start: bool = False,
                     multi_label: bool = False, seed: int = 0,
                     embedding: Union[None, str, nn.Module] = None) -> dict:
    """Robust accuracy under an embedding-space FGSM/PGD attack, for each ε.

    Args:
        model: the module whose input embedding is attacked (found as in training:
            ``get_input_embeddings()``, else the single ``nn.Embedding``, else ``embedding=``).
        model_fn: ``inputs -> logits [batch, classes]``; must run ``model`` on the
            same inputs each call (e.g. ``lambda b: model(**b).logits``).
        batches: ``(inputs, labels)`` pairs; labels are class indices, or 0/1
            float vectors when ``multi_label``. Iterated once.
        epsilons: radii (absolute, in embedding units; L2 per example or L∞ per coordinate).
        norm: ``"l2"`` (default) or ``"linf"``.
        steps: ascent steps (1 = FGSM). Default 10.
        alpha: step size *as a multiple of ε*; default 1.0 for one step,
            ``2.5 / steps`` otherwise (Madry et al.).
        random_start: start from a uniform point in the ball (seeded by ``seed``).

    Returns a JSON-ready dict: ``clean_accuracy``, ``robust_accuracy`` and
    ``success_rate`` (over originally-correct examples) as ``{ε: value}``,
    ``curve`` (a list of ``{"epsilon", "accuracy", "success_rate"}``, ε = 0 first),
    ``examples``, ``seconds_per_example`` and the settings.
    """
    eps_list, steps, alpha = _check_settings(epsilons, norm, steps, alpha)
    hook = P.EmbeddingHook(P.embedding_modules(model, P.find_embedding(model, embedding)[1]))
    gen = torch.Generator().manual_seed(seed)
    was_training = P.unwrap(model).training
    model.eval()
    n = clean = 0
    robust = {e: 0 for e in eps_list}
    t0 = time.perf_counter()
    try:
        for inputs, y in batches:
            c, r = _attack_batch(hook, model_fn, inputs, y, eps_list, norm, steps, alpha,
                                 random_start, multi_label, gen)
            n += len(c)
            clean += int(c.sum())
            for e in eps_list:
                robust[e] += int(r[e].sum())
    finally:
        hook.remove()
        model.train(was_training)
    if n == 0:
        raise ValueError("batches is empty: nothing to attack")
    acc = {e: robust[e] / n for e in eps_list}
    rate = {e: (clean - robust[e]) / clean if clean else 0.0 for e in eps_list}
    curve = [{"epsilon": 0.0, "accuracy": clean / n, "success_rate": 0.0}] + [
        {"epsilon": e, "accuracy": acc[e], "success_rate": rate[e]} for e in eps_list]
    return {"attack": "embedding", "method": "fgsm" if steps == 1 else "pgd", "norm": norm,
            "steps": steps, "alpha": alpha, "random_start": bool(random_start), "seed": seed,
            "space": "input-embedding output, one ball per example, padding untouched",
            "examples": n, "clean_accuracy": clean / n, "robust_accuracy": acc,
            "success_rate": rate, "curve": curve,
            "seconds_per_example": (time.perf_counter() - t0) / n}


def perturbed_outputs(model: nn.Module, model_fn: Callable[[object], object],
                      loss_fn: Callable[[object], torch.Tensor], inputs,
                      epsilons: Union[float, Sequence[float]], *, norm: str = "l2",
                      steps: int = 10, alpha: Optional[float] = None, random_start: bool = False,
                      seed: int = 0, embedding: Union[None, str, nn.Module] = None,
                      mask: Optional[torch.Tensor] = None, relative: bool = False) -> dict:
    """The model's outputs under an embedding-space FGSM/PGD attack on any loss.

    :func:`embedding_attack` scores per-example accuracy; tasks scored otherwise (entity F1
    of a tagger, a language model's loss) take the outputs and score them themselves. Same
    space, hook, step and projection as :func:`embedding_attack` (one ball per example,
    padding untouched, eval mode, parameters and buffers untouched); the attack climbs
    ``loss_fn(model_fn(inputs))``, which should *sum* over examples so that no example's
    gradient shrinks with the batch.

    ``mask`` (batch, length) limits the perturbation to some real positions (a prompt, not
    its completion), as ``mask=`` does in training. ``relative=True`` measures ε in units of
    each example's own clean embedding over those positions (its L2 norm; RMS coordinate for
    L∞), as the training methods' ``relative=True``.

    Returns ``{0.0: clean output, ε: output at the attack's last point for ε, ...}``, each
    computed without a graph. Unlike :func:`embedding_attack`, nothing is the worst over the
    points tried: the score of the last point is the caller's.
    """
    eps_list, steps, alpha = _check_settings(epsilons, norm, steps, alpha)
    hook = P.EmbeddingHook(P.embedding_modules(model, P.find_embedding(model, embedding)[1]))
    hook.positions = mask
    hook.relative = (norm, "example") if relative else None
    gen = torch.Generator().manual_seed(seed)
    was_training = P.unwrap(model).training
    model.eval()
    try:
        with hook.running("record"), torch.no_grad():
            out = {0.0: model_fn(inputs)}
        masks, shapes = hook.masks, [d.shape for d in hook.deltas]
        hook.clear()
        if not shapes:
            raise RuntimeError("model_fn never called the input embedding of model")
        for eps in eps_list:
            delta = _start(shapes, masks, eps, norm, random_start, gen)
            for _ in range(steps):
                leaves = [d.detach().requires_grad_(True) for d in delta]
                with hook.running("apply", leaves), torch.enable_grad():
                    loss = loss_fn(model_fn(inputs))
                grads = torch.autograd.grad(loss, leaves, allow_unused=True)
                delta = _ascend(delta, grads, masks, eps, alpha, norm)
            with hook.running("apply", delta), torch.no_grad():
                out[eps] = model_fn(inputs)
    finally:
        hook.remove()
        model.train(was_training)
    return out


def _start(shapes, masks, eps, norm, random_start, gen) -> List[torch.Tensor]:
    if random_start:
        return [P.project(P.random_like(torch.empty(s), eps, norm, "example", gen)
                          .to(m.device) * m, eps, norm, "example") for s, m in zip(shapes, masks)]
    return [torch.zeros(s, device=m.device) for s, m in zip(shapes, masks)]


def _ascend(delta, grads, masks, eps, alpha, norm) -> List[torch.Tensor]:
    """One step of size ``alpha * eps`` along the normalised gradient, back onto the ball."""
    return [P.project(d.detach() + alpha * eps * P.normalize(
                (torch.zeros_like(d) if g is None else g) * m, norm, "example"),
                eps, norm, "example") * m
            for d, g, m in zip(delta, grads, masks)]


def _attack_batch(hook: P.EmbeddingHook, model_fn, inputs, y, eps_list, norm, steps, alpha,
                  random_start, multi_label, gen):
    # A recording pass with no graph: the clean prediction, and the shape and
    # padding mask of every embedding call the forward makes.
    with hook.running("record"), torch.no_grad():
        logits = model_fn(inputs)
    masks, shapes = hook.masks, [d.shape for d in hook.deltas]
    hook.clear()
    if not shapes:
        raise RuntimeError("model_fn never called the input embedding of model")
    y = y.to(logits.device)
    ok = _correct(logits, y, multi_label)
    still = ok.clone()  # robust at every point tried so far, all smaller radii included
    out = {}
    for eps in eps_list:
        delta = _start(shapes, masks, eps, norm, random_start, gen)
        for _ in range(steps):
            leaves = [d.detach().requires_grad_(True) for d in delta]
            with hook.running("apply", leaves), torch.enable_grad():
                logits = model_fn(inputs)
                loss = _loss(logits, y, multi_label)
            still &= _correct(logits.detach(), y, multi_label)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            delta = _ascend(delta, grads, masks, eps, alpha, norm)
        with hook.running("apply", delta), torch.no_grad():
            logits = model_fn(inputs)
        still &= _correct(logits, y, multi_label)
        out[eps] = still.clone()
    hook.clear()
    return ok, out
