"""The backward(closure) contract every method shares: gradients are added,
weights and buffers restored, closures of every common shape, faults handled."""
import copy
import warnings

import pytest
import torch
from torch import nn

from advnlp import FGM, FGSM, PGD
from tinymodels import (PAD, LSTMClassifier, MeanPoolClassifier, assert_grads_close,
                      assert_state_equal, batch, grads, interrupted_on_call, snapshot, tiny_bert,
                      tiny_gpt2)

ce = nn.CrossEntropyLoss()

METHODS = [
    (FGM, {}),
    (FGM, {"target": "weight"}),
    (FGSM, {"epsilon": 0.05}),
    (FGSM, {"epsilon": 0.05, "random_start": True}),
    (PGD, {}),
    (PGD, {"target": "weight", "random_start": True}),
    (PGD, {"norm": "linf", "epsilon": 0.05, "alpha": 0.02, "scope": "token"}),
]
IDS = [f"{c.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for c, kw in METHODS]


def bert_closure(model, ids, y):
    return lambda: model(input_ids=ids, attention_mask=(ids != PAD).long(), labels=y)


@pytest.mark.parametrize("cls,kw", METHODS, ids=IDS)
def test_weights_and_buffers_bit_identical_after_backward(cls, kw):
    model = tiny_bert(dropout=0.1).train()
    ids, y = batch()
    before = snapshot(model)
    adv = cls(model, **kw)
    loss = adv.backward(bert_closure(model, ids, y))
    assert torch.isfinite(loss) and not loss.requires_grad
    assert_state_equal(model, before)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()
               if p.requires_grad and p is not model.bert.pooler.dense.weight or True)
    # the hook is disarmed afterwards: a plain forward is the unperturbed model
    model.eval()
    ref = copy.deepcopy(model)
    torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=0, rtol=0)


@pytest.mark.parametrize("cls,kw", METHODS, ids=IDS)
def test_gradient_accumulation_equals_sum_of_single_calls(cls, kw):
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    (a, ya), (b, yb) = batch(seed=1), batch(seed=2)
    kw = dict(kw)
    singles = []
    for ids, y in ((a, ya), (b, yb)):
        m = copy.deepcopy(model)
        gen = {"generator": torch.Generator().manual_seed(5)} if kw.get("random_start") else {}
        cls(m, **kw, **gen).backward(lambda: ce(m(ids), y))
        singles.append(grads(m))
    gen = {"generator": torch.Generator().manual_seed(5)} if kw.get("random_start") else {}
    adv = cls(model, **kw, **gen)
    if gen:  # each micro-batch must see the same random start as its single call
        adv.generator = torch.Generator().manual_seed(5)
    adv.backward(lambda: ce(model(a), ya))
    if gen:
        adv.generator = torch.Generator().manual_seed(5)
    adv.backward(lambda: ce(model(b), yb))
    assert_grads_close(grads(model), {k: singles[0][k] + singles[1][k] for k in singles[0]})


def test_lstm_batchnorm_buffers_end_as_after_a_plain_step():
    torch.manual_seed(0)
    model = LSTMClassifier().train()
    ids, y = batch(pad_tail=0)
    plain = copy.deepcopy(model)
    ce(plain(ids), y).backward()  # one plain step: one forward updates BatchNorm stats
    before = snapshot(model)
    PGD(model, steps=3).backward(lambda: ce(model(ids), y))
    for k, v in model.state_dict().items():
        if k.startswith("norm.") and ("running" in k or "num_batches" in k):
            assert torch.equal(v, plain.state_dict()[k]), k
        else:
            assert torch.equal(v, before[k]), k


def test_gpt2_tied_embeddings_stay_tied_and_unchanged():
    model = tiny_gpt2()
    ids, _ = batch(pad_tail=0)
    assert model.lm_head.weight is model.transformer.wte.weight
    before = snapshot(model)
    adv = FGM(model)
    assert adv.embedding is model.transformer.wte
    adv.backward(lambda: model(ids, labels=ids))
    assert model.lm_head.weight is model.transformer.wte.weight
    assert_state_equal(model, before)
    with pytest.warns(UserWarning, match="tied"):
        adv_w = PGD(model, target="weight")
    adv_w.backward(lambda: model(ids, labels=ids))
    assert model.lm_head.weight is model.transformer.wte.weight
    assert_state_equal(model, before)


def test_bart_shared_embedding_is_found():
    from transformers import BartConfig, BartForSequenceClassification

    cfg = BartConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1,
                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16,
                     decoder_ffn_dim=16, max_position_embeddings=32, num_labels=2,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2, dropout=0)
    model = BartForSequenceClassification(cfg).eval()
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 9, 2, 1]])
    adv = FGM(model)
    assert adv.embedding is model.get_input_embeddings()
    before = snapshot(model)
    adv.backward(lambda: model(ids, attention_mask=(ids != 1).long(), labels=torch.tensor([0, 1])))
    assert_state_equal(model, before)


def test_closure_result_shapes_all_work():
    model = tiny_bert()
    ids, y = batch()
    mask = (ids != PAD).long()
    results = []
    for make in (
        lambda: model(input_ids=ids, attention_mask=mask, labels=y),            # ModelOutput
        lambda: model(input_ids=ids, attention_mask=mask, labels=y, return_dict=False),  # tuple
        lambda: {"loss": ce(model(ids, attention_mask=mask).logits, y)},         # dict
        lambda: ce(model(ids, attention_mask=mask).logits, y),                   # tensor
    ):
        model.zero_grad()
        loss = FGM(model).backward(make)
        results.append((loss, grads(model)))
    for loss, g in results[1:]:
        torch.testing.assert_close(loss, results[0][0])
        assert_grads_close(g, results[0][1], atol=1e-6, rtol=1e-5)


def test_backward_fn_owns_every_backward():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    m = copy.deepcopy(model)
    FGM(m).backward(lambda: ce(m(ids), y))
    calls = []

    def scaled(loss):  # like GradScaler: the direction of g is unchanged, grads scale
        calls.append(loss.detach())
        (loss * 8.0).backward()

    FGM(model).backward(lambda: ce(model(ids), y), backward_fn=scaled)
    assert len(calls) == 2
    assert_grads_close(grads(model), {k: 8.0 * v for k, v in grads(m).items()})


def test_adv_weight_and_adv_only():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    clean_m, adv_m = copy.deepcopy(model), copy.deepcopy(model)
    ce(clean_m(ids), y).backward()
    FGM(adv_m, adv_only=True).backward(lambda: ce(adv_m(ids), y))
    base = copy.deepcopy(model)
    FGM(base).backward(lambda: ce(base(ids), y))
    adv_part = {k: grads(base)[k] - grads(clean_m)[k] for k in grads(base)}
    assert_grads_close(grads(adv_m), adv_part, atol=1e-6, rtol=1e-5)
    half = copy.deepcopy(model)
    FGM(half, adv_weight=0.5).backward(lambda: ce(half(ids), y))
    assert_grads_close(grads(half), {k: grads(clean_m)[k] + 0.5 * adv_part[k] for k in adv_part},
                       atol=1e-6, rtol=1e-5)


def test_bf16_autocast_on_cpu():
    model = tiny_bert()
    ids, y = batch()
    ref = copy.deepcopy(model)
    FGM(ref).backward(bert_closure(ref, ids, y))
    before = snapshot(model)
    adv = FGM(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = adv.backward(bert_closure(model, ids, y))
    assert torch.isfinite(loss)
    assert_state_equal(model, before)
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.isfinite(p.grad).all(), n
    a, b = model.classifier.weight.grad.flatten(), ref.classifier.weight.grad.flatten()
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.98


def test_norms_are_float32_even_for_half_gradients():
    from advnlp import _perturb as P

    g = torch.full((2, 4, 8), 300.0, dtype=torch.float16)  # sum of squares overflows fp16
    d = P.normalize(g, "l2", "example")
    assert d.dtype == torch.float32 and torch.isfinite(d).all()
    torch.testing.assert_close(d.flatten(1).norm(dim=1), torch.ones(2))


def test_embedding_called_twice_in_one_closure():
    """Pair / siamese encoders: each call gets its own per-example perturbation."""
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    (a, _), (b, _) = batch(seed=1), batch(seed=2, length=5)
    y = torch.tensor([0, 1, 2, 0])
    outs = []
    adv = FGM(model, epsilon=0.5)
    model.emb.register_forward_hook(lambda m, i, o: outs.append(o.detach()))
    adv.backward(lambda: ce(model(a) + model(b), y))
    assert len(outs) == 4
    for clean, pert in ((outs[0], outs[2]), (outs[1], outs[3])):
        torch.testing.assert_close((pert - clean).flatten(1).norm(dim=1), torch.full((4,), 0.5))


# -- faults ---------------------------------------------------------------------------------
def test_non_finite_gradient_skips_the_attack_once_and_counts():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    before = snapshot(model)
    adv = PGD(model, target="weight")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        adv.backward(lambda: ce(model(ids), y) * float("inf"))
    assert adv.skipped_steps == 1
    assert_state_equal(model, before)
    model.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adv.backward(lambda: ce(model(ids), y))
    assert adv.skipped_steps == 1


def test_zero_gradient_gives_zero_perturbation_and_finite_grads():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    closure = lambda: model.out.bias.sum() + 0.0 * model(ids).sum()  # no dependence on emb
    for cls in (FGM, FGSM, PGD):
        model.zero_grad()
        cls(model).backward(closure)
        for p in model.parameters():
            assert torch.isfinite(p.grad).all()
        torch.testing.assert_close(model.out.bias.grad, torch.full((3,), 2.0))


@pytest.mark.parametrize("target", ["output", "weight"])
def test_restored_when_the_closure_raises(target):
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    before = snapshot(model)
    adv = PGD(model, target=target)
    with pytest.raises(KeyboardInterrupt):
        adv.backward(interrupted_on_call(3, lambda: ce(model(ids), y)))
    assert_state_equal(model, before)
    ref = copy.deepcopy(model)
    torch.testing.assert_close(model(ids), ref(ids), atol=0, rtol=0)


@pytest.mark.parametrize("kwargs,match", [
    ({"epsilon": 0}, "epsilon"), ({"epsilon": -1}, "epsilon"), ({"epsilon": float("nan")}, "epsilon"),
    ({"norm": "l3"}, "norm"), ({"target": "bias"}, "target"), ({"scope": "word"}, "scope"),
    ({"adv_weight": -1}, "adv_weight"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FGM(MeanPoolClassifier(), **kwargs)


def test_bad_argument_types():
    with pytest.raises(TypeError, match="epsilon"):
        FGM(MeanPoolClassifier(), epsilon="1")
    with pytest.raises(TypeError, match="Module"):
        FGM(object())
    with pytest.raises(ValueError, match="FGM"):
        FGSM(MeanPoolClassifier(), norm="l2")


def test_bad_closures():
    model = MeanPoolClassifier()
    ids, y = batch()
    adv = FGM(model)
    with pytest.raises(ValueError, match="scalar"):
        adv.backward(lambda: nn.functional.cross_entropy(model(ids), y, reduction="none"))
    with pytest.raises(RuntimeError, match="does not require grad"):
        adv.backward(lambda: ce(model(ids), y).detach())
    with pytest.raises(TypeError, match="must return the loss"):
        adv.backward(lambda: "loss")
    with pytest.raises(TypeError, match="no .loss"):
        tiny = tiny_bert()
        FGM(tiny).backward(lambda: tiny(ids))
    with pytest.raises(TypeError, match="closure"):
        adv.backward(ce(model(ids), y))
    with pytest.raises(RuntimeError, match="never called the input embedding"):
        adv.backward(lambda: model.out.bias.sum())


def test_embedding_discovery_errors_list_candidates():
    class NoEmbedding(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

    class TwoEmbeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.words = nn.Embedding(10, 4)
            self.positions = nn.Embedding(5, 4)

        def forward(self, ids):
            return (self.words(ids) + self.positions.weight[: ids.shape[1]]).sum()

    with pytest.raises(ValueError, match="no input embedding"):
        FGM(NoEmbedding())
    with pytest.raises(ValueError, match="words .*positions|positions.*words"):
        FGM(TwoEmbeddings())
    model = TwoEmbeddings()
    assert FGM(model, embedding="words").embedding is model.words
    assert FGM(model, embedding=model.words).embedding is model.words
    with pytest.raises(ValueError, match="not a module"):
        FGM(model, embedding="word")


def test_ddp_wrapper_is_unwrapped(monkeypatch):
    model = MeanPoolClassifier()
    wrapped = nn.DataParallel(model)
    assert FGM(wrapped).embedding is model.emb


def test_bart_perturbation_applies_after_the_models_embed_scale():
    """BART with scale_embedding multiplies token embeddings by sqrt(d_model) inside
    its embedding module; the perturbation must be added after that scale."""
    from transformers import BartConfig, BartForSequenceClassification

    cfg = BartConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1,
                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16,
                     decoder_ffn_dim=16, max_position_embeddings=32, num_labels=2,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2, dropout=0,
                     scale_embedding=True)
    model = BartForSequenceClassification(cfg).eval()
    enc_emb = model.model.encoder.embed_tokens
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 9, 2, 1]])
    adv = FGM(model, epsilon=0.5, embedding="model.encoder.embed_tokens")
    outs = []
    enc_emb.register_forward_hook(lambda m, a, o: outs.append(o.detach()))
    adv.backward(lambda: model(ids, attention_mask=(ids != 1).long(), labels=torch.tensor([0, 1])))
    clean, perturbed = outs[0], outs[-1]
    torch.testing.assert_close(clean, model.model.shared.weight[ids].detach() * 4.0)  # sqrt(16)
    torch.testing.assert_close((perturbed - clean).flatten(1).norm(dim=1), torch.full((2,), 0.5))


def test_deepspeed_zero3_is_refused_with_a_clear_message():
    model = MeanPoolClassifier()
    next(model.parameters()).ds_id = 0  # what ZeRO-3 attaches to partitioned parameters
    with pytest.raises(NotImplementedError, match="ZeRO-3"):
        FGM(model)


def test_non_finite_check_flags_nan_and_inf_but_not_huge_finite_values():
    from advnlp import _perturb as P

    huge = torch.full((4, 8, 16), 3e37)  # its sum would overflow float32
    assert P.all_finite([huge, None])
    assert not P.all_finite([huge, torch.tensor([float("nan"), 1.0])])
    assert not P.all_finite([torch.tensor([1.0, float("-inf")])])
    assert P.all_finite([torch.ones(3, dtype=torch.bfloat16)])


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing(reentrant):
    """Non-reentrant checkpointing: same gradients as without. Reentrant checkpointing
    cannot give input-only gradients: a clear error names the fix."""
    model = tiny_bert().train()
    ids, y = batch()
    ref = copy.deepcopy(model)
    PGD(ref, steps=3).backward(bert_closure(ref, ids, y))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    before = snapshot(model)
    adv = PGD(model, steps=3)
    if reentrant:
        with pytest.raises(RuntimeError, match="use_reentrant': False"):
            adv.backward(bert_closure(model, ids, y))
    else:
        adv.backward(bert_closure(model, ids, y))
        assert_grads_close(grads(model), grads(ref), atol=1e-5, rtol=1e-4)
    assert_state_equal(model, before)
