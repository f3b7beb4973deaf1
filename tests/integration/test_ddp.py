"""DDP with 2 CPU processes (gloo): same weights as one process on the whole
batch, and exactly as many gradient all-reduces per step as plain training."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from advnlp import FGM, PGD, YOPO
from tinymodels import MeanPoolClassifier, StackClassifier, batch

PLAIN = {"fgm": "none", "pgd": "none", "yopo": "none-stack"}  # the same model, no adversary

WORKER = os.path.join(os.path.dirname(__file__), "ddp_worker.py")


def single_process(method):
    torch.manual_seed(0)
    model = StackClassifier() if method in ("yopo", "none-stack") else MeanPoolClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ce = nn.CrossEntropyLoss()
    adv = {"fgm": lambda: FGM(model, epsilon=0.5),
           "pgd": lambda: PGD(model, epsilon=0.5, alpha=0.2, steps=3),
           "yopo": lambda: YOPO(model, epsilon=0.5, alpha=0.2, steps=3, layers=1),
           "none": lambda: None, "none-stack": lambda: None}[method]()
    for step in range(3):
        ids, y = batch(n=8, seed=10 + step)
        closure = lambda: ce(model(ids), y)
        adv.backward(closure) if adv else closure().backward()
        opt.step()
        opt.zero_grad()
    return model.state_dict()


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    for method in ("none", "fgm", "pgd", "none-stack", "yopo"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", WORKER, str(out), method]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("method", ["fgm", "pgd", "yopo"])
def test_ddp_matches_single_process_on_the_concatenated_batch(ddp_runs, method):
    got = torch.load(ddp_runs / f"{method}.pt", weights_only=True)
    want = single_process(method)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")
    # and the method really changed training (the comparison is not vacuous)
    plain = single_process(PLAIN[method])
    assert not torch.allclose(want["emb.weight"], plain["emb.weight"])


@pytest.mark.parametrize("method", ["fgm", "pgd", "yopo"])
def test_one_allreduce_round_per_step_as_in_plain_training(ddp_runs, method):
    plain = json.loads((ddp_runs / f"{PLAIN[method]}.json").read_text())["allreduce_per_step"]
    got = json.loads((ddp_runs / f"{method}.json").read_text())["allreduce_per_step"]
    assert plain[0] >= 1
    assert got == plain
