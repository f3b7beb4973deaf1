"""``--online-attack char`` for taggers: :class:`advnlp.DiscreteAT` over a sentence's words,
with each word's tag kept on it.

DiscreteAT edits texts; a tagged sentence is its tokens joined by single spaces. Typos edit
inside a word and never add or remove a space, so splitting the edited text at the spaces
gives the same number of words and every gold tag still belongs to its word (a typo'd
entity keeps its entity tag: "Londno" is still B-LOC). A CJK character the edit deletes
leaves an empty word, which has no sub-token and so no training label in that pass (a
BiLSTM reads it as its unknown word); one it duplicates stays one word; the CJK swap needs
two adjacent characters, and a tagger's characters are a space apart, so it never fires.
Word edits (``--online-attack word``: delete or duplicate a word) would move the tags and
are refused.

The step is DiscreteAT's: the clean pass ranks words by the embedding-output gradient, a
share of the sentences (``--online-fraction``) is edited (``--online-search random``: one
random typo per ranked word; ``greedy``: the edits that raise each sentence's own loss,
found by the attacks' search and scored in batched no-grad forwards), and the edited pass's
gradient is added. The closure re-aligns the tags to each encoding's sub-tokens, which the
encoding carries as a ``word_ids`` tensor (-1: special or padding).
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from advnlp import DiscreteAT

from ...errors import InputError
from .tag import Tagger

NO_WORD = -1


def sentence_text(tokens: Sequence[str]) -> str:
    return " ".join(tokens)


def text_tokens(text: str) -> List[str]:
    return text.split(" ")


def online_encoder(tagger: Tagger):
    """``texts -> (batch, offsets)`` for DiscreteAT: every sub-token's span is its whole
    word's (so a word's gradient is the sum over its sub-tokens), and ``batch['word_ids']``."""
    def encode(texts):
        sentences = [text_tokens(t) for t in texts]
        batch, word_ids = tagger.encode(sentences)
        offsets = []
        for words, row in zip(sentences, word_ids):
            starts, at = [], 0
            for w in words:
                starts.append(at)
                at += len(w) + 1
            offsets.append([None if i is None else (0, starts[i], starts[i] + len(words[i]))
                            for i in row])
        batch = dict(batch)
        batch["word_ids"] = torch.tensor([[NO_WORD if i is None else i for i in row]
                                          for row in word_ids])
        return batch, offsets

    return encode


def split_batch(tagger: Tagger, batch: dict, tags: Sequence[Sequence[int]]):
    """The model's inputs and the gold tags aligned to their sub-tokens (on their device)."""
    inputs = {k: v for k, v in batch.items() if k != "word_ids"}
    word_ids = [[None if i == NO_WORD else i for i in row] for row in batch["word_ids"].tolist()]
    return inputs, tagger.labels(word_ids, tags).to(batch["word_ids"].device)


def build_tag_online(cfg, tagger: Tagger, inner, seed: int, autocast):
    """The run's adversary under ``--online-attack char`` (``inner``: the method's, or None)."""
    if cfg.online_attack is None:  # char only: the task's config check refuses word edits
        return inner
    search = {}
    if cfg.online_search == "greedy":
        def example_loss(batch, tags):
            inputs, labels = split_batch(tagger, batch, tags)
            with autocast():
                logits = tagger.model(**inputs).logits
            return tagger.sentence_losses(logits.float(), labels, inputs["attention_mask"])

        search = {"search": "greedy", "example_loss": example_loss}
    try:
        return DiscreteAT(tagger.model, online_encoder(tagger), attack="char",
                          fraction=cfg.online_fraction, method=inner, seed=seed, **search)
    except (TypeError, ValueError) as e:
        raise InputError(f"--online-attack char: {e}") from None
