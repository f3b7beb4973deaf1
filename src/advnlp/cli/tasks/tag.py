"""Token classification (NER and other tagging): sub-word alignment, entity metrics, and a
from-scratch BiLSTM tagger with an optional CRF.

- **Alignment** (Hugging Face models): a word's tag goes on its first sub-token, the other
  sub-tokens get -100 (ignored by the loss), or with ``all_subtokens`` the word's entity
  as ``I-X`` (``O`` stays ``O``). A word's prediction is its first sub-token's. Words past the
  token budget are truncated, predicted ``O`` and counted.
- **Metrics**: entity-level precision, recall and F1 by ``seqeval``, micro and macro, in its
  default (conlleval) mode and its strict mode (the file's scheme, IOB2 or IOBES); the
  per-type table; token accuracy.
- **Tagger**: embedding -> BiLSTM -> linear emissions, and with ``crf=True`` a linear-chain
  CRF (``pytorch-crf``'s ``torchcrf.CRF``: negative log-likelihood, Viterbi decoding). Its
  ``get_input_embeddings()`` is what every advnlp method perturbs.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..errors import InputError

IGNORE = -100


def continuation_map(names: Sequence[str]) -> List[int]:
    """For every tag id, the id a later sub-token of the same word gets (all_subtokens):
    ``I-X`` for any entity tag of type X (when the tag set has it), ``O`` for ``O``. Only
    training sees these labels: a word's prediction is its first sub-token's."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for n in names:
        _, _, kind = n.partition("-")
        out.append(index.get(f"I-{kind}", index[n]) if kind else index[n])
    return out


def align(word_ids: Sequence[Optional[int]], word_tags: Sequence[int],
          all_subtokens: bool = False, continuation: Optional[Sequence[int]] = None) -> List[int]:
    """Sub-token labels from word labels (``word_ids``: a fast tokenizer's ``word_ids()``)."""
    out, previous = [], None
    for w in word_ids:
        if w is None:
            out.append(IGNORE)
        elif w != previous:
            out.append(word_tags[w])
        elif all_subtokens:
            tag = word_tags[w]
            out.append(continuation[tag] if continuation is not None else tag)
        else:
            out.append(IGNORE)
        previous = w
    return out


def words_from_subtokens(word_ids: Sequence[Optional[int]], token_preds: Sequence[int],
                         n_words: int, outside: int) -> List[int]:
    """A word's prediction is its first sub-token's; truncated words are ``outside`` (O)."""
    out = [outside] * n_words
    seen = set()
    for w, p in zip(word_ids, token_preds):
        if w is not None and w not in seen:
            seen.add(w)
            out[w] = int(p)
    return out


def _require_seqeval():
    try:
        import seqeval.metrics  # noqa: F401
    except ImportError:
        raise InputError("token classification's metrics need seqeval: pip install "
                         "'advnlp[tag]'") from None


def tag_metrics(gold: List[List[str]], pred: List[List[str]], scheme: str = "BIO") -> Dict:
    """Entity-level P/R/F1 (seqeval, default and strict modes), per type, token accuracy."""
    _require_seqeval()
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2, IOBES

    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("gold and predicted tag sequences differ in shape")
    strict = {"mode": "strict", "scheme": IOBES if scheme == "BIOES" else IOB2}
    out: Dict = {}
    for mode, kw in (("default", {}), ("strict", strict)):
        out[mode] = {avg: {"precision": precision_score(gold, pred, average=avg, zero_division=0, **kw),
                           "recall": recall_score(gold, pred, average=avg, zero_division=0, **kw),
                           "f1": f1_score(gold, pred, average=avg, zero_division=0, **kw)}
                     for avg in ("micro", "macro")}
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    out["per_type"] = {k: {"precision": v["precision"], "recall": v["recall"], "f1": v["f1-score"],
                           "support": int(v["support"])}
                       for k, v in report.items() if not k.endswith(" avg")}
    tokens = sum(len(g) for g in gold)
    out["token_accuracy"] = (sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
                             / max(tokens, 1))
    out["entity_f1"] = out["default"]["micro"]["f1"]
    out["scheme"] = scheme
    return out


class BiLSTMTagger(nn.Module):
    """Embedding -> bidirectional LSTM -> per-token emissions, with an optional CRF.

    ``forward(input_ids, attention_mask, labels=None)`` returns ``.logits`` (the emissions,
    ``[batch, length, tags]``) and, with labels, ``.loss``: token cross-entropy over the
    labelled tokens, or the CRF's mean negative log-likelihood. :meth:`decode` gives each
    sequence's tag ids (argmax, or Viterbi with the CRF).
    """

    def __init__(self, vocab_size: int, num_tags: int, dim: int = 64, hidden: int = 64,
                 crf: bool = False, dropout: float = 0.1):
        super().__init__()
        if vocab_size < 2 or num_tags < 1:
            raise ValueError(f"vocab_size >= 2 and num_tags >= 1, got {vocab_size}, {num_tags}")
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.emit = nn.Linear(2 * hidden, num_tags)
        self.crf = None
        if crf:
            try:
                from torchcrf import CRF
            except ImportError:
                raise InputError("--crf needs pytorch-crf: pip install 'advnlp[tag]'") from None
            self.crf = CRF(num_tags, batch_first=True)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding

    def forward(self, input_ids, attention_mask=None, labels=None):
        if attention_mask is None:
            attention_mask = (input_ids != 0).long()
        x = self.dropout(self.embedding(input_ids))
        lengths = attention_mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=input_ids.shape[1])
        logits = self.emit(self.dropout(h))
        out = SimpleNamespace(logits=logits, loss=None)
        if labels is not None:
            out.loss = self.loss(logits, labels, attention_mask)
        return out

    def loss(self, logits, labels, attention_mask):
        if self.crf is None:
            return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                               ignore_index=IGNORE)
        mask = (labels != IGNORE) & attention_mask.bool()
        if not bool(mask[:, 0].all()):
            raise ValueError("the CRF needs every sequence's first position labelled")
        nll = -self.crf(logits.float(), labels.clamp_min(0), mask=mask, reduction="mean")
        return nll

    @torch.no_grad()
    def decode(self, input_ids, attention_mask=None) -> List[List[int]]:
        if attention_mask is None:
            attention_mask = (input_ids != 0).long()
        logits = self(input_ids, attention_mask).logits
        lengths = attention_mask.sum(1).tolist()
        if self.crf is None:
            best = logits.argmax(-1).tolist()
            return [row[:n] for row, n in zip(best, lengths)]
        return self.crf.decode(logits.float(), mask=attention_mask.bool())
