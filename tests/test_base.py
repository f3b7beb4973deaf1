"""What every method shares through the one base: a constructor that raises leaves the
model exactly as it was, the public ``needs_logits``, and the NaN/inf skip report of the
one backward() template."""
import inspect
import math
import warnings

import pytest
import torch
from torch import nn

from advnlp import (AWP, FGM, FGSM, PGD, R3F, SMART, VAT, YOPO, Adversary, FreeAT, FreeLB,
                    NEFTune, StepAborted)
from tinymodels import (LSTMClassifier, MeanPoolClassifier, StackClassifier, assert_state_equal,
                        batch, snapshot, tiny_bert)

INVALID = {
    FGM: [{"epsilon": 0}, {"epsilon": -1}, {"epsilon": math.nan}, {"epsilon": math.inf},
          {"epsilon": "1"}, {"norm": "l3"}, {"scope": "word"}, {"target": "bias"},
          {"adv_weight": -1}, {"adv_weight": math.nan}, {"embedding": "no.such.module"},
          {"relative": "yes"}, {"relative": True, "target": "weight"}],
    FGSM: [{"epsilon": 0}, {"alpha": 0}, {"alpha": -1}, {"norm": "l2"}, {"scope": "word"},
           {"target": "bias"}, {"adv_weight": -1}],
    PGD: [{"steps": 0}, {"steps": 1.5}, {"steps": True}, {"alpha": 0}, {"alpha": -0.1},
          {"alpha": math.inf}, {"epsilon": 0}, {"norm": "l1"}, {"target": "bias"},
          {"adv_weight": -1}],
    FreeLB: [{"adv_steps": 0}, {"adv_lr": 0}, {"init_mag": -1}, {"max_norm": -1},
             {"norm": "l3"}, {"embedding": "no.such.module"}, {"relative": 1}],
    FreeAT: [{"epsilon": 0}, {"replays": 0}, {"step_size": 0}, {"target": "weight"},
             {"adv_weight": 0.5}, {"adv_only": True}, {"norm": "l1"}, {"scope": "word"}],
    SMART: [{"alpha": -1}, {"noise_var": 0}, {"step_size": 0}, {"epsilon": 0}, {"radius": 0},
            {"steps": 0}, {"output_type": "logits"}, {"bregman": -1}, {"bregman_beta": 1},
            {"loss_fn": 3}, {"norm": "l3"}],
    VAT: [{"epsilon": 0}, {"xi": 0}, {"power_iters": 0}, {"alpha": -1},
          {"output_type": "logits"}, {"target": "weight"}, {"adv_weight": 2.0},
          {"loss_fn": 3}, {"scope": "word"}],
    AWP: [{"adv_lr": 0}, {"adv_eps": 0}, {"adv_weight": math.inf}, {"start_step": -1},
          {"params": "weight"}, {"params": ["no.such.weight"]}, {"module_types": (int,)},
          {"exclude": ["no.such.weight"]}],
}
CASES = [(cls, kw) for cls, kws in INVALID.items() for kw in kws]


def _hooks(model: nn.Module) -> dict:
    """Every hook and instance attribute torch lets a library leave on a model."""
    out = {}
    for name, m in model.named_modules():
        out[name] = (
            sorted(vars(m)),
            [len(getattr(m, a)) for a in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                          "_backward_pre_hooks", "_state_dict_hooks",
                                          "_load_state_dict_pre_hooks")],
        )
    for name, p in model.named_parameters():
        out["param:" + name] = len(p._backward_hooks or {})
    return out


@pytest.mark.parametrize("model_fn", [MeanPoolClassifier, tiny_bert], ids=["meanpool", "bert"])
@pytest.mark.parametrize("cls,kwargs", CASES, ids=[f"{c.__name__}-{k}" for c, k in CASES])
def test_a_constructor_that_raises_leaves_the_model_as_it_was(cls, kwargs, model_fn):
    torch.manual_seed(0)
    model = model_fn()
    before_hooks, before_state = _hooks(model), snapshot(model)
    with pytest.raises((TypeError, ValueError)):
        cls(model, **kwargs)
    assert _hooks(model) == before_hooks
    assert_state_equal(model, before_state)


def _bool_arguments(cls):
    """Every constructor argument of ``cls`` whose default is a bool (its bases' too, as
    far as ``**kwargs`` passes them on)."""
    names = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            params = inspect.signature(klass.__init__).parameters.values()
            names |= {p.name for p in params if isinstance(p.default, bool)}
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
    return sorted(names)


BOOLS = [(cls, name, value) for cls in (FGM, FGSM, PGD, YOPO, FreeLB, FreeAT, SMART, VAT,
                                        NEFTune, R3F, AWP)
         for name in _bool_arguments(cls) for value in ("no", "yes", 0, 1, None)]


def test_the_methods_have_the_bool_arguments_the_next_test_checks():
    assert {n for _, n, _ in BOOLS} >= {"relative", "adv_only", "random_start"}


@pytest.mark.parametrize("cls,name,value", BOOLS,
                         ids=[f"{c.__name__}-{n}-{v!r}" for c, n, v in BOOLS])
def test_every_bool_argument_takes_only_a_bool(cls, name, value):
    # bool('no') is True: PGD(random_start='no') must not start at random
    model = tiny_bert()
    before = _hooks(model)
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        cls(model, **{name: value})
    assert _hooks(model) == before


def test_the_seed_style_attack_takes_only_a_bool():
    adv = FGM(MeanPoolClassifier())
    with pytest.raises(TypeError, match="is_first_attack must be True or False"):
        adv.attack(is_first_attack="no")


def test_the_hook_test_would_see_a_leftover_hook():
    """The check above is not vacuous: a working constructor leaves its one hook."""
    model = MeanPoolClassifier()
    before = _hooks(model)
    adv = PGD(model)
    assert _hooks(model) != before
    adv.remove()
    assert _hooks(model) == before


@pytest.mark.parametrize("cls,wants", [(FGM, False), (FGSM, False), (PGD, False), (FreeLB, False),
                                       (FreeAT, False), (AWP, False), (SMART, True), (VAT, True)])
def test_every_method_is_an_adversary_and_says_whether_it_needs_logits(cls, wants):
    adv = cls(MeanPoolClassifier())
    assert isinstance(adv, Adversary)
    assert adv.needs_logits is wants


def _one_step(cls, factor=1.0):
    """A method on a fresh model and a call of its backward() with the loss (or, for the
    consistency methods, the logits) times ``factor``."""
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    adv = cls(model)
    ce = nn.functional.cross_entropy
    if adv.needs_logits:
        return adv, model, lambda: adv.backward(lambda: model(ids) * factor, labels=y)
    # With factor inf: a finite clean loss whose gradient is inf (the adversarial part skips).
    return adv, model, lambda: adv.backward(lambda: ce(model(ids), y) * factor)


@pytest.mark.parametrize("cls", [FGM, FGSM, PGD, FreeLB, FreeAT, SMART, VAT, AWP])
def test_a_skipped_step_is_counted_and_blamed_on_the_callers_line(cls):
    adv, _, call = _one_step(cls, math.inf)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    skips = [w for w in caught if "non-finite" in str(w.message)]
    assert len(skips) == 1 and skips[0].category is RuntimeWarning
    assert skips[0].filename == __file__  # the user's line, not advnlp's
    assert cls.__name__ in str(skips[0].message)
    assert adv.skipped_steps == 1


@pytest.mark.parametrize("cls", [FGM, FGSM, PGD, FreeLB, FreeAT, SMART, VAT, AWP])
def test_no_grad_and_a_frozen_model_are_named_as_the_cause(cls):
    adv, model, step = _one_step(cls)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"torch.no_grad\(\)"):
        step()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(RuntimeError, match="no parameter of the model requires grad"):
        step()
    assert all(p.grad is None for p in model.parameters())


ABORTABLE = [(PGD, {"steps": 6}), (FreeLB, {"adv_steps": 6}), (SMART, {"steps": 6}),
             (VAT, {"power_iters": 6}), (YOPO, {"steps": 6}), (AWP, {})]


def _counting_step(adv, model):
    """A backward() call on ``model``, and the count of the closure's calls."""
    ids, y = batch()
    calls = [0]

    def forward():
        calls[0] += 1
        return model(ids)

    if adv.needs_logits:
        return calls, lambda: adv.backward(forward, labels=y)
    return calls, lambda: adv.backward(lambda: nn.functional.cross_entropy(forward(), y))


@pytest.mark.parametrize("cls,kw", ABORTABLE, ids=[c.__name__ for c, _ in ABORTABLE])
def test_stop_check_ends_a_step_between_two_passes_and_restores_the_model(cls, kw):
    # What lets `advnlp train` stop within one pass on SIGTERM, however long a step is.
    torch.manual_seed(0)
    model = (StackClassifier() if cls is YOPO else LSTMClassifier()).train()  # BatchNorm buffers
    adv = cls(model, **kw)
    before = snapshot(model)
    calls, step = _counting_step(adv, model)
    after = 1 if cls is AWP else 3  # AWP has two passes
    adv.stop_check = lambda: calls[0] >= after
    with pytest.raises(StepAborted):
        step()
    assert calls[0] == after  # no pass ran after the one during which the stop came
    assert_state_equal(model, before)  # weights and BatchNorm statistics as before the step
    adv.stop_check = None
    step()  # the method goes on working
    assert calls[0] > after + 1


@pytest.mark.parametrize("cls", [FGM, NEFTune, FreeAT])
def test_stop_check_never_cuts_a_pass_short(cls):
    # Only between passes: the first pass of a step is never refused, so a one-pass
    # step always completes.
    model = MeanPoolClassifier()
    adv = cls(model)
    calls, step = _counting_step(adv, model)
    adv.stop_check = lambda: cls is not FGM or calls[0] >= 2
    step()
