"""The typo defence inside online discrete AT: edits made on the raw text, the model fed the
mapped text, token offsets pointing back into the raw words."""
import re

import pytest
import torch
from torch import nn

from advnlp import DiscreteAT
from advnlp.defences import TypoNormalizer

TEXTS = ["the film was really good and the music was great",
         "this story is awful and the actor was quite bad",
         "it was a very good movie with a great plot",
         "the scene was bad , the plot awful !"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz")


def _tokenizer():
    from transformers import BertTokenizerFast

    words = sorted({w for t in TEXTS for w in t.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + LETTERS + \
        ["##" + c for c in LETTERS] + list(".,!")
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(dict.fromkeys(vocab))})


class BagOfTokens(nn.Module):
    def __init__(self, vocab: int, dim: int = 8):
        super().__init__()
        self.emb, self.out = nn.Embedding(vocab, dim), nn.Linear(dim, 2)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        m = attention_mask.unsqueeze(-1).float()
        return self.out((self.emb(input_ids) * m).sum(1) / m.sum(1))


def _loss(model):
    return lambda batch, y: nn.functional.cross_entropy(model(**batch), y)


def _words(text):
    return [(m.start(), m.end()) for m in re.finditer(r"\w+", text)]


def test_align_maps_every_mapped_word_and_part_of_a_word_back_to_its_raw_word():
    norm = TypoNormalizer.build(TEXTS)
    raw = "The film  was realy goood, and teh music was graet !"
    mapped, to_raw = norm.align(raw)
    assert mapped == norm(raw)
    assert mapped.split()[:4] == ["The", "film", "was", "really"]  # realy -> really
    raw_words, mapped_words = _words(raw), _words(mapped)
    assert len(raw_words) == len(mapped_words)
    for (ra, rb), (ma, mb) in zip(raw_words, mapped_words):
        assert to_raw(ma, mb) == (ra, rb)  # a whole word
        assert ra <= to_raw(ma, ma + 1)[0] < rb  # its first character (a sub-word token)
        assert to_raw(mb - 1, mb)[1] == rb  # its last


def test_discrete_at_feeds_the_model_what_the_defence_reads():
    tok = _tokenizer()
    norm = TypoNormalizer.build(TEXTS)
    torch.manual_seed(0)
    model = BagOfTokens(tok.vocab_size)
    adv = DiscreteAT(model, tok, normalizer=norm, fraction=1.0, seed=0)
    raw = ["the film was realy good and the music was graet",
           "this story is awfull and the actor was quite bad"]
    seen = []

    def closure(batch, y):
        seen.append(batch["input_ids"].clone())
        return _loss(model)(batch, y)

    adv.backward(closure, raw, torch.tensor([1, 0]))
    clean = tok(norm.map_batch(raw), padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(seen[0], clean)  # the clean pass read the mapped texts
    assert "realy" not in tok.decode(seen[0][0])
    edited = [new for _, _, new in adv.last_edits]
    assert edited and all(e != r for e, r in zip(edited, raw))
    # the edits are typos of the raw words; the model read them mapped
    assert torch.equal(seen[1], tok(norm.map_batch(edited), padding=True,
                                    return_tensors="pt")["input_ids"])


def test_a_normalizer_without_offsets_is_refused():
    tok = _tokenizer()
    with pytest.raises(TypeError, match="normalizer"):
        DiscreteAT(BagOfTokens(tok.vocab_size), tok, normalizer=str.lower)
