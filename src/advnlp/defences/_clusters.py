"""Clusters of words merged pair by pair under a size cap (the typo and synonym defences')."""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple


class Clusters:
    """Union-find over ``words``; :meth:`merge` takes links in the order given."""

    def __init__(self, words: Sequence[str]):
        self.parent = {w: w for w in words}
        self.size = dict.fromkeys(words, 1)

    def root(self, a: str) -> str:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def merge(self, links: Iterable[Tuple[str, str]], cap: Optional[int]) -> None:
        """Join each link's clusters unless the joined cluster would exceed ``cap`` words
        (None: no cap, the connected components)."""
        for a, b in links:
            ra, rb = self.root(a), self.root(b)
            if ra != rb and (cap is None or self.size[ra] + self.size[rb] <= cap):
                self.parent[ra] = rb
                self.size[rb] += self.size.pop(ra)

    def representatives(self, counts: Mapping[str, int]) -> Dict[str, str]:
        """word -> its cluster's most frequent word (ties: alphabetical), for the words
        that are not their own."""
        members = defaultdict(list)
        for w in self.parent:
            members[self.root(w)].append(w)
        reps = {}
        for ws in members.values():
            best = min(ws, key=lambda w: (-counts.get(w, 0), w))
            reps.update((w, best) for w in ws if w != best)
        return reps
