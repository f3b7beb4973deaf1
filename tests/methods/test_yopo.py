"""YOPO: PGD whose inner steps run only the first layers, against a hand-run update from
the frozen adjoint, against PGD itself with layers="all", and the contract."""
import pytest
import torch
from torch import nn

from advnlp import PGD, YOPO
from advnlp.methods.yopo import find_layer_list
from tinymodels import MeanPoolClassifier, assert_grads_close, assert_state_equal, batch, grads, \
    snapshot, tiny_bert, tiny_gpt2


def _closure(model, ids, y):
    return lambda: model(input_ids=ids, labels=y).loss


def _l2_step(delta, g, alpha, eps):
    """delta + alpha * g / ||g|| per example, projected on the eps-ball (per example)."""
    d = delta + alpha * g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
    n = d.flatten(1).norm(dim=1).view(-1, 1, 1)
    return d * torch.clamp(eps / n, max=1.0)


def reference_yopo_one_layer(model, ids, y, eps, alpha, steps):
    """The parameter gradients YOPO(layers=1) must give, computed by hand: the perturbation
    is added to the word-embedding output by this test's own hook, p = dL/dh_1 at the clean
    point, inner steps ascend p . h_1(x + delta), the final pass is a normal one."""
    emb, layer = model.bert.embeddings.word_embeddings, model.bert.encoder.layer[0]
    state = {}
    h1 = emb.register_forward_hook(lambda m, i, out: out + state["delta"])
    h2 = layer.register_forward_hook(lambda m, i, out: state.__setitem__("h", out))
    try:
        shape = (*ids.shape, model.config.hidden_size)
        state["delta"] = torch.zeros(shape, requires_grad=True)
        clean = model(input_ids=ids, labels=y).loss
        g, p = torch.autograd.grad(clean, [state["delta"], state["h"]])
        delta = _l2_step(torch.zeros(shape), g, alpha, eps)
        for _ in range(steps - 1):
            state["delta"] = delta.clone().requires_grad_(True)
            model(input_ids=ids, labels=y)
            (g,) = torch.autograd.grad((state["h"] * p).sum(), state["delta"])
            delta = _l2_step(delta, g, alpha, eps)
        model.zero_grad()
        state["delta"] = torch.zeros(shape)
        model(input_ids=ids, labels=y).loss.backward()
        state["delta"] = delta
        model(input_ids=ids, labels=y).loss.backward()
    finally:
        h1.remove()
        h2.remove()
    out = grads(model)
    model.zero_grad()
    return out, delta


def test_one_layer_inner_steps_follow_the_frozen_adjoint():
    model = tiny_bert()
    ids, y = batch(pad_tail=0)
    expected, _ = reference_yopo_one_layer(model, ids, y, eps=0.5, alpha=0.2, steps=3)
    YOPO(model, epsilon=0.5, alpha=0.2, steps=3, layers=1).backward(_closure(model, ids, y))
    assert_grads_close(grads(model), expected)


def test_the_frozen_adjoint_is_an_approximation_of_pgd():
    """Not a tautology check: with layers=1 of 2 the result differs from exact PGD."""
    model = tiny_bert()
    ids, y = batch(pad_tail=0)
    PGD(model, epsilon=0.5, alpha=0.2, steps=3).backward(_closure(model, ids, y))
    exact = grads(model)
    model.zero_grad()
    YOPO(model, epsilon=0.5, alpha=0.2, steps=3, layers=1).backward(_closure(model, ids, y))
    approx = grads(model)
    assert any(not torch.allclose(approx[k], exact[k], atol=1e-6) for k in exact
               if exact[k] is not None)


@pytest.mark.parametrize("random_start", [False, True])
def test_all_layers_is_exact_pgd(random_start):
    model = tiny_bert()
    ids, y = batch()
    PGD(model, epsilon=0.5, alpha=0.2, steps=3, random_start=random_start,
        generator=torch.Generator().manual_seed(0)).backward(_closure(model, ids, y))
    exact = grads(model)
    model.zero_grad()
    YOPO(model, epsilon=0.5, alpha=0.2, steps=3, layers="all", random_start=random_start,
         generator=torch.Generator().manual_seed(0)).backward(_closure(model, ids, y))
    assert_grads_close(grads(model), exact)


def test_inner_steps_stop_after_layer_k():
    model = tiny_bert()
    ids, y = batch()
    calls = [0, 0]
    for i, layer in enumerate(model.bert.encoder.layer):
        layer.register_forward_hook(lambda m, inp, out, i=i: calls.__setitem__(i, calls[i] + 1))
    YOPO(model, epsilon=0.5, steps=4, layers=1).backward(_closure(model, ids, y))
    # clean + 3 inner + final through layer 1; only clean + final through layer 2
    assert calls == [5, 2]


def test_gradients_are_added_and_weights_and_buffers_restored():
    model = tiny_bert()
    ids, y = batch()
    adv = YOPO(model, epsilon=0.5, steps=3, layers=1)
    adv.backward(_closure(model, ids, y))
    once = grads(model)
    before = snapshot(model)
    adv.backward(_closure(model, ids, y))  # deterministic model (no dropout): same again
    assert_grads_close(grads(model), {k: None if g is None else 2 * g for k, g in once.items()})
    assert_state_equal(model, before)


def test_the_stack_of_layers_is_found_in_encoders_and_decoders():
    from transformers import LlamaConfig, LlamaForCausalLM

    assert find_layer_list(tiny_bert())[0] == "bert.encoder.layer"
    assert find_layer_list(tiny_gpt2())[0] == "transformer.h"
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=2, max_position_embeddings=32))
    assert find_layer_list(llama)[0] == "model.layers"
    ids = torch.randint(1, 40, (2, 6))
    YOPO(llama, epsilon=0.5, steps=2).backward(lambda: llama(input_ids=ids, labels=ids).loss)
    assert all(p.grad is not None for p in llama.model.layers[1].parameters())


def test_an_explicit_layer_list_and_clear_errors():
    model = MeanPoolClassifier()  # no ModuleList at all
    with pytest.raises(ValueError, match="layer_list="):
        YOPO(model)
    assert not model.emb._forward_hooks  # refused before anything was registered
    bert = tiny_bert()
    assert YOPO(bert, layer_list="bert.encoder.layer", layers=2).layer_name == "bert.encoder.layer.1"
    with pytest.raises(ValueError, match="has 2 layers"):
        YOPO(bert, layers=3)
    with pytest.raises(ValueError, match="not a non-empty nn.ModuleList"):
        YOPO(bert, layer_list="bert.pooler")
    with pytest.raises(ValueError, match="target='output'"):
        YOPO(bert, target="weight")
    with pytest.raises(ValueError, match="layers"):
        YOPO(bert, layers=0)


def test_a_closure_that_never_reaches_layer_k_is_an_error():
    bert = tiny_bert()
    stack = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    bert.unused = stack
    ids, y = batch()
    adv = YOPO(bert, layer_list=stack, steps=2)
    with pytest.raises(RuntimeError, match="never reached"):
        adv.backward(_closure(bert, ids, y))
