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

import json
import os
from collections import Counter
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ...errors import InputError
from ...files import write_json
from ...models import hf_loading, open_hf_folder

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
    import importlib.util

    if importlib.util.find_spec("seqeval") is None:
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
        # float(): seqeval gives numpy scalars, which neither checkpoints (weights_only
        # loading) nor a reader of metrics.json should have to know about
        out[mode] = {avg: {"precision": float(precision_score(gold, pred, average=avg,
                                                              zero_division=0, **kw)),
                           "recall": float(recall_score(gold, pred, average=avg, zero_division=0, **kw)),
                           "f1": float(f1_score(gold, pred, average=avg, zero_division=0, **kw))}
                     for avg in ("micro", "macro")}
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    out["per_type"] = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                           "f1": float(v["f1-score"]), "support": int(v["support"])}
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


# --------------------------------------------------------------------------
# The command line's tagger: a model, its tokenizer, its tag names
# --------------------------------------------------------------------------
PAD, UNK = "[PAD]", "[UNK]"
MAX_VOCAB = 50_000
WEIGHTS = "model.safetensors"
SCRATCH_TAGGERS = ("bilstm",)


class Tagger:
    """What a token-classification run trains: ``encode`` sentences (lists of words) into
    a batch and each row's word ids, ``labels`` aligned to it, ``predict`` word-level tags,
    ``save`` without pickle. A Hugging Face token-classification model, or ``bilstm``
    (:class:`BiLSTMTagger` on a vocabulary of the training words, case kept)."""

    def __init__(self, kind: str, model: nn.Module, tokenizer, names: List[str], max_length: int,
                 all_subtokens: bool = False, meta: Optional[dict] = None):
        self.kind, self.model, self.tokenizer, self.names = kind, model, tokenizer, names
        self.max_length, self.all_subtokens, self.meta = max_length, all_subtokens, meta or {}
        self.continuation = continuation_map(names)
        self.outside = names.index("O") if "O" in names else 0

    @property
    def is_hf(self) -> bool:
        return self.kind not in SCRATCH_TAGGERS

    def encode(self, sentences: Sequence[Sequence[str]]):
        """``(batch, word_ids)``: the model's inputs, and per row the word of every position
        (None for special tokens and padding)."""
        if self.is_hf:
            enc = self.tokenizer([list(s) for s in sentences], is_split_into_words=True,
                                 truncation=True, max_length=self.max_length, padding=True,
                                 return_tensors="pt")
            return dict(enc), [enc.word_ids(i) for i in range(len(sentences))]
        index = self.tokenizer
        rows = [[index.get(w, 1) for w in s[: self.max_length]] or [1] for s in sentences]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        kept = [min(len(s), self.max_length) for s in sentences]
        word_ids = [list(range(n)) + [None] * (width - n) for n in kept]
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}, word_ids

    def labels(self, word_ids, tag_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        return torch.tensor([align(w, t, self.all_subtokens, self.continuation)
                             for w, t in zip(word_ids, tag_ids)])

    def __call__(self, batch: dict, labels: Optional[torch.Tensor] = None):
        """The model's output (``.logits``, and ``.loss`` with labels)."""
        return self.model(**batch, labels=labels)

    def truncated(self, sentences: Sequence[Sequence[str]]) -> int:
        """How many of ``sentences`` lose words to the token budget."""
        _, word_ids = self.encode(sentences)
        return sum(1 for s, w in zip(sentences, word_ids)
                   if len({i for i in w if i is not None}) < len(s))

    @property
    def crf(self):
        return getattr(self.model, "crf", None)

    def sentence_losses(self, logits: torch.Tensor, labels: torch.Tensor,
                        attention_mask: torch.Tensor) -> torch.Tensor:
        """Each row's loss on its labels: summed token cross-entropy, or the CRF's negative
        log-likelihood (what an attack on this tagger climbs)."""
        logits = logits.float()
        if self.crf is not None:
            mask = (labels != IGNORE) & attention_mask.bool()
            return -self.crf(logits, labels.clamp_min(0), mask=mask, reduction="none")
        ce = nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                                         reduction="none")
        return ce.sum(1)

    def word_tags(self, sentences: Sequence[Sequence[str]], word_ids, logits: torch.Tensor,
                  attention_mask: torch.Tensor) -> List[List[str]]:
        """Word-level tag names from the model's per-token ``logits`` (argmax, or Viterbi
        with a CRF); a word cut by the token budget is O."""
        if self.crf is not None:
            tokens = self.crf.decode(logits.float(), mask=attention_mask.bool())
        else:
            tokens = logits.argmax(-1).tolist()
        return [[self.names[i] for i in words_from_subtokens(w, t, len(s), self.outside)]
                for s, w, t in zip(sentences, word_ids, tokens)]

    @torch.no_grad()
    def predict(self, sentences: Sequence[Sequence[str]], batch_size: int, device) -> List[List[str]]:
        """Word-level tag names (a truncated word is O)."""
        self.model.eval()
        out: List[List[str]] = []
        for start in range(0, len(sentences), batch_size):
            chunk = sentences[start:start + batch_size]
            batch, word_ids = self.encode(chunk)
            batch = {k: v.to(device) for k, v in batch.items()}
            out += self.word_tags(chunk, word_ids, self.model(**batch).logits,
                                  batch["attention_mask"])
        return out

    def save(self, directory: str) -> None:
        from ...models import save_model

        if save_model(self.model, self.tokenizer, self.is_hf, directory):
            return
        write_json(os.path.join(directory, "vocab.json"),
                   sorted(self.tokenizer, key=self.tokenizer.get))
        write_json(os.path.join(directory, "model_config.json"), self.meta)


def build_tagger(name: str, names: List[str], train_sentences: Sequence[Sequence[str]],
                 max_length: Optional[int], crf: bool = False, all_subtokens: bool = False) -> Tagger:
    """A fresh tagger (call ``torch.manual_seed`` first)."""
    if name in SCRATCH_TAGGERS:
        counts = Counter(w for s in train_sentences for w in s)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_VOCAB]
        vocab = {t: i for i, t in enumerate([PAD, UNK] + [w for w, _ in ranked])}
        meta = {"kind": name, "vocab_size": len(vocab), "num_labels": len(names), "crf": crf}
        model = BiLSTMTagger(len(vocab), len(names), crf=crf)
        return Tagger(name, model, vocab, names, max_length or 128, all_subtokens, meta)
    if crf:
        raise InputError("--crf is for --model bilstm; a Hugging Face tagger has a softmax head")
    if not os.path.isfile(os.path.join(name, "config.json")):
        raise InputError(f"--model {name!r}: not bilstm and not a model directory (no config.json)")
    transformers = open_hf_folder(name)
    with hf_loading(name):
        tokenizer = transformers.AutoTokenizer.from_pretrained(name, trust_remote_code=False)
        if not getattr(tokenizer, "is_fast", False):
            raise InputError(f"--model {name}: token classification needs a fast tokenizer (its "
                             "word ids align the tags); save one with tokenizer.save_pretrained")
        model = transformers.AutoModelForTokenClassification.from_pretrained(
            name, num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)}, ignore_mismatched_sizes=True,
            trust_remote_code=False, use_safetensors=True)
    limit = getattr(model.config, "max_position_embeddings", None)
    max_length = max_length or min(128, limit or 128)
    if limit is not None and max_length > limit:
        raise InputError(f"--max-length {max_length} is more than the {limit} tokens --model "
                         f"{name} can read")
    return Tagger("hf", model, tokenizer, names, max_length, all_subtokens, {"kind": "hf", "source": name})


def load_tagger(directory: str, names: List[str], max_length: int, all_subtokens: bool) -> Tagger:
    """A saved tagger (safetensors and JSON only)."""
    if os.path.isfile(os.path.join(directory, "model_config.json")):
        from safetensors.torch import load_file

        with open(os.path.join(directory, "model_config.json"), encoding="utf-8") as f:
            meta = json.load(f)
        with open(os.path.join(directory, "vocab.json"), encoding="utf-8") as f:
            vocab = {t: i for i, t in enumerate(json.load(f))}
        model = BiLSTMTagger(meta["vocab_size"], meta["num_labels"], crf=meta["crf"])
        model.load_state_dict(load_file(os.path.join(directory, WEIGHTS)))
        return Tagger(meta["kind"], model, vocab, names, max_length, all_subtokens, meta)
    transformers = open_hf_folder(directory)
    with hf_loading(directory):
        model = transformers.AutoModelForTokenClassification.from_pretrained(
            directory, trust_remote_code=False, use_safetensors=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    return Tagger("hf", model, tokenizer, names, max_length, all_subtokens,
                  {"kind": "hf", "source": directory})
