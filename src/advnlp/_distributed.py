"""What a step must know about distributed training: gradient sync off for the passes
before a step's last one (DDP ``no_sync``, FSDP2's sync setting), and the one set-up
advnlp refuses (DeepSpeed ZeRO-3)."""
from __future__ import annotations

import contextlib

from torch import nn

from . import _perturb as P


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


def reject_zero3(model: nn.Module) -> None:
    for p in P.unwrap(model).parameters():
        if hasattr(p, "ds_id") or hasattr(p, "ds_status"):
            raise NotImplementedError(
                "DeepSpeed ZeRO-3 partitions the embedding weight across ranks, so a hook on "
                "its output sees gathered activations but advnlp cannot guarantee correct "
                "restoration; ZeRO-3 is not supported. Use ZeRO-1/2 or DDP."
            )
        break
