"""relative=True: epsilon and the step sizes are fractions of each example's own embedding,
so the same setting means the same thing on every model."""
import copy

import pytest
import torch
from torch import nn

from advnlp import FGM, FGSM, PGD, VAT, FreeAT, FreeLB
from tinymodels import PAD, batch

C = 4.0  # a power of two: scaling the embedding by it is exact in float32


class ScaleFree(nn.Module):
    """A model that cannot see the scale of its embedding output (it divides each example by
    its norm), so scaling the embedding by c must scale a relative perturbation by c."""

    def __init__(self, vocab=40, dim=8, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.out = nn.Linear(dim, classes)

    def forward(self, ids):
        x = self.emb(ids)
        x = x / x.flatten(1).norm(dim=1).view(-1, 1, 1)
        return self.out(torch.tanh(3 * x).mean(1))


def _deltas(model, cls, kwargs, ids, y):
    """The perturbation of every pass after the clean one, seen after advnlp's hook."""
    adv = cls(model, **kwargs)
    seen = []
    handle = model.emb.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    ce = nn.functional.cross_entropy
    # FreeAT's delta starts at 0 and moves once per call: its second replay is perturbed.
    for _ in range(2 if cls is FreeAT else 1):
        if adv.needs_logits:
            adv.backward(lambda: model(ids), labels=y)
        else:
            adv.backward(lambda: ce(model(ids), y))
    handle.remove()
    adv.remove()
    return [s - seen[0] for s in seen[1:]]


def _pair(seed=0):
    torch.manual_seed(seed)
    small = ScaleFree()
    big = copy.deepcopy(small)
    with torch.no_grad():
        big.emb.weight.mul_(C)
    return small, big


CASES = [
    (FGM, {"epsilon": 0.1}),
    (FGSM, {"epsilon": 0.05}),
    (PGD, {"epsilon": 0.1, "alpha": 0.04, "steps": 3}),
    (PGD, {"epsilon": 0.1, "alpha": 0.04, "steps": 2, "norm": "linf"}),
    (FreeLB, {"adv_steps": 3, "adv_lr": 0.05, "init_mag": 0.0, "max_norm": 0.1}),
    (FreeAT, {"epsilon": 0.1}),
    (VAT, {"epsilon": 0.1}),
]


@pytest.mark.parametrize("cls,kwargs", CASES, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(CASES)])
def test_scaling_the_embedding_by_c_scales_delta_by_c(cls, kwargs):
    ids, y = batch()
    small, big = _pair()
    kw = {**kwargs, "relative": True}
    if "generator" in cls.__init__.__code__.co_varnames:
        d_small = _deltas(small, cls, {**kw, "generator": torch.Generator().manual_seed(1)}, ids, y)
        d_big = _deltas(big, cls, {**kw, "generator": torch.Generator().manual_seed(1)}, ids, y)
    else:
        d_small, d_big = _deltas(small, cls, kw, ids, y), _deltas(big, cls, kw, ids, y)
    assert len(d_small) == len(d_big) >= 1
    assert d_small[-1].abs().max() > 0  # not a vacuous comparison of zeros
    for a, b in zip(d_small, d_big):
        torch.testing.assert_close(b, C * a, rtol=1e-5, atol=1e-7)


def test_absolute_epsilon_does_not_scale():
    """The contrast: without relative, the radius stays epsilon whatever the embedding."""
    ids, y = batch()
    small, big = _pair()
    a, = _deltas(small, FGM, {"epsilon": 0.1}, ids, y)
    b, = _deltas(big, FGM, {"epsilon": 0.1}, ids, y)
    torch.testing.assert_close(a.flatten(1).norm(dim=1), b.flatten(1).norm(dim=1))


def _real_embedding(model, ids):
    """Each example's embedding rows over its real tokens, from the weight matrix itself."""
    e = model.emb.weight.detach()[ids]
    return e * (ids != PAD).unsqueeze(-1)


def test_fgm_delta_norm_is_epsilon_times_each_examples_embedding_norm():
    ids, y = batch()
    model, _ = _pair()
    delta, = _deltas(model, FGM, {"epsilon": 0.1, "relative": True}, ids, y)
    want = 0.1 * _real_embedding(model, ids).flatten(1).norm(dim=1)
    torch.testing.assert_close(delta.flatten(1).norm(dim=1), want, rtol=1e-5, atol=0)
    assert delta[ids == PAD].abs().max() == 0  # padding untouched


def test_pgd_stays_inside_the_relative_ball():
    ids, y = batch()
    model, _ = _pair()
    delta = _deltas(model, PGD, {"epsilon": 0.1, "alpha": 0.08, "steps": 4, "relative": True},
                    ids, y)[-1]  # the adversarial pass, after the inner steps
    bound = 0.1 * _real_embedding(model, ids).flatten(1).norm(dim=1)
    assert (delta.flatten(1).norm(dim=1) <= bound * (1 + 1e-5)).all()
    assert (delta.flatten(1).norm(dim=1) >= bound * 0.99).all()  # 4 steps of 0.08 reach the rim


def test_fgsm_relative_step_is_epsilon_times_the_rms_coordinate():
    ids, y = batch()
    model, _ = _pair()
    delta, = _deltas(model, FGSM, {"epsilon": 0.05, "relative": True}, ids, y)
    e = _real_embedding(model, ids)
    real = (ids != PAD).sum(1).float() * e.shape[-1]
    rms = e.flatten(1).norm(dim=1) / real.sqrt()
    peak = delta.abs().flatten(1).amax(dim=1)
    torch.testing.assert_close(peak, 0.05 * rms, rtol=1e-5, atol=0)


@pytest.mark.parametrize("kwargs,error", [({"relative": "yes"}, TypeError),
                                          ({"relative": True, "target": "weight"}, ValueError)])
def test_bad_relative_arguments(kwargs, error):
    with pytest.raises(error, match="relative"):
        FGM(ScaleFree(), **kwargs)
