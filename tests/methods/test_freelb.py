"""FreeLB against a hand-run K-pass loop with the same random start."""
import copy
import warnings

import pytest
import torch
from torch import nn

from advnlp import FreeLB
from tinymodels import (PAD, MeanPoolClassifier, assert_grads_close, assert_state_equal, batch,
                      grads, snapshot, tiny_bert)

ce = nn.CrossEntropyLoss()


def reference_freelb(model, ids, y, K, lr, init_mag, max_norm, seed, norm="l2"):
    """The released code's loop, written out: init, K passes of loss/K, L2 step, projection."""
    m = copy.deepcopy(model)
    mask = (ids != PAD).unsqueeze(-1).float()
    H = m.emb.embedding_dim
    u = torch.rand(*ids.shape, H, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    if norm == "l2":
        lengths = mask.sum(dim=(1, 2))
        delta = u * mask * (init_mag / torch.sqrt(lengths * H)).view(-1, 1, 1)
    else:
        delta = u * mask * init_mag
    losses = []
    for t in range(K):
        delta = delta.detach().requires_grad_()
        loss = ce(m.encode(m.emb(ids) + delta), y)
        losses.append(loss.detach())
        (loss / K).backward()
        if t == K - 1:
            break
        g = delta.grad * mask
        if norm == "l2":
            delta = delta + lr * g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
            if max_norm > 0:
                n = delta.flatten(1).norm(dim=1)
                delta = delta * torch.where(n > max_norm, max_norm / n, torch.ones_like(n)).view(-1, 1, 1)
        else:
            delta = delta + lr * g / g.flatten(1).abs().amax(dim=1).view(-1, 1, 1)
            if max_norm > 0:
                delta = delta.clamp(-max_norm, max_norm)
    return grads(m), losses


@pytest.mark.parametrize("K,max_norm,norm", [(1, 0.0, "l2"), (3, 0.0, "l2"), (3, 0.7, "l2"),
                                             (2, 0.05, "linf")])
def test_grads_are_mean_of_hand_run_perturbed_passes(K, max_norm, norm):
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    lr, init = (0.4, 0.6) if norm == "l2" else (0.03, 0.02)
    expected, losses = reference_freelb(model, ids, y, K, lr, init, max_norm, seed=3, norm=norm)
    before = snapshot(model)
    adv = FreeLB(model, adv_steps=K, adv_lr=lr, init_mag=init, max_norm=max_norm, norm=norm,
                 generator=torch.Generator().manual_seed(3))
    loss = adv.backward(lambda: ce(model(ids), y))
    assert_grads_close(grads(model), expected)
    torch.testing.assert_close(loss, losses[0])  # the first pass's loss, at delta_0
    torch.testing.assert_close(adv.last_adv_loss, losses[-1])
    assert not loss.requires_grad
    assert_state_equal(model, before)


def test_random_start_has_the_papers_magnitude_and_no_padding():
    torch.manual_seed(0)
    model = MeanPoolClassifier(dim=16)
    ids, y = batch(n=6, length=9)
    outs = []
    clean = model.emb(ids).detach()
    model.proj.register_forward_pre_hook(lambda m, a: outs.append(a[0].detach()))  # what the model saw
    FreeLB(model, adv_steps=1, init_mag=0.6,
           generator=torch.Generator().manual_seed(0)).backward(lambda: ce(model(ids), y))
    d = outs[0] - clean
    assert d[ids == PAD].abs().max() == 0
    L = (ids != PAD).sum(1).float()
    bound = 0.6 / torch.sqrt(L * 16)  # per coordinate: |U(-1,1)| * init_mag / sqrt(L*H)
    per_ex_max = d.abs().flatten(1).amax(1)
    assert (per_ex_max <= bound + 1e-6).all() and (per_ex_max > 0.5 * bound).all()


def test_init_mag_zero_with_projection_is_finite_and_pass0_is_clean():
    """The released code's NaN: max_norm / ||0|| = inf, times a 0 mask."""
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    clean = copy.deepcopy(model)
    closs = ce(clean(ids), y)
    expected, _ = reference_freelb(model, ids, y, 2, 0.3, 0.0, 0.5, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = FreeLB(model, adv_steps=2, adv_lr=0.3, init_mag=0.0, max_norm=0.5).backward(
            lambda: ce(model(ids), y))
    torch.testing.assert_close(loss, closs.detach())
    assert_grads_close(grads(model), expected)
    # a closure independent of the embedding: zero delta-gradient, finite everything
    model.zero_grad()
    FreeLB(model, init_mag=0.0, max_norm=0.5).backward(
        lambda: model.out.bias.sum() + 0.0 * model(ids).sum())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_gradient_accumulation_and_existing_grads_are_added_to():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    (a, ya), (b, yb) = batch(seed=1), batch(seed=2)
    ga, _ = reference_freelb(model, a, ya, 2, 0.1, 1.0, 0.6, seed=7)  # the defaults
    gb, _ = reference_freelb(model, b, yb, 2, 0.1, 1.0, 0.6, seed=8)
    earlier = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = earlier[n].clone()
    adv = FreeLB(model)
    adv.generator = torch.Generator().manual_seed(7)
    adv.backward(lambda: ce(model(a), ya))
    adv.generator = torch.Generator().manual_seed(8)
    adv.backward(lambda: ce(model(b), yb))
    assert_grads_close(grads(model), {k: earlier[k] + ga[k] + gb[k] for k in ga})


def test_backward_fn_sees_every_pass_scaled_by_one_over_k():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    expected, losses = reference_freelb(model, ids, y, 3, 0.2, 0.5, 0.0, seed=1)
    seen = []

    def scaled(loss):
        seen.append(loss.detach())
        (loss * 16.0).backward()

    FreeLB(model, adv_steps=3, adv_lr=0.2, init_mag=0.5,
           generator=torch.Generator().manual_seed(1)).backward(lambda: ce(model(ids), y), scaled)
    torch.testing.assert_close(torch.stack(seen), torch.stack(losses) / 3)
    assert_grads_close(grads(model), {k: 16.0 * v for k, v in expected.items()}, atol=1e-5)


def test_bert_bf16_autocast_and_buffers():
    model = tiny_bert(dropout=0.1).train()
    ids, y = batch()
    before = snapshot(model)
    adv = FreeLB(model, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = adv.backward(lambda: model(input_ids=ids, attention_mask=(ids != PAD).long(), labels=y))
    assert torch.isfinite(loss)
    assert_state_equal(model, before)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.classifier.weight.grad.abs().sum() > 0


def test_non_finite_gradient_is_skipped_and_counted():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    calls = []
    adv = FreeLB(model, adv_steps=3)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        adv.backward(lambda: calls.append(1) or ce(model(ids), y) * float("inf"))
    assert adv.skipped_steps == 1 and len(calls) == 1 and adv.last_adv_loss is None


@pytest.mark.parametrize("kwargs,match", [
    ({"adv_steps": 0}, "adv_steps"), ({"adv_steps": 1.5}, "adv_steps"), ({"adv_lr": 0}, "adv_lr"),
    ({"init_mag": -1}, "init_mag"), ({"max_norm": float("nan")}, "max_norm"), ({"norm": "l1"}, "norm"),
])
def test_bad_arguments(kwargs, match):
    model = MeanPoolClassifier()
    with pytest.raises(ValueError, match=match):
        FreeLB(model, **kwargs)
    assert not model.emb._forward_hooks  # a failed construction leaves no hook behind
