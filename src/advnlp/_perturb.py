"""Perturbation plumbing shared by every method: where the embedding is, how a
perturbation reaches it, and the norm / projection arithmetic.

Nothing in here knows about a particular method. Methods work on *lists* of
tensors (one per embedding call in the closure, or one for the weight rows) and
use :func:`normalize`, :func:`project` and :func:`random_like` on them.
"""
from __future__ import annotations

import contextlib
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

NORMS = ("l2", "linf")
SCOPES = ("example", "token", "batch")
TARGETS = ("output", "weight")

# Smallest norm treated as non-zero; below it the direction is undefined and the
# perturbation is zero (never g / 0 = inf, never 0 * inf = nan).
_TINY = 1e-12


# --------------------------------------------------------------------------
# Finding the embedding
# --------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(
            model, (nn.parallel.DistributedDataParallel, nn.DataParallel)
        ):
            model = model.module
        else:
            return model


def _embedding_candidates(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]


def _describe(cands: Sequence[Tuple[str, nn.Module]]) -> str:
    if not cands:
        return "(none)"
    return ", ".join(
        f"{n or '<root>'} ({m.num_embeddings}x{m.embedding_dim})" for n, m in cands
    )


def _name_of(model: nn.Module, module: nn.Module) -> str:
    for n, m in model.named_modules():
        if m is module:
            return n
    return "<embedding>"


def find_embedding(
    model: nn.Module, embedding: Union[None, str, nn.Module] = None
) -> Tuple[str, nn.Module]:
    """Return ``(qualified_name, module)`` of the input embedding.

    Order: the explicit ``embedding`` argument (a module or a dotted module
    name), then ``model.get_input_embeddings()``, then the single
    ``nn.Embedding`` in the model. Never a substring match: ambiguity and
    absence are errors that list the candidates.
    """
    model = unwrap(model)
    if isinstance(embedding, nn.Module):
        return _name_of(model, embedding), embedding
    if isinstance(embedding, str):
        try:
            module = model.get_submodule(embedding)
        except AttributeError:
            raise ValueError(
                f"embedding={embedding!r} is not a module of this model. "
                f"Embedding modules found: {_describe(_embedding_candidates(model))}. "
                "Pass the exact dotted name (as in model.named_modules()) or the module itself."
            ) from None
        return embedding, module
    if embedding is not None:
        raise TypeError(
            f"embedding must be None, a module name or an nn.Module, got {type(embedding).__name__}"
        )
    get = getattr(model, "get_input_embeddings", None)
    if callable(get):
        try:
            module = get()
        except (NotImplementedError, AttributeError):
            module = None
        if isinstance(module, nn.Module):
            return _name_of(model, module), module
    cands = _embedding_candidates(model)
    if len(cands) == 1:
        return cands[0]
    if not cands:
        raise ValueError(
            "no input embedding found: the model has no get_input_embeddings() and no "
            "nn.Embedding module. Pass embedding=<module or dotted name> of the layer whose "
            "output is the token representation."
        )
    raise ValueError(
        f"found {len(cands)} nn.Embedding modules and cannot tell which is the input "
        f"(word) embedding: {_describe(cands)}. Pass embedding='<name>' (one of these) "
        "or the module itself."
    )


def resolve_emb_name(model: nn.Module, emb_name: str) -> Tuple[str, nn.Module]:
    """The seed's ``emb_name`` argument, matched by whole dotted components.

    ``'word_embeddings'`` matches ``bert.embeddings.word_embeddings`` (and its
    ``.weight``) but never ``position_embeddings`` or a LayerNorm: the seed's
    substring match silently perturbed whatever contained the text.
    """
    model = unwrap(model)
    name = emb_name[: -len(".weight")] if emb_name.endswith(".weight") else emb_name
    parts = name.split(".")
    cands = _embedding_candidates(model)
    hits = [(n, m) for n, m in cands if n.split(".")[-len(parts):] == parts]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise ValueError(
            f"emb_name={emb_name!r} names no embedding module of this model "
            f"(advnlp matches whole dotted names, never substrings). "
            f"Embedding modules found: {_describe(cands)}. Pass one of these names, or "
            "omit emb_name to use the model's input embedding."
        )
    raise ValueError(
        f"emb_name={emb_name!r} matches several embeddings: {_describe(hits)}; "
        "give a longer dotted name."
    )


def embedding_modules(model: nn.Module, module: nn.Module) -> List[nn.Module]:
    """``module`` plus every other embedding module that shares its weight.

    Encoder-decoder models (BART ``shared``, T5) expose one embedding through
    ``get_input_embeddings()`` that forward never calls: the encoder and decoder
    call their own modules holding the same weight. Hooking only the exposed one
    would silently perturb nothing.
    """
    weight = getattr(module, "weight", None)
    mods = [module]
    if isinstance(weight, nn.Parameter):
        for _, m in unwrap(model).named_modules():
            if m is not module and isinstance(m, nn.Embedding) and m.weight is weight:
                mods.append(m)
    return mods


def tied_parameter_owners(model: nn.Module, param: nn.Parameter) -> List[str]:
    """Names of every module parameter that *is* ``param`` (tied weights)."""
    owners = []
    for mname, module in unwrap(model).named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False, remove_duplicate=False):
            if p is param:
                owners.append(f"{mname}.{pname}" if mname else pname)
    return sorted(set(owners))


# --------------------------------------------------------------------------
# Norm arithmetic (always in float32)
# --------------------------------------------------------------------------
def _reduce_dims(x: torch.Tensor, scope: str) -> Tuple[int, ...]:
    if scope == "batch" or x.dim() <= 1:
        return tuple(range(x.dim()))
    if scope == "token":
        return (x.dim() - 1,)
    # per example: everything but the leading (batch) dimension
    return tuple(range(1, x.dim())) if x.dim() >= 3 else tuple(range(x.dim()))


def norm(x: torch.Tensor, p: str, scope: str) -> torch.Tensor:
    """Norm of ``x`` over ``scope``, keepdim so it broadcasts back (float32)."""
    x = x.float()
    dims = _reduce_dims(x, scope)
    if p == "l2":
        return x.pow(2).sum(dim=dims, keepdim=True).sqrt()
    return x.abs().amax(dim=dims, keepdim=True)


def embedding_scale(out: torch.Tensor, mask: torch.Tensor, p: str, scope: str) -> torch.Tensor:
    """The size of the clean embedding output over ``scope``, real tokens only (float32,
    constant): its L2 norm for ``p="l2"``, its RMS coordinate for ``p="linf"``. A relative
    perturbation is this times a fraction."""
    e = out.detach().float() * mask
    n = norm(e, "l2", scope)
    if p == "l2":
        return n
    dims = _reduce_dims(e, scope)
    coords = mask.expand_as(e).sum(dim=dims, keepdim=True)
    return n / coords.clamp_min(1.0).sqrt()


def normalize(g: torch.Tensor, p: str, scope: str) -> torch.Tensor:
    """Steepest-ascent unit direction for ``g`` under norm ``p`` (float32).

    L2: g / ||g||_2 per scope; a zero gradient gives a zero direction.
    L-inf: sign(g) (the L-inf steepest direction; elementwise, scope-free).
    """
    g = g.float()
    if p == "linf":
        return torch.sign(g)
    n = norm(g, "l2", scope)
    return torch.where(n > _TINY, g / n.clamp_min(_TINY), torch.zeros_like(g))


def project(delta: torch.Tensor, epsilon: float, p: str, scope: str) -> torch.Tensor:
    """Project ``delta`` onto the ``epsilon`` ball of norm ``p`` over ``scope``."""
    if p == "linf":
        return delta.clamp(-epsilon, epsilon)
    n = norm(delta, "l2", scope)
    factor = torch.where(n > epsilon, epsilon / n.clamp_min(_TINY), torch.ones_like(n))
    return delta * factor


def random_like(
    like: torch.Tensor, epsilon: float, p: str, scope: str, generator=None
) -> torch.Tensor:
    """A random start inside the ``epsilon`` ball (float32).

    L-inf: uniform in [-eps, eps] per element (Wong et al. 2020, "fast FGSM").
    L2: a uniformly random direction per scope with radius eps * U(0, 1).
    """
    shape, device = like.shape, like.device
    if p == "linf":
        u = torch.rand(shape, device=device, generator=generator, dtype=torch.float32)
        return (u * 2 - 1) * epsilon
    d = torch.randn(shape, device=device, generator=generator, dtype=torch.float32)
    d = normalize(d, "l2", scope)
    rshape = norm(d, "l2", scope).shape
    r = torch.rand(rshape, device=device, generator=generator, dtype=torch.float32)
    return d * r * epsilon


def length_scaled_uniform(out: torch.Tensor, mask: torch.Tensor, magnitude: float,
                          generator=None) -> torch.Tensor:
    """``U(-1, 1) * magnitude / sqrt(L * d)`` per coordinate (float32), ``L`` the example's
    real positions (``mask`` (..., 1): 1 = real) and ``d`` the hidden size; 0 on padding.
    NEFTune's noise (Jain et al. 2024) and FreeLB's L2 random start, which are one formula."""
    u = (sample("rand", out, generator) * 2 - 1) * mask
    dims = tuple(range(1, mask.dim())) if mask.dim() >= 3 else tuple(range(mask.dim()))
    real = mask.sum(dim=dims, keepdim=True).clamp_min(1.0)  # an all-padding row: no 0-division
    return u * (magnitude / torch.sqrt(real * out.shape[-1]))


def sample(kind: str, like: torch.Tensor, generator=None) -> torch.Tensor:
    """``torch.rand`` (``kind="rand"``) or ``torch.randn`` shaped like ``like`` (float32, on
    its device). A generator on another device (a CPU generator, a CUDA model) draws on
    its own device, so a seeded CPU generator gives the same numbers whatever the model's
    device."""
    fn = torch.rand if kind == "rand" else torch.randn
    device = like.device if generator is None else generator.device
    return fn(like.shape, device=device, dtype=torch.float32, generator=generator).to(like.device)


def all_finite(tensors: Sequence[Optional[torch.Tensor]]) -> bool:
    """True when no tensor holds NaN/inf: one max-abs reduction per tensor (NaN and inf
    propagate, finite values cannot overflow) and a single host sync, instead of an
    elementwise isfinite() mask over the whole batch of activations."""
    peaks = [torch.linalg.vector_norm(t, float("inf")).float() for t in tensors if t is not None]
    return not peaks or bool(torch.isfinite(torch.stack(peaks)).all())


# --------------------------------------------------------------------------
# The hook: one per adversary, registered once
# --------------------------------------------------------------------------
class EmbeddingHook:
    """A forward hook on the embedding module that adds a perturbation to its output.

    Modes:
      * off     - only counts forward calls (used to detect the seed's
                  "no new forward pass after attack()" mistake);
      * record  - each call adds a fresh zero float32 leaf ``delta`` with
                  ``requires_grad`` so a backward pass yields
                  d loss / d embedding-output in ``delta.grad``;
      * apply   - call ``i`` adds ``deltas[i]`` (cast to the output dtype).

    A closure may call the embedding several times (pair encoders, siamese
    models, an encoder and a decoder sharing the weight): perturbations are kept
    per call, in call order. Padding positions
    (``padding_idx``) are masked out of every perturbation.
    """

    def __init__(self, modules: Sequence[nn.Module]):
        self.modules = list(modules)
        self.padding_idx = getattr(self.modules[0], "padding_idx", None)
        self.mode = "off"
        self.calls = 0  # forward calls since construction (any mode)
        self.deltas: List[torch.Tensor] = []  # per call, this closure run
        self.masks: List[torch.Tensor] = []
        self.ids: List[Optional[torch.Tensor]] = []
        self.last_ids: Optional[torch.Tensor] = None
        # record mode: an extra offset(i, ids, out) added to call i (None adds nothing);
        # FreeLB's random start and FreeAT's carried perturbation (see offsetting()).
        self.offset: Optional[Callable] = None
        # (norm, scope) of a relative perturbation: everything the hook adds is multiplied
        # by embedding_scale() of that call's clean output, so a method works in units of
        # each example's own embedding size (and gets gradients in those units).
        self.relative: Optional[Tuple[str, str]] = None
        # backward(..., mask=): which positions (batch, length) may be perturbed, on top of
        # the padding mask; None: every real position.
        self.positions: Optional[torch.Tensor] = None
        self._i = 0
        self._handles = [m.register_forward_hook(self._hook) for m in self.modules]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def mask(self, ids, out: torch.Tensor) -> torch.Tensor:
        """Float32 mask (..., 1) of the positions of one embedding call that may be perturbed:
        the real (non-padding) ones, and of those the ones ``positions`` allows."""
        if (
            self.padding_idx is not None
            and isinstance(ids, torch.Tensor)
            and ids.shape == out.shape[:-1]
        ):
            mask = (ids != self.padding_idx).unsqueeze(-1).to(torch.float32)
        else:
            mask = torch.ones(*out.shape[:-1], 1, device=out.device, dtype=torch.float32)
        if self.positions is not None:
            if tuple(self.positions.shape) != tuple(out.shape[:-1]):
                raise ValueError(
                    f"mask= has shape {tuple(self.positions.shape)}, but the embedding output "
                    f"has {tuple(out.shape[:-1])} positions: give one entry per token of the "
                    "batch (e.g. batch['attention_mask'])")
            mask = mask * self.positions.to(device=out.device, dtype=torch.float32).unsqueeze(-1)
        return mask

    def start(self, mode: str, deltas: Optional[List[torch.Tensor]] = None) -> None:
        self.mode = mode
        self._i = 0
        if mode == "record":
            self.deltas, self.masks, self.ids = [], [], []
        elif mode == "apply":
            self.deltas = list(deltas or [])

    def stop(self) -> None:
        self.mode = "off"
        self._i = 0

    @contextlib.contextmanager
    def running(self, mode: str, deltas: Optional[List[torch.Tensor]] = None):
        """``start(mode, deltas)`` for the forward passes inside, ``stop()`` after, also on errors."""
        self.start(mode, deltas)
        try:
            yield self
        finally:
            self.stop()

    @contextlib.contextmanager
    def offsetting(self, fn: Optional[Callable]):
        """In record mode, call ``i`` also adds ``fn(i, ids, out)`` while inside."""
        self.offset = fn
        try:
            yield self
        finally:
            self.offset = None

    def clear(self) -> None:
        self.stop()
        self.deltas, self.masks, self.ids = [], [], []

    def _hook(self, module, args, out):
        self.calls += 1
        ids = args[0] if args else None
        if torch.is_grad_enabled() and isinstance(ids, torch.Tensor):
            self.last_ids = ids
        if self.mode == "off" or not isinstance(out, torch.Tensor):
            return None
        i, self._i = self._i, self._i + 1
        mask = self.mask(ids, out) if self.mode == "record" or self.relative else None
        scale = None if self.relative is None else embedding_scale(out, mask, *self.relative)
        if self.mode == "record":
            delta = torch.zeros(out.shape, device=out.device, dtype=torch.float32)
            delta.requires_grad_(True)
            self.deltas.append(delta)
            self.masks.append(mask)
            self.ids.append(ids if isinstance(ids, torch.Tensor) else None)
            off = self.offset(i, ids, out) if self.offset is not None else None
            added = delta if off is None else delta + off
            return out + self._scaled(added, scale).to(out.dtype)
        # apply
        if i >= len(self.deltas):
            raise RuntimeError(
                f"the closure called the embedding {i + 1} times, but the clean pass called "
                f"it {len(self.deltas)} times. The closure must run the same forward pass "
                "each time it is called."
            )
        delta = self.deltas[i]
        if delta.shape != out.shape:
            raise RuntimeError(
                f"embedding output shape changed between passes ({tuple(delta.shape)} -> "
                f"{tuple(out.shape)}): the closure must feed the same batch every call."
            )
        return out + self._scaled(delta, scale).to(out.dtype)

    @staticmethod
    def _scaled(t: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
        return t if scale is None else t * scale
