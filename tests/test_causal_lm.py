"""Every method on tiny causal LMs (Llama, Qwen2 and GPT-2 with tied embeddings, Gemma with
its scaled embedding): completion-only labels, padding on either side, mask= for embeddings
without padding_idx; weights, buffers and ties as a plain step leaves them."""
import pytest
import torch

from advnlp import AWP, FGM, FGSM, NEFTune, PGD, R3F, SMART, VAT, YOPO, FreeAT, FreeLB
from tinymodels import (assert_state_equal, lm_batch, snapshot, tiny_gemma, tiny_gpt2,
                        tiny_llama, tiny_qwen2)

MODELS = {"llama": tiny_llama, "qwen2-tied": tiny_qwen2, "gpt2-tied": tiny_gpt2,
          "gemma-scaled": tiny_gemma}
METHODS = {"fgm": (FGM, {}), "fgsm": (FGSM, {"epsilon": 0.05}), "pgd": (PGD, {"steps": 2}),
           "freelb": (FreeLB, {}), "freeat": (FreeAT, {}), "yopo": (YOPO, {}),
           "smart": (SMART, {}), "vat": (VAT, {}), "r3f": (R3F, {}), "awp": (AWP, {}),
           "neftune": (NEFTune, {})}
NEEDS_OUTPUT = ("smart", "vat", "r3f")


def _closure(model, b, method):
    if method in NEEDS_OUTPUT:
        return lambda: model(**b)
    return lambda: model(**b).loss


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", list(MODELS))
def test_every_method_on_every_causal_lm(name, method, padding):
    model = MODELS[name]().train()
    b = lm_batch(padding=padding)
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    before = snapshot(model)
    cls, kw = METHODS[method]
    adv = cls(model, **kw)
    mask = None if method == "awp" else b["attention_mask"]
    loss = adv.backward(_closure(model, b, method), mask=mask)
    assert torch.isfinite(loss)
    assert_state_equal(model, before)
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tied
    assert tied == (name != "llama")
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    adv.remove()


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("padding", ["right", "left"])
def test_fgm_perturbs_real_tokens_only_after_the_models_own_scaling(name, padding):
    """The perturbation that reaches the first decoder layer: zero on padding, epsilon per
    example. For Gemma the hook sits after its sqrt(d) scaling (inside the embedding module),
    so the layers see epsilon, not epsilon * sqrt(d)."""
    model = MODELS[name]().train()
    b = lm_batch(padding=padding)
    layers = model.model.layers if hasattr(model, "model") else model.transformer.h
    seen = []
    hook = layers[0].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach()),
        with_kwargs=True)
    FGM(model, epsilon=0.7).backward(lambda: model(**b).loss, mask=b["attention_mask"])
    hook.remove()
    clean, adv = seen
    delta = adv - clean
    pad = b["attention_mask"] == 0
    assert torch.all(delta[pad] == 0)
    norms = delta.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, 0.7), atol=1e-4, rtol=1e-4)


def test_without_mask_a_model_with_no_padding_idx_perturbs_padding_too():
    """Why mask= exists: Llama's embedding has no padding_idx, so nothing tells advnlp
    which positions are padding; a padded position's gradient is 0 for FGM, but a random
    start (FreeLB, NEFTune) lands there."""
    model = tiny_llama().train()
    b = lm_batch(padding="left")
    seen = []
    h = model.model.layers[0].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach()),
        with_kwargs=True)
    emb_out = model.get_input_embeddings()(b["input_ids"]).detach()
    NEFTune(model, generator=torch.Generator().manual_seed(0)).backward(lambda: model(**b).loss)
    NEFTune(model, generator=torch.Generator().manual_seed(0)).backward(
        lambda: model(**b).loss, mask=b["attention_mask"])
    h.remove()
    pad = b["attention_mask"] == 0
    assert (seen[0] - emb_out)[pad].abs().max() > 0
    assert torch.all((seen[1] - emb_out)[pad] == 0)


@pytest.mark.parametrize("cls", [SMART, VAT, R3F])
def test_per_token_divergences_count_the_masked_positions(cls):
    model = tiny_qwen2().train()
    b = lm_batch(padding="left")
    adv = cls(model)
    adv.backward(lambda: model(**b), mask=b["attention_mask"])
    torch.testing.assert_close(adv._weights, b["attention_mask"].reshape(-1).float())
    prompt_only = (b["labels"] == -100) & (b["attention_mask"] == 1)
    adv.backward(lambda: model(**b), mask=prompt_only)
    torch.testing.assert_close(adv._weights, prompt_only.reshape(-1).float())


def test_prompt_only_perturbation():
    """Xhonneux et al.: perturb the instruction, train on the completion."""
    model = tiny_llama().train()
    b = lm_batch(padding="right")
    prompt = (b["labels"] == -100) & (b["attention_mask"] == 1)
    seen = []
    h = model.model.layers[0].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach()),
        with_kwargs=True)
    PGD(model, epsilon=0.5, steps=2).backward(lambda: model(**b).loss, mask=prompt)
    h.remove()
    delta = seen[-1] - seen[0]
    assert torch.all(delta[~prompt] == 0) and delta[prompt].abs().max() > 0


@pytest.mark.parametrize("bad, match", [
    (torch.ones(3, 5), "mask= has shape"),
    (torch.full((3, 8), 0.5), "0/1 or bool"),
    (torch.ones(24), "a \\(batch, length\\) tensor"),
    ([[1] * 8] * 3, "a \\(batch, length\\) tensor"),
])
def test_a_bad_mask_is_a_clear_error_and_leaves_the_model(bad, match):
    model = tiny_llama().train()
    b = lm_batch()
    before = snapshot(model)
    adv = FGM(model)
    with pytest.raises(ValueError, match=match):
        adv.backward(lambda: model(**b).loss, mask=bad)
    assert_state_equal(model, before)
    assert adv._hook.positions is None and adv._hook.mode == "off"
    assert torch.isfinite(adv.backward(lambda: model(**b).loss))


def test_mask_is_refused_where_there_are_no_positions():
    model = tiny_llama().train()
    b = lm_batch()
    with pytest.raises(ValueError, match="mask= is for the embedding methods"):
        AWP(model).backward(lambda: model(**b).loss, mask=b["attention_mask"])
    with pytest.warns(UserWarning):  # the tied-weight warning of target="weight"
        adv = FGM(tiny_qwen2().train(), target="weight")
    with pytest.raises(ValueError, match="target='weight'"):
        adv.backward(lambda: None, mask=b["attention_mask"])
