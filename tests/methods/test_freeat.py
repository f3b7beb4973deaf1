"""FreeAT against a hand-run replay loop (one pass per replay, optimizer step between)."""
import copy
import warnings

import pytest
import torch
from torch import nn

from advnlp import FreeAT
from tinymodels import (PAD, MeanPoolClassifier, assert_grads_close, assert_state_equal, batch,
                      grads, snapshot, tiny_bert)

ce = nn.CrossEntropyLoss()


def hand_replays(model, ids, y, eps, step, m, norm="linf", lr=0.5):
    """Shafahi et al.'s loop: grads at delta, optimizer step, delta <- proj(delta + step*dir(g))."""
    mask = (ids != PAD).unsqueeze(-1).float()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    delta = torch.zeros(*ids.shape, model.emb.embedding_dim)
    losses, deltas = [], []
    for _ in range(m):
        delta = delta.detach().requires_grad_()
        loss = ce(model.encode(model.emb(ids) + delta), y)
        loss.backward()
        losses.append(loss.detach())
        g = delta.grad * mask
        opt.step()
        opt.zero_grad()
        if norm == "linf":
            delta = (delta + step * torch.sign(g)).clamp(-eps, eps) * mask
        else:
            delta = delta + step * g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
            n = delta.flatten(1).norm(dim=1).view(-1, 1, 1)
            delta = delta * torch.clamp(eps / n, max=1.0) * mask
        deltas.append(delta.detach())
    return losses, deltas


@pytest.mark.parametrize("norm,eps,step", [("linf", 0.05, 0.05), ("linf", 0.05, 0.02),
                                           ("l2", 0.5, 0.3)])
def test_replay_loop_matches_hand_run(norm, eps, step):
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    ref = copy.deepcopy(model)
    losses, deltas = hand_replays(ref, ids, y, eps, step, m=3, norm=norm)
    adv = FreeAT(model, epsilon=eps, replays=3, step_size=step, norm=norm)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for r in range(3):
        loss = adv.backward(lambda: ce(model(ids), y))
        torch.testing.assert_close(loss, losses[r])
        torch.testing.assert_close(adv.delta[0], deltas[r], atol=1e-6, rtol=1e-5)
        opt.step()
        opt.zero_grad()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    # replays exhausted: the 4th call is a new batch at delta = 0 (plain clean gradient)
    plain = copy.deepcopy(model)
    ce(plain(ids), y).backward()
    adv.backward(lambda: ce(model(ids), y))
    assert_grads_close(grads(model), grads(plain))


def test_one_pass_per_call_grads_added_and_weights_untouched():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    adv = FreeAT(model, epsilon=0.05, replays=2, norm="linf")
    assert adv.step_size == 0.05  # Shafahi et al.: the L-inf step is epsilon
    adv.backward(lambda: ce(model(ids), y))  # delta_1 = 0.05 * sign(g_0)
    delta = adv.delta[0].clone()
    ref = copy.deepcopy(model)
    ref.zero_grad()
    ce(ref.encode(ref.emb(ids) + delta), y).backward()
    earlier = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = earlier[n].clone()
    before = snapshot(model)
    calls = []
    adv.backward(lambda: calls.append(1) or ce(model(ids), y))
    assert len(calls) == 1
    assert_grads_close(grads(model), {k: earlier[k] + v for k, v in grads(ref).items()})
    assert_state_equal(model, before)
    assert delta[ids == PAD].abs().max() == 0 and delta.abs().max() == pytest.approx(0.05)


def test_defaults_are_the_released_text_recipe():
    adv = FreeAT(MeanPoolClassifier())
    assert (adv.norm, adv.epsilon, adv.replays) == ("l2", 0.6, 2)
    assert adv.step_size == pytest.approx(0.1)


def test_new_batch_and_shape_change_reset_delta():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    (a, ya), (b, yb) = batch(seed=1), batch(seed=2, length=5)
    adv = FreeAT(model, epsilon=0.05, replays=10)
    adv.backward(lambda: ce(model(a), ya))
    assert adv.delta is not None and adv.calls_on_batch == 1
    # another shape: starts at delta = 0, i.e. the plain gradient
    model.zero_grad()
    plain = copy.deepcopy(model)
    ce(plain(b), yb).backward()
    adv.backward(lambda: ce(model(b), yb))
    assert_grads_close(grads(model), grads(plain))
    assert adv.calls_on_batch == 1 and adv.delta[0].shape == (4, 5, 8)
    adv.new_batch()
    assert adv.delta is None and adv.calls_on_batch == 0


def test_bert_bf16_autocast():
    model = tiny_bert(dropout=0.1).train()
    ids, y = batch()
    before = snapshot(model)
    adv = FreeAT(model, epsilon=0.01, replays=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(2):
            loss = adv.backward(lambda: model(input_ids=ids, attention_mask=(ids != PAD).long(),
                                              labels=y))
            assert torch.isfinite(loss)
    assert_state_equal(model, before)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_non_finite_gradient_resets_delta_and_counts():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    adv = FreeAT(model)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        adv.backward(lambda: ce(model(ids), y) * float("inf"))
    assert adv.skipped_steps == 1 and adv.delta is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adv.backward(lambda: ce(model(ids), y))


@pytest.mark.parametrize("kwargs,match", [
    ({"replays": 0}, "replays"), ({"step_size": 0}, "step_size"), ({"epsilon": -1}, "epsilon"),
    ({"target": "weight"}, "target"), ({"adv_weight": 0.5}, "adv_weight"), ({"norm": "l1"}, "norm"),
])
def test_bad_arguments(kwargs, match):
    model = MeanPoolClassifier()
    with pytest.raises(ValueError, match=match):
        FreeAT(model, **kwargs)
    assert not model.emb._forward_hooks  # a failed construction leaves no hook behind
