"""PGD against a hand-run projected ascent, its ball constraint, and its
promise not to touch parameter gradients in the inner steps."""
import copy

import pytest
import torch
from torch import nn

from advnlp import FGM, PGD
from tinymodels import (PAD, MeanPoolClassifier, assert_grads_close, assert_state_equal, batch,
                      grads, snapshot)

ce = nn.CrossEntropyLoss()


def masked(g, ids):
    return g * (ids != PAD).unsqueeze(-1).float()


def reference_pgd(model, ids, y, eps, alpha, steps, norm="l2"):
    m = copy.deepcopy(model)
    m.zero_grad()

    def grad_at(delta):
        e = (m.emb(ids) + delta).detach().requires_grad_()
        (g,) = torch.autograd.grad(ce(m.encode(e), y), e)
        return masked(g, ids)

    delta = torch.zeros(*ids.shape, m.emb.embedding_dim)
    for _ in range(steps):
        g = grad_at(delta)
        if norm == "l2":
            delta = delta + alpha * g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
            n = delta.flatten(1).norm(dim=1).view(-1, 1, 1)
            delta = delta * torch.clamp(eps / n, max=1.0)
        else:
            delta = (delta + alpha * torch.sign(g)).clamp(-eps, eps)
    ce(m(ids), y).backward()
    ce(m.encode(m.emb(ids) + delta), y).backward()
    return grads(m)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_matches_hand_run_projected_ascent(norm):
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    eps, alpha = (0.5, 0.3) if norm == "l2" else (0.05, 0.02)
    expected = reference_pgd(model, ids, y, eps, alpha, steps=4, norm=norm)
    PGD(model, epsilon=eps, alpha=alpha, steps=4, norm=norm).backward(lambda: ce(model(ids), y))
    assert_grads_close(grads(model), expected)


@pytest.mark.parametrize("norm,scope", [("l2", "example"), ("l2", "token"), ("l2", "batch"),
                                        ("linf", "example")])
@pytest.mark.parametrize("random_start", [False, True])
def test_every_step_stays_inside_the_ball(norm, scope, random_start):
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    eps = 0.4
    adv = PGD(model, epsilon=eps, alpha=0.35, steps=5, norm=norm, scope=scope,
              random_start=random_start, generator=torch.Generator().manual_seed(0))
    outs = []
    model.emb.register_forward_hook(lambda m, a, o: outs.append(o.detach()))
    adv.backward(lambda: ce(model(ids), y))
    clean, perturbed = outs[0], outs[1:]
    assert len(perturbed) == 5 + int(random_start)
    for out in perturbed:
        d = out - clean
        if norm == "linf":
            n = d.abs().amax()
        elif scope == "example":
            n = d.flatten(1).norm(dim=1).max()
        elif scope == "token":
            n = d.norm(dim=-1).max()
        else:
            n = d.norm()
        assert n <= eps + 1e-5
        assert d[ids == PAD].abs().max() == 0
    # the projection really bound: the final step sits on the sphere
    assert n >= eps - 1e-4


def test_pgd_one_step_with_alpha_epsilon_equals_fgm():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    m = copy.deepcopy(model)
    FGM(m, epsilon=0.8).backward(lambda: ce(m(ids), y))
    PGD(model, epsilon=0.8, alpha=0.8, steps=1).backward(lambda: ce(model(ids), y))
    # equal up to float rounding of the (inactive) projection
    assert_grads_close(grads(model), grads(m), atol=1e-7, rtol=1e-6)


def test_inner_steps_leave_existing_gradients_alone():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    expected = reference_pgd(model, ids, y, 0.5, 0.3, steps=3)
    earlier = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = earlier[n].clone()
    counts = []
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: counts.append(1))
    PGD(model, epsilon=0.5, alpha=0.3, steps=3).backward(lambda: ce(model(ids), y))
    assert_grads_close(grads(model), {n: earlier[n] + expected[n] for n in expected})
    # exactly two passes (clean + final) accumulated into each parameter
    assert len(counts) == 2 * len(list(model.parameters()))


def test_weight_target_matches_seed_pgd():
    """The seed's PGD loop (clone grads, K attacks on W with a global norm, restore)."""
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    eps, alpha, K = 0.6, 0.25, 3
    m = copy.deepcopy(model)
    W = m.emb.weight
    ce(m(ids), y).backward()
    grad_backup = {n: p.grad.clone() for n, p in m.named_parameters()}
    emb_backup = W.data.clone()
    for t in range(K):
        with torch.no_grad():
            W += alpha * W.grad / W.grad.norm()
            r = W - emb_backup
            if r.norm() > eps:
                r = eps * r / r.norm()
            W.copy_(emb_backup + r)
        if t != K - 1:
            m.zero_grad()
        else:
            for n, p in m.named_parameters():
                p.grad = grad_backup[n]
        ce(m(ids), y).backward()
    expected = grads(m)

    before = snapshot(model)
    PGD(model, epsilon=eps, alpha=alpha, steps=K, target="weight").backward(
        lambda: ce(model(ids), y))
    assert_grads_close(grads(model), expected, atol=1e-6, rtol=1e-5)
    assert_state_equal(model, before)


def test_bad_arguments():
    model = MeanPoolClassifier()
    with pytest.raises(ValueError, match="alpha"):
        PGD(model, alpha=0)
    with pytest.raises(ValueError, match="steps"):
        PGD(model, steps=0)
    with pytest.raises(ValueError, match="steps"):
        PGD(model, steps=1.5)
