"""How advnlp splits text into units: one CJK character, one word, or one punctuation mark.

The scratch models of the command line tokenise with these units, and the discrete
attacks edit them, so an attack on a CJK text edits exactly the characters a
character-level model reads. ``CJK`` covers kana, the CJK ideographs and extension
A, Hangul syllables and the compatibility ideographs.
"""
from __future__ import annotations

import re
from typing import List

CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
# Groups: 1 = a CJK character, 2 = a word (letters, digits, underscores), 3 = punctuation.
UNIT = re.compile(rf"([{CJK}])|([^\W{CJK}]+)|([^\w\s])")


def units(text: str) -> List[str]:
    """The units of ``text`` in order (whitespace dropped)."""
    return [m.group(0) for m in UNIT.finditer(text)]
