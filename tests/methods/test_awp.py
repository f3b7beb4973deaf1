"""AWP against hand-perturbed weights; exact restore; accumulated gradients untouched."""
import copy

import pytest
import torch
from torch import nn

from advnlp import AWP
from tinymodels import (PAD, MeanPoolClassifier, assert_grads_close, assert_state_equal, batch,
                      grads, interrupted_on_call, snapshot, tiny_bert)

ce = nn.CrossEntropyLoss()


def reference_awp(model, ids, y, lr, eps, names=("proj.weight", "out.weight")):
    """Clean grads + grads at w' = clamp(w + lr*||w||*g/||g||, w -+ eps|w|), by hand."""
    m = copy.deepcopy(model)
    ce(m(ids), y).backward()
    clean = grads(m)
    p = copy.deepcopy(model)
    with torch.no_grad():
        for n, w in p.named_parameters():
            if n in names:
                g = clean[n]
                w_new = w + lr * w.norm() * g / g.norm()
                w.copy_(torch.max(torch.min(w_new, w + eps * w.abs()), w - eps * w.abs()))
    ce(p(ids), y).backward()
    return {k: clean[k] + v for k, v in grads(p).items()}, ce(model(ids), y).detach()


@pytest.mark.parametrize("lr,eps", [(1.0, 0.01), (0.003, 0.05)])
def test_grads_equal_clean_plus_hand_perturbed_and_weights_bit_identical(lr, eps):
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    expected, clean_loss = reference_awp(model, ids, y, lr, eps)
    # gradients from an earlier micro-batch: must be kept and must not steer the direction
    earlier = {n: 100 * torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = earlier[n].clone()
    before = snapshot(model)
    adv = AWP(model, adv_lr=lr, adv_eps=eps)
    assert list(adv.params) == ["proj.weight", "out.weight"]
    loss = adv.backward(lambda: ce(model(ids), y))
    assert_state_equal(model, before)
    torch.testing.assert_close(loss, clean_loss)
    assert_grads_close(grads(model), {k: earlier[k] + expected[k] for k in expected}, atol=1e-5)
    assert adv.last_adv_loss > loss  # the perturbation is adversarial


def test_clamp_is_the_binding_constraint_with_adv_lr_one():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    seen = []
    model.out.register_forward_pre_hook(lambda m, a: seen.append(m.weight.detach().clone()))
    w = model.out.weight.detach().clone()
    AWP(model, adv_lr=1.0, adv_eps=0.02).backward(lambda: ce(model(ids), y))
    clean, perturbed = seen
    torch.testing.assert_close(clean, w, atol=0, rtol=0)
    ratio = ((perturbed - w).abs() / w.abs())
    assert ratio.max() <= 0.02 * (1 + 1e-5)
    assert (ratio > 0.0199).float().mean() > 0.9  # almost every element sits on its bound


def test_gradient_accumulation_equals_sum_of_single_calls():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    (a, ya), (b, yb) = batch(seed=1), batch(seed=2)
    ga, _ = reference_awp(model, a, ya, 1.0, 0.01)
    gb, _ = reference_awp(model, b, yb, 1.0, 0.01)
    adv = AWP(model)
    adv.backward(lambda: ce(model(a), ya))
    adv.backward(lambda: ce(model(b), yb))
    assert_grads_close(grads(model), {k: ga[k] + gb[k] for k in ga}, atol=1e-5)


def test_start_step_counts_backward_calls():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    plain = copy.deepcopy(model)
    ce(plain(ids), y).backward()
    adv = AWP(model, start_step=2)
    for _ in range(2):
        model.zero_grad()
        adv.backward(lambda: ce(model(ids), y))
        assert_grads_close(grads(model), grads(plain))
        assert adv.last_adv_loss is None
    model.zero_grad()
    adv.backward(lambda: ce(model(ids), y))
    expected, _ = reference_awp(model, ids, y, 1.0, 0.01)
    assert_grads_close(grads(model), expected, atol=1e-5)


def test_selection_by_exact_names_module_types_and_exclude():
    model = tiny_bert()
    default = AWP(model).params
    assert "classifier.weight" in default and "bert.pooler.dense.weight" in default
    assert not any("LayerNorm" in n or "embeddings" in n or n.endswith("bias") for n in default)
    assert list(AWP(model, exclude=["classifier.weight"]).params) == [
        n for n in default if n != "classifier.weight"]
    names = ["bert.encoder.layer.0.attention.self.query.weight"]
    assert list(AWP(model, params=names).params) == names
    assert list(AWP(model, params=[model.classifier.weight]).params) == ["classifier.weight"]
    assert set(AWP(model, module_types=nn.LayerNorm).params) == {
        n for n, _ in model.named_parameters() if n.endswith("LayerNorm.weight")}
    with pytest.raises(ValueError, match="substring"):
        AWP(model, params="weight")
    with pytest.raises(ValueError, match="query.weight"):
        AWP(model, params=["query.weight"])
    with pytest.raises(ValueError, match="exclude"):
        AWP(model, exclude=["classifier"])
    with pytest.raises(ValueError, match="module_types"):
        AWP(model, module_types=("Linear",))


def test_bert_bf16_autocast_with_dropout_and_existing_grads():
    model = tiny_bert(dropout=0.1).train()
    ids, y = batch()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = snapshot(model)
    adv = AWP(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = adv.backward(lambda: model(input_ids=ids, attention_mask=(ids != PAD).long(),
                                          labels=y))
    assert torch.isfinite(loss)
    assert_state_equal(model, before)
    for n, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), n
    assert (model.classifier.weight.grad != 1).any()


def test_restored_when_the_adversarial_closure_raises():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    before = snapshot(model)
    with pytest.raises(KeyboardInterrupt):
        AWP(model).backward(interrupted_on_call(2, lambda: ce(model(ids), y)))
    assert_state_equal(model, before)


def test_non_finite_and_zero_gradients():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    before = snapshot(model)
    adv = AWP(model)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        adv.backward(lambda: ce(model(ids), y) * float("inf"))
    assert adv.skipped_steps == 1
    assert_state_equal(model, before)
    model.zero_grad()
    # out.weight gets a zero gradient: no perturbation, no NaN
    adv.backward(lambda: model.out.bias.sum() + 0.0 * model(ids).sum())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    torch.testing.assert_close(model.out.bias.grad, torch.full((3,), 2.0))


@pytest.mark.parametrize("kwargs,match", [
    ({"adv_lr": 0}, "adv_lr"), ({"adv_eps": -0.1}, "adv_eps"), ({"start_step": -1}, "start_step"),
    ({"adv_weight": float("inf")}, "adv_weight"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AWP(MeanPoolClassifier(), **kwargs)
