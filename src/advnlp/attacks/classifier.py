"""The text-classifier abstraction the discrete attacks query, and adapters to it.

An attack only needs ``predict_proba(texts) -> tensor [n, classes]`` (batched;
softmax probabilities for single-label, per-label sigmoid probabilities for
multi-label) and, for word substitution, nearest neighbours in the model's own
input-embedding space (:class:`EmbeddingNeighbours`).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .. import _perturb as P
from .. import _validate as V

ProbaFn = Callable[[List[str]], torch.Tensor]


class EmbeddingNeighbours:
    """Nearest whole-word neighbours by cosine similarity of input-embedding rows.

    ``words[i]`` is the surface form of ``vectors[i]``; only words made of
    letters (any script; CJK characters count) are kept, so sub-word pieces,
    punctuation and special tokens are never proposed. Lookups are
    case-insensitive when ``lowercase`` (uncased tokenizers, the scratch vocab).
    """

    def __init__(self, words: Sequence[str], vectors: torch.Tensor, lowercase: bool = True):
        if len(words) != vectors.shape[0]:
            raise ValueError(f"{len(words)} words but {vectors.shape[0]} embedding rows")
        keep = [i for i, w in enumerate(words) if w.isalpha()]
        self.lowercase = V.boolean("lowercase", lowercase)
        self.words = [words[i] for i in keep]
        v = vectors.detach().float().cpu()[keep]
        self.unit = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.index: Dict[str, int] = {}
        for j, w in enumerate(self.words):
            self.index.setdefault(w.lower() if lowercase else w, j)
        self._cache: Dict[tuple, List[str]] = {}

    def _key(self, word: str) -> str:
        return word.lower() if self.lowercase else word

    def __contains__(self, word: str) -> bool:
        return self._key(word) in self.index

    def __call__(self, word: str, k: int = 8, threshold: float = 0.6) -> List[str]:
        """Up to ``k`` other words with cosine >= ``threshold``, most similar first."""
        key = (self._key(word), k, threshold)
        if key not in self._cache:
            self._cache[key] = [w for w, _ in self.scored([word], k, threshold)[0]]
        return self._cache[key]

    def scored(self, words: Sequence[str], k: int = 8, threshold: float = 0.6,
               chunk: int = 1024) -> List[List[Tuple[str, float]]]:
        """Per word, what ``self(word, k, threshold)`` returns with each cosine similarity;
        batched (``chunk`` words per matrix product), so a whole vocabulary's neighbours
        cost seconds. A word the vocabulary lacks has none."""
        V.integer("k", k)
        out: List[List[Tuple[str, float]]] = [[] for _ in words]
        rows = [(n, self.index[self._key(w)]) for n, w in enumerate(words) if w in self]
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            js = torch.tensor([j for _, j in part], dtype=torch.long)
            sims = self.unit[js] @ self.unit.T
            sims[torch.arange(len(part)), js] = -2.0
            top = torch.topk(sims, min(k, len(self.words) - 1), dim=1)
            for (n, j), values, ids in zip(part, top.values.tolist(), top.indices.tolist()):
                own = self.words[j].lower()
                out[n] = [(self.words[i], s) for s, i in zip(values, ids)
                          if s >= threshold and self.words[i].lower() != own]
        return out

    @classmethod
    def from_vocab(cls, tokens: Sequence[str], embedding: nn.Module,
                   lowercase: bool = True) -> "EmbeddingNeighbours":
        """A word-level vocabulary (advnlp's scratch ``Vocab.tokens``): row i is token i."""
        return cls(list(tokens), embedding.weight, lowercase)

    @classmethod
    def from_hf(cls, tokenizer, embedding: nn.Module) -> "EmbeddingNeighbours":
        """A Hugging Face tokenizer: only tokens that are a whole word on their own
        (:func:`whole_words`)."""
        pairs = whole_words(tokenizer)
        rows = torch.tensor([r for _, r in pairs], dtype=torch.long)
        lowercase = bool(getattr(tokenizer, "do_lower_case", False))
        return cls([w for w, _ in pairs], embedding.weight.detach()[rows], lowercase)


def whole_words(tokenizer) -> List[Tuple[str, int]]:
    """``(word, token id)`` for the tokens of a Hugging Face tokenizer that are a whole
    word of letters on their own.

    WordPiece keeps tokens without ``##``; SentencePiece / byte-level BPE keep tokens
    starting with their word-boundary mark (``▁`` / ``Ġ``), which is stripped. Special
    tokens are dropped.
    """
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", []))
    toks = [t for t in vocab if t not in special]
    marks = [m for m in ("\u2581", "\u0120") if sum(t.startswith(m) for t in toks) > len(toks) // 10]
    out = []
    for t in toks:
        if marks:
            if not t.startswith(marks[0]):
                continue
            w = t[len(marks[0]):]
        else:
            if t.startswith("##"):
                continue
            w = t
        if w.isalpha():
            out.append((w, vocab[t]))
    return out


class TextClassifier:
    """What the discrete attacks query.

    Args:
        predict_proba: ``list[str] -> tensor [n, classes]``, probabilities.
        multi_label: probabilities are independent per label (threshold 0.5).
        neighbours: word -> similar words, for word substitution (optional).
        batch_size: the attacks never pass more texts than this in one call.
    """

    def __init__(self, predict_proba: ProbaFn, multi_label: bool = False,
                 neighbours: Optional[EmbeddingNeighbours] = None, batch_size: int = 64):
        if not callable(predict_proba):
            raise TypeError("predict_proba must be callable: list[str] -> tensor [n, classes]")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._fn, self.multi_label = predict_proba, V.boolean("multi_label", multi_label)
        self.neighbours, self.batch_size = neighbours, int(batch_size)

    def predict_proba(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            p = self._fn(list(texts[i:i + self.batch_size]))
            p = torch.as_tensor(p).detach().float().cpu()
            if p.dim() != 2 or p.shape[0] != len(texts[i:i + self.batch_size]):
                raise ValueError(f"predict_proba returned shape {tuple(p.shape)} for "
                                 f"{len(texts[i:i + self.batch_size])} texts; expected [n, classes]")
            out.append(p)
        return torch.cat(out)


def as_classifier(obj, multi_label: Optional[bool] = None) -> TextClassifier:
    """A :class:`TextClassifier`, or a bare ``predict_proba`` callable (single-label)."""
    if isinstance(obj, TextClassifier):
        if multi_label is not None and V.boolean("multi_label", multi_label) != obj.multi_label:
            raise ValueError("multi_label contradicts the classifier's own multi_label")
        return obj
    return TextClassifier(obj, False if multi_label is None else multi_label)


def _proba(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    logits = logits.float()
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)


def hf_classifier(model: nn.Module, tokenizer, *, multi_label: Optional[bool] = None,
                  batch_size: int = 32, max_length: int = 256, device=None,
                  neighbours: bool = True) -> TextClassifier:
    """A Hugging Face sequence classifier and its tokenizer as a :class:`TextClassifier`.

    ``multi_label`` defaults to ``model.config.problem_type == "multi_label_classification"``.
    The model is put in eval mode; ``neighbours=True`` builds word-substitution
    candidates from its input embedding.
    """
    if multi_label is None:
        multi_label = getattr(getattr(model, "config", None), "problem_type", None) == \
            "multi_label_classification"
    device = device if device is not None else next(model.parameters()).device
    model.eval()

    @torch.no_grad()
    def predict_proba(texts: List[str]) -> torch.Tensor:
        enc = tokenizer(texts, truncation=True, padding=True, max_length=max_length,
                        return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        return _proba(model(**enc).logits, multi_label)

    nb = EmbeddingNeighbours.from_hf(tokenizer, P.find_embedding(model)[1]) if neighbours else None
    return TextClassifier(predict_proba, multi_label, nb, batch_size)


def advnlp_classifier(clf, *, multi_label: bool = False, batch_size: int = 32, device=None,
                      neighbours: bool = True) -> TextClassifier:
    """advnlp's own :class:`advnlp.models.Classifier` (a CLI run's model) as a :class:`TextClassifier`.

    Texts are single segments (``(text,)``). Substitution neighbours come from the
    Hugging Face tokenizer's whole-word tokens, or from the scratch vocabulary.
    """
    device = device if device is not None else next(clf.model.parameters()).device
    clf.model.eval()

    @torch.no_grad()
    def predict_proba(texts: List[str]) -> torch.Tensor:
        enc = {k: v.to(device) for k, v in clf.encode([(t,) for t in texts]).items()}
        return _proba(clf(enc), multi_label)

    nb = None
    if neighbours:
        emb = P.find_embedding(clf.model)[1]
        nb = (EmbeddingNeighbours.from_hf(clf.tokenizer, emb) if clf.is_hf
              else EmbeddingNeighbours.from_vocab(clf.tokenizer.tokens, emb))
    return TextClassifier(predict_proba, multi_label, nb, batch_size)
