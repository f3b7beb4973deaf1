"""VAT against a hand-run power iteration and a hand-computed KL at the hand-built r_adv."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advnlp import VAT
from tinymodels import (PAD, MeanPoolClassifier, assert_grads_close, assert_state_equal, batch,
                      grads, snapshot, tiny_bert)

ce = nn.CrossEntropyLoss()


def kl(clean, pert):
    return F.kl_div(F.log_softmax(pert, -1), F.softmax(clean.detach(), -1), reduction="batchmean")


def reference_vat(model, ids, y, eps, xi, alpha, seed, iters=1):
    m = copy.deepcopy(model)
    mask = (ids != PAD).unsqueeze(-1).float()
    e = m.emb(ids)
    clean = m.encode(e)
    scale = (e.detach() * mask).flatten(1).norm(dim=1).view(-1, 1, 1)
    d = torch.randn(e.shape, generator=torch.Generator().manual_seed(seed)) * mask
    d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1)
    for _ in range(iters):
        probe = (xi * scale * d).requires_grad_()
        (g,) = torch.autograd.grad(kl(clean, m.encode(m.emb(ids) + probe)), probe)
        g = g * mask
        d = g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
    r_adv = eps * d
    lds = kl(clean, m.encode(m.emb(ids) + r_adv))
    total = alpha * lds if y is None else ce(clean, y) + alpha * lds
    total.backward()
    return grads(m), lds.detach(), r_adv


@pytest.mark.parametrize("labelled,iters", [(False, 1), (True, 1), (True, 2)])
def test_matches_hand_run_power_iteration(labelled, iters):
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    y = y if labelled else None
    expected, lds, r_adv = reference_vat(model, ids, y, eps=0.7, xi=0.1, alpha=0.5, seed=2,
                                         iters=iters)
    before = snapshot(model)
    seen = []
    model.proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    adv = VAT(model, epsilon=0.7, xi=0.1, alpha=0.5, power_iters=iters,
              generator=torch.Generator().manual_seed(2))
    loss = adv.backward(lambda: model(ids), labels=y)
    assert len(seen) == 3 + iters - 1
    # the last pass saw exactly the hand-built r_adv: norm epsilon per example, none on padding
    torch.testing.assert_close(seen[-1] - seen[0], r_adv, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(adv.last_adv_loss, lds)
    torch.testing.assert_close(loss, lds if y is None else ce(model(ids), y).detach())
    assert_grads_close(grads(model), expected, atol=1e-5)
    assert_state_equal(model, before)


def test_unlabelled_batch_only_trains_the_vat_loss_and_accumulates():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, _ = batch()
    ga, _, _ = reference_vat(model, ids, None, eps=1.0, xi=1e-3, alpha=1.0, seed=5)
    earlier = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = earlier[n].clone()
    adv = VAT(model, xi=1e-3)
    for _ in range(2):
        adv.generator = torch.Generator().manual_seed(5)
        adv.backward(lambda: model(ids))
    assert_grads_close(grads(model), {k: earlier[k] + 2 * ga[k] for k in ga}, atol=1e-5)


def test_default_xi_is_finite_and_adversarial_in_float32():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, _ = batch()
    adv = VAT(model, epsilon=0.5, generator=torch.Generator().manual_seed(0))
    adv.backward(lambda: model(ids))
    lds_adv = adv.last_adv_loss
    # a random direction of the same size is much less harmful than r_adv
    m = copy.deepcopy(model)
    mask = (ids != PAD).unsqueeze(-1).float()
    r = torch.randn(*ids.shape, 8, generator=torch.Generator().manual_seed(9)) * mask
    r = 0.5 * r / r.flatten(1).norm(dim=1).view(-1, 1, 1)
    with torch.no_grad():
        lds_rand = kl(m(ids), m.encode(m.emb(ids) + r))
    assert torch.isfinite(lds_adv) and lds_adv > 2 * lds_rand
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_bert_logits_only_bf16_autocast():
    model = tiny_bert(dropout=0.1).train()
    ids, _ = batch()
    before = snapshot(model)
    adv = VAT(model, xi=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = adv.backward(lambda: model(input_ids=ids, attention_mask=(ids != PAD).long()))
    assert torch.isfinite(loss)
    assert_state_equal(model, before)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_sigmoid_output_type_uses_bernoulli_kl():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, _ = batch()
    adv = VAT(model, output_type="sigmoid", generator=torch.Generator().manual_seed(0))
    seen = []
    model.out.register_forward_hook(lambda m, a, o: seen.append(o.detach()))
    adv.backward(lambda: model(ids))
    p, q = torch.sigmoid(seen[0]), torch.sigmoid(seen[-1])
    hand = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(-1).mean()
    torch.testing.assert_close(adv.last_adv_loss, hand)


def test_bad_inputs():
    model = MeanPoolClassifier()
    ids, y = batch()
    with pytest.raises(ValueError, match="xi"):
        VAT(model, xi=0)
    with pytest.raises(ValueError, match="power_iters"):
        VAT(model, power_iters=0)
    with pytest.raises(ValueError, match="alpha"):
        VAT(model, alpha=-1)
    with pytest.raises(ValueError, match="target"):
        VAT(model, target="weight")
    with pytest.raises(ValueError, match="alpha="):
        VAT(model, adv_weight=2.0)
    with pytest.raises(ValueError, match="scalar"):
        VAT(model).backward(lambda: ce(model(ids), y))
    with pytest.raises(TypeError, match="logits"):
        VAT(model).backward(lambda: "logits")
