"""Adapters: advnlp's own Classifier (scratch vocab) and a Hugging Face model + tokenizer."""
import torch

from advnlp.attacks import EmbeddingNeighbours, advnlp_classifier, hf_classifier, word_attack

torch.set_num_threads(1)


def test_advnlp_scratch_classifier():
    from advnlp.cli.models import Classifier, TextCNN, Vocab

    vocab = Vocab.build([("good movie great film",), ("bad movie awful film",), ("今天天气很好",)])
    torch.manual_seed(0)
    model = TextCNN(len(vocab.tokens), 2, dim=8, filters=4)
    with torch.no_grad():  # make "good" and "great" near-identical, "bad" opposite
        w = model.embedding.weight
        w[vocab.index["great"]] = w[vocab.index["good"]] + 0.01
        w[vocab.index["bad"]] = -w[vocab.index["good"]]
    clf = Classifier("textcnn", model, vocab, 32, {})
    tc = advnlp_classifier(clf)
    p = tc.predict_proba(["good movie", "今天天气很好", ""])
    assert p.shape == (3, 2) and torch.allclose(p.sum(1), torch.ones(3))
    assert tc.neighbours("Good", 3, 0.9) == ["great"]
    assert "[PAD]" not in tc.neighbours.words and "好" in tc.neighbours
    label = int(p[0].argmax())
    res = word_attack(tc, ["good movie"], [label], max_change=1.0)
    assert res.records[0].status in ("success", "failed")  # runs end to end


def test_hf_classifier_whole_word_neighbours(tmp_path):
    from transformers import BertTokenizer

    from tinymodels import VOCAB, tiny_bert

    words = ["good", "great", "bad", "movie", "film", "plot"]
    toks = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + ["##s", "##ing", "!"]
    toks += [f"w{i}" for i in range(VOCAB - len(toks))]
    (tmp_path / "vocab.txt").write_text("\n".join(toks) + "\n")
    tok = BertTokenizer(str(tmp_path / "vocab.txt"))
    model = tiny_bert(num_labels=2)
    tc = hf_classifier(model, tok, batch_size=2)
    p = tc.predict_proba(["good movie", "bad plot !", "films"])
    assert p.shape == (3, 2) and not tc.multi_label
    nb = tc.neighbours
    assert isinstance(nb, EmbeddingNeighbours)
    assert set(words) <= set(nb.words) and not {"##s", "[CLS]", "!"} & set(nb.words)
    assert set(nb("good", k=50, threshold=-1.0)) <= set(nb.words) - {"good"}
