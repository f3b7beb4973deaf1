"""The documented Accelerate loop: backward_fn=accelerator.backward."""
import copy

import pytest
import torch
from torch import nn

accelerate = pytest.importorskip("accelerate")

from advnlp import PGD  # noqa: E402
from tinymodels import MeanPoolClassifier, batch  # noqa: E402

ce = nn.CrossEntropyLoss()


def test_accelerate_loop_with_gradient_accumulation_matches_plain_loop():
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ref = copy.deepcopy(model)
    data = [batch(n=2, seed=s) for s in range(4)]

    # reference: plain PyTorch, two micro-batches accumulated per optimizer step
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    adv = PGD(ref, epsilon=0.5, alpha=0.2, steps=2)
    for i, (ids, y) in enumerate(data):
        adv.backward(lambda: ce(ref(ids), y) / 2)
        if i % 2 == 1:
            opt.step()
            opt.zero_grad()

    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
    opt2 = torch.optim.SGD(model.parameters(), lr=0.5)
    model, opt2 = accelerator.prepare(model, opt2)
    adv = PGD(model, epsilon=0.5, alpha=0.2, steps=2)
    for ids, y in data:
        with accelerator.accumulate(model):
            adv.backward(lambda: ce(model(ids), y), backward_fn=accelerator.backward)
            opt2.step()
            opt2.zero_grad()
    for p, q in zip(accelerator.unwrap_model(model).parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
