"""Text classifiers for the command line, behind one small interface.

A :class:`Classifier` turns a batch of texts into tensors (``encode``), tensors
into logits (``__call__``), and saves itself without pickle. Two families:

* a local Hugging Face model directory (fine-tuned with its own tokenizer);
* ``textcnn`` / ``bilstm`` trained from scratch on a vocabulary built from the
  training texts (:func:`advnlp.cli.data.tokenize`: characters for CJK, words otherwise).
"""
from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from advnlp.text import UNIT

from .data import token_prefix, tokenize
from .errors import InputError
from .files import write_json

SCRATCH = ("textcnn", "bilstm")
PAD, UNK, SEP = "[PAD]", "[UNK]", "[SEP]"
MAX_VOCAB = 50_000
WEIGHTS = "model.safetensors"
DEFAULT_MAX_LENGTH = 128


# --------------------------------------------------------------------------
# From-scratch models
# --------------------------------------------------------------------------
class TextCNN(nn.Module):
    """Kim (2014): parallel 1-D convolutions over embeddings, max-pooled."""

    def __init__(self, vocab_size: int, num_labels: int, dim: int = 128,
                 kernels: Sequence[int] = (2, 3, 4), filters: int = 100, dropout: float = 0.3):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(dim, filters, k) for k in kernels)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(filters * len(kernels), num_labels)
        self.min_length = max(kernels)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding

    def forward(self, input_ids, attention_mask=None):
        x = self.embedding(input_ids).transpose(1, 2)
        pooled = [torch.relu(conv(x)).amax(dim=2) for conv in self.convs]
        return self.out(self.dropout(torch.cat(pooled, dim=1)))


class BiLSTM(nn.Module):
    """A bidirectional LSTM with masked mean pooling over its outputs."""

    def __init__(self, vocab_size: int, num_labels: int, dim: int = 128, hidden: int = 128,
                 dropout: float = 0.3):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden, num_labels)
        self.min_length = 1

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding

    def forward(self, input_ids, attention_mask=None):
        h, _ = self.lstm(self.embedding(input_ids))
        m = (input_ids != 0).unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.out(self.dropout(pooled))


_ARCHS = {"textcnn": TextCNN, "bilstm": BiLSTM}


class Vocab:
    def __init__(self, tokens: List[str]):
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(cls, texts: Sequence[Tuple[str, ...]]) -> "Vocab":
        counts = Counter(tok for t in texts for part in t for tok in tokenize(part))
        # Sorting by (-count, token) keeps the vocabulary independent of data order.
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_VOCAB]
        return cls([PAD, UNK, SEP] + [t for t, _ in ranked])

    def encode(self, texts: Sequence[Tuple[str, ...]], max_length: int, min_length: int
               ) -> Dict[str, torch.Tensor]:
        return self.encode_with_offsets(texts, max_length, min_length)[0]

    def encode_with_offsets(self, texts: Sequence[Tuple[str, ...]], max_length: int,
                            min_length: int):
        """The batch and, per example and token, ``(segment, start, end)`` of the unit it
        reads (None for a separator, an empty text's [UNK] or padding)."""
        unk, sep = self.index[UNK], self.index[SEP]
        rows, offsets = [], []
        for parts in texts:
            ids: List[int] = []
            spans: List[Optional[tuple]] = []
            for k, part in enumerate(parts):
                if k:
                    ids.append(sep)
                    spans.append(None)
                for m in UNIT.finditer(part.lower()):
                    ids.append(self.index.get(m.group(0), unk))
                    spans.append((k, m.start(), m.end()))
            rows.append(ids[:max_length] or [unk])
            offsets.append(spans[:max_length] or [None])
        width = max(min_length, max(len(r) for r in rows))
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
        offsets = [o + [None] * (width - len(o)) for o in offsets]
        return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}, offsets


# --------------------------------------------------------------------------
# The common interface
# --------------------------------------------------------------------------
class Classifier:
    """A model, its tokenizer and, with ``--typo-defence``, the
    :class:`advnlp.defences.TypoNormalizer` every text passes before the tokenizer: in
    training, prediction and every attack alike (they all call :meth:`encode`)."""

    def __init__(self, kind: str, model: nn.Module, tokenizer, max_length: int, meta: dict,
                 normalizer=None):
        self.kind, self.model, self.tokenizer = kind, model, tokenizer
        self.max_length, self.meta, self.normalizer = max_length, meta, normalizer

    @property
    def is_hf(self) -> bool:
        return self.kind not in SCRATCH

    def encode(self, texts: Sequence[Tuple[str, ...]]) -> Dict[str, torch.Tensor]:
        if self.normalizer is not None:
            texts = [tuple(self.normalizer(part) for part in t) for t in texts]
        if not self.is_hf:
            return self.tokenizer.encode(texts, self.max_length, self.model.min_length)
        columns = list(zip(*texts))
        return dict(self.tokenizer(*map(list, columns), truncation=True, padding=True,
                                   max_length=self.max_length, return_tensors="pt"))

    def encode_with_offsets(self, texts: Sequence[Tuple[str, ...]]):
        """A scratch model's ``(batch, offsets)`` as :class:`advnlp.DiscreteAT` takes them
        (a Hugging Face model gives DiscreteAT its fast tokenizer instead)."""
        return self.tokenizer.encode_with_offsets(texts, self.max_length, self.model.min_length)

    def visible_prefix(self, text: str) -> str:
        """The part of a single-segment ``text`` the model reads (its first ``max_length``
        tokens): attacks edit only that, instead of spending queries past the cut."""
        if not self.is_hf:
            return token_prefix(text, self.max_length)
        if not getattr(self.tokenizer, "is_fast", False):
            return text  # no character offsets: keep the whole text
        enc = self.tokenizer(text, truncation=True, max_length=self.max_length,
                             return_offsets_mapping=True)
        ends = [e for s, e in enc["offset_mapping"] if e > s]
        return text[:max(ends)] if ends else text

    def __call__(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(**batch)
        return out.logits if self.is_hf else out

    def save(self, directory: str) -> None:
        if self.normalizer is not None:  # data beside the weights: loading applies it
            self.normalizer.save(directory)
        if save_model(self.model, self.tokenizer, self.is_hf, directory):
            return
        write_json(os.path.join(directory, "vocab.json"), self.tokenizer.tokens)
        write_json(os.path.join(directory, "model_config.json"), self.meta)


def save_model(model: nn.Module, tokenizer, is_hf: bool, directory: str) -> bool:
    """A Hugging Face model and tokenizer (``save_pretrained``; True), or a scratch model's
    weights as ``model.safetensors`` (False: the caller writes its vocabulary and config)."""
    os.makedirs(directory, exist_ok=True)
    if is_hf:
        model.save_pretrained(directory, safe_serialization=True)
        tokenizer.save_pretrained(directory)
        return True
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _safetensors().save_file(state, os.path.join(directory, WEIGHTS))
    return False


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise InputError("saving and loading models needs safetensors: pip install 'advnlp[hf]'") from None
    return safetensors.torch


def _hf(path: str, num_labels: int):
    if not os.path.isdir(path):
        raise InputError(f"--model {path!r}: not {', '.join(SCRATCH)} and not a directory")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise InputError(f"--model {path}: not a model directory (no config.json)")
    transformers = open_hf_folder(path)
    with hf_loading(path):
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=False)
        _check_head(path, config, num_labels)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, trust_remote_code=False, use_safetensors=True)
    return tokenizer, model


def open_hf_folder(path: str):
    """The transformers module, once the model folder ``path`` has been checked: its weights
    are intact safetensors (pickled weights are refused, never unpickled). Every call on the
    folder then passes ``trust_remote_code=False``: transformers would otherwise ask on stdin
    whether to run the Python files an ``auto_map`` names, and a piped "y" would run them."""
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise InputError("a Hugging Face model needs transformers: pip install 'advnlp[hf]'") from None
    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected here
    hf_logging.disable_progress_bar()  # ours is the only progress bar
    names = sorted(os.listdir(path))
    safe = [n for n in names if n.endswith(".safetensors")]
    for name in safe:
        check_safetensors(os.path.join(path, name))
    pickled = [n for n in names if n.startswith("pytorch_model") and n.endswith(".bin")]
    if pickled and not safe:
        raise InputError(
            f"--model {path}: its weights are {pickled[0]}, a pickle, which advnlp does not load "
            "(unpickling can run code); if you trust the file, convert it to safetensors once: "
            f"{_conversion(path)}")
    return transformers


def _conversion(path: str) -> str:
    """A command that rewrites the folder's pickled weights as model.safetensors, with the
    folder's own model class (AutoModel would drop a classifier's head)."""
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            arch = (json.load(f).get("architectures") or ["AutoModel"])[0]
    except (OSError, ValueError, AttributeError, IndexError, TypeError):
        arch = "AutoModel"
    if not (isinstance(arch, str) and arch.isidentifier()):
        arch = "AutoModel"
    return (f"python -c \"import transformers as t; t.{arch}.from_pretrained({path!r})"
            f".save_pretrained({path!r})\"")


@contextlib.contextmanager
def hf_loading(path: str):
    """transformers' errors on loading ``path`` as one line naming it."""
    try:
        yield
    except (OSError, ValueError, KeyError) as e:
        if isinstance(e, ValueError) and "trust_remote_code" in str(e):
            raise InputError(
                f"--model {path}: loading it would run Python code from the folder (an auto_map "
                "in its config.json or tokenizer_config.json), and advnlp runs no code from a "
                "model folder; use a model of an architecture transformers ships (docs/cli.md)"
            ) from None
        raise InputError(f"--model {path}: cannot load the model ({_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def check_safetensors(path: str) -> None:
    """A truncated or corrupt safetensors file, refused by name: safe_open reads only the
    header but checks it against the file's size."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: missing (the model folder is incomplete)")
    try:
        with _safetensors().safe_open(path, "pt"):
            pass
    except Exception as e:  # SafetensorError, which safetensors does not export
        raise InputError(f"{path}: corrupt or truncated weights ({_first_line(e)}); "
                         "save or download the model again") from None


def _check_head(path: str, config, num_labels: int) -> None:
    """A fine-tuned classifier keeps its head, which fits only its own number of labels
    (transformers would fail on the size mismatch). A base model has no head to keep."""
    heads = [a for a in config.architectures or () if a.endswith("ForSequenceClassification")]
    if heads and config.num_labels != num_labels:
        raise InputError(
            f"--model {path} is a classifier with {config.num_labels} labels and the data has "
            f"{num_labels}: start from the base model it was fine-tuned from, or re-initialise "
            "its classification head (transformers' ignore_mismatched_sizes=True) and save it")


def _position_limit(model, tokenizer) -> Optional[int]:
    """The most tokens the model reads (None: no known limit). Position embeddings end there,
    so a longer text fails mid-run, when it comes. The tokenizer's limit counts when it is a
    real number (RoBERTa's 514 positions hold 512 tokens); unset, it is a huge placeholder."""
    limits = [getattr(model.config, "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    limits = [n for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    return min(limits) if limits else None


def build(name: str, num_labels: int, train_texts: Sequence[Tuple[str, ...]],
          max_length: Optional[int]) -> Classifier:
    """A fresh classifier (call ``torch.manual_seed`` first: heads are randomly initialised).
    ``max_length`` None: 128, or the model's limit if it reads fewer."""
    if name in SCRATCH:
        max_length = max_length or DEFAULT_MAX_LENGTH
        _safetensors()  # fail now, not after training
        vocab = Vocab.build(train_texts)
        meta = {"kind": name, "vocab_size": len(vocab.tokens), "num_labels": num_labels}
        return Classifier(name, _ARCHS[name](len(vocab.tokens), num_labels), vocab, max_length, meta)
    tokenizer, model = _hf(name, num_labels)
    limit = _position_limit(model, tokenizer)
    if max_length is None:
        max_length = min(DEFAULT_MAX_LENGTH, limit or DEFAULT_MAX_LENGTH)
    elif limit is not None and max_length > limit:
        raise InputError(f"--max-length {max_length} is more than the {limit} tokens "
                         f"--model {name} can read; use --max-length {limit} or less")
    return Classifier(name, model, tokenizer, max_length, {"kind": "hf", "source": name})


# Above this share of [UNK] the tokenizer does not fit the model folder or the data at all
# (transformers 5 builds an empty-vocabulary tokenizer for a folder without tokenizer
# files); above WARN_UNKNOWN it fits badly (another language, another model's tokenizer).
REFUSE_UNKNOWN, WARN_UNKNOWN = 0.9, 0.2
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                    "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


def unknown_share(clf: Classifier, texts: Sequence[Tuple[str, ...]], sample: int = 200) -> float:
    """The share of the tokens of (a sample of) ``texts`` that the tokenizer maps to its
    unknown token; 0 for scratch models (their vocabulary is built from these texts)."""
    unk = getattr(clf.tokenizer, "unk_token_id", None)
    if not clf.is_hf or unk is None:
        return 0.0
    parts = [p for t in texts[:sample] for p in t if p.strip()]
    ids = [i for row in clf.tokenizer(parts, add_special_tokens=False)["input_ids"] for i in row]
    return sum(i == unk for i in ids) / max(1, len(ids))


def check_tokenizer(clf: Classifier, texts: Sequence[Tuple[str, ...]], log) -> None:
    """Refuse a tokenizer that reads the training text as unknown tokens; warn when much of it is."""
    share = unknown_share(clf, texts)
    if share >= REFUSE_UNKNOWN:
        source = clf.meta.get("source", "")
        missing = (os.path.isdir(source)
                   and not any(os.path.isfile(os.path.join(source, f)) for f in _TOKENIZER_FILES))
        why = (f"{source} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...): save "
               "the model's tokenizer there with tokenizer.save_pretrained(DIR)" if missing else
               "is it this model's tokenizer, for this language?")
        raise InputError(f"--model {source}: the tokenizer reads {share:.0%} of the training "
                         f"text as {clf.tokenizer.unk_token}; {why}")
    if share > WARN_UNKNOWN:
        log(f"warning: the tokenizer reads {share:.0%} of the training text as "
            f"{clf.tokenizer.unk_token}: is it this model's tokenizer, for this language?")


def load(directory: str, kind: str, num_labels: int, max_length: int) -> Classifier:
    """A saved classifier (safetensors and JSON only: nothing is unpickled)."""
    if kind not in SCRATCH:
        tokenizer, model = _hf(directory, num_labels)
        return Classifier(kind, model, tokenizer, max_length, {"kind": "hf", "source": kind},
                          saved_defence(directory, tokenizer))
    load_file = _safetensors().load_file
    with open(os.path.join(directory, "model_config.json"), encoding="utf-8") as f:
        meta = json.load(f)
    with open(os.path.join(directory, "vocab.json"), encoding="utf-8") as f:
        vocab = Vocab(json.load(f))
    model = _ARCHS[kind](meta["vocab_size"], meta["num_labels"])
    weights = os.path.join(directory, WEIGHTS)
    check_safetensors(weights)
    model.load_state_dict(load_file(weights))
    return Classifier(kind, model, vocab, max_length, meta, saved_defence(directory, vocab))


def build_defence(clf: Classifier, texts: Sequence[Tuple[str, ...]], synonyms: bool = False):
    """``--typo-defence``: the typo normalizer of the training ``texts`` and the tokenizer's
    whole words, for ``clf``'s tokenizer; ``--synonym-defence``: with synonym clusters of
    the model's input embeddings as they are now (pretrained, before training)."""
    from advnlp.attacks import EmbeddingNeighbours
    from advnlp.defences import TypoNormalizer, tokenizer_words

    flag = "--synonym-defence" if synonyms else "--typo-defence"
    neighbours = (EmbeddingNeighbours.from_hf(clf.tokenizer, clf.model.get_input_embeddings())
                  if synonyms else None)
    try:
        return TypoNormalizer.build(texts, vocabulary=tokenizer_words(clf.tokenizer),
                                    tokenizer=clf.tokenizer, synonyms=neighbours)
    except (TypeError, ValueError) as e:
        raise InputError(f"{flag}: {e}") from None


def saved_defence(directory: str, tokenizer):
    """The typo defence saved beside a model (``typo_defence.json``), or None: a model
    trained behind it is never loaded without it."""
    from advnlp.defences import FILENAME, TypoNormalizer

    if not os.path.isfile(os.path.join(directory, FILENAME)):
        return None
    try:
        return TypoNormalizer.load(directory, tokenizer=tokenizer)
    except (OSError, TypeError, ValueError) as e:
        raise InputError(f"{os.path.join(directory, FILENAME)}: {e}") from None
