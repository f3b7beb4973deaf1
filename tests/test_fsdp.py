"""FSDP2 (torch.distributed.fsdp.fully_shard), 2 gloo processes on CPU: FGM and PGD train
the weights of one process on the whole batch; the hook finds the embedding after sharding;
every pass all-gathers what a plain pass does, and a step reduce-scatters once, as plain
training (the passes before the last run with gradient sync off)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fsdp_setup import METHODS, PASSES, batch, build, steps

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    worker = os.path.join(os.path.dirname(__file__), "fsdp_worker.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", worker, str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    with open(out / "counts.json") as f:
        counts = json.load(f)
    return out, counts


@pytest.mark.parametrize("method", METHODS)
def test_two_sharded_ranks_train_the_weights_of_one_process(sharded, method):
    out, _ = sharded
    got = torch.load(out / f"{method}.pt")
    want = dict(steps(build(), method, batch()).named_parameters())
    init = dict(build().named_parameters())
    for k, v in want.items():
        torch.testing.assert_close(got[k], v.detach(), atol=1e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")
    assert any(not torch.equal(init[k], want[k]) for k in want)
    if method != "none":  # the method changed the training: the comparison has teeth
        plain = dict(steps(build(), "none", batch()).named_parameters())
        assert any((plain[k] - want[k]).abs().max() > 1e-5 for k in want)


def test_collectives_per_pass_and_per_step_are_plain_trainings(sharded):
    _, counts = sharded
    plain = counts["none"]
    assert plain["all_gather"] > 0 and plain["reduce_scatter"] > 0
    for method in ("fgm", "pgd"):
        assert counts[method]["all_gather"] == PASSES[method] * plain["all_gather"], method
        assert counts[method]["reduce_scatter"] == plain["reduce_scatter"], method
