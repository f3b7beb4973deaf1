"""AdversarialSFTTrainer (TRL) against a hand loop on the batches it saw: a tiny Llama, a
tiny chat-format dataset, gradient accumulation and packing off/on, LoRA through
peft_config, prompt-only perturbation, and TRL's own NEFTune refused beside advnlp's."""
import copy

import pytest
import torch
import torch.nn.functional as F

trl = pytest.importorskip("trl")
pytest.importorskip("peft")

from advnlp import FGM, VAT, DiscreteAT, NEFTune, PGD, R3F, SMART  # noqa: E402
from advnlp.integrations.trl import AdversarialSFTTrainer  # noqa: E402

WORDS = ("hello hi there how are you fine thanks what is the weather sunny rainy today "
         "tell me a joke no sorry good bye name my friend").split()
CHAT = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}")
PAIRS = [("hello there", "hi how are you"), ("how are you", "fine thanks"),
         ("what is the weather", "sunny today"), ("tell me a joke", "no sorry"),
         ("what is my name", "my friend"), ("good bye", "bye friend"),
         ("is it rainy", "no it is sunny"), ("hi", "hello there friend")]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<eos>", "user", "assistant", ":"]
                                        + sorted(set(WORDS) | {"it", "bye"}))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")
    fast.chat_template = CHAT
    return fast


def _model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=8, max_position_embeddings=64, pad_token_id=0, eos_token_id=2,
                      bos_token_id=None)
    return LlamaForCausalLM(cfg)


def _dataset():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [{"role": "user", "content": p}],
                               "completion": [{"role": "assistant", "content": c}]}
                              for p, c in PAIRS])


def _config(tmp_path, **kw):
    from trl import SFTConfig

    args = dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                learning_rate=0.1, optim="sgd", lr_scheduler_type="constant", warmup_steps=0,
                max_grad_norm=0.0, report_to=[], use_cpu=True, save_strategy="no",
                logging_steps=1, seed=0, dataloader_drop_last=True, gradient_checkpointing=False,
                bf16=False)
    args.update(kw)
    return SFTConfig(**args)


def _recording(monkeypatch):
    seen = []
    closure = AdversarialSFTTrainer.adversarial_closure

    def record(self, model, inputs, n):
        seen.append(({k: v.detach().clone() for k, v in inputs.items()
                      if isinstance(v, torch.Tensor)}, n))
        return closure(self, model, inputs, n)

    monkeypatch.setattr(AdversarialSFTTrainer, "adversarial_closure", record)
    return seen


def _logits(model, inputs):
    return model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits


def _nll(model, inputs, n, logits=None):
    """By hand: the summed next-token NLL over labelled tokens / num_items_in_batch."""
    logits = _logits(model, inputs) if logits is None else logits
    target = inputs["labels"][:, 1:]
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                          ignore_index=-100, reduction="sum")
    count = (target != -100).sum() if n is None else n
    return nll / count


@pytest.mark.parametrize("kw", [{}, {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2},
                                {"packing": True, "max_length": 12, "per_device_train_batch_size": 2}],
                         ids=["plain", "grad-accumulation", "packing"])
def test_sft_with_fgm_equals_a_hand_loop_on_the_same_batches(tokenizer, tmp_path, monkeypatch, kw):
    seen = _recording(monkeypatch)
    model = _model(tokenizer)
    ref = copy.deepcopy(model)
    trainer = AdversarialSFTTrainer(model=model, args=_config(tmp_path, **kw),
                                    train_dataset=_dataset(), processing_class=tokenizer,
                                    adversary=FGM(model, epsilon=0.5))
    trainer.train()
    ga = kw.get("gradient_accumulation_steps", 1)
    assert len(seen) == 2 * ga
    if kw.get("packing"):
        assert "position_ids" in seen[0][0]
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    adv = FGM(ref, epsilon=0.5)
    for step in range(2):
        for inputs, n in seen[step * ga:(step + 1) * ga]:
            adv.backward(lambda: _nll(ref, inputs, n))
        opt.step()
        opt.zero_grad()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), _model(tokenizer).parameters()))
    logged = [h for h in trainer.state.log_history if "adv_loss" in h]
    assert logged and all(h["adv_loss"] > h["clean_loss"] for h in logged)
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    plain = sum(int(i["attention_mask"].sum()) if "attention_mask" in i else i["input_ids"].numel()
                for i, _ in seen)
    assert tokens[-1] == plain  # booked once per batch, not once per pass


@pytest.mark.parametrize("cls", [SMART, R3F])
def test_methods_that_compare_logits_get_the_sft_loss_with_a_graph(tokenizer, tmp_path, monkeypatch, cls):
    seen = _recording(monkeypatch)
    model = _model(tokenizer)
    ref = copy.deepcopy(model)
    gen = {"generator": torch.Generator().manual_seed(0)}
    trainer = AdversarialSFTTrainer(model=model, args=_config(tmp_path, max_steps=1),
                                    train_dataset=_dataset(), processing_class=tokenizer,
                                    adversary=cls(model, **gen))
    trainer.train()
    inputs, n = seen[0]
    adv = cls(ref, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)

    def closure():
        logits = _logits(ref, inputs)
        return _nll(ref, inputs, n, logits), logits

    adv.backward(closure)
    opt.step()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_lora_through_peft_config_and_prompt_only_perturbation(tokenizer, tmp_path):
    from peft import LoraConfig

    model = _model(tokenizer)
    seen = []

    def factory(m):
        layer0 = m.get_base_model().model.layers[0]
        layer0.register_forward_pre_hook(
            lambda mod, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach()),
            with_kwargs=True)
        return PGD(m, epsilon=0.5, steps=2)

    trainer = AdversarialSFTTrainer(
        model=model, args=_config(tmp_path, max_steps=1), train_dataset=_dataset(),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
        adversary_factory=factory, adversary_mask="prompt")
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    batches = []
    positions = trainer.positions
    trainer.positions = lambda inputs: batches.append(inputs) or positions(inputs)
    trainer.train()
    inputs = batches[0]
    prompt = (inputs["labels"] == -100) & inputs["attention_mask"].bool()
    delta = seen[-1] - seen[0]  # the last pass (adversarial) minus the clean one
    assert torch.all(delta[~prompt] == 0) and delta[prompt].abs().max() > 0
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(base[n], after[n]) for n in base)  # only adapters moved


def test_trls_own_neftune_beside_advnlps_is_refused(tokenizer, tmp_path):
    model = _model(tokenizer)
    trainer = AdversarialSFTTrainer(model=model, args=_config(tmp_path, neftune_noise_alpha=5.0),
                                    train_dataset=_dataset(), processing_class=tokenizer,
                                    adversary=NEFTune(model))
    with pytest.raises(RuntimeError, match="noise would be added twice"):
        trainer.train()


def test_bad_arguments(tokenizer, tmp_path):
    model = _model(tokenizer)
    common = dict(model=model, args=_config(tmp_path), train_dataset=_dataset(),
                  processing_class=tokenizer)
    with pytest.raises(ValueError, match="not both"):
        AdversarialSFTTrainer(**common, adversary=FGM(model), adversary_factory=FGM)
    with pytest.raises(ValueError, match="adversary_mask takes"):
        AdversarialSFTTrainer(**common, adversary=FGM(model), adversary_mask="completion")
    with pytest.raises(ValueError, match="not reproduced"):
        AdversarialSFTTrainer(**{**common, "args": _config(tmp_path, loss_type="dft")},
                              adversary=SMART(model))


def _hook_counts(model):
    return {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()}


@pytest.mark.parametrize("factory,config", [
    (lambda m: VAT(m), {"loss_type": "dft"}),
    (lambda m: SMART(m), {"label_smoothing_factor": 0.1}),
], ids=["vat-dft", "smart-label-smoothing"])
def test_a_refused_factory_method_leaves_the_model_as_it_was(tokenizer, tmp_path, factory, config):
    # The caller holds no handle to what the factory built: the refusal must remove it.
    model = _model(tokenizer)
    before = _hook_counts(model)
    ids = torch.tensor([[3, 5, 7, 9]])
    with torch.no_grad():
        logits = model(ids).logits
    with pytest.raises(ValueError, match="not reproduced"):
        AdversarialSFTTrainer(model=model, args=_config(tmp_path, **config),
                              train_dataset=_dataset(), processing_class=tokenizer,
                              adversary_factory=factory)
    assert _hook_counts(model) == before
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits)


def test_discrete_at_is_refused_at_construction(tokenizer, tmp_path):
    model = _model(tokenizer)
    before = _hook_counts(model)
    common = dict(model=model, args=_config(tmp_path), train_dataset=_dataset(),
                  processing_class=tokenizer)
    with pytest.raises(ValueError, match="DiscreteAT edits the texts.*own loop"):
        AdversarialSFTTrainer(**common, adversary_factory=lambda m: DiscreteAT(m, tokenizer))
    assert _hook_counts(model) == before
    with pytest.raises(ValueError, match="DiscreteAT edits the texts"):
        AdversarialSFTTrainer(**common, adversary=DiscreteAT(model, tokenizer))
