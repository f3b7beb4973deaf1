"""Synonym clusters for the typo defence: a word and its embedding neighbours read as one.

The word attack (:func:`advnlp.attacks.word_attack`) substitutes a word with one of its
``k`` nearest neighbours in the model's input-embedding space whose cosine similarity is
at least ``threshold``. A synonym encoding (Wang, Jin & He, "Natural Language Adversarial
Defense through Synonym Encoding", UAI 2021) maps every word of a cluster of such
neighbours to one representative before the model, so a substitution inside a cluster
changes nothing the model reads.

Algorithm: the links are the attack's relation, ``word -> each of neighbours(word, k,
threshold)``, over the defence's editable known words (the attack never substitutes
stopwords, numbers or short words); they are merged most similar first (ties:
alphabetical), while a merged cluster holds at most ``max_cluster_size`` words (None: the
connected components, under which every substitute the relation offers maps to the word's
representative). The representative is the cluster's most frequent training word.

Measured on MiniLM-L6's vocabulary (21,259 editable whole words, k 8, threshold 0.6):
15,771 links over 9,586 words, mostly inflections (count/counts, pushed/pushing) and
some relatives (nairobi/kenya, fortunately/unfortunately: meaning a sentiment task would
need is merged); the connected components' largest holds 74 words; a cap of 16 keeps
99.6% of the links inside a cluster (8: 98.7%, 4: 89.8%), hence the default 16.

Not a defence against the word attack's deletions and duplications, nor against a
neighbour the fine-tuned embeddings acquire after the clusters were built (they are built
from the model's embeddings before training).
"""
from __future__ import annotations

from typing import Callable, List, Tuple

from .. import _validate as V

SYNONYM_K, SYNONYM_THRESHOLD, SYNONYM_CLUSTER_SIZE = 8, 0.6, 16


def check_synonym_settings(k: int, threshold: float, max_cluster_size) -> None:
    V.integer("synonym_k", k)
    V.in_range("synonym_threshold", threshold, -1, 1, "a cosine similarity")
    if max_cluster_size is not None:
        V.integer("synonym_cluster_size", max_cluster_size, 2)


def synonym_links(neighbours, keep: Callable[[str], bool], k: int = SYNONYM_K,
                  threshold: float = SYNONYM_THRESHOLD) -> List[Tuple[str, str]]:
    """``(word, neighbour)`` pairs, lower-cased, most similar first (ties: alphabetical):
    each neighbour (``neighbours.scored``: the attack's relation) of each word of
    ``neighbours``' vocabulary, both ``keep`` accepts. Refuses another kind of object, and a
    vocabulary with no pair at all (the clusters would be empty: a defence doing nothing)."""
    if not hasattr(neighbours, "scored"):
        raise TypeError("synonyms: expected an EmbeddingNeighbours (advnlp.attacks), got "
                        f"{type(neighbours).__name__}")
    words = sorted({w.lower() for w in neighbours.words if keep(w.lower())})
    scored = []
    for w, found in zip(words, neighbours.scored(words, k, threshold)):
        scored += [(-s, w, n.lower()) for n, s in found if keep(n.lower())]
    if not scored:
        raise ValueError(f"synonyms: no two editable words of the vocabulary are neighbours "
                         f"(k={k}, cosine >= {threshold}): the clusters would be empty; lower "
                         "synonym_threshold or drop synonyms")
    return [(a, b) for _, a, b in sorted(scored)]
