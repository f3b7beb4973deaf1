"""NEFTune: its noise has transformers' neftune_noise_alpha distribution (bound, mean,
variance, a two-sample test), only on real tokens, one pass, and never twice."""
import copy

import pytest
import torch
from torch import nn

from advnlp import NEFTune
from tinymodels import MeanPoolClassifier, assert_state_equal, batch, snapshot


class Probe(nn.Module):
    """An embedding whose (hooked) output the model keeps, then a tiny head."""

    def __init__(self, padding_idx=None, vocab=30, dim=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=padding_idx)
        self.head = nn.Linear(dim, 3)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, ids):
        e = self.emb(ids)
        self.seen = e.detach().clone()
        return self.head(torch.tanh(e)).mean()


def _advnlp_noise(model, ids, draws, mask=None, seed=0):
    adv = NEFTune(model, alpha=5.0, generator=torch.Generator().manual_seed(seed))
    out = []
    for _ in range(draws):
        adv.backward(lambda: model(ids), mask=mask)
        out.append(model.seen - model.emb(ids).detach())
    adv.remove()
    return torch.stack(out)


def _transformers_noise(ids, draws, dim=16):
    from transformers.integrations.neftune import neftune_post_forward_hook

    torch.manual_seed(0)
    emb = nn.Embedding(30, dim)
    emb.neftune_noise_alpha = 5.0
    emb.register_forward_hook(neftune_post_forward_hook)
    emb.train()
    clean = emb.weight.detach()[ids]
    return torch.stack([emb(ids).detach() - clean for _ in range(draws)])


def test_the_noise_has_transformers_neftune_distribution():
    from scipy.stats import ks_2samp

    torch.manual_seed(1)
    model = Probe().train()
    ids = torch.randint(1, 30, (8, 12))
    ours, theirs = _advnlp_noise(model, ids, 20), _transformers_noise(ids, 20)
    bound = 5.0 / (12 * 16) ** 0.5  # alpha / sqrt(L * d)
    for x in (ours, theirs):
        assert x.abs().max() <= bound * (1 + 1e-5)
        assert x.abs().max() > 0.99 * bound
        assert abs(x.mean().item()) < 0.01 * bound
        assert x.var().item() == pytest.approx(bound ** 2 / 3, rel=0.03)  # U(-b, b)
    assert ks_2samp(ours.flatten().numpy(), theirs.flatten().numpy()).pvalue > 0.01


@pytest.mark.parametrize("how", ["padding_idx", "mask"])
def test_only_real_tokens_are_noised_each_at_its_own_length(how):
    torch.manual_seed(1)
    model = Probe(padding_idx=0 if how == "padding_idx" else None).train()
    ids = torch.randint(1, 30, (4, 10))
    ids[1, 6:] = 0
    ids[2, 3:] = 0
    real = (ids != 0).long()
    noise = _advnlp_noise(model, ids, 30, mask=real if how == "mask" else None)
    assert torch.all(noise[:, ids == 0] == 0)
    for i in range(4):
        L = int(real[i].sum())
        bound = 5.0 / (L * 16) ** 0.5
        row = noise[:, i, :L]
        assert row.abs().max() <= bound * (1 + 1e-5) and row.abs().max() > 0.95 * bound


def test_one_pass_whose_gradient_is_the_noised_loss_and_weights_untouched():
    torch.manual_seed(0)
    model = MeanPoolClassifier().train()
    ids, y = batch()
    ce = nn.CrossEntropyLoss()
    calls, added = [0], []

    def closure():
        calls[0] += 1
        return ce(model(ids), y)

    probe = model.emb.register_forward_hook(lambda m, a, o: added.append(o.detach().clone()))
    before = snapshot(model)
    adv = NEFTune(model, alpha=5.0, generator=torch.Generator().manual_seed(3))
    loss = adv.backward(closure)
    probe.remove()
    assert calls[0] == 1
    assert_state_equal(model, before)
    # by hand: the same noise (same generator), the loss at e + noise, its gradient
    ref = copy.deepcopy(model)
    for p in ref.parameters():
        p.grad = None
    e = ref.emb(ids)
    mask = (ids != 0).unsqueeze(-1).float()
    g = torch.Generator().manual_seed(3)
    u = (torch.rand(e.shape, generator=g) * 2 - 1) * mask
    noise = u * 5.0 / torch.sqrt(mask.sum(dim=(1, 2), keepdim=True) * e.shape[-1])
    want = ce(ref.encode(e + noise), y)
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=lambda m: f"{n}: {m}")


def test_eval_mode_is_a_plain_pass():
    torch.manual_seed(1)
    model = Probe().eval()
    ids = torch.randint(1, 30, (2, 5))
    NEFTune(model).backward(lambda: model(ids))
    assert torch.equal(model.seen, model.emb(ids).detach())


def test_transformers_neftune_on_the_same_embedding_is_refused():
    from transformers.integrations.neftune import activate_neftune, deactivate_neftune
    from tinymodels import tiny_gpt2

    model = tiny_gpt2().train()
    handle = activate_neftune(model, 5.0)
    with pytest.raises(RuntimeError, match="noise would be added twice"):
        NEFTune(model)
    deactivate_neftune(model, handle)
    adv = NEFTune(model)
    handle = activate_neftune(model, 5.0)  # as a Trainer does when train() starts
    ids = torch.randint(1, 40, (2, 6))
    with pytest.raises(RuntimeError, match="neftune_noise_alpha=5.0"):
        adv.backward(lambda: model(input_ids=ids, labels=ids).loss)
    deactivate_neftune(model, handle)
    assert torch.isfinite(adv.backward(lambda: model(input_ids=ids, labels=ids).loss))


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
def test_alpha_is_checked_before_anything_is_registered(bad):
    model = MeanPoolClassifier()
    with pytest.raises(ValueError, match="alpha"):
        NEFTune(model, alpha=bad)
    assert not model.emb._forward_hooks
