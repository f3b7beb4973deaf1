#!/usr/bin/env python
"""Robustness at a plain step's price? One compare folder's rows as issue 26 asks for them.

Reads ``<compare>/compare.json`` (several seeds, with ``none`` and the interleaved step-cost
column) and writes ``benchmarks/results/plain-cost-<name>.json``: per method its
``step_cost_vs_none``, ``robust_minus_none@<eps>`` and ``clean_minus_none`` as
``{"mean", "low", "high", "verdict"}`` (the paired 95% t-interval over the seeds, in
accuracy, not points), and every seed's values. Asserts nothing; trains nothing.

Run:  python benchmarks/plain_cost.py runs/robust-text/minilm --methods none,fgm,atta \\
          --name minilm-cpu
"""
from __future__ import annotations

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def difference(versus: dict) -> dict:
    # no interval when every seed gave the same difference (no spread): the point itself
    low, high = versus["interval"] or (versus["mean_difference"],) * 2
    return {"mean": versus["mean_difference"], "low": low, "high": high,
            "verdict": versus["verdict"]}


def entries(result: dict, methods: list, epsilon: float) -> dict:
    robust = f"robust_accuracy@{epsilon:g}"
    out = {}
    for m in methods:
        runs = sorted((r for r in result["runs"] if r["method"] == m), key=lambda r: r["seed"])
        if not runs:
            raise SystemExit(f"{m!r} is not a row of this compare")
        entry = {"step_cost_vs_none": result["step_cost"]["ratios"][m] if "step_cost" in result
                 else None,
                 "per_seed": {"seed": [r["seed"] for r in runs],
                              "accuracy": [r["accuracy"] for r in runs],
                              robust: [r[robust] for r in runs]}}
        if m != "none":
            versus = result["versus_none"][m]
            entry[f"robust_minus_none@{epsilon:g}"] = difference(versus[robust])
            entry["clean_minus_none"] = difference(versus["accuracy"])
        out[m] = entry
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("compare_dir")
    ap.add_argument("--methods", default="none,fgm,atta")
    ap.add_argument("--epsilon", type=float, default=0.5)
    ap.add_argument("--name", default="minilm-cpu")
    ap.add_argument("--memory", help="a benchmarks/step_cost.py JSON: each method's peak "
                                     "memory of a training step beside its step cost")
    ap.add_argument("--note", action="append", default=[], metavar="METHOD=TEXT",
                    help="a note on a method's row (e.g. how its setting was chosen)")
    args = ap.parse_args(argv)
    with open(os.path.join(args.compare_dir, "compare.json"), encoding="utf-8") as f:
        result = json.load(f)
    out = {"source": os.path.join(args.compare_dir, "compare.json"), "seeds": result["seeds"],
           "interval": result["interval"], "step_cost": result.get("step_cost", {}).get("how"),
           "methods": entries(result, [m.strip() for m in args.methods.split(",")], args.epsilon)}
    if args.memory:
        with open(args.memory, encoding="utf-8") as f:
            measured = json.load(f)["results"][0]["methods"]
        out["peak_memory"] = {"source": args.memory, "what": "peak bytes of one training step "
                              "(benchmarks/step_cost.py, its own batch), and over none's"}
        for m, e in out["methods"].items():
            if m in measured:
                e["peak_bytes"] = measured[m]["peak_bytes"]
                e["extra_peak_bytes_vs_none"] = measured[m]["extra_peak_bytes"]
    for note in args.note:
        m, _, text = note.partition("=")
        out["methods"][m]["note"] = text
    dest = os.path.join(HERE, "results", f"plain-cost-{args.name}.json")
    with open(dest, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    for m, e in out["methods"].items():
        r = e.get(f"robust_minus_none@{args.epsilon:g}")
        print(f"{m:8} step cost {e['step_cost_vs_none']}"
              + ("" if r is None else f"  robust-none {r['mean']:+.4f} [{r['low']:+.4f}, "
                 f"{r['high']:+.4f}] {r['verdict']}"))
    print(f"written: {os.path.relpath(dest)}")


if __name__ == "__main__":
    main()
