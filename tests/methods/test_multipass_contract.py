"""The backward(closure) contract for FreeLB, FreeAT, ATTA, SMART, VAT and AWP: weights and
buffers restored, hook disarmed, restore on errors, pair encoders, DDP wrapper."""
import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from advnlp import ATTA, AWP, SMART, VAT, FreeAT, FreeLB
from tinymodels import (PAD, LSTMClassifier, MeanPoolClassifier, assert_grads_close,
                      assert_state_equal, batch, grads, interrupted_on_call, snapshot)

ce = nn.CrossEntropyLoss()
gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731

# (name, factory, closure kind): "loss" closures return the loss, "output" closures the model
# output, "ids" closures the loss with the batch's example ids (ATTA)
METHODS = [
    ("FreeLB", lambda m: FreeLB(m, adv_steps=3, generator=gen()), "loss"),
    ("FreeAT", lambda m: FreeAT(m), "loss"),
    ("ATTA", lambda m: ATTA(m, epsilon=0.5), "ids"),
    ("AWP", lambda m: AWP(m), "loss"),
    ("SMART", lambda m: SMART(m, radius=0.2, generator=gen()), "output"),
    ("VAT", lambda m: VAT(m, generator=gen()), "output"),
]
IDS = [n for n, _, _ in METHODS]


def run(adv, kind, forward, y):
    if kind == "ids":
        return adv.backward(lambda: ce(forward(), y), ids=list(range(len(y))))
    if kind == "loss":
        return adv.backward(lambda: ce(forward(), y))
    return adv.backward(forward, labels=y)


@pytest.mark.parametrize("name,make,kind", METHODS, ids=IDS)
def test_lstm_batchnorm_buffers_end_as_after_one_plain_forward(name, make, kind):
    torch.manual_seed(0)
    model = LSTMClassifier().train()
    ids, y = batch(pad_tail=0)
    plain = copy.deepcopy(model)
    ce(plain(ids), y).backward()
    # FreeLB's first pass is at its random start: buffers follow that pass, so start at 0 here
    adv = FreeLB(model, init_mag=0.0) if name == "FreeLB" else make(model)
    loss = run(adv, kind, lambda: model(ids), y)
    assert torch.isfinite(loss) and not loss.requires_grad
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, plain.state_dict()[k], atol=0, rtol=0, msg=k)
    # the hook is disarmed afterwards: a plain forward is the unperturbed model
    model.eval()
    torch.testing.assert_close(model(ids), copy.deepcopy(model)(ids), atol=0, rtol=0)


@pytest.mark.parametrize("name,make,kind", METHODS, ids=IDS)
def test_restored_when_the_closure_raises_midway(name, make, kind):
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    before = snapshot(model)
    adv = make(model)
    one_pass = name in ("FreeAT", "ATTA")
    if one_pass:  # one pass per call: fail on the second call (FreeAT's replay)
        run(adv, kind, lambda: model(ids), y)
    forward = interrupted_on_call(1 if one_pass else 2, lambda: model(ids))
    with pytest.raises(KeyboardInterrupt):
        run(adv, kind, forward, y)
    assert_state_equal(model, before)
    torch.testing.assert_close(model(ids), copy.deepcopy(model)(ids), atol=0, rtol=0)


@pytest.mark.parametrize("name,make,kind", [m for m in METHODS if m[0] != "AWP"],
                         ids=[i for i in IDS if i != "AWP"])
def test_embedding_called_twice_in_one_closure(name, make, kind):
    """Pair encoders: each embedding call gets its own perturbation, padding excluded."""
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    (a, _), (b, _) = batch(seed=1), batch(seed=2, length=5)
    y = torch.tensor([0, 1, 2, 0])
    adv = make(model)
    seen = []
    model.proj.register_forward_pre_hook(lambda m, x: seen.append(x[0].detach()))
    for _ in range(2 if name in ("FreeAT", "ATTA") else 1):  # their first call adds 0
        run(adv, kind, lambda: model(a) + model(b), y)
    clean_a, clean_b = model.emb(a).detach(), model.emb(b).detach()
    pert_a, pert_b = seen[-2], seen[-1]
    for pert, clean, ids in ((pert_a, clean_a, a), (pert_b, clean_b, b)):
        d = pert - clean
        assert d.abs().max() > 0 and d[ids == PAD].abs().max() == 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_single_process_ddp_gradients_equal_the_unwrapped_model(tmp_path):
    """The no_sync / one-backward choices must not trip DDP's reducer."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        ids, y = batch()
        for name, make, kind in METHODS:
            torch.manual_seed(0)
            base = MeanPoolClassifier()
            plain, ddp = copy.deepcopy(base), nn.parallel.DistributedDataParallel(copy.deepcopy(base))
            for m in (plain, ddp):
                adv = make(m)
                for _ in range(2):
                    run(adv, kind, lambda: m(ids), y)
            got = {k[len("module."):]: v for k, v in grads(ddp).items()}
            assert_grads_close(grads(plain), got, atol=1e-6)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name,make,kind", [m for m in METHODS if m[0] != "AWP"],
                         ids=[n for n in IDS if n != "AWP"])
def test_one_forward_hook_on_the_embedding_in_every_pass(name, make, kind):
    """Random starts and carried perturbations ride on advnlp's one hook: no hook is added
    and removed per pass (each would be a new graph for torch.compile)."""
    model = MeanPoolClassifier()
    ids, y = batch()
    adv = make(model)
    seen = []

    def forward():
        seen.append(len(model.emb._forward_hooks))
        return model(ids)

    run(adv, kind, forward, y)
    assert seen and set(seen) == {1}
    adv.remove()
    assert len(model.emb._forward_hooks) == 0
