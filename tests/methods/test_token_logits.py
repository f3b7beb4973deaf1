"""SMART and VAT with per-token logits: padding positions are not part of the divergence."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advnlp import SMART, VAT
from advnlp.methods._divergence import divergence, row_weights
from tinymodels import PAD, VOCAB, batch


class Tagger(nn.Module):
    """Per-token logits; every position sees the whole sequence (so padding rows move
    with the perturbation). ``pad_scale`` multiplies the padding rows' logits: a model
    whose padding outputs are arbitrary, which must not change anything."""

    def __init__(self, pad_scale=1.0, classes=4):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, 8, padding_idx=PAD)
        self.mix = nn.Linear(8, 8)
        self.out = nn.Linear(8, classes)
        self.pad_scale = pad_scale

    def forward(self, ids):
        e = self.emb(ids)
        h = torch.tanh(self.mix(e + e.mean(1, keepdim=True)))
        scale = torch.where(ids == PAD, self.pad_scale, 1.0).unsqueeze(-1)
        return self.out(h) * scale


def tags(ids):
    t = (ids % 4).clone()
    t[ids == PAD] = -100  # the task loss ignores padding, as token-classification losses do
    return t


def run(method, model, ids, labelled):
    adv = method(model)
    y = tags(ids)

    def closure():
        logits = model(ids)
        if not labelled:
            return logits
        return F.cross_entropy(logits.reshape(-1, 4), y.reshape(-1), ignore_index=-100), logits

    loss = adv.backward(closure)
    adv.remove()
    return loss, adv.last_adv_loss, {n: p.grad.clone() for n, p in model.named_parameters()}


METHODS = {
    "vat": (lambda m: VAT(m, epsilon=1.0, generator=torch.Generator().manual_seed(3)), False),
    "vat-labelled": (lambda m: VAT(m, epsilon=1.0, generator=torch.Generator().manual_seed(3)), True),
    "smart": (lambda m: SMART(m, radius=0.5, steps=2, generator=torch.Generator().manual_seed(3)), True),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_padding_logits_do_not_count(name):
    method, labelled = METHODS[name]
    ids, _ = batch(n=4, length=7)
    assert (ids == PAD).any()
    plain, odd = Tagger(), Tagger(pad_scale=25.0)
    odd.load_state_dict(plain.state_dict())
    loss_a, reg_a, grads_a = run(method, plain, ids, labelled)
    loss_b, reg_b, grads_b = run(method, odd, ids, labelled)
    assert reg_a > 0
    torch.testing.assert_close(reg_a, reg_b)
    torch.testing.assert_close(loss_a, loss_b)
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], msg=lambda m: f"{n}: {m}")


def test_weighted_divergence_against_the_real_rows_by_hand():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    mask = torch.ones(3, 5, 1)
    mask[1:, 3:] = 0
    w = row_weights([mask], a)
    keep = mask.reshape(-1).bool()
    pa, pb = F.log_softmax(a.reshape(-1, 4)[keep], -1), F.log_softmax(b.reshape(-1, 4)[keep], -1)
    want = (pa.exp() * (pa - pb)).sum(-1).mean()
    torch.testing.assert_close(divergence(a, b, "kl", w), want)
    want_mse = (a.reshape(-1, 4)[keep] - b.reshape(-1, 4)[keep]).pow(2).sum(-1).mean()
    torch.testing.assert_close(divergence(a, b, "mse", w), want_mse)


def test_per_example_logits_and_several_calls_weigh_every_row():
    mask = torch.ones(3, 5, 1)
    assert row_weights([mask], torch.zeros(3, 4)) is None  # sequence classification
    assert row_weights([mask, mask], torch.zeros(3, 5, 4)) is None  # pair encoder: no 1-1 map
    assert row_weights([mask], torch.zeros(3, 6, 4)) is None  # positions do not match
