"""One rank of tests/test_fsdp.py: a tiny Llama under FSDP2 (fully_shard per layer and at
the root), 2 SGD steps of each method on this rank's half of the batch; rank 0 writes the
full weights and the number of all-gathers and reduce-scatters of each method's steps."""
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
import torch.distributed.fsdp._fully_shard._fsdp_param_group as group

sys.path.insert(0, os.path.dirname(__file__))
from fsdp_setup import METHODS, batch, build, steps  # noqa: E402

counts = {"all_gather": 0, "reduce_scatter": 0}
all_gather, reduce = group.foreach_all_gather, group.foreach_reduce


def counting(fn, key):
    def run(*args, **kwargs):
        counts[key] += 1
        return fn(*args, **kwargs)
    return run


group.foreach_all_gather = counting(all_gather, "all_gather")
group.foreach_reduce = counting(reduce, "reduce_scatter")


def main(out_dir):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    b = batch()
    mine = {k: v[rank::world] for k, v in b.items()}
    result = {}
    for name in METHODS:
        model = build()
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        for k in counts:
            counts[k] = 0
        steps(model, name, mine)
        weights = {n: p.full_tensor().detach() for n, p in model.named_parameters()}
        result[name] = dict(counts)
        if rank == 0:
            torch.save(weights, os.path.join(out_dir, f"{name}.pt"))
    if rank == 0:
        with open(os.path.join(out_dir, "counts.json"), "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
    # Skip interpreter teardown, where gloo's threads can meet C++ static destructors
    # ("terminate called without an active exception", seen under CPU contention): the
    # command line's main does the same for its torchrun ranks.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
