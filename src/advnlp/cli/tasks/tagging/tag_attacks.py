"""Robustness of a tagger: entity F1 under the embedding attack and under typos.

- **Embedding attack** (:func:`tag_embedding_robustness`): the classifiers' attack
  (:func:`advnlp.attacks.perturbed_outputs`: the training methods' hook, one L2 or L∞ ball
  per sentence over its real tokens, PGD with step ``2.5 ε / steps``) climbing the tagger's
  own loss on the gold tags (token cross-entropy summed over the labelled sub-tokens, or
  the CRF's negative log-likelihood). Each sentence is tagged at the attack's last point for
  each ε and the split is scored by seqeval as usual, so the curve is entity F1 against ε.
  Unlike the classifiers' curve it is not forced to be non-increasing (an entity score has
  no "worst point" per sentence); read a rise with ε as noise.
- **Character attack** (:func:`tag_char_attack`): one typo per word, words found by the
  classifiers' greedy search (:func:`advnlp.attacks.search.greedy_search` over the sentence's
  words, scored by the tagger's loss). Per sentence: its loss on the gold tags clean;
  leave-one-out importance (each editable word replaced in turn by the model's unknown token,
  one batch); in that order, every typo of the word (the classifiers' swap / delete / insert
  / QWERTY substitute, at most ``max_candidates``, sampled with the sentence's seeded RNG)
  scored in one batch and the one that raises the loss most kept, until ``max_change`` of the
  words are edited or ``query_budget`` sentences were scored. A CJK character (a one-character
  token) is swapped with the next one when both may be edited: deleting or doubling it would
  change the tokens the tags belong to. Words are edited only where the gold tag is O: a
  typo in an entity makes a different gold entity (``edit_entities=True`` edits them too and
  keeps their gold tags). Stopwords, numbers, punctuation and words of fewer than 3 letters
  are never edited, as for the classifiers.
"""
from __future__ import annotations

import math
import random
import time
from typing import Dict, List, Sequence

import torch

from advnlp.attacks import editable_token, perturbed_outputs, token_kind, word_typos
from advnlp.attacks.search import Search, Words, greedy_search, importance_order

from ...errors import InputError
from .tag import Tagger, align, tag_metrics


def _summary(gold, pred, scheme: str) -> dict:
    m = tag_metrics(gold, pred, scheme)
    micro = m["default"]["micro"]
    return {"entity_f1": m["entity_f1"], "precision": micro["precision"], "recall": micro["recall"],
            "strict_entity_f1": m["strict"]["micro"]["f1"], "token_accuracy": m["token_accuracy"]}


def _encoded(tagger: Tagger, sentences, gold, device):
    """A batch, its word ids and the gold labels on first sub-tokens (what the attack climbs)."""
    index = {n: i for i, n in enumerate(tagger.names)}
    batch, word_ids = tagger.encode(sentences)
    labels = torch.tensor([align(w, [index[t] for t in g]) for w, g in zip(word_ids, gold)])
    return {k: v.to(device) for k, v in batch.items()}, word_ids, labels.to(device)


def tag_embedding_robustness(tagger: Tagger, sentences: Sequence[Sequence[str]],
                             gold: Sequence[Sequence[str]], epsilons: Sequence[float],
                             steps: int, batch_size: int, device, scheme: str, *,
                             norm: str = "l2", random_start: bool = False, seed: int = 0) -> dict:
    """Entity F1 (and precision, recall, strict F1, token accuracy) at ε = 0 and under the
    embedding PGD attack at each ε, on ``sentences`` with their ``gold`` tags."""
    if not sentences:
        raise InputError("no sentences to attack")
    model = tagger.model
    preds: Dict[float, List[List[str]]] = {}
    t0 = time.perf_counter()
    for start in range(0, len(sentences), batch_size):
        chunk, tags = sentences[start:start + batch_size], gold[start:start + batch_size]
        batch, word_ids, labels = _encoded(tagger, chunk, tags, device)
        mask = batch["attention_mask"]
        try:
            outs = perturbed_outputs(
                model, lambda b: model(**b).logits,
                lambda logits: tagger.sentence_losses(logits, labels, mask).sum(),
                batch, list(epsilons), norm=norm, steps=steps, random_start=random_start,
                seed=seed + start)
        except ValueError as e:
            raise InputError(str(e)) from None
        for eps, logits in outs.items():
            preds.setdefault(eps, []).extend(tagger.word_tags(chunk, word_ids, logits, mask))
    curve = [{"epsilon": eps, **_summary(list(gold), preds[eps], scheme)} for eps in sorted(preds)]
    alpha = 1.0 if steps == 1 else 2.5 / steps
    return {"attack": "embedding", "method": "fgsm" if steps == 1 else "pgd", "norm": norm,
            "steps": steps, "alpha": alpha, "random_start": bool(random_start), "seed": seed,
            "space": "input-embedding output, one ball per sentence, padding untouched",
            "objective": "the tagger's loss on the gold tags; each sentence tagged at the "
                         "attack's last point",
            "examples": len(sentences), "clean_entity_f1": curve[0]["entity_f1"],
            "robust_entity_f1": {p["epsilon"]: p["entity_f1"] for p in curve[1:]},
            "curve": curve, "predictions": preds,
            "seconds_per_example": (time.perf_counter() - t0) / len(sentences)}


def _losses(tagger: Tagger, sentences, gold, device, batch_size: int) -> List[float]:
    out: List[float] = []
    with torch.no_grad():
        for start in range(0, len(sentences), batch_size):
            batch, _, labels = _encoded(tagger, sentences[start:start + batch_size],
                                        gold[start:start + batch_size], device)
            logits = tagger.model(**batch).logits
            out += tagger.sentence_losses(logits, labels, batch["attention_mask"]).tolist()
    return out


def _unknown(tagger: Tagger) -> str:
    return tagger.tokenizer.unk_token if tagger.is_hf else "[UNK]"


def _candidates(tokens: List[str], kinds: List[str], i: int, editable: set, changed: set) -> List[dict]:
    if kinds[i] == "cjk":
        j = i + 1  # a swap keeps every token in place; delete or duplicate would not
        if j in editable and j not in changed and kinds[j] == "cjk" and tokens[j] != tokens[i]:
            return [{i: tokens[j], j: tokens[i]}]
        return []
    return [{i: v} for v in word_typos(tokens[i])]


def _sentence_search(tagger: Tagger, tokens: List[str], tags: List[str], seen: set,
                     rng: random.Random, device, *, max_change: float, query_budget: int,
                     max_candidates: int, edit_entities: bool, batch_size: int):
    """The classifiers' greedy search on one sentence, scored by its loss on the gold tags:
    the finished :class:`Search` and the sentences scored."""
    kinds = [token_kind(t) for t in tokens]
    editable = [i for i in range(len(tokens)) if i in seen
                and (edit_entities or tags[i] == "O") and editable_token(tokens[i])]
    allowed, used = set(editable), [0]

    def losses(texts: List[List[str]]) -> List[float]:
        used[0] += len(texts)
        return _losses(tagger, texts, [tags] * len(texts), device, batch_size)

    clean, unknown = losses([tokens])[0], _unknown(tagger)
    order = importance_order(editable, query_budget - used[0], lambda units: losses(
        [[unknown if j == i else t for j, t in enumerate(tokens)] for i in units]))
    words = Words(tokens, sum(k != "punct" for k in kinds))
    search = Search(words, order, max(1, math.floor(max_change * words.n_words)),
                    lambda _, values, i, changed: _candidates(values, kinds, i, allowed, changed),
                    rng, max_candidates=max_candidates, budget=query_budget - used[0],
                    score=clean)
    greedy_search([search], lambda asks: [_raised(losses(texts)) for _, texts in asks])
    return search, used[0]


def _raised(losses: List[float]) -> tuple:
    """A scorer's answer for the search: the losses, and no candidate "succeeds" (the search
    keeps the one that raises the loss most, until its budgets run out)."""
    return (torch.tensor(losses, dtype=torch.float64), torch.zeros(len(losses), dtype=torch.bool),
            [None] * len(losses))


def tag_char_attack(tagger: Tagger, sentences: Sequence[Sequence[str]],
                    gold: Sequence[Sequence[str]], device, scheme: str, *,
                    max_change: float = 0.15, query_budget: int = 500, max_candidates: int = 32,
                    edit_entities: bool = False, seed: int = 0, batch_size: int = 32) -> dict:
    """Typos that raise the tagger's loss on its gold tags (see the module docstring);
    entity F1 of the same sentences clean and attacked, and one record per sentence."""
    if not sentences:
        raise InputError("no sentences to attack")
    if not 0 < max_change <= 1:
        raise InputError(f"--max-change must be a fraction in (0, 1], got {max_change:g}")
    tagger.model.eval()
    visible = tagger.encode(sentences)[1]  # words past the token budget are never read
    records, t0 = [], time.perf_counter()
    for n, (tokens, tags) in enumerate(zip(sentences, gold)):
        t1 = time.perf_counter()
        rng = random.Random(seed * 1_000_003 + n)  # one RNG per sentence, as for classifiers
        tokens, tags = list(tokens), list(tags)
        search, queries = _sentence_search(
            tagger, tokens, tags, {w for w in visible[n] if w is not None}, rng, device,
            max_change=max_change, query_budget=query_budget, max_candidates=max_candidates,
            edit_entities=edit_entities, batch_size=batch_size)
        records.append({"tokens": tokens, "perturbed": search.values, "tags": tags,
                        "changed": sorted(search.changed),
                        "queries": queries,
                        "changed_fraction": search.changed_fraction,
                        "seconds": time.perf_counter() - t1})
    clean = tagger.predict([r["tokens"] for r in records], batch_size, device)
    attacked = tagger.predict([r["perturbed"] for r in records], batch_size, device)
    for r, c, a in zip(records, clean, attacked):
        r["clean_prediction"], r["attacked_prediction"] = c, a
    gold = [r["tags"] for r in records]
    before, after = _summary(gold, clean, scheme), _summary(gold, attacked, scheme)
    return {"attack": "char", "examples": len(records),
            "edits": "all words" if edit_entities else "non-entity words only (gold tag O)",
            "params": {"max_change": max_change, "query_budget": query_budget,
                       "max_candidates": max_candidates, "seed": seed,
                       "edit_entities": bool(edit_entities), "min_length": 3},
            "clean": before, "attacked": after,
            "clean_entity_f1": before["entity_f1"], "attacked_entity_f1": after["entity_f1"],
            "sentences_changed": sum(bool(r["changed"]) for r in records),
            "avg_changed_fraction": sum(r["changed_fraction"] for r in records) / len(records),
            "avg_queries": sum(r["queries"] for r in records) / len(records),
            "seconds_per_example": (time.perf_counter() - t0) / len(records),
            "records": records}


__all__ = ["tag_char_attack", "tag_embedding_robustness"]
