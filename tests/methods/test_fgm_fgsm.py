"""FGM and FGSM against hand-computed references (the perturbation is rebuilt in
the test from d loss / d embedding, and the model is run on it by hand)."""
import copy

import pytest
import torch
from torch import nn

from advnlp import FGM, FGSM
from tinymodels import (PAD, MeanPoolClassifier, assert_grads_close, assert_state_equal, batch,
                      grads, snapshot, tiny_bert)

ce = nn.CrossEntropyLoss()


def masked(g, ids):
    return g * (ids != PAD).unsqueeze(-1).float()


def l2_example(eps):
    def make(g, ids):
        gm = masked(g, ids)
        n = gm.flatten(1).norm(dim=1).view(-1, 1, 1)
        return eps * gm / n
    return make


def l2_token(eps):
    def make(g, ids):
        gm = masked(g, ids)
        n = gm.norm(dim=-1, keepdim=True)
        return torch.where(n > 0, eps * gm / n.clamp_min(1e-30), torch.zeros_like(gm))
    return make


def l2_batch(eps):
    return lambda g, ids: eps * masked(g, ids) / masked(g, ids).norm()


def linf(eps):
    return lambda g, ids: eps * masked(torch.sign(g), ids)


def reference_meanpool(model, ids, labels, make_r, pre=None):
    m = copy.deepcopy(model)
    m.zero_grad()
    e = m.emb(ids).detach().requires_grad_()
    (g,) = torch.autograd.grad(ce(m.encode(e), labels), e)
    r = make_r(g, ids)
    ce(m(ids), labels).backward()
    ce(m.encode(m.emb(ids) + r), labels).backward()
    return grads(m)


@pytest.mark.parametrize("scope,make", [("example", l2_example), ("token", l2_token),
                                        ("batch", l2_batch)])
def test_fgm_l2_matches_reference(scope, make):
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    expected = reference_meanpool(model, ids, y, make(0.7))
    adv = FGM(model, epsilon=0.7, scope=scope)
    loss = adv.backward(lambda: ce(model(ids), y))
    assert_grads_close(grads(model), expected)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, ce(model(ids), y).detach())


def test_fgsm_matches_reference():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    expected = reference_meanpool(model, ids, y, linf(0.05))
    FGSM(model, epsilon=0.05).backward(lambda: ce(model(ids), y))
    assert_grads_close(grads(model), expected)


def test_fgm_linf_norm_is_sign_step():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    expected = reference_meanpool(model, ids, y, linf(0.05))
    FGM(model, epsilon=0.05, norm="linf").backward(lambda: ce(model(ids), y))
    assert_grads_close(grads(model), expected)


def test_padding_positions_get_no_perturbation():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch(pad_tail=3)
    adv = FGM(model, epsilon=1.0)
    seen = []
    hook = model.emb.register_forward_hook(lambda m, a, o: seen.append(o.detach()))
    adv.backward(lambda: ce(model(ids), y))
    hook.remove()
    # forward hooks run in registration order: ours (adds delta) ran first
    clean, perturbed = seen
    diff = perturbed - clean
    pad = ids == PAD
    assert diff[pad].abs().max() == 0
    assert (diff[~pad].abs().sum(-1) > 0).all()
    per_example = diff.flatten(1).norm(dim=1)
    torch.testing.assert_close(per_example, torch.ones(4), atol=1e-5, rtol=0)


def bert_reference(model, ids, y, make_r, loss_fn=None):
    m = copy.deepcopy(model)
    m.zero_grad()
    mask = (ids != PAD).long()
    loss_fn = loss_fn or (lambda logits: ce(logits, y))
    emb = m.bert.embeddings.word_embeddings
    e = emb(ids).detach().requires_grad_()
    (g,) = torch.autograd.grad(loss_fn(m(inputs_embeds=e, attention_mask=mask).logits), e)
    r = make_r(g, ids)
    loss_fn(m(input_ids=ids, attention_mask=mask).logits).backward()
    loss_fn(m(inputs_embeds=emb(ids) + r, attention_mask=mask).logits).backward()
    return grads(m)


def test_fgm_on_bert_matches_reference():
    model = tiny_bert()
    ids, y = batch()
    expected = bert_reference(model, ids, y, l2_example(0.5))
    adv = FGM(model, epsilon=0.5)
    assert adv.embedding is model.bert.embeddings.word_embeddings
    adv.backward(lambda: model(input_ids=ids, attention_mask=(ids != PAD).long(), labels=y))
    assert_grads_close(grads(model), expected, atol=1e-5, rtol=1e-4)


def test_seed_multilabel_loop_with_bce():
    """The seed's loop: BERT, BCEWithLogitsLoss on multi-hot labels, FGM."""
    model = tiny_bert(num_labels=4, problem_type="multi_label_classification")
    ids, _ = batch()
    labels = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 0, 1]])
    bce = nn.BCEWithLogitsLoss()
    loss_fn = lambda logits: bce(logits.view(-1, 4), labels.type_as(logits).view(-1, 4))
    expected = bert_reference(model, ids, labels, l2_example(1.0), loss_fn)
    before = snapshot(model)
    adv = FGM(model, epsilon=1.0)
    adv.backward(lambda: loss_fn(model(ids, attention_mask=(ids != PAD).long()).logits))
    assert_grads_close(grads(model), expected, atol=1e-5, rtol=1e-4)
    assert_state_equal(model, before)


def test_weight_target_matches_seed_formula():
    """target='weight' = the seed: W += eps * grad_W / ||grad_W|| (one global norm)."""
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    m = copy.deepcopy(model)
    ce(m(ids), y).backward()
    G = m.emb.weight.grad.clone()
    with torch.no_grad():
        m.emb.weight += 0.3 * G / G.norm()
    ce(m(ids), y).backward()
    expected = grads(m)

    before = snapshot(model)
    FGM(model, epsilon=0.3, target="weight").backward(lambda: ce(model(ids), y))
    assert_grads_close(grads(model), expected)
    assert_state_equal(model, before)


def test_weight_target_ignores_gradients_from_earlier_micro_batches():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    m = copy.deepcopy(model)
    FGM(m, epsilon=0.3, target="weight").backward(lambda: ce(m(ids), y))
    fresh = grads(m)
    earlier = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = earlier[n].clone()
    FGM(model, epsilon=0.3, target="weight").backward(lambda: ce(model(ids), y))
    assert_grads_close(grads(model), {n: earlier[n] + fresh[n] for n in fresh})


def test_fgsm_random_start_stays_in_ball_and_is_seeded():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    applied = []
    results = []
    for _ in range(2):
        m = copy.deepcopy(model)
        adv = FGSM(m, epsilon=0.1, random_start=True, generator=torch.Generator().manual_seed(3))
        adv.backward(lambda: ce(m(ids), y))
        results.append(grads(m))
    assert_grads_close(results[0], results[1], atol=0, rtol=0)
    # reference: clean pass, then start u, one sign step of alpha=0.125 from u, clamp
    m = copy.deepcopy(model)
    adv = FGSM(m, epsilon=0.1, random_start=True, generator=torch.Generator().manual_seed(3))
    # registered after the adversary's hook, so it sees the perturbed output
    hook = m.emb.register_forward_hook(lambda mod, a, o: applied.append(o.detach()))
    applied.clear()
    adv.backward(lambda: ce(m(ids), y))
    hook.remove()
    clean, start, final = applied
    u = start - clean
    assert u.abs().max() <= 0.1 + 1e-6
    assert u[ids == PAD].abs().max() == 0
    e = (m.emb(ids) + u).detach().requires_grad_()
    (g,) = torch.autograd.grad(ce(m.encode(e), y), e)
    want = masked((u + 0.125 * torch.sign(g)).clamp(-0.1, 0.1), ids)
    torch.testing.assert_close(final - clean, want, atol=1e-6, rtol=0)
