"""advnlp.backward_step: the closure choice (no method / a method that takes the loss / one
that compares outputs) against the same step written out by hand on a copy of the model."""
import copy

import pytest
import torch
from torch import nn

from advnlp import ATTA, FGM, VAT, DiscreteAT, backward_step
from tinymodels import MeanPoolClassifier, batch, grads

criterion = nn.CrossEntropyLoss()


def _closures(model, ids, y, calls):
    def loss():
        calls.append("loss")
        return criterion(model(ids), y)

    def output():
        calls.append("output")
        return model(ids)

    return loss, output


def _by_hand_and_by_helper(make_adversary, by_hand, **options):
    ids, y = batch()
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    twin = copy.deepcopy(model)
    calls = []
    loss, output = _closures(model, ids, y, calls)
    got = backward_step(make_adversary(model), loss, output, labels=y, **options)
    want = by_hand(twin, make_adversary(twin), ids, y)
    assert torch.equal(got, want)
    assert grads(model).keys() == grads(twin).keys()
    for k, g in grads(model).items():
        assert torch.equal(g, grads(twin)[k]), k
    return calls, grads(model)


def _plain(model, _, ids, y):
    loss = criterion(model(ids), y)
    loss.backward()
    return loss.detach()


def test_no_adversary_is_plain_training():
    calls, _ = _by_hand_and_by_helper(lambda m: None, _plain)
    assert calls == ["loss"]


def test_a_method_that_takes_the_loss_gets_the_loss_closure():
    calls, g = _by_hand_and_by_helper(
        lambda m: FGM(m, epsilon=1.0),
        lambda m, adv, ids, y: adv.backward(lambda: criterion(m(ids), y)))
    assert calls == ["loss", "loss"]  # clean and adversarial pass; output never called
    _, plain = _by_hand_and_by_helper(lambda m: None, _plain)
    assert any(not torch.equal(g[k], plain[k]) for k in g)  # the method did add something


def test_a_method_that_compares_outputs_gets_the_output_closure_and_the_labels():
    calls, _ = _by_hand_and_by_helper(
        lambda m: VAT(m, epsilon=1.0, generator=torch.Generator().manual_seed(7)),
        lambda m, adv, ids, y: adv.backward(lambda: m(ids), labels=y))
    assert set(calls) == {"output"}


def test_options_reach_the_method_and_none_is_left_out():
    ids, y = batch()
    model = MeanPoolClassifier()
    seen = []

    class Recording(FGM):
        def backward(self, closure, backward_fn=None, **kw):
            seen.append(kw)
            return super().backward(closure, backward_fn, **kw)

    loss, output = _closures(model, ids, y, [])
    backward_step(Recording(model), loss, output, labels=y, mask=None)
    mask = torch.ones_like(ids)
    backward_step(Recording(model), loss, output, labels=y, mask=mask)
    assert seen[0] == {} and seen[1].keys() == {"mask"}  # labels go to output-comparing methods only
    atta = ATTA(model, epsilon=0.1)
    backward_step(atta, loss, output, ids=[0, 1, 2, 3])
    assert atta.last_adv_loss is not None


def test_a_method_that_compares_outputs_without_output_or_discrete_at_is_refused():
    ids, y = batch()
    model = MeanPoolClassifier()
    loss, _ = _closures(model, ids, y, [])
    with pytest.raises(ValueError, match="pass output="):
        backward_step(VAT(model), loss)
    with pytest.raises(TypeError, match="DiscreteAT"):
        backward_step(DiscreteAT(model, encode=lambda texts: ids), loss)
