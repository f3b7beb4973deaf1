"""R3F: task loss + alpha * symmetric KL(clean, noised), checked against a hand computation
with the gradient through both outputs; two forwards, one backward; the contract."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advnlp import R3F
from tinymodels import MeanPoolClassifier, assert_state_equal, batch, snapshot, tiny_bert


def _sym_kl(a, b):
    """fairseq's _get_symm_kl, as a mean over rows: KL(p_a || p_b) + KL(p_b || p_a)."""
    la, lb = F.log_softmax(a.float(), -1), F.log_softmax(b.float(), -1)
    return ((la.exp() * (la - lb)).sum(-1) + (lb.exp() * (lb - la)).sum(-1)).mean()


@pytest.mark.parametrize("noise", ["uniform", "normal"])
def test_loss_and_gradients_equal_a_hand_computation(noise):
    torch.manual_seed(0)
    model = MeanPoolClassifier().train()
    ids, y = batch()
    calls = [0]

    def closure():
        calls[0] += 1
        logits = model(ids)
        return F.cross_entropy(logits, y), logits

    before = snapshot(model)
    eps = 1.0  # large, so that the divergence is not negligible
    adv = R3F(model, alpha=2.0, epsilon=eps, noise=noise, generator=torch.Generator().manual_seed(4))
    loss = adv.backward(closure)
    assert calls[0] == 2
    assert_state_equal(model, before)

    ref = copy.deepcopy(model)
    for p in ref.parameters():
        p.grad = None
    e = ref.emb(ids)
    g = torch.Generator().manual_seed(4)
    z = (torch.rand(e.shape, generator=g) * 2 - 1) * eps if noise == "uniform" else \
        torch.randn(e.shape, generator=g) * eps
    z = z * (ids != 0).unsqueeze(-1)
    clean, noised = ref.encode(e), ref.encode(e + z)
    task = F.cross_entropy(clean, y)
    reg = _sym_kl(clean, noised)
    (task + 2.0 * reg).backward()
    assert loss.item() == pytest.approx(task.item(), rel=1e-6)
    assert adv.last_adv_loss.item() == pytest.approx(reg.item(), rel=1e-5)
    assert reg.item() > 1e-4  # not negligible: the gradient check covers the divergence
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=lambda m: f"{n}: {m}")


def test_the_gradient_flows_through_both_outputs_unlike_smarts():
    """With the clean side detached in both terms the gradient would differ: R3F is not
    SMART's stop-gradient symmetric KL."""
    torch.manual_seed(0)
    model = MeanPoolClassifier().train()
    ids, y = batch()
    def closure():
        logits = model(ids)
        return F.cross_entropy(logits, y), logits

    R3F(model, alpha=1.0, epsilon=0.3, generator=torch.Generator().manual_seed(4)).backward(closure)
    ref = copy.deepcopy(model)
    for p in ref.parameters():
        p.grad = None
    e = ref.emb(ids)
    z = (torch.rand(e.shape, generator=torch.Generator().manual_seed(4)) * 2 - 1) * 0.3
    z = z * (ids != 0).unsqueeze(-1)
    clean, noised = ref.encode(e), ref.encode(e + z)
    (F.cross_entropy(clean, y) + _sym_kl(clean.detach(), noised)).backward()
    diffs = [(p.grad - q.grad).abs().max().item() for p, q in zip(model.parameters(), ref.parameters())]
    assert max(diffs) > 1e-5


def test_per_token_logits_compare_real_tokens_only():
    model = tiny_bert().train()
    ids, y = batch()
    out = R3F(model, epsilon=0.5).backward(
        lambda: model(input_ids=ids, attention_mask=(ids != 0).long(), labels=y))
    assert torch.isfinite(out)


def test_r3f_needs_a_task_loss_and_checks_its_arguments():
    model = MeanPoolClassifier()
    ids, _ = batch()
    with pytest.raises(ValueError, match="R3F needs a task loss"):
        R3F(model).backward(lambda: model(ids))
    for kwargs, match in (({"epsilon": 0}, "epsilon"), ({"noise": "gauss"}, "noise"),
                          ({"alpha": -1}, "alpha")):
        fresh = nn.Sequential(nn.Embedding(5, 4))
        with pytest.raises(ValueError, match=match):
            R3F(fresh, **kwargs)
        assert not fresh[0]._forward_hooks
