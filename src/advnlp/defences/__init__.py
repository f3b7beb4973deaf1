"""Defences that sit in front of a model and compose with any training method.

* :class:`TypoNormalizer` - a typo-invariant encoding: each one-edit typo (the char
  attack's) of a known word is mapped back before the tokenizer (RobEn-style clusters
  with a word-recognition back-off; not for CJK text, see :mod:`advnlp.defences.typo`).
  Saved as JSON beside the model, with the fingerprint of its tokenizer. With
  ``synonyms=`` (an :class:`advnlp.attacks.EmbeddingNeighbours`) its clusters also join
  each word with its embedding neighbours, the word attack's substitutes
  (:mod:`advnlp.defences.synonym`).
* :func:`defended` - a classifier behind the defence, for the attacks to query.

    from advnlp.defences import TypoNormalizer, defended
    norm = TypoNormalizer.build(train_texts)                  # typos
    norm = TypoNormalizer.build(train_texts, synonyms=EmbeddingNeighbours.from_hf(
        tokenizer, model.get_input_embeddings()))            # typos and word swaps
    res = char_attack(defended(clf, norm), texts, labels)
"""
from .typo import FILENAME, TypoNormalizer, defended, tokenizer_fingerprint, tokenizer_words

__all__ = ["FILENAME", "TypoNormalizer", "defended", "tokenizer_fingerprint", "tokenizer_words"]
