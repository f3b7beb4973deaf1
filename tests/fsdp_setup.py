"""What tests/test_fsdp.py and its worker share: the model, the batch and the steps."""
import torch

from advnlp import FGM, PGD
from tinymodels import tiny_llama

METHODS = ("none", "fgm", "pgd")
PASSES = {"none": 1, "fgm": 2, "pgd": 4}  # forward+backward passes per step (PGD: 3 steps)


def build():
    return tiny_llama().train()


def batch(n=4, length=8, prompt=3):
    """No padding and as many labelled tokens in every row: each rank's mean loss is then a
    mean over equal shards, and FSDP's gradient average is the whole batch's gradient."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 40, (n, length), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def steps(model, method, b, n=2):
    adv = {"none": lambda: None, "fgm": lambda: FGM(model, epsilon=0.5),
           "pgd": lambda: PGD(model, epsilon=0.5, alpha=0.2, steps=3)}[method]()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(n):
        if adv is None:
            model(**b).loss.backward()
        else:
            adv.backward(lambda: model(**b).loss)
        opt.step()
        opt.zero_grad()
    return model
