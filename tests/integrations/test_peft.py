"""LoRA (PEFT): the base model frozen, embedding included. The output-target methods still
perturb (the perturbation is not a parameter), only the adapters get gradients, nothing
frozen changes, target="weight" is refused, and merge_and_unload() afterwards is the model
the adapters define."""
import pytest
import torch

from advnlp import AWP, FGM, NEFTune, PGD, R3F, SMART, VAT, YOPO, FreeAT, FreeLB
from tinymodels import lm_batch, snapshot, tiny_llama, tiny_qwen2

peft = pytest.importorskip("peft")

METHODS = {"fgm": (FGM, {}), "pgd": (PGD, {"steps": 2}), "freelb": (FreeLB, {}),
           "freeat": (FreeAT, {}), "yopo": (YOPO, {}), "smart": (SMART, {}), "vat": (VAT, {}),
           "r3f": (R3F, {}), "awp": (AWP, {}), "neftune": (NEFTune, {})}


def _lora(make):
    from peft import LoraConfig, get_peft_model

    base = make().train()
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           lora_dropout=0.0, init_lora_weights=False))


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen2], ids=["llama", "qwen2-tied"])
def test_only_the_adapters_learn_and_nothing_frozen_changes(make, method):
    model = _lora(make)
    emb = model.get_input_embeddings()
    assert not emb.weight.requires_grad
    b = lm_batch(padding="left")
    before = snapshot(model)
    cls, kw = METHODS[method]
    adv = cls(model, **kw)
    closure = (lambda: model(**b)) if method in ("smart", "vat", "r3f") else (lambda: model(**b).loss)
    loss = adv.backward(closure, mask=None if method == "awp" else b["attention_mask"])
    assert torch.isfinite(loss)
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    for n, p in model.named_parameters():
        if "lora_" in n:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert not p.requires_grad and p.grad is None, n
    adv.remove()


def test_the_perturbation_reaches_a_frozen_embedding():
    """FGM's adversarial pass is not the clean pass even though nothing upstream of the
    adapters can learn: its gradient differs from twice the clean gradient."""
    model = _lora(tiny_llama)
    b = lm_batch()
    FGM(model, epsilon=1.0).backward(lambda: model(**b).loss, mask=b["attention_mask"])
    fgm = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model(**b).loss.backward()
    clean = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert max((fgm[n] - 2 * clean[n]).abs().max().item() for n in clean) > 1e-6


def test_target_weight_is_refused_on_a_frozen_embedding():
    model = _lora(tiny_llama)
    hooks = len(model.get_input_embeddings()._forward_hooks)
    with pytest.raises(ValueError, match="frozen .*target='output'"):
        FGM(model, target="weight")
    assert len(model.get_input_embeddings()._forward_hooks) == hooks


def test_merge_and_unload_after_adversarial_steps_is_the_adapted_model():
    model = _lora(tiny_llama)
    b = lm_batch()
    emb_before = model.get_input_embeddings().weight.detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    adv = PGD(model, epsilon=0.5, steps=2)
    for _ in range(3):
        adv.backward(lambda: model(**b).loss, mask=b["attention_mask"])
        opt.step()
        opt.zero_grad()
    adv.remove()
    model.eval()
    with torch.no_grad():
        adapted = model(**b).logits
    merged = model.merge_and_unload()
    assert not any(type(m).__name__.startswith("Lora") for m in merged.modules())
    assert not merged.get_input_embeddings()._forward_hooks
    with torch.no_grad():
        torch.testing.assert_close(merged(**b).logits, adapted, atol=1e-5, rtol=1e-4)
    assert torch.equal(merged.get_input_embeddings().weight, emb_before)
