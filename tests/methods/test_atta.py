"""ATTA against a hand-run loop over two epochs (one pass per step, the stored perturbation
moved by the gradient that pass computed), its store, and its bad input."""
import copy
import io
import warnings

import pytest
import torch
from torch import nn

from advnlp import ATTA
from tinymodels import PAD, MeanPoolClassifier, assert_grads_close, batch, grads, snapshot

ce = nn.CrossEntropyLoss()


def data():
    """Two batches of 4 (ids 0-3 and 4-7), padded at the tail, and the epoch orders."""
    (a, ya), (b, yb) = batch(seed=1), batch(seed=2, length=5)
    return {0: (a, ya, [0, 1, 2, 3]), 1: (b, yb, [4, 5, 6, 7])}


def hand_epochs(model, batches, order, eps, alpha, lr=0.5, share=1.0):
    """Zheng et al.'s loop written out: each step trains at the example's stored delta (rows
    past ceil(share * B) clean), and stores proj(delta + alpha * g/||g||) for its next visit."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    store, losses = {}, []
    for k in order:
        ids, y, idx = batches[k]
        mask = (ids != PAD).unsqueeze(-1).float()
        d = torch.stack([store.get(i, torch.zeros(ids.shape[1], model.emb.embedding_dim))
                         for i in idx]) * mask
        used = d.clone()
        used[int(-(-share * len(idx) // 1)):] = 0
        leaf = torch.zeros_like(d, requires_grad=True)
        loss = ce(model.encode(model.emb(ids) + used + leaf), y)
        loss.backward()
        losses.append(loss.detach())
        g = leaf.grad * mask
        opt.step()
        opt.zero_grad()
        new = d + alpha * g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
        n = new.flatten(1).norm(dim=1).view(-1, 1, 1)
        new = new * torch.clamp(eps / n, max=1.0) * mask
        for row, i in enumerate(idx):
            store[i] = new[row]
    return losses, store


def run_epochs(adv, model, batches, order, lr=0.5):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for k in order:
        ids, y, idx = batches[k]
        losses.append(adv.backward(lambda: ce(model(ids), y), ids=idx))
        opt.step()
        opt.zero_grad()
    return losses


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_two_epochs_match_the_hand_computation(share):
    """Epoch 1 trains clean and stores alpha * g/||g|| per example; epoch 2 (another order)
    trains at those and stores proj(stored + alpha * g/||g||); weights follow the same path."""
    torch.manual_seed(0)
    model, batches = MeanPoolClassifier(), data()
    order = [0, 1, 1, 0]  # epoch 1: batches 0, 1; epoch 2 shuffled: 1, 0
    ref = copy.deepcopy(model)
    want_losses, want = hand_epochs(ref, batches, order, eps=0.5, alpha=0.3, share=share)
    adv = ATTA(model, epsilon=0.5, alpha=0.3, share=share, store_dtype=torch.float32)
    got = run_epochs(adv, model, batches, order)
    torch.testing.assert_close(torch.stack(got), torch.stack(want_losses))
    assert sorted(adv.store) == list(range(8))
    for i, (d,) in adv.store.items():
        real = int((batches[i // 4][0][i % 4] != PAD).sum())  # cut after the last real token
        assert d.shape == (real, 8)
        torch.testing.assert_close(d, want[i][:real], atol=1e-6, rtol=1e-5)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_first_visit_is_a_plain_step_and_the_store_is_bfloat16_by_default():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    plain = copy.deepcopy(model)
    ce(plain(ids), y).backward()
    before = snapshot(model)
    adv = ATTA(model, epsilon=0.5)
    adv.backward(lambda: ce(model(ids), y), ids=torch.tensor([3, 1, 4, 2]))
    assert_grads_close(grads(model), grads(plain))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(d.dtype == torch.bfloat16 for (d,) in adv.store.values())
    # alpha defaults to epsilon: the first stored step has norm epsilon (bf16-rounded)
    norms = [d.float().norm().item() for (d,) in adv.store.values()]
    assert norms == pytest.approx([0.5] * 4, rel=1e-2)
    assert adv.memory_bytes() == sum(d.numel() * 2 for (d,) in adv.store.values())


def test_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(0)
    model, batches = MeanPoolClassifier(), data()
    twin = copy.deepcopy(model)
    adv = ATTA(model, epsilon=0.5, alpha=0.2)
    run_epochs(adv, model, batches, [0, 1])
    buf = io.BytesIO()
    torch.save(adv.state_dict(), buf)
    buf.seek(0)
    other = ATTA(twin, epsilon=0.5, alpha=0.2)
    twin.load_state_dict(model.state_dict())
    other.load_state_dict(torch.load(buf, weights_only=True))
    run_epochs(adv, model, batches, [1, 0])
    run_epochs(other, twin, batches, [1, 0])
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    for i in adv.store:
        assert torch.equal(adv.store[i][0], other.store[i][0])
    with pytest.raises(ValueError, match="not an ATTA state_dict"):
        other.load_state_dict({"store": {0: torch.zeros(2)}})


def test_stored_perturbation_is_padded_or_truncated_to_the_batch_length():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch(length=7, pad_tail=0)
    adv = ATTA(model, epsilon=0.5, store_dtype=torch.float32)
    adv.backward(lambda: ce(model(ids), y), ids=[0, 1, 2, 3])
    stored = adv.store[0][0].clone()
    seen = []
    model.proj.register_forward_pre_hook(lambda m, x: seen.append(x[0].detach()))
    for length in (4, 9):  # truncated, then zero-padded
        short = torch.randint(1, 40, (4, length))
        adv.backward(lambda: ce(model(short), y), ids=[0, 1, 2, 3])
        n = min(length, stored.shape[0])  # 4 of the 7 stored, then 4 of 9 (the rest 0)
        added = seen[-1] - model.emb(short).detach()
        torch.testing.assert_close(added[0, :n], stored[:n])
        assert added[0, n:].abs().sum() == 0
        stored = adv.store[0][0].clone()
        assert stored.shape == (length, 8)


def test_reset_forgets_and_an_unseen_example_starts_at_zero():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    adv = ATTA(model, epsilon=0.5)
    adv.backward(lambda: ce(model(ids), y), ids=[0, 1, 2, 3])
    adv.reset()
    assert adv.store == {}
    plain = copy.deepcopy(model)
    ce(plain(ids), y).backward()
    model.zero_grad()
    adv.backward(lambda: ce(model(ids), y), ids=[0, 1, 2, 3])
    assert_grads_close(grads(model), grads(plain))


def test_non_finite_gradient_keeps_the_store_and_warns():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    adv = ATTA(model, epsilon=0.5)
    adv.backward(lambda: ce(model(ids), y), ids=[0, 1, 2, 3])
    kept = {i: d[0].clone() for i, d in adv.store.items()}
    with pytest.warns(RuntimeWarning, match="stored perturbations of this batch were kept"):
        adv.backward(lambda: ce(model(ids), y) * float("nan"), ids=[0, 1, 2, 3])
    assert adv.skipped_steps == 1
    assert all(torch.equal(adv.store[i][0], kept[i]) for i in kept)


@pytest.mark.parametrize("ids,error,match", [
    (None, ValueError, "needs ids="),
    ([0, 1, 2], ValueError, "ids= has 3 entries, but the batch has 4"),
    ([0, 1, 1, 2], ValueError, r"ids= repeats \[1\]"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), TypeError, "integer tensor"),
    (["a", "b", "c", "d"], TypeError, "list of ints"),
    ([True, False, 2, 3], TypeError, "list of ints"),
])
def test_bad_ids_are_refused_and_the_model_left_as_it_was(ids, error, match):
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    x, y = batch()
    before = snapshot(model)
    adv = ATTA(model)
    with pytest.raises(error, match=match):
        adv.backward(lambda: ce(model(x), y), ids=ids)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert adv.store == {}


@pytest.mark.parametrize("kw,match", [
    ({"share": 0}, "share must be a fraction"),
    ({"alpha": -1}, "alpha must be finite and > 0"),
    ({"store_dtype": torch.int8}, "store_dtype must be one of"),
    ({"adv_weight": 0.5}, "adv_weight/adv_only do not apply"),
    ({"target": "weight"}, "perturbs the embedding output"),
])
def test_bad_arguments_are_refused_before_the_hook(kw, match):
    model = MeanPoolClassifier()
    with pytest.raises(ValueError, match=match):
        ATTA(model, **kw)
    assert len(model.emb._forward_hooks) == 0


def test_relative_units_store_fractions_of_the_embedding():
    """relative=True: the stored perturbation is in units of each example's embedding norm, so
    its stored norm is alpha after one visit whatever the embedding's scale."""
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    with torch.no_grad():
        model.emb.weight.mul_(100.0)
    ids, y = batch()
    adv = ATTA(model, epsilon=0.03, relative=True, store_dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adv.backward(lambda: ce(model(ids), y), ids=[0, 1, 2, 3])
    for (d,) in adv.store.values():
        assert d.norm().item() == pytest.approx(0.03, rel=1e-4)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_under_ddp_a_step_syncs_gradients_once_as_a_plain_backward(tmp_path):
    """ATTA adds no collective: its one backward is the step's one gradient all-reduce round
    (DDP's buckets), the same as a plain backward's; the gradients are the unwrapped model's."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        base = MeanPoolClassifier()
        ids, y = batch()
        plain, ddp = copy.deepcopy(base), nn.parallel.DistributedDataParallel(copy.deepcopy(base))
        rounds = []

        def counting(state, bucket):
            rounds.append(bucket.index())
            return default_hooks.allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, counting)
        ce(ddp(ids), y).backward()
        per_backward = len(rounds)
        ddp.zero_grad()
        adv_plain, adv_ddp = ATTA(plain, epsilon=0.5), ATTA(ddp, epsilon=0.5)
        for _ in range(2):  # the second visit trains at the stored perturbation
            rounds.clear()
            adv_plain.backward(lambda: ce(plain(ids), y), ids=[0, 1, 2, 3])
            adv_ddp.backward(lambda: ce(ddp(ids), y), ids=[0, 1, 2, 3])
            assert len(rounds) == per_backward
        got = {k[len("module."):]: v for k, v in grads(ddp).items()}
        assert_grads_close(grads(plain), got)
    finally:
        dist.destroy_process_group()
