"""Token classification data: CoNLL columns and JSONL, read and checked.

Formats (chosen by the file's extension: ``.jsonl`` / ``.json`` are JSON lines, anything
else CoNLL columns):

- **CoNLL**: one token per line, whitespace-separated columns, the token first and its tag
  last (the CoNLL-2003 layout, POS and chunk columns in between are ignored); a blank line
  ends a sentence; ``-DOCSTART-`` lines are ignored.
- **JSONL, tokens**: ``{"tokens": ["EU", "rejects", ...], "tags": ["B-ORG", "O", ...]}``.
- **JSONL, spans** (the usual layout of Chinese NER corpora): ``{"text": "...",
  "entities": [[start, end, type], ...]}`` with character offsets, ``end`` exclusive, an
  optional fourth element the mention (checked against ``text[start:end]``). Every
  character that is not whitespace becomes a token; the spans become BIO tags.

Tags are ``O`` or ``B-``/``I-`` (BIO) and ``E-``/``S-`` too (BIOES) followed by a type;
``M-`` (BMES, as in the MSRA corpus) is read as ``I-``, so BMES is BIOES.
What is refused, with the file and line: a tag of another form, tokens and tags of
different lengths, a span outside the text, a span whose mention differs from the text,
overlapping spans, a span type that already has a tag prefix (``B-PER``), a line that is
not JSON or holds half a UTF-16 surrogate pair. What is counted and kept: an ``I-`` that
does not continue an entity of its type (``O I-PER``, ``B-LOC I-PER``; seqeval's default
mode reads it as a beginning, as conlleval does, and its strict mode drops it), and empty
sentences (skipped).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

from ...data import json_lines, read_text
from ...errors import InputError

PREFIXES = {"B", "I", "E", "S"}


@dataclass
class Tagged:
    """One file's sentences, with what was counted on the way."""

    path: str
    sentences: List[Tuple[List[str], List[str]]] = field(default_factory=list)
    lines: List[int] = field(default_factory=list)  # the line each sentence starts on
    token_per_line: bool = False  # CoNLL: a sentence's tokens are on consecutive lines
    skipped_empty: int = 0
    invalid_continuations: int = 0  # I-X not after B-X / I-X (BIOES: nor after nothing)
    bmes: bool = False  # the file used M- (BMES), read as I- (BIOES)

    @property
    def tags(self) -> List[str]:
        return sorted({t for _, tags in self.sentences for t in tags})

    def scheme(self) -> str:
        return "BIOES" if any(t[:2] in ("E-", "S-") for t in self.tags) else "BIO"

    def line(self, sentence: int, token: int) -> int:
        """The line of a sentence's token (JSONL: the sentence's line)."""
        return self.lines[sentence] + (token if self.token_per_line else 0)


def read_tagged(path: str) -> Tagged:
    """The sentences of a CoNLL or JSONL file (module docstring), checked."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    jsonl = path.lower().endswith((".jsonl", ".json"))
    out = Tagged(path, token_per_line=not jsonl)
    text = read_text(path)
    rows = _jsonl(path, text) if jsonl else _conll(path, text.splitlines())
    for line_no, tokens, tags in rows:
        if not tokens:
            out.skipped_empty += 1
            continue
        if any(t.startswith("M-") for t in tags):  # BMES: M (middle) is BIOES's I
            out.bmes = True
            tags = ["I-" + t[2:] if t.startswith("M-") else t for t in tags]
        out.sentences.append((tokens, tags))
        out.lines.append(line_no)
        for k, tag in enumerate(tags):
            _check_tag(tag, path, out.line(len(out.lines) - 1, k))
        out.invalid_continuations += count_invalid_continuations(tags)
    if not out.sentences:
        raise InputError(f"{path}: no tagged sentence (CoNLL: token and tag columns, a blank "
                         "line between sentences; JSONL: tokens and tags, or text and entities)")
    return out


def _check_tag(tag: str, path: str, line_no: int) -> None:
    if tag == "O":
        return
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in PREFIXES or not kind:
        raise InputError(f"{path}:{line_no}: tag {tag!r} is neither O nor B-/I-/E-/S-/M- and an "
                         "entity type (BIO, BIOES or BMES, e.g. B-PER, I-PER)")


def count_invalid_continuations(tags: Sequence[str]) -> int:
    """``I-X`` (or ``E-X``) that does not continue a ``B-X``/``I-X``: e.g. ``O I-PER``."""
    bad, previous = 0, "O"
    for tag in tags:
        if tag[:2] in ("I-", "E-"):
            prev_prefix, _, prev_kind = previous.partition("-")
            if prev_prefix not in ("B", "I") or prev_kind != tag[2:]:
                bad += 1
        previous = tag
    return bad


def _conll(path: str, lines: List[str]):
    tokens: List[str] = []
    tags: List[str] = []
    start = 1
    for i, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("-DOCSTART-"):
            if tokens:
                yield start, tokens, tags
            tokens, tags = [], []
            continue
        cols = line.split()
        if len(cols) < 2:
            raise InputError(f"{path}:{i}: one column ({line[:40]!r}); CoNLL lines are the token, "
                             "then its tag (other columns between them are ignored)")
        if not tokens:
            start = i
        tokens.append(cols[0])
        tags.append(cols[-1])
    if tokens:
        yield start, tokens, tags


def _jsonl(path: str, text: str):
    for i, row in json_lines(path, text):
        if "tokens" in row:
            tokens, tags = row["tokens"], row.get("tags")
            if not isinstance(tokens, list) or not isinstance(tags, list) \
                    or not all(isinstance(x, str) for x in tokens + tags):
                raise InputError(f"{path}:{i}: 'tokens' and 'tags' must be lists of strings")
            if len(tokens) != len(tags):
                raise InputError(f"{path}:{i}: {len(tokens)} tokens but {len(tags)} tags")
            yield i, list(tokens), list(tags)
        elif "text" in row:
            yield (i, *spans_to_tags(row["text"], row.get("entities", []), f"{path}:{i}"))
        else:
            raise InputError(f"{path}:{i}: neither 'tokens'/'tags' nor 'text'/'entities'")


def spans_to_tags(text, entities, where: str) -> Tuple[List[str], List[str]]:
    """Characters (whitespace dropped) and their BIO tags from character-offset spans."""
    if not isinstance(text, str):
        raise InputError(f"{where}: 'text' must be a string")
    if not isinstance(entities, list):
        raise InputError(f"{where}: 'entities' must be a list of [start, end, type]")
    char_tags = ["O"] * len(text)
    owner: Dict[int, int] = {}
    for k, ent in enumerate(entities):
        if not (isinstance(ent, list) and len(ent) in (3, 4) and all(
                isinstance(x, int) and not isinstance(x, bool) for x in ent[:2])
                and isinstance(ent[2], str) and ent[2]):
            raise InputError(f"{where}: entity {ent!r} is not [start, end, type] (or with the "
                             "mention as a fourth element)")
        start, end, kind = ent[:3]
        if kind.partition("-")[0] in PREFIXES | {"M"} and "-" in kind:
            # The spans make the B-/I- tags: "B-PER" would become B-B-PER, another type.
            raise InputError(f"{where}: entity {ent!r}: its type {kind!r} already has a tag "
                             f"prefix; give the type alone ({kind[2:]!r}), the tags are made "
                             "from the spans")
        if not 0 <= start < end <= len(text):
            raise InputError(f"{where}: entity {ent!r} is outside the text ({len(text)} characters; "
                             "offsets are 0-based, end exclusive)")
        if len(ent) == 4 and text[start:end] != ent[3]:
            raise InputError(f"{where}: entity {ent!r}: the text there is {text[start:end]!r}, "
                             f"not {ent[3]!r} (offsets are 0-based, end exclusive)")
        clash = next((owner[c] for c in range(start, end) if c in owner), None)
        if clash is not None:
            raise InputError(f"{where}: entities {entities[clash]!r} and {ent!r} overlap; a "
                             "token has one tag (drop one, or use nested-NER tooling)")
        first = True
        for c in range(start, end):
            owner[c] = k
            if text[c].isspace():
                continue
            char_tags[c] = ("B-" if first else "I-") + kind
            first = False
    kept = [c for c in range(len(text)) if not text[c].isspace()]
    return [text[c] for c in kept], [char_tags[c] for c in kept]


def check_known_tags(train: Tagged, other: Tagged, split: str) -> None:
    """Every tag of a validation/test file must be one the model can predict."""
    check_tags(train.tags, other, lambda tag: f"{split} tag {tag!r} never occurs in the "
               f"training data ({train.path}); the model cannot predict it")


def check_tags(known, other: Tagged, message) -> None:
    """``other``'s first tag not in ``known``: an error at its file and line, ``message(tag)``."""
    known = set(known)
    for i, (_, tags) in enumerate(other.sentences):
        unknown = next((k for k, t in enumerate(tags) if t not in known), None)
        if unknown is not None:
            raise InputError(f"{other.path}:{other.line(i, unknown)}: {message(tags[unknown])}")
