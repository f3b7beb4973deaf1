"""A typo-invariant input encoding: one-edit typos of known words are mapped back before the model.

Algorithm (a RobEn-style encoding with a word-recognition back-off; Jones et al.,
"Robust Encodings: A Framework for Combating Adversarial Typos", ACL 2020; Pruthi
et al., "Combating Adversarial Misspellings with Robust Word Recognition", ACL 2019):

1. *Known words*: the words (lower-cased runs of letters/digits, split exactly as
   the char attack splits text) that occur at least ``min_count`` times in the
   training texts, plus ``vocabulary`` (e.g. :func:`tokenizer_words` of the model's
   tokenizer) and ``stopwords``. A *typo* is what the char attack produces: one
   swap, delete, QWERTY insert or QWERTY substitute (:func:`advnlp.attacks.word_typos`,
   the one definition of a typo). Only *editable* known words (the attack's rule: not
   a stopword, no digit, at least ``min_length`` letters) have typos.
2. *Clusters*: two editable known words are linked when they share a typo that is
   not itself a known word; links are merged greedily, most shared typos first
   (ties: the rarer pair first, then alphabetical), while the merged cluster has at
   most ``max_cluster_size`` words. Each cluster's *representative* is its most
   frequent word (ties: alphabetical). ``max_cluster_size=None`` merges every link:
   RobEn's connected components, under which every typo of a word maps to that
   word's representative. Measured on the BBC news corpus (min_count 2) that
   collapses 72% of word tokens into other words (one cluster of 14,572 words headed
   by "said"); ``max_cluster_size=2`` moves 12.5% of tokens for +0.9 points of typo
   stability. Hence the default ``1``: no merging, known words map to themselves.
3. *Mapping* a word (case-insensitively; the input's case pattern is kept): a known
   word -> its representative; an unknown word that is a typo of one or more
   editable known words -> the representative of the most frequent of them (ties:
   alphabetical); anything else (no known word within one typo, numbers,
   punctuation, CJK characters) -> unchanged. So every typo of a known word ``w``
   maps to ``w``'s representative, except a typo that is itself a known word (it is
   that word: "good" -> "god") or that is also a typo of a more frequent known word
   of another cluster (BBC, min_count 2, no clusters: 3.2% of the unknown typos).

4. *Synonyms* (``synonyms=``, off by default): the clusters of step 2 are also merged along
   the word attack's substitution relation, each word and its nearest input-embedding
   neighbours (:mod:`advnlp.defences.synonym`), so a swap inside a cluster and a typo of
   the swapped word map to one representative.

Candidates come from a deletion index (SymSpell-style: each editable known word's
one-character deletions) and the word's own swaps and deletions, O(word length)
dictionary probes, then are verified against the attack's typo set. Mapping a batch of
32 texts x 64 typo'd words costs 2.6% of a MiniLM-L6 forward pass on one CPU thread
(cold caches; ``benchmarks/defence_overhead.py``).

Chinese and other CJK text: not supported, on purpose. The char attack's CJK edits
delete, duplicate or swap characters of an unsegmented text: a deleted character
cannot be restored without a language model, and duplicated or swapped characters
collide with real text (天天, 看看, and any bigram read both ways), so a character
map would change clean text. CJK characters pass through unchanged, ``build``
refuses a corpus with no spaced words, and :meth:`TypoNormalizer.coverage` counts
the CJK characters it leaves alone.

Saved as data (JSON, never pickle) beside the model with the fingerprint of the
tokenizer it was built for; :meth:`TypoNormalizer.load` refuses another tokenizer.

    from advnlp.defences import TypoNormalizer, defended
    norm = TypoNormalizer.build(train_texts, vocabulary=tokenizer_words(tok), tokenizer=tok)
    norm.save(model_dir)                          # model_dir/typo_defence.json
    clf = defended(hf_classifier(model, tok), norm)   # attacks query text -> defence -> model
    encode = norm.wrap_encode(tok)                # train on what the model will see
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import json
import os
import warnings
from collections import Counter, defaultdict
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from ..attacks import _text as T
from ..attacks.char import word_typos
from ..attacks.classifier import TextClassifier, as_classifier, whole_words
from ._clusters import Clusters
from .synonym import (
    SYNONYM_CLUSTER_SIZE,
    SYNONYM_K,
    SYNONYM_THRESHOLD,
    check_synonym_settings,
    synonym_links,
)

FORMAT, VERSION, FILENAME = "advnlp.typo-defence", 2, "typo_defence.json"
READABLE_VERSIONS = (1, 2)  # 2 added the synonym settings
# A batch stream this long with this little known text means the defence was built on
# other data: it would pass almost everything through, so it says so once.
_WARN_AFTER_WORDS, _WARN_BELOW_KNOWN = 200, 0.1
_CACHE_LIMIT = 1 << 17


@functools.lru_cache(maxsize=1 << 16)
def _typos(word: str) -> FrozenSet[str]:
    return frozenset(word_typos(word))


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of a tokenizer's vocabulary: a Hugging Face tokenizer (``get_vocab()``)
    or advnlp's scratch vocabulary (``.tokens``)."""
    if hasattr(tokenizer, "get_vocab"):
        items = sorted(tokenizer.get_vocab().items())
    elif isinstance(getattr(tokenizer, "tokens", None), (list, tuple)):
        items = list(tokenizer.tokens)
    else:
        raise TypeError("tokenizer: expected a Hugging Face tokenizer (get_vocab) or a "
                        f"scratch vocabulary (.tokens), got {type(tokenizer).__name__}")
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()


def tokenizer_words(tokenizer) -> List[str]:
    """The whole-word entries of a tokenizer's vocabulary, lower-cased (WordPiece tokens
    without ``##``, SentencePiece/BPE tokens with their word mark; a scratch vocabulary's
    words of letters)."""
    if hasattr(tokenizer, "get_vocab"):
        words = [w for w, _ in whole_words(tokenizer)]
    else:
        tokenizer_fingerprint(tokenizer)  # the same type check
        words = [t for t in tokenizer.tokens if t.isalpha()]
    return sorted({w.lower() for w in words})


def _parts(item) -> Tuple[str, ...]:
    if isinstance(item, str):
        return (item,)
    if isinstance(item, (tuple, list)) and all(isinstance(p, str) for p in item):
        return tuple(item)
    raise TypeError(f"texts: expected str or a tuple of str (a pair), got {item!r}")


def _word_counts(texts: Iterable) -> Tuple[Counter, int]:
    counts, cjk = Counter(), 0
    for item in texts:
        for part in _parts(item):
            seg = T.Segmented(part)
            counts.update(u.lower() for u, k in zip(seg.units, seg.kinds) if k == T.WORD)
            cjk += seg.kinds.count(T.CJK)
    return counts, cjk


def _shared_typos(editable: Sequence[str], known: Callable[[str], bool]) -> Counter:
    """(word, word) -> how many typos that are not known words the two share.

    Typos are grouped by length so only one length's typos are in memory at once:
    deletions of words one longer, swaps/substitutions of words that long, insertions
    of words one shorter."""
    by_len = defaultdict(list)
    for w in editable:
        by_len[len(w)].append(w)
    shared = Counter()
    for length in sorted({n + d for n in by_len for d in (-1, 0, 1)}):
        owners = defaultdict(list)
        for n, kinds in ((length + 1, ("delete",)), (length, ("swap", "substitute")),
                         (length - 1, ("insert",))):
            for w in by_len.get(n, ()):
                for t in word_typos(w, kinds):
                    if not known(t):
                        owners[t].append(w)
        for ws in owners.values():
            ws = sorted(set(ws))
            shared.update((a, b) for i, a in enumerate(ws) for b in ws[i + 1:])
    return shared


def _representatives(counts: Dict[str, int], editable: Sequence[str], known: Callable[[str], bool],
                     max_cluster_size: Optional[int], synonyms: Sequence[Tuple[str, str]] = (),
                     synonym_cluster_size: Optional[int] = None) -> Dict[str, str]:
    """word -> its cluster's representative, for the words that are not their own: the
    typo links merged first (capped by ``max_cluster_size``), then the synonym links
    (:mod:`advnlp.defences.synonym`, capped by ``synonym_cluster_size``)."""
    if max_cluster_size == 1 and not synonyms:
        return {}
    clusters = Clusters(editable)
    if max_cluster_size != 1:
        links = _shared_typos(editable, known)
        clusters.merge((pair for pair, _ in sorted(
            links.items(), key=lambda kv: (-kv[1], min(counts[w] for w in kv[0]), kv[0]))),
            max_cluster_size)
    clusters.merge(synonyms, synonym_cluster_size)
    return clusters.representatives(counts)


def _check_settings(min_count, min_length, max_cluster_size) -> None:
    for name, value, low in (("min_count", min_count, 1), ("min_length", min_length, 1),
                             ("max_cluster_size", max_cluster_size, 1)):
        if value is None and name == "max_cluster_size":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


class TypoNormalizer:
    """Maps each word to its cluster's representative and each one-edit typo of a known
    word back to it (see the module docstring). Build with :meth:`build`, restore with
    :meth:`load`; call on a text, or :meth:`map_batch` on texts and pairs."""

    def __init__(self, counts: Dict[str, int], representatives: Optional[Dict[str, str]] = None, *,
                 min_count: int = 1, min_length: int = 3, max_cluster_size: Optional[int] = 1,
                 stopwords: Iterable[str] = T.STOPWORDS, tokenizer_sha256: Optional[str] = None,
                 synonyms: Optional[dict] = None):
        _check_settings(min_count, min_length, max_cluster_size)
        if synonyms is not None:  # how the synonym clusters were built (a record, for the file)
            check_synonym_settings(**synonyms)
        self.synonyms = dict(synonyms) if synonyms is not None else None
        self.counts = {str(w): int(c) for w, c in counts.items()}
        self.stopwords = frozenset(w.lower() for w in stopwords)
        self.min_count, self.min_length = min_count, min_length
        self.max_cluster_size, self.tokenizer_sha256 = max_cluster_size, tokenizer_sha256
        self.editable = sorted(w for w in self.counts if T.eligible(w, T.WORD, self.stopwords,
                                                                    min_length))
        self._editable = frozenset(self.editable)
        if representatives is None:
            representatives = _representatives(self.counts, self.editable, self.known,
                                                max_cluster_size)
        self._rep = dict(representatives)
        self._deletions: Dict[str, List[str]] = defaultdict(list)
        for w in self.editable:
            for d in set(T.typo_delete(w)):
                self._deletions[d].append(w)
        self._cache: Dict[str, Optional[str]] = {}
        self._seen, self._seen_mapped, self._warned = 0, 0, False

    @classmethod
    def build(cls, texts: Iterable, *, min_count: int = 1, min_length: int = 3,
              max_cluster_size: Optional[int] = 1, vocabulary: Optional[Iterable[str]] = None,
              tokenizer=None, stopwords: Iterable[str] = T.STOPWORDS, synonyms=None,
              synonym_k: int = SYNONYM_K, synonym_threshold: float = SYNONYM_THRESHOLD,
              synonym_cluster_size: Optional[int] = SYNONYM_CLUSTER_SIZE) -> "TypoNormalizer":
        """From training texts (str or tuples of str).

        Args:
            min_count: a corpus word is known when it occurs at least this often.
            min_length: words with fewer letters are never typo'd (the attack's rule).
            max_cluster_size: the most words one representative stands for (None: no
                limit, RobEn's connected components).
            vocabulary: more known words (count 0 unless in the texts), e.g.
                :func:`tokenizer_words` of the model's tokenizer.
            tokenizer: the model's tokenizer; its fingerprint is saved so that
                :meth:`load` refuses the defence for another tokenizer.
            stopwords: known words the attack never edits.
            synonyms: an :class:`advnlp.attacks.EmbeddingNeighbours` of the model's
                input embeddings (before training): each editable word of its vocabulary
                is joined with its ``synonym_k`` nearest neighbours of cosine >=
                ``synonym_threshold`` (the word attack's substitutes), clusters of at most
                ``synonym_cluster_size`` words (:mod:`advnlp.defences.synonym`); the
                linked words become known words. None: no synonym clusters.
        """
        _check_settings(min_count, min_length, max_cluster_size)
        if synonyms is not None:
            check_synonym_settings(synonym_k, synonym_threshold, synonym_cluster_size)
        counts, cjk = _word_counts(texts)
        known = {w: c for w, c in counts.items() if c >= min_count}
        for w in vocabulary or ():
            if not isinstance(w, str):
                raise TypeError(f"vocabulary: expected words (str), got {w!r}")
            known.setdefault(w.lower(), counts.get(w.lower(), 0))
        words = sum(counts.values())
        if cjk > words:  # a vocabulary's words would not make CJK training text defendable
            raise ValueError(f"TypoNormalizer.build: the texts are mostly CJK ({cjk} CJK "
                             f"characters, {words} spaced words): CJK text is not supported "
                             "(see advnlp.defences.typo)")
        if not any(any(ch.isalpha() for ch in w) for w in known):
            raise ValueError(f"TypoNormalizer.build: nothing to build from: no word occurs "
                             f"min_count={min_count} times in the texts")
        stop = frozenset(w.lower() for w in stopwords)
        links: List[Tuple[str, str]] = [] if synonyms is None else synonym_links(
            synonyms, lambda w: T.eligible(w, T.WORD, stop, min_length), synonym_k,
            synonym_threshold)
        known.update((w, known.get(w, 0)) for pair in links for w in pair)  # the substitutes
        editable = sorted(w for w in known if T.eligible(w, T.WORD, stop, min_length))
        reps = _representatives(known, editable, lambda w: w in known or w in stop,
                                max_cluster_size, links, synonym_cluster_size)
        record = (None if synonyms is None else
                  {"k": synonym_k, "threshold": synonym_threshold,
                   "max_cluster_size": synonym_cluster_size})
        return cls(known, reps, min_count=min_count, min_length=min_length,
                   max_cluster_size=max_cluster_size, stopwords=stopwords, synonyms=record,
                   tokenizer_sha256=None if tokenizer is None else tokenizer_fingerprint(tokenizer))

    # -- mapping -------------------------------------------------------------------
    def known(self, word: str) -> bool:
        """``word`` (lower-cased) is a known word: it maps to its own representative."""
        return word in self.counts or word in self.stopwords

    def representative(self, word: str) -> str:
        """The representative of a known word's cluster (lower-cased)."""
        w = word.lower()
        if not self.known(w):
            raise KeyError(f"{word!r} is not a known word")
        return self._rep.get(w, w)

    def typo_of(self, typo: str) -> List[str]:
        """The editable known words that ``typo`` (lower-cased) is a one-edit typo of."""
        t = typo.lower()
        found = set(self._deletions.get(t, ()))  # t is a deletion of them
        found.update(w for w in T.typo_swap(t) if w in self._editable)
        for j, d in enumerate(T.typo_delete(t)):
            if d in self._editable:  # t is an insertion into d
                found.add(d)
            # t is a substitution: it shares its deletion at j with the word
            found.update(w for w in self._deletions.get(d, ()) if len(w) == len(t) and w[:j] == t[:j])
        return sorted(w for w in found if t in _typos(w))

    def _target(self, lower: str) -> Optional[str]:
        if lower not in self._cache:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            if self.known(lower):
                target = self._rep.get(lower, lower)
            else:
                owners = self.typo_of(lower)
                best = min(owners, key=lambda w: (-self.counts[w], w)) if owners else None
                target = self._rep.get(best, best)
            self._cache[lower] = target
        return self._cache[lower]

    def normalize_word(self, word: str) -> str:
        """One word (a unit as the attacks split text), mapped; its case pattern kept."""
        lower = word.lower()
        target = self._target(lower)
        if target is None or target == lower:
            return word
        return T.match_case(word, target)

    def __call__(self, text: str) -> str:
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__} (map_batch takes lists)")
        seg = T.Segmented(text)
        values = list(seg.units)
        for i, kind in enumerate(seg.kinds):
            if kind == T.WORD:
                values[i] = self.normalize_word(values[i])
                self._seen += 1
                self._seen_mapped += self._target(seg.units[i].lower()) is not None
        self._warn_if_foreign()
        return seg.render(values)

    def align(self, text: str) -> Tuple[str, Callable[[int, int], Tuple[int, int]]]:
        """``(mapped text, to_raw)``: ``to_raw(start, end)`` turns a character span of the
        mapped text (a token's offsets) into the span of ``text`` it came from. Words map
        to words and nothing else changes, so each unit and gap has a counterpart."""
        seg = T.Segmented(text)
        raw = [p for u, g in zip(seg.units, seg.gaps) for p in (g, u)] + [seg.gaps[-1]]
        mapped = [p for u, k, g in zip(seg.units, seg.kinds, seg.gaps)
                  for p in (g, self.normalize_word(u) if k == T.WORD else u)] + [seg.gaps[-1]]
        starts_raw, starts_mapped, r, m = [], [], 0, 0
        for a, b in zip(raw, mapped):
            starts_raw.append(r)
            starts_mapped.append(m)
            r, m = r + len(a), m + len(b)

        def point(offset: int, end: bool) -> int:
            k = max(0, bisect.bisect_right(starts_mapped, offset - end) - 1)
            local = offset - starts_mapped[k]
            if end and local >= len(mapped[k]):  # a span's end at a piece's end: the raw end
                return starts_raw[k] + len(raw[k])
            return starts_raw[k] + min(local, len(raw[k]))

        return "".join(mapped), lambda start, end: (point(start, False), point(end, True))

    def wrap_offsets_encode(self, encode: Callable) -> Callable:
        """``encode(texts) -> (batch, offsets)`` (offsets ``(segment, start, end)`` or None,
        :class:`advnlp.DiscreteAT`'s form) taking raw texts: the model reads the mapped
        texts, the offsets point into the raw ones (where the edits are made)."""
        def encoded(texts):
            pairs = isinstance(texts[0], tuple)
            aligned = [[self.align(p) for p in (t if pairs else (t,))] for t in texts]
            batch, offsets = encode([tuple(a for a, _ in al) if pairs else al[0][0]
                                     for al in aligned])
            return batch, [[None if o is None else (o[0], *aligned[b][o[0]][1](o[1], o[2]))
                            for o in row] for b, row in enumerate(offsets)]

        return encoded

    def map_batch(self, texts: Sequence) -> list:
        """Each text mapped; a pair (tuple of texts) stays a tuple of mapped texts."""
        if isinstance(texts, str):
            raise TypeError("texts: expected a list of texts, got one str (call the normalizer on it)")
        return [self(t) if isinstance(t, str) else tuple(self(p) for p in _parts(t)) for t in texts]

    def _warn_if_foreign(self) -> None:
        if (not self._warned and self._seen >= _WARN_AFTER_WORDS
                and self._seen_mapped < _WARN_BELOW_KNOWN * self._seen):
            self._warned = True
            warnings.warn(f"TypoNormalizer: only {self._seen_mapped} of the first {self._seen} words "
                          "are known words or typos of one: the defence was built on other text "
                          "and passes this data through almost unchanged; rebuild it on the "
                          "training data "
                          "(coverage(texts) reports the overlap)", RuntimeWarning, stacklevel=3)

    def coverage(self, texts: Sequence) -> dict:
        """How much of ``texts`` the defence acts on: word units, the fractions that are
        known, unknown but a typo of a known word (mapped), and unknown with no known word
        within one typo (unchanged); and the CJK characters it leaves alone."""
        known = typo = other = cjk = 0
        for item in texts:
            for part in _parts(item):
                seg = T.Segmented(part)
                cjk += seg.kinds.count(T.CJK)
                for unit in (u.lower() for u, k in zip(seg.units, seg.kinds) if k == T.WORD):
                    if self.known(unit):
                        known += 1
                    elif self._target(unit) is not None:
                        typo += 1
                    else:
                        other += 1
        n = known + typo + other
        frac = (lambda x: x / n) if n else (lambda x: 0.0)
        return {"words": n, "known": frac(known), "typo_mapped": frac(typo),
                "unknown": frac(other), "cjk_characters": cjk}

    def wrap_encode(self, encode: Callable) -> Callable:
        """``encode`` (a tokenizer, or any function taking texts) that sees mapped text:
        every positional argument, ``text`` and ``text_pair`` that is a text or a list of
        texts/pairs is mapped first, so the model trains on what it will be scored on."""
        if not callable(encode):
            raise TypeError("encode must be callable: texts -> model inputs")

        def mapped(x):
            if isinstance(x, str):
                return self(x)
            if isinstance(x, (list, tuple)) and x and all(isinstance(i, (str, tuple)) for i in x):
                return type(x)(self.map_batch(x))
            return x

        def normalized(*args, **kwargs):
            kwargs = {k: mapped(v) if k in ("text", "text_pair") else v for k, v in kwargs.items()}
            return encode(*map(mapped, args), **kwargs)

        return normalized

    # -- files ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION,
                "settings": {"min_count": self.min_count, "min_length": self.min_length,
                             "max_cluster_size": self.max_cluster_size,
                             "stopwords": sorted(self.stopwords), "synonyms": self.synonyms},
                "tokenizer_sha256": self.tokenizer_sha256,
                "words": dict(sorted(self.counts.items())),
                "representatives": dict(sorted(self._rep.items()))}

    def save(self, path: str) -> str:
        """Writes JSON to ``path``, or to ``path/typo_defence.json`` when ``path`` is a
        directory (a model's); returns the file written."""
        if os.path.isdir(path):
            path = os.path.join(path, FILENAME)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False, indent=0)
        return path

    @classmethod
    def load(cls, path: str, tokenizer=None) -> "TypoNormalizer":
        """Reads :meth:`save`'s file (or ``path/typo_defence.json``). With ``tokenizer``,
        a file built for another tokenizer is refused."""
        if os.path.isdir(path):
            path = os.path.join(path, FILENAME)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a typo-defence file (not JSON: {e})") from None
        norm = cls.from_dict(data, where=path)
        if tokenizer is not None and norm.tokenizer_sha256 is not None:
            if tokenizer_fingerprint(tokenizer) != norm.tokenizer_sha256:
                raise ValueError(f"{path}: this typo defence was built for another tokenizer "
                                 "(vocabulary fingerprint differs); rebuild it for this model")
        return norm

    @classmethod
    def from_dict(cls, data, where: str = "data") -> "TypoNormalizer":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{where}: not a typo-defence file (format is not {FORMAT!r})")
        if data.get("version") not in READABLE_VERSIONS:
            raise ValueError(f"{where}: typo-defence version {data.get('version')!r}; this advnlp "
                             f"reads versions {', '.join(map(str, READABLE_VERSIONS))}")
        try:
            words, reps, settings = data["words"], data["representatives"], data["settings"]
            ok = (all(isinstance(w, str) and isinstance(c, int) and c >= 0 for w, c in words.items())
                  and all(isinstance(v, str) and v in words and v not in reps for v in reps.values())
                  and all(w in words for w in reps))
            if not ok:
                raise ValueError("words/representatives are inconsistent")
            return cls(words, reps, tokenizer_sha256=data.get("tokenizer_sha256"), **settings)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{where}: a corrupt typo-defence file ({e})") from None


def defended(classifier, normalizer: TypoNormalizer, multi_label: Optional[bool] = None
             ) -> TextClassifier:
    """``classifier`` behind the defence: every query is mapped by ``normalizer`` first,
    so an attack on the result attacks the whole pipeline (text -> defence -> model)."""
    if not isinstance(normalizer, TypoNormalizer):
        raise TypeError(f"normalizer: expected a TypoNormalizer, got {type(normalizer).__name__}")
    inner = as_classifier(classifier, multi_label)
    return TextClassifier(lambda texts: inner.predict_proba(normalizer.map_batch(texts)),
                          inner.multi_label, inner.neighbours, inner.batch_size)
