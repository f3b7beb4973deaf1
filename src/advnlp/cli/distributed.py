"""Where a run executes: the device, torchrun's process group, and every seed a run derives.

Under ``torchrun`` (``WORLD_SIZE`` > 1, or ``--distributed``) every process runs the
same command: gloo on CPU, nccl on CUDA with one GPU per local rank; rank 0 alone
writes files. :func:`derive_seed` is the one place where a run's ``--seed`` becomes
the seeds of its parts (data order, augmentation samples, per-rank dropout), so
that each is reproducible on its own and none repeats another.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
import torch.distributed as dist

from .errors import InputError

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistInfo:
    """This process's place in a torchrun job (see :func:`setup_distributed`)."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def device_of(name: str) -> torch.device:
    """``--device`` as a torch device (``auto``: CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available here")
    return device


def distributed_requested(flag: bool) -> bool:
    """``--distributed``, or launched by torchrun with more than one process."""
    return flag or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def setup_distributed(device: str) -> DistInfo:
    """Join the torchrun job: gloo on CPU, nccl on CUDA (one GPU per local rank)."""
    missing = [v for v in TORCHRUN_ENV if v not in os.environ]
    if missing:
        raise InputError(f"--distributed needs a torchrun launch ({missing[0]} is not set): "
                         "torchrun --nproc_per_node N -m advnlp.cli train ...")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = device_of(device)
    if dev.type == "cuda":
        if dev.index is not None:
            raise InputError(f"--device {device}: with several processes each rank takes "
                             "cuda:LOCAL_RANK; pass --device cuda or auto")
        if local >= torch.cuda.device_count():
            raise InputError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible)")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise InputError(f"--device {device}: distributed training runs on cpu or cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def shard(model: torch.nn.Module) -> None:
    """FSDP2 (``torch.distributed.fsdp.fully_shard``): every block the model names as not to
    be split (Hugging Face's ``_no_split_modules``: a decoder layer) is one unit, the rest (the
    embeddings, the final norm, the head) the root's; the parameters stay where they are in
    the module tree, so names and state-dict keys are the unsharded model's."""
    from torch.distributed.fsdp import fully_shard

    names = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise InputError(f"--fsdp: {type(model).__name__} names no block to shard "
                         "(_no_split_modules); train it without --fsdp (torchrun alone is DDP)")
    for block in blocks:
        fully_shard(block)
    fully_shard(model)


def _state_options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_state(model: torch.nn.Module, optimizer=None) -> tuple:
    """A sharded model's (and optimizer's) whole state on rank 0's CPU, keyed as the unsharded
    model's (``({}, {})`` on the other ranks). Every rank calls it: it all-gathers."""
    from torch.distributed.checkpoint import state_dict as sd

    options = _state_options(cpu_offload=True)
    weights = sd.get_model_state_dict(model, options=options)
    optim = None if optimizer is None else sd.get_optimizer_state_dict(model, optimizer,
                                                                       options=options)
    return weights, optim


def load_full_state(model: torch.nn.Module, weights: dict, optimizer=None, optim=None) -> None:
    """The inverse of :func:`full_state` on every rank (each holding the whole state): each
    keeps its own shards."""
    from torch.distributed.checkpoint import state_dict as sd

    sd.set_model_state_dict(model, weights, options=_state_options())
    if optimizer is not None:
        sd.set_optimizer_state_dict(model, optimizer, optim, options=_state_options())


def on_rank0(info: Optional[DistInfo], fn: Callable[[], None]) -> None:
    """Run ``fn`` on rank 0 only; an InputError there stops every rank (no hang)."""
    if info is None:
        return fn()
    msg: List[Optional[str]] = [None]
    if info.rank == 0:
        try:
            fn()
        except InputError as e:
            msg = [str(e)]
    dist.broadcast_object_list(msg, src=0)
    if msg[0] is not None:
        raise InputError(msg[0])


# Each random stream of a run: (offset, its counters). "epoch-order" and "augment-sample"
# keep the values of earlier releases, so a run with the same --seed sees the same
# batches and augmentation samples as before.
STREAMS = {
    "epoch-order": (0, ("epoch",)),
    "augment-sample": (500_009, ("epoch",)),
    "augment-attack": (700_001, ("epoch",)),
    "dropout": (900_001, ("rank",)),
    "dropout-resumed": (950_001, ("rank", "epoch", "step")),
    "online-attack": (300_007, ("rank", "epoch")),
}
_SEED_STRIDE, _COUNTER_STRIDE = 1_000_003, 10_007


def derive_seed(seed: int, purpose: str, *counters: int) -> int:
    """The seed of one random stream of a run (a key of ``STREAMS``, with its counters):
    ``seed * 1_000_003 + offset + c0 + 10_007 * c1 + 10_007**2 * c2``. Equal inputs give
    equal seeds."""
    offset, names = STREAMS[purpose]
    if len(counters) != len(names):
        raise TypeError(f"derive_seed({purpose!r}) takes {', '.join(names)}")
    mixed = sum(int(c) * _COUNTER_STRIDE ** k for k, c in enumerate(counters))
    return int(seed) * _SEED_STRIDE + offset + mixed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
