"""SMART against a hand-run ascent and a hand-computed symmetric divergence."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advnlp import SMART
from tinymodels import (PAD, MeanPoolClassifier, assert_grads_close, assert_state_equal, batch,
                      grads, snapshot, tiny_bert)

ce = nn.CrossEntropyLoss()


def hand_div(target, pred, kind):
    """D(target || pred) written out; target is a constant."""
    t = target.detach()
    if kind == "softmax":
        p, q = F.softmax(t, -1), F.softmax(pred, -1)
        return (p * (p.log() - q.log())).sum(-1).mean()
    if kind == "sigmoid":
        p, q = torch.sigmoid(t), torch.sigmoid(pred)
        return (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(-1).mean()
    return ((t - pred) ** 2).sum(-1).mean()


def task_loss(logits, y, kind):
    if kind == "softmax":
        return ce(logits, y)
    if kind == "sigmoid":
        return F.binary_cross_entropy_with_logits(logits, y)
    return F.mse_loss(logits, y)


def reference_smart(model, ids, y, kind, alpha, noise_var, step_size, epsilon, radius, steps, seed,
                    norm="linf"):
    m = copy.deepcopy(model)
    mask = (ids != PAD).unsqueeze(-1).float()
    clean = m(ids)
    noise = torch.randn(*ids.shape, m.emb.embedding_dim,
                        generator=torch.Generator().manual_seed(seed)) * noise_var * mask
    for _ in range(steps):
        noise = noise.detach().requires_grad_()
        (g,) = torch.autograd.grad(hand_div(clean, m.encode(m.emb(ids) + noise), kind), noise)
        v = noise + step_size * g * mask
        n = v.abs().amax(-1, keepdim=True) if norm == "linf" else v.norm(dim=-1, keepdim=True)
        noise = radius * v / (n + epsilon) * mask
    adv = m.encode(m.emb(ids) + noise.detach())
    if kind == "regression":
        sym = ((clean - adv) ** 2).sum(-1).mean()
    else:
        sym = hand_div(clean, adv, kind) + hand_div(adv.detach(), clean, kind)
    (task_loss(clean, y, kind) + alpha * sym).backward()
    return grads(m), sym.detach(), task_loss(clean, y, kind).detach()


@pytest.mark.parametrize("kind,steps,norm", [("softmax", 1, "linf"), ("softmax", 2, "l2"),
                                             ("sigmoid", 1, "linf"), ("regression", 1, "linf")])
def test_matches_hand_run_ascent_and_symmetric_divergence(kind, steps, norm):
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    if kind != "softmax":
        y = torch.rand(4, 3, generator=torch.Generator().manual_seed(3)).round()
    kw = dict(alpha=0.7, noise_var=1e-2, step_size=0.5, epsilon=1e-5, radius=0.3, steps=steps)
    expected, sym, task = reference_smart(model, ids, y, kind, seed=4, norm=norm, **kw)
    before = snapshot(model)
    adv = SMART(model, output_type=kind, norm=norm, generator=torch.Generator().manual_seed(4), **kw)
    loss = adv.backward(lambda: (lambda lg: (task_loss(lg, y, kind), lg))(model(ids)))
    torch.testing.assert_close(loss, task)
    torch.testing.assert_close(adv.last_adv_loss, sym)
    assert sym > 0
    assert_grads_close(grads(model), expected, atol=1e-5)
    assert_state_equal(model, before)


def test_labels_argument_and_output_shapes_agree():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    results = []
    for kind, make in (
        ("tuple", lambda m: (lambda: (lambda lg: (ce(lg, y), lg))(m(ids)), {})),
        ("labels", lambda m: (lambda: m(ids), {"labels": y})),
        ("dict", lambda m: (lambda: {"logits": m(ids), "loss": ce(m(ids), y)}, {})),
        ("loss_fn", lambda m: (lambda: m(ids), {"labels": y})),
    ):
        m = copy.deepcopy(model)
        closure, kw = make(m)
        lf = (lambda lg, t: F.cross_entropy(lg, t)) if kind == "loss_fn" else None
        adv = SMART(m, lf, radius=0.2, generator=torch.Generator().manual_seed(0))
        results.append((adv.backward(closure, **kw), grads(m)))
    for loss, g in results[1:]:
        torch.testing.assert_close(loss, results[0][0])
        assert_grads_close(g, results[0][1], atol=1e-6)


def test_accumulation_and_existing_grads_are_added_to():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    (a, ya), (b, yb) = batch(seed=1), batch(seed=2)
    kw = dict(alpha=1.0, noise_var=1e-5, step_size=1e-3, epsilon=1e-5, radius=0.2, steps=1)
    ga, _, _ = reference_smart(model, a, ya, "softmax", seed=1, **kw)
    gb, _, _ = reference_smart(model, b, yb, "softmax", seed=2, **kw)
    earlier = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = earlier[n].clone()
    adv = SMART(model, radius=0.2)
    adv.generator = torch.Generator().manual_seed(1)
    adv.backward(lambda: model(a), labels=ya)
    adv.generator = torch.Generator().manual_seed(2)
    adv.backward(lambda: model(b), labels=yb)
    assert_grads_close(grads(model), {k: earlier[k] + ga[k] + gb[k] for k in ga}, atol=1e-5)


def test_bert_model_output_bf16_autocast():
    model = tiny_bert(dropout=0.1).train()
    ids, y = batch()
    before = snapshot(model)
    adv = SMART(model, radius=0.1, bregman=1.0)  # teacher pass: HF .loss under no_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = adv.backward(lambda: model(input_ids=ids, attention_mask=(ids != PAD).long(),
                                          labels=y))
    assert torch.isfinite(loss) and torch.isfinite(adv.last_adv_loss)
    assert adv.last_adv_loss > 0
    assert_state_equal(model, before)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_non_finite_gradient_skips_regulariser_but_keeps_task_gradient():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    adv = SMART(model)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        adv.backward(lambda: model(ids) * float("inf"), labels=y)
    assert adv.skipped_steps == 1 and adv.last_adv_loss is None


def test_bad_inputs():
    model = MeanPoolClassifier()
    ids, y = batch()
    with pytest.raises(ValueError, match="task loss"):
        SMART(model).backward(lambda: model(ids))
    with pytest.raises(ValueError, match="already carries a loss"):
        SMART(model).backward(lambda: (ce(model(ids), y), model(ids)), labels=y)
    with pytest.raises(ValueError, match="scalar"):
        SMART(model).backward(lambda: ce(model(ids), y))
    with pytest.raises(ValueError, match="labels="):
        SMART(model, lambda lg, t: ce(lg, t)).backward(lambda: model(ids))
    with pytest.raises(ValueError, match="output_type"):
        SMART(model, output_type="multiclass")
    with pytest.raises(ValueError, match="steps"):
        SMART(model, steps=0)
    with pytest.raises(ValueError, match="radius"):
        SMART(model, radius=0)


def test_bregman_teacher_term_matches_hand_computed_momentum_teacher():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    mu, beta = 0.5, 0.9
    adv = SMART(model, alpha=0.0, bregman=mu, bregman_beta=beta,
                generator=torch.Generator().manual_seed(0))
    theta0 = copy.deepcopy(model)
    # call 1: the teacher starts at theta, the term is exactly 0 (grads = task grads)
    adv.backward(lambda: model(ids), labels=y)
    plain = copy.deepcopy(theta0)
    ce(plain(ids), y).backward()
    assert adv.last_bregman_loss == 0
    assert_grads_close(grads(model), grads(plain))
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    model.zero_grad()
    # call 2: teacher = beta * theta0 + (1 - beta) * theta1, by hand
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for t, p0 in zip(teacher.parameters(), theta0.parameters()):
            t.copy_(beta * p0 + (1 - beta) * t)
    ref = copy.deepcopy(model)
    before = snapshot(model)
    adv.backward(lambda: (lambda lg: (ce(lg, y), lg))(model(ids)))
    assert_state_equal(model, before)  # the teacher swap is undone bit-for-bit
    with torch.no_grad():
        pt = F.softmax(teacher(ids), -1)
    c = ref(ids)
    pc = F.softmax(c, -1)
    prox = (pt * (pt.log() - pc.log())).sum(-1).mean() + (pc * (pc.log() - pt.log())).sum(-1).mean()
    (ce(c, y) + mu * prox).backward()
    torch.testing.assert_close(adv.last_bregman_loss, prox.detach())
    assert prox > 0
    assert_grads_close(grads(model), grads(ref), atol=1e-6)
    with pytest.raises(ValueError, match="bregman_beta"):
        SMART(model, bregman=1.0, bregman_beta=1.0)
