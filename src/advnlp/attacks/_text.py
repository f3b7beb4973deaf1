"""Text plumbing for the discrete attacks: units, constraints, keyboard typos.

A text is split into *units*: one CJK character, one word (a run of letters,
digits or underscores) or one punctuation mark. Whitespace lives in the gaps
between units, so replacing unit values and re-rendering never touches the
rest of the text.
"""
from __future__ import annotations

from typing import Dict, FrozenSet, List, Sequence

from ..text import UNIT

CJK, WORD, PUNCT = "cjk", "word", "punct"

STOPWORDS: FrozenSet[str] = frozenset("""
a about above after again against all am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for
from further had has have having he her here hers herself him himself his how i if in
into is it its itself just me more most my myself no nor not now of off on once only or
other our ours ourselves out over own same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up
very was we were what when where which while who whom why will with would you your
yours yourself yourselves
""".split())

# Function characters that carry grammar rather than content in Chinese/Japanese.
CJK_STOPWORDS: FrozenSet[str] = frozenset("的了是在和与也就都而及或のはがをにでとも")

# QWERTY neighbours (same row and the rows above/below, as the keys touch).
KEYBOARD: Dict[str, str] = {
    "q": "wa", "w": "qeas", "e": "wrsd", "r": "etdf", "t": "ryfg", "y": "tugh",
    "u": "yihj", "i": "uojk", "o": "ipkl", "p": "ol",
    "a": "qwsz", "s": "awedxz", "d": "serfcx", "f": "drtgvc", "g": "ftyhbv",
    "h": "gyujnb", "j": "huikmn", "k": "jiolm", "l": "kop",
    "z": "asx", "x": "zsdc", "c": "xdfv", "v": "cfgb", "b": "vghn", "n": "bhjm",
    "m": "njk",
}


class Segmented:
    """``text`` as units and the whitespace gaps around them (``len(gaps) == len(units) + 1``)."""

    def __init__(self, text: str):
        self.text = text
        self.units: List[str] = []
        self.kinds: List[str] = []
        self.gaps: List[str] = []
        pos = 0
        for m in UNIT.finditer(text):
            self.gaps.append(text[pos:m.start()])
            self.units.append(m.group(0))
            self.kinds.append(CJK if m.group(1) else WORD if m.group(2) else PUNCT)
            pos = m.end()
        self.gaps.append(text[pos:])

    def __len__(self) -> int:
        return len(self.units)

    @property
    def n_words(self) -> int:
        """Units a reader counts as words: everything but punctuation."""
        return sum(k != PUNCT for k in self.kinds)

    def adjacent(self, i: int) -> bool:
        """Unit ``i + 1`` exists and touches unit ``i`` (no whitespace between)."""
        return i + 1 < len(self.units) and self.gaps[i + 1] == ""

    def render(self, values: Sequence[str]) -> str:
        out, pending = "", self.gaps[0]  # pending: whitespace before the next kept unit
        for i, v in enumerate(values):
            if v:
                out += pending + v
                pending = self.gaps[i + 1]
            elif out:
                # A deleted unit takes the whitespace before it along: no double
                # spaces, and "was good ." never becomes "was ." with a stray space.
                pending = self.gaps[i + 1]
        return out + pending


def eligible(unit: str, kind: str, stopwords: FrozenSet[str], min_length: int) -> bool:
    """The constraints every discrete attack shares: which units may be edited at all."""
    if kind == PUNCT:
        return False
    if any(ch.isnumeric() for ch in unit):  # digits, and CJK numerals (一, 二, 百 ...)
        return False
    if kind == CJK:
        return unit not in CJK_STOPWORDS
    if unit.lower() in stopwords:
        return False
    return sum(ch.isalpha() for ch in unit) >= min_length


def match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


# ---------------------------------------------------------------------------
# One-edit typos of a word (edit distance 1; a swap is one Damerau edit)
# ---------------------------------------------------------------------------
def _near(ch: str) -> str:
    near = KEYBOARD.get(ch.lower(), "")
    return near.upper() if ch.isupper() else near


def typo_swap(w: str) -> List[str]:
    return [w[:j] + w[j + 1] + w[j] + w[j + 2:] for j in range(len(w) - 1) if w[j] != w[j + 1]]


def typo_delete(w: str) -> List[str]:
    return [w[:j] + w[j + 1:] for j in range(len(w))]


def typo_insert(w: str) -> List[str]:
    # A fat finger: a key next to the one being typed lands before or after it.
    out = []
    for j in range(len(w) + 1):
        src = w[j] if j < len(w) else w[j - 1]
        out += [w[:j] + c + w[j:] for c in _near(src)]
    return out


def typo_substitute(w: str) -> List[str]:
    return [w[:j] + c + w[j + 1:] for j in range(len(w)) for c in _near(w[j])]


def unique(items: Sequence[str], exclude: str) -> List[str]:
    seen, out = {exclude}, []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out
