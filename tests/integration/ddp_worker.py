"""Worker for test_ddp.py, launched by torchrun with 2 CPU (gloo) processes.

Trains a tiny model for a few steps with DDP, each rank on its half of a fixed
batch, and writes the final weights and the all-reduce count per step.
"""
import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tinymodels import MeanPoolClassifier, StackClassifier, batch  # noqa: E402

from advnlp import FGM, PGD, YOPO  # noqa: E402

STEPS = 3


def make(method, model):
    if method == "fgm":
        return FGM(model, epsilon=0.5)
    if method == "pgd":
        return PGD(model, epsilon=0.5, alpha=0.2, steps=3)
    if method == "yopo":
        return YOPO(model, epsilon=0.5, alpha=0.2, steps=3, layers=1)
    return None


def model_for(method):
    """YOPO needs a stack of layers; "none-stack" is its plain baseline."""
    return StackClassifier() if method in ("yopo", "none-stack") else MeanPoolClassifier()


def main(out_dir, method):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = model_for(method)
    ddp = DDP(model)
    calls = []

    def counting_hook(state, bucket):
        calls.append(1)
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    ce = nn.CrossEntropyLoss()
    adv = make(method, ddp)
    per_step = []
    for step in range(STEPS):
        ids, y = batch(n=8, seed=10 + step)
        half = ids.shape[0] // world
        ids, y = ids[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
        before = len(calls)
        closure = lambda: ce(ddp(ids), y)
        if adv is None:
            closure().backward()
        else:
            adv.backward(closure)
        opt.step()
        opt.zero_grad()
        per_step.append(len(calls) - before)
    if rank == 0:
        torch.save({k: v.detach() for k, v in model.state_dict().items()},
                   os.path.join(out_dir, f"{method}.pt"))
        with open(os.path.join(out_dir, f"{method}.json"), "w") as f:
            json.dump({"allreduce_per_step": per_step}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: under load, gloo's threads met C++ static destructors
    # there once ("terminate called without an active exception") after all work was done.
    os._exit(0)
