"""AdversarialTrainer against a hand-written FGM loop on the same data."""
import copy

import pytest
import torch

pytest.importorskip("transformers")
from transformers import TrainingArguments  # noqa: E402

from advnlp import AWP, FGM, SMART, VAT  # noqa: E402
from advnlp.integrations.transformers import AdversarialTrainer  # noqa: E402
from tinymodels import PAD, batch, tiny_bert  # noqa: E402


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, ids, labels):
        self.rows = [{"input_ids": i, "attention_mask": (i != PAD).long(), "labels": l}
                     for i, l in zip(ids, labels)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def manual_fgm(model, ids, y, steps, lr):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    adv = FGM(model, epsilon=0.5)
    mask = (ids != PAD).long()
    for _ in range(steps):
        adv.backward(lambda: model(input_ids=ids, attention_mask=mask, labels=y))
        opt.step()
        opt.zero_grad()
    return model


def trainer_for(model, tmp_path, adversary, **args):
    ids, y = batch(n=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    targs = TrainingArguments(output_dir=str(tmp_path), max_steps=2, report_to=[],
                              use_cpu=True, logging_steps=1, save_strategy="no", max_grad_norm=0.0,
                              dataloader_drop_last=True, **args)
    return AdversarialTrainer(model=model, args=targs, train_dataset=ListDataset(ids, y),
                              optimizers=(opt, sched), adversary=adversary)


@pytest.mark.parametrize("args", [
    {"per_device_train_batch_size": 4},
    {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2},
    {"per_device_train_batch_size": 4, "gradient_checkpointing": True},
], ids=["plain", "grad-accumulation", "grad-checkpointing"])
def test_trainer_matches_manual_fgm_loop(tmp_path, args):
    """Per-example FGM makes the accumulated half-batches equal the full batch."""
    model = tiny_bert()
    ids, y = batch(n=4)
    want = manual_fgm(copy.deepcopy(model).train(), ids, y, steps=2, lr=0.1)
    trainer = trainer_for(model, tmp_path, FGM(model, epsilon=0.5), **args)
    # BERT accepts loss kwargs but averages per micro-batch anyway, so the Trainer
    # would not divide by the accumulation steps; make it divide, as for most models.
    trainer.model_accepts_loss_kwargs = False
    trainer.train()
    for (n, p), (_, q) in zip(model.named_parameters(), want.named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")
    logged = [h for h in trainer.state.log_history if "adv_loss" in h]
    assert logged and all(h["adv_loss"] > h["clean_loss"] for h in logged)


@pytest.mark.parametrize("ga", [1, 2])
def test_zero_adversarial_weight_is_exactly_the_plain_trainer(tmp_path, ga):
    """The Trainer's own loss normalisation is kept, whatever it decides."""
    model = tiny_bert()
    ref = copy.deepcopy(model)
    args = {"per_device_train_batch_size": 4 // ga, "gradient_accumulation_steps": ga}
    trainer_for(ref, tmp_path / "plain", None, **args).train()
    trainer_for(model, tmp_path / "adv", FGM(model, adv_weight=0.0), **args).train()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_trainer_without_adversary_is_plain_trainer(tmp_path):
    model = tiny_bert()
    ref = copy.deepcopy(model).train()
    ids, y = batch(n=4)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(2):
        ref(input_ids=ids, attention_mask=(ids != PAD).long(), labels=y).loss.backward()
        opt.step()
        opt.zero_grad()
    trainer_for(model, tmp_path, None, per_device_train_batch_size=4).train()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)


def test_adversary_on_another_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="same model"):
        trainer_for(tiny_bert(), tmp_path, FGM(tiny_bert()), per_device_train_batch_size=4)


def test_discrete_at_is_refused_at_construction(tmp_path):
    from transformers import BertTokenizerFast

    from advnlp import DiscreteAT

    model = tiny_bert()
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]",
                                                                "[SEP]", "good", "bad"])})
    with pytest.raises(ValueError, match="DiscreteAT edits the texts"):
        trainer_for(model, tmp_path, DiscreteAT(model, tok), per_device_train_batch_size=4)


def _seeded(cls, model, **kw):
    return cls(model, generator=torch.Generator().manual_seed(7), **kw)


def against_manual_loop(tmp_path, make_adversary, **args):
    """Train tiny_bert 2 steps with the Trainer and by hand (SGD, the same adversary),
    check they agree, and return the Trainer and how far the adversary moved the
    weights from plain training (so the agreement is not that of two plain runs)."""
    model = tiny_bert()
    ids, y = batch(n=4)
    ref = copy.deepcopy(model).train()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    adv = make_adversary(ref)
    mask = (ids != PAD).long()
    for _ in range(2):
        adv.backward(lambda: ref(input_ids=ids, attention_mask=mask, labels=y))
        opt.step()
        opt.zero_grad()
    plain = tiny_bert()
    trainer_for(plain, tmp_path / "plain", None, per_device_train_batch_size=4).train()
    trainer = trainer_for(model, tmp_path, make_adversary(model), per_device_train_batch_size=4,
                          **args)
    trainer.train()
    effect = 0.0
    for (n, p), q, p0 in zip(model.named_parameters(), ref.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")
        effect = max(effect, (q - p0).abs().max().item())
    return trainer, effect


@pytest.mark.parametrize("cls,kw", [(VAT, {"epsilon": 5.0, "alpha": 10.0}),
                                    (SMART, {"radius": 0.5, "steps": 1, "alpha": 50.0})],
                         ids=["vat", "smart"])
def test_consistency_methods_get_the_models_loss_and_logits(tmp_path, cls, kw):
    """SMART and VAT compare logits: the Trainer hands them (loss, logits), and the
    result is the hand-written loop whose closure returns the model output."""
    # In order: the random directions are drawn per row, so a shuffled batch would differ.
    trainer, effect = against_manual_loop(tmp_path, lambda m: _seeded(cls, m, **kw),
                                          train_sampling_strategy="sequential")
    assert effect > 1e-3  # 100x the tolerance: a missing regulariser would show
    logged = [h for h in trainer.state.log_history if "adv_loss" in h]
    assert logged and all(h["adv_loss"] > 0 for h in logged)


def test_trainer_bf16_autocast_matches_the_manual_loop_under_autocast(tmp_path):
    """bf16=True: the Trainer's autocast covers every adversarial pass (CPU autocast here)."""
    model = tiny_bert()
    ids, y = batch(n=4)
    ref = copy.deepcopy(model).train()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    adv = FGM(ref, epsilon=0.5)
    mask = (ids != PAD).long()
    dtypes = []
    hook = ref.bert.encoder.layer[0].intermediate.dense.register_forward_hook(
        lambda m, i, o: dtypes.append(o.dtype))
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            adv.backward(lambda: ref(input_ids=ids, attention_mask=mask, labels=y))
        opt.step()
        opt.zero_grad()
    hook.remove()
    assert set(dtypes) == {torch.bfloat16}  # the reference really ran in bf16
    trainer = trainer_for(model, tmp_path, FGM(model, epsilon=0.5), per_device_train_batch_size=4,
                          bf16=True)
    seen = []
    model.bert.encoder.layer[0].intermediate.dense.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype))
    trainer.train()
    assert len(seen) == 4 and set(seen) == {torch.bfloat16}  # clean and adversarial passes
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=2e-3, rtol=2e-2, msg=lambda m: f"{n}: {m}")


def test_awp_in_the_trainer_matches_the_manual_loop(tmp_path):
    """AWP perturbs weights, not embeddings; the Trainer takes it all the same."""
    trainer, effect = against_manual_loop(tmp_path, lambda m: AWP(m, adv_lr=1.0, adv_eps=0.05))
    assert effect > 1e-3
    assert all(h["adv_loss"] > 0 for h in trainer.state.log_history if "clean_loss" in h)


def test_tuple_outputs_give_the_consistency_methods_the_logits(tmp_path):
    """return_dict=False: the Trainer's outputs are (loss, logits); VAT must get the logits
    (not the loss) and train exactly as with dict outputs."""
    runs = []
    for return_dict in (True, False):
        model = tiny_bert()
        model.config.return_dict = return_dict
        trainer_for(model, tmp_path / str(return_dict), _seeded(VAT, model, epsilon=5.0, alpha=10.0),
                    per_device_train_batch_size=4, train_sampling_strategy="sequential").train()
        runs.append(model)
    for (n, p), q in zip(runs[0].named_parameters(), runs[1].parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0, msg=lambda m: f"{n}: {m}")


def test_adversary_mask_reaches_the_method(tmp_path, monkeypatch):
    """adversary_mask='attention_mask' / 'prompt' / a function: the mask each step passes."""
    from tinymodels import lm_batch, tiny_gpt2

    b = lm_batch(n=4, padding="left")

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {k: v[i] for k, v in b.items()}

    seen = []
    backward = FGM.backward
    monkeypatch.setattr(FGM, "backward", lambda self, c, f=None, *, mask=None:
                        seen.append(mask) or backward(self, c, f, mask=mask))
    for spec, want in (("attention_mask", b["attention_mask"].bool()),
                       ("prompt", (b["labels"] == -100) & b["attention_mask"].bool()),
                       (lambda inputs: inputs["attention_mask"] * 0 + 1, torch.ones(4, 8))):
        model = tiny_gpt2().train()
        targs = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True,
                                  save_strategy="no", per_device_train_batch_size=4)
        AdversarialTrainer(model=model, args=targs, train_dataset=Rows(), adversary=FGM(model),
                           adversary_mask=spec).train()
        rows = lambda m: sorted(map(tuple, m.int().tolist()))  # noqa: E731 (the Trainer shuffles)
        assert rows(seen[-1]) == rows(want)
    with pytest.raises(ValueError, match="perturbs weights"):
        model = tiny_gpt2()
        AdversarialTrainer(model=model, args=targs, train_dataset=Rows(), adversary=AWP(model),
                           adversary_mask="prompt")
