"""The synonym clusters of the typo defence: every substitute the word attack's relation
offers maps to the word's representative (recomputed by brute force), the cap, the
composition with typos, files, bad settings, and the word attack through the defence."""
import json
import math
import random

import pytest
import torch

from advnlp.attacks import STOPWORDS, EmbeddingNeighbours, TextClassifier, word_attack
from advnlp.attacks import _text as T
from advnlp.defences import TypoNormalizer, defended

# Groups of near vectors (a shared centre, small noise), the rest random: the relation
# has chains (movie-movies-films-film) and words with no neighbour at all.
GROUPS = [["movie", "movies", "film", "films", "cinema"], ["good", "great", "fine"],
          ["terrible", "awful", "dreadful", "horrible"], ["plot", "story", "stories"]]
LONE = ["actor", "music", "scene", "camera", "budget", "ending", "sequel", "studio"]
CORPUS = ["a good film with a good story", "the movie was good and the plot fine",
          "terrible acting and an awful plot", "films and movies and music",
          "great music, a great scene", "the ending was horrible", "good good good film"]


def vectors(seed=0, dim=64):
    g = torch.Generator().manual_seed(seed)
    words, rows = [], []
    for group in GROUPS:
        centre = torch.randn(dim, generator=g)
        for w in group:
            words.append(w)
            rows.append(centre + 0.45 * torch.randn(dim, generator=g))
    for w in LONE + ["and", "the", "was"]:  # stopwords: never linked
        words.append(w)
        rows.append(torch.randn(dim, generator=g))
    return words, torch.stack(rows)


def brute_neighbours(words, rows, k, threshold):
    """word -> the relation's neighbours, from plain Python dot products."""
    vecs = [[float(x) for x in r] for r in rows]
    norm = [math.sqrt(sum(x * x for x in v)) for v in vecs]
    out = {}
    for i, w in enumerate(words):
        sims = sorted(((sum(a * b for a, b in zip(vecs[i], vecs[j])) / (norm[i] * norm[j]), words[j])
                       for j in range(len(words)) if j != i), reverse=True)[:k]
        out[w] = [v for s, v in sims if s >= threshold - 1e-6]
    return out


def editable(w):
    return T.eligible(w, T.WORD, STOPWORDS, 3)


@pytest.fixture(scope="module")
def space():
    words, rows = vectors()
    return words, rows, EmbeddingNeighbours(words, rows)


def test_scored_neighbours_are_the_attacks_and_brute_force(space):
    words, rows, nb = space
    brute = brute_neighbours(words, rows, 3, 0.5)
    batched = nb.scored(words, 3, 0.5, chunk=4)
    for w, found in zip(words, batched):
        assert [v for v, _ in found] == nb(w, 3, 0.5)
        assert set(v for v, _ in found) == set(brute[w])
    assert nb.scored(["nonexistent"])[0] == []


def test_components_map_every_substitute_to_the_words_representative(space):
    words, rows, nb = space
    norm = TypoNormalizer.build(CORPUS, synonyms=nb, synonym_k=3, synonym_threshold=0.5,
                                synonym_cluster_size=None)
    brute = brute_neighbours(words, rows, 3, 0.5)
    # connected components of the relation over editable words, by search
    adjacency = {w: set() for w in words if editable(w)}
    for w, ns in brute.items():
        for n in ns:
            if editable(w) and editable(n):
                adjacency[w].add(n)
                adjacency[n].add(w)
    counts = {w: sum(T.Segmented(t).units.count(w) for t in CORPUS) for w in adjacency}
    linked = 0
    for w in adjacency:
        seen, todo = {w}, [w]
        while todo:
            for n in adjacency[todo.pop()] - seen:
                seen.add(n)
                todo.append(n)
        rep = min(seen, key=lambda x: (-counts[x], x))
        assert norm.normalize_word(w) == rep, w
        for n in brute[w]:
            if editable(n):
                assert norm.normalize_word(n) == norm.normalize_word(w)
                linked += 1
    assert linked >= 8  # the fixture really has links
    assert norm.normalize_word("movies") == "film" and norm.normalize_word("Great") == "Good"
    assert norm("The Movies were GREAT") == "The Film were GOOD"


def test_cluster_size_is_capped_most_similar_first(space):
    words, rows, nb = space
    norm = TypoNormalizer.build(CORPUS, synonyms=nb, synonym_k=3, synonym_threshold=0.5,
                                synonym_cluster_size=2)
    sizes = {}
    for w in words:
        if w in norm.counts:
            rep = norm.representative(w)
            sizes[rep] = sizes.get(rep, 0) + 1
    assert max(sizes.values()) == 2
    # the most similar linked pair of all is always merged
    best = max(((s, w, v) for w, found in zip(words, nb.scored(words, 3, 0.5)) for v, s in found
                if editable(w) and editable(v)))
    assert norm.representative(best[1]) == norm.representative(best[2])


def test_a_typo_of_a_synonym_maps_to_the_clusters_representative(space):
    norm = TypoNormalizer.build(CORPUS, synonyms=space[2], synonym_k=3, synonym_threshold=0.5,
                                synonym_cluster_size=None)
    assert norm.normalize_word("moveis") == norm.representative("movies") == "film"
    assert norm.normalize_word("dreadfl") == norm.representative("dreadful")


def test_stopwords_short_words_and_lone_words_are_left_alone(space):
    norm = TypoNormalizer.build(CORPUS, synonyms=space[2], synonym_k=3, synonym_threshold=0.5)
    for w in LONE + ["and", "the", "was", "a"]:
        assert norm.normalize_word(w) == w


def test_the_word_attacks_swaps_fail_behind_the_defence_and_its_deletions_do_not(space):
    """A model that keys on one word: swapping it for a neighbour fools it; behind the
    synonym clusters the swap reads as the word itself. Deletions are not defended."""
    words, rows, nb = space

    def keyed(texts):
        return torch.tensor([[0.1, 0.9] if "good" in T.Segmented(t.lower()).units else [0.8, 0.2]
                             for t in texts])

    rng = random.Random(0)
    texts = [f"a good {rng.choice(LONE)} with {rng.choice(['music', 'scene', 'camera'])}"
             for _ in range(12)]
    norm = TypoNormalizer.build(CORPUS + texts, synonyms=nb, synonym_k=3, synonym_threshold=0.5,
                                synonym_cluster_size=None)
    clf = TextClassifier(keyed, neighbours=nb)
    kw = dict(threshold=0.5, k=3, max_change=0.5, seed=0)
    swaps = word_attack(clf, texts, [1] * 12, transformations=["substitute"], **kw)
    guarded = word_attack(defended(clf, norm), texts, [1] * 12, transformations=["substitute"], **kw)
    assert swaps.summary()["success_rate"] == 1.0
    assert guarded.summary()["clean_accuracy"] == 1.0 and guarded.summary()["success_rate"] == 0.0
    deletions = word_attack(defended(clf, norm), texts, [1] * 12, transformations=["delete"], **kw)
    assert deletions.summary()["success_rate"] == 1.0


def test_save_load_keeps_the_clusters_and_a_version_1_file_still_loads(space, tmp_path):
    norm = TypoNormalizer.build(CORPUS, synonyms=space[2], synonym_k=3, synonym_threshold=0.5)
    back = TypoNormalizer.load(norm.save(str(tmp_path)))
    assert back.synonyms == {"k": 3, "threshold": 0.5, "max_cluster_size": 16}
    assert back("movies, great, awful") == norm("movies, great, awful") != "movies, great, awful"
    old = TypoNormalizer.build(CORPUS).to_dict()
    old["version"] = 1
    del old["settings"]["synonyms"]
    (tmp_path / "v1.json").write_text(json.dumps(old))
    v1 = TypoNormalizer.load(str(tmp_path / "v1.json"))
    assert v1.synonyms is None and v1("a good flim") == "a good film"
    broken = norm.to_dict()
    broken["settings"]["synonyms"] = {"k": 0, "threshold": 0.5, "max_cluster_size": 16}
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="corrupt.*synonym_k"):
        TypoNormalizer.load(str(tmp_path / "bad.json"))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"synonym_k": 0}, ValueError, "synonym_k"),
    ({"synonym_threshold": 1.5}, ValueError, "synonym_threshold"),
    ({"synonym_cluster_size": 1}, ValueError, "synonym_cluster_size"),
    ({"synonyms": {"good": ["great"]}}, TypeError, "EmbeddingNeighbours"),
])
def test_bad_synonym_settings(space, kwargs, error, match):
    kwargs = {"synonyms": space[2], **kwargs}
    with pytest.raises(error, match=match):
        TypoNormalizer.build(CORPUS, **kwargs)


def test_embeddings_with_no_neighbours_are_refused():
    words = LONE
    nb = EmbeddingNeighbours(words, torch.eye(len(words)))  # orthogonal: no cosine >= 0.6
    with pytest.raises(ValueError, match="no two editable words .* neighbours"):
        TypoNormalizer.build(CORPUS, synonyms=nb)
