#!/usr/bin/env python
"""Robustness against cost: every method of one `advnlp compare` on one picture.

Reads a compare folder's compare.json (with the interleaved step-cost column, i.e. a compare
run with --cost-rounds > 0) and writes

  docs/robustness-vs-cost.png                     x: step cost vs none (interleaved),
                                                  y: robust accuracy at the first radius and
                                                  clean accuracy, mean ± std over seeds
  benchmarks/results/robustness-vs-cost-<name>.json / .md   the numbers behind it

The intended run (about 40 min of training and scoring on a quiet 2-core CPU with one seed,
~2 h with three; not yet run to the end):

  advnlp compare --methods none,fgm,fgsm,pgd,yopo,freelb,freeat,smart,vat,awp --seeds 3 \\
      --max-train-samples 200 --epochs 3 --max-length 64 --attack-epsilon 0.5 \\
      --output-dir runs/all-methods
  python benchmarks/robustness_cost.py runs/all-methods --name minilm-cpu

Every method at its command-line default (nothing tuned here); see the compare's own table
for the paired differences from none with their intervals.

Rows from another compare on the same setting join the picture with ``--add DIR:METHODS``
(their own seeds, step costs and paired differences from that compare's none; drawn as
squares, labelled with their seed count), and ``--from-json`` redraws from a results JSON
this script wrote when the compare folder is gone:

  python benchmarks/robustness_cost.py --from-json \
      benchmarks/results/robustness-vs-cost-minilm-cpu.json --add runs/plain-cost:atta,freeat
"""
from __future__ import annotations

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def rows(out: dict) -> list:
    robust = next(k for k in out["metrics"] if k.startswith("robust_accuracy@"))
    table = []
    for r in out["methods"]:
        std = r.get("std", {})
        table.append({"method": r["method"], "step_cost": r["step_cost"],
                      "accuracy": r["accuracy"], "accuracy_std": std.get("accuracy"),
                      "robust": r[robust], "robust_std": std.get(robust),
                      "training_time_vs_none_wall": r.get("relative_cost")})
    versus = out.get("versus_none", {})
    for t in table:
        d = versus.get(t["method"], {})
        for key, name in ((robust, "robust"), ("accuracy", "accuracy")):
            if key in d:
                t[f"{name}_vs_none"] = d[key]
    return table, robust


def markdown(table: list, robust: str, out: dict) -> str:
    seeds = out.get("seeds", [])
    eps = robust.split("@", 1)[1]
    lines = [f"{len(seeds) or 1} seed(s) per method; mean ± std over seeds; step cost measured "
             "interleaved against none after training",
             "", f"| method | step cost vs none | clean accuracy | robust acc (eps={eps}) | "
             "robust − none [95% CI] |", "|---|---:|---:|---:|---|"]
    for t in sorted(table, key=lambda t: t["step_cost"]):
        def pm(x, s):
            return f"{x:.3f}" + (f" ± {s:.3f}" if s is not None else "")
        d = t.get("robust_vs_none")
        diff = "-" if not d else (f"{100 * d['mean_difference']:+.1f} [{100 * d['interval'][0]:+.1f}, "
                                  f"{100 * d['interval'][1]:+.1f}] {d.get('verdict', '')}"
                                  if d.get("interval") else f"{100 * d['mean_difference']:+.1f}")
        name = f"{t['method']} ({t['seeds']} seeds, its own compare)" if "source" in t else t["method"]
        lines.append(f"| {name} | {t['step_cost']:.2f}x | {pm(t['accuracy'], t['accuracy_std'])} | "
                     f"{pm(t['robust'], t['robust_std'])} | {diff} |")
    return "\n".join(lines)


def plot(table: list, robust: str, out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = robust.split("@", 1)[1]
    seeds = len(out.get("seeds", [])) or 1
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, key, label in ((axes[0], "robust", f"robust accuracy (embedding PGD, eps={eps})"),
                           (axes[1], "accuracy", "clean test accuracy")):
        for t in table:
            added = "source" in t
            ax.errorbar(t["step_cost"], t[key], yerr=t[f"{key}_std"] or 0,
                        fmt="s" if added else "o", capsize=3)
            name = f"{t['method']} ({t['seeds']} seeds)" if added else t["method"]
            ax.annotate(name, (t["step_cost"], t[key]), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
        base = next((t[key] for t in table if t["method"] == "none"), None)
        if base is not None:
            ax.axhline(base, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("step cost vs none (interleaved, same batch)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Every method at its command-line default: mean ± std over {seeds} seed(s)"
                 + ("; squares: rows of another compare on the same setting"
                    if any("source" in t for t in table) else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def added_rows(spec: str) -> list:
    """``DIR:m1,m2``: those methods' rows of another compare (its own none, seeds, costs)."""
    folder, _, names = spec.rpartition(":")
    with open(os.path.join(folder, "compare.json"), encoding="utf-8") as f:
        other = json.load(f)
    table, _ = rows(other)
    wanted = names.split(",")
    picked = [dict(t, source=os.path.join(folder, "compare.json"), seeds=len(other["seeds"]))
              for t in table if t["method"] in wanted]
    missing = set(wanted) - {t["method"] for t in picked}
    if missing:
        raise SystemExit(f"{folder}: no row {', '.join(sorted(missing))}")
    return picked


def load(args):
    """(result JSON, rows, the robust key, the compare's output) from a folder or a JSON."""
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as f:
            result = json.load(f)
        table = [t for t in result["rows"] if "source" not in t]
        robust = next(k for k in result["versus_none"]["fgm"] if k.startswith("robust_accuracy@"))
        return result, table, robust, {"seeds": result["seeds"]}
    with open(os.path.join(args.compare_dir, "compare.json"), encoding="utf-8") as f:
        out = json.load(f)
    if "step_cost" not in out:
        raise SystemExit("compare.json has no step_cost (run compare with --cost-rounds > 0)")
    table, robust = rows(out)
    with open(os.path.join(args.compare_dir, "compare-config.json"), encoding="utf-8") as f:
        plan = json.load(f)
    result = {"plan": {k: plan[k] for k in ("methods", "seeds", "attack_epsilon", "attack_steps",
                                            "attack_samples")},
              "config": {k: plan["config"].get(k) for k in ("max_length", "epochs", "batch_size",
                                                            "seed", "lr")},
              "data": {"max_train_samples": plan["config"]["data"].get("max_train_samples")},
              "step_cost": out["step_cost"], "seeds": out.get("seeds"),
              "versus_none": out.get("versus_none"), "runs": out.get("runs")}
    return result, table, robust, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("compare_dir", nargs="?")
    ap.add_argument("--from-json", help="redraw from a results JSON this script wrote")
    ap.add_argument("--add", action="append", default=[], metavar="DIR:METHODS",
                    help="rows of another compare on the same setting (repeatable)")
    ap.add_argument("--name", default="minilm-cpu")
    ap.add_argument("--png", default=os.path.join(HERE, "..", "docs", "robustness-vs-cost.png"))
    args = ap.parse_args(argv)
    if bool(args.compare_dir) == bool(args.from_json):
        ap.error("give a compare folder or --from-json, one of them")
    result, table, robust, out = load(args)
    for spec in args.add:
        table += added_rows(spec)
    result["rows"] = table
    base = os.path.join(HERE, "results", f"robustness-vs-cost-{args.name}")
    with open(base + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    md = markdown(table, robust, out)
    with open(base + ".md", "w", encoding="utf-8") as f:
        f.write(md + "\n")
    plot(table, robust, out, args.png)
    print(md)
    print(f"written: {base}.json, {base}.md, {os.path.normpath(args.png)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
