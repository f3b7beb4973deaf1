"""torch.compile(model) with advnlp's hook: same gradients as eager.

The adversary must be built before the compiled model's first call (hooks
registered later are not seen by the compiled graph). Compiling takes tens of
seconds on 2 CPU cores, so this is one small test.
"""
import copy

import pytest
import torch
from torch import nn

from advnlp import FGM
from tinymodels import MeanPoolClassifier, assert_grads_close, assert_state_equal, batch, grads, snapshot

ce = nn.CrossEntropyLoss()


def test_compiled_model_gives_eager_gradients():
    pytest.importorskip("torch._dynamo")
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ids, y = batch()
    ref = copy.deepcopy(model)
    FGM(ref).backward(lambda: ce(ref(ids), y))
    before = snapshot(model)
    compiled = torch.compile(model)
    adv = FGM(compiled)  # finds the embedding through the compile wrapper (_orig_mod)
    assert adv.embedding is model.emb
    adv.backward(lambda: ce(compiled(ids), y))
    assert_grads_close(grads(model), grads(ref), atol=1e-6, rtol=1e-5)
    assert_state_equal(model, before)
