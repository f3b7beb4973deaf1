"""Sweep the perturbation size of FGM, PGD, FreeLB and VAT, absolute and relative, with
``advnlp compare --seeds``, and choose each method's size on the *validation* split.

Two settings of the embedded default (BBC News, 5 topics):

* ``minilm-200``: the bundled pretrained MiniLM, low-resource (200 training examples,
  3 epochs, 64 tokens): the setting ``make demo`` runs;
* ``textcnn``: a TextCNN trained from scratch (640 examples, 5 epochs, 128 tokens).

Every setting trains ``none`` once per seed and every (method, size) once per seed, the
seeds paired (same split, data order, initialisation). The rule that picks a method's
size was fixed before any run (``choose``): among the sizes whose mean paired difference
in *validation* clean accuracy against ``none`` is >= -0.005 and whose verdict is not
``hurt``, the one with the largest mean paired difference in validation robust accuracy
at the middle attack radius. Test numbers are reported, never used to choose.

    python benchmarks/sweep_epsilon.py                    # ~80 min on 2 CPU cores
    python benchmarks/sweep_epsilon.py --settings textcnn --seeds 3

Writes ``results/sweep-epsilon-<device>.json`` and ``.md`` (and ``.png``); the runs stay
in ``--work`` (default ``runs/sweep-epsilon``), and an interrupted sweep continues
where it stopped when started again.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from advnlp.cli.commands import compare, resume_compare, robust_key  # noqa: E402
from advnlp.cli.config import TrainConfig  # noqa: E402
from advnlp.cli.data import DataSpec  # noqa: E402
from advnlp.cli.statistics import paired_difference  # noqa: E402

SETTINGS = {
    "minilm-200": {"train": dict(model=None, epochs=3, max_length=64, batch_size=16),
                   "samples": 200, "attack_epsilon": [0.25, 0.5, 1.0],
                   "grid": {"absolute": [1.0, 3.0], "relative": [0.03, 0.1]}},
    # A from-scratch embedding is N(0, 1) in 128 dimensions (an example's norm ~128 over
    # 128 tokens, ~14x MiniLM's over 64): the attack radii keep MiniLM's relative sizes.
    "textcnn": {"train": dict(model="textcnn", epochs=5, max_length=128, batch_size=16),
                "samples": 640, "attack_epsilon": [3.5, 7.0, 14.0],
                "grid": {"absolute": [1.0, 3.0], "relative": [0.03, 0.1, 0.3]}},
}
METHODS = ("fgm", "pgd", "freelb", "vat")


def method_params(method: str, size: float) -> dict:
    """One size, each method's knobs in the proportions of its defaults: PGD's step is 0.3 of
    its radius (0.3 / 1.0), FreeLB's ball is 0.6 of the size (max_norm 0.6 beside FGM's 1.0)
    with the released step max_norm / 6."""
    if method == "pgd":
        return {"epsilon": size, "alpha": 0.3 * size}
    if method == "freelb":
        return {"epsilon": 0.6 * size, "alpha": 0.1 * size}
    return {"epsilon": size}


def run_compare(folder: str, cfg: TrainConfig, methods, setting: dict, seeds: int) -> dict:
    done = os.path.join(folder, "compare.json")
    if os.path.isfile(done):
        with open(done, encoding="utf-8") as f:
            return json.load(f)
    log = lambda s: print(s, flush=True)  # noqa: E731
    if os.path.isfile(os.path.join(folder, "compare-config.json")):
        return resume_compare(folder, log=log)
    return compare(dataclasses.replace(cfg, output_dir=folder), list(methods),
                   setting["attack_epsilon"], 5, 100, overwrite=True, log=log, seeds=seeds,
                   typo_rate=0.3)


def choose(candidates: list, middle: str) -> dict:
    """The rule fixed before the sweep (module docstring); None when no size qualifies."""
    fine = [c for c in candidates
            if c["validation"]["accuracy"]["mean_difference"] >= -0.005
            and c["validation"]["accuracy"]["verdict"] != "hurt"]
    if not fine:
        return None
    return max(fine, key=lambda c: c["validation"][middle]["mean_difference"])


def sweep(name: str, seeds: int, work: str) -> dict:
    setting = SETTINGS[name]
    cfg = TrainConfig(**setting["train"], seed=42, data=DataSpec(max_train_samples=setting["samples"]))
    base = run_compare(os.path.join(work, name, "none"), cfg, ["none"], setting, seeds)
    keys = base["metrics"]
    none_runs = {r["seed"]: r for r in base["runs"]}
    middle = robust_key(setting["attack_epsilon"][len(setting["attack_epsilon"]) // 2])
    rows, chosen = [], {}
    for method in METHODS:
        candidates = []
        for mode, sizes in setting["grid"].items():
            for size in sizes:
                params = method_params(method, size)
                run_cfg = dataclasses.replace(cfg, method=method, relative_epsilon=mode == "relative",
                                              **params)
                t0 = time.time()
                out = run_compare(os.path.join(work, name, f"{method}-{mode}-{size:g}"), run_cfg,
                                  [method], setting, seeds)
                runs = sorted(out["runs"], key=lambda r: r["seed"])
                diffs = {k: paired_difference([r[k] for r in runs],
                                              [none_runs[r["seed"]][k] for r in runs])
                         for k in keys}
                row = {"method": method, "mode": mode, "size": size, "params": params,
                       "mean": {k: out["methods"][0][k] for k in keys},
                       "std": out["methods"][0]["std"],
                       "relative_cost": (out["methods"][0]["seconds_per_step"]
                                         / base["methods"][0]["seconds_per_step"]),
                       "versus_none": {k: v for k, v in diffs.items() if not k.startswith("validation_")},
                       "validation": {k[len("validation_"):]: v for k, v in diffs.items()
                                      if k.startswith("validation_")},
                       "runs": runs}
                rows.append(row)
                candidates.append(row)
                print(f"[{name}] {method} {mode} {size:g}: val acc "
                      f"{diffs['validation_accuracy']['mean_difference']:+.4f}, val {middle} "
                      f"{diffs['validation_' + middle]['mean_difference']:+.4f} "
                      f"({time.time() - t0:.0f} s)", flush=True)
        best = choose(candidates, middle)
        chosen[method] = None if best is None else {"mode": best["mode"], "size": best["size"],
                                                    "params": best["params"]}
    return {"setting": name, "train": {**setting["train"], "max_train_samples": setting["samples"],
                                       "lr": "the CLI default"},
            "attack_epsilon": setting["attack_epsilon"], "typo_rate": 0.3, "seeds": base["seeds"],
            "selection_metric": f"validation {middle}", "metrics": keys,
            "none": {"mean": {k: base["methods"][0][k] for k in keys},
                     "std": base["methods"][0]["std"], "runs": base["runs"]},
            "rows": rows, "chosen": chosen}


def _d(d: dict) -> str:
    if d["interval"] is None:
        return f"{d['mean_difference']:+.3f}"
    lo, hi = d["interval"]
    return f"{d['mean_difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def table(result: dict) -> str:
    eps = result["attack_epsilon"]
    middle = robust_key(eps[len(eps) // 2])
    lines = [f"### {result['setting']}: {len(result['seeds'])} seeds "
             f"({result['seeds'][0]}..{result['seeds'][-1]}); differences from none, "
             "mean [95% t-interval]",
             "",
             f"none: test accuracy {result['none']['mean']['accuracy']:.4f}, validation accuracy "
             f"{result['none']['mean']['validation_accuracy']:.4f}, validation {middle} "
             f"{result['none']['mean']['validation_' + middle]:.4f}",
             "",
             f"| method | ε | val accuracy | val {middle} | test accuracy | test {middle} | "
             "test typo'd (p=0.3) | cost | chosen |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        c = result["chosen"][r["method"]]
        mark = "**yes**" if c and (c["mode"], c["size"]) == (r["mode"], r["size"]) else ""
        unit = "x ‖e‖" if r["mode"] == "relative" else " abs"
        lines.append(f"| {r['method']} | {r['size']:g}{unit} | {_d(r['validation']['accuracy'])} | "
                     f"{_d(r['validation'][middle])} | {_d(r['versus_none']['accuracy'])} | "
                     f"{_d(r['versus_none'][middle])} | {_d(r['versus_none']['typo_accuracy'])} | "
                     f"{r['relative_cost']:.2f}x | {mark} |")
    return "\n".join(lines)


def plot(results: list, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, result in zip(axes[0], results):
        eps = result["attack_epsilon"]
        middle = robust_key(eps[len(eps) // 2])
        for i, r in enumerate(result["rows"]):
            d = r["validation"][middle]
            a = r["validation"]["accuracy"]
            ax.errorbar(a["mean_difference"], d["mean_difference"],
                        xerr=None if a["interval"] is None else
                        [[a["mean_difference"] - a["interval"][0]], [a["interval"][1] - a["mean_difference"]]],
                        yerr=None if d["interval"] is None else
                        [[d["mean_difference"] - d["interval"][0]], [d["interval"][1] - d["mean_difference"]]],
                        fmt="o" if r["mode"] == "relative" else "s", capsize=2, alpha=0.7,
                        color=f"C{METHODS.index(r['method'])}")
            ax.annotate(f"{r['method']} {r['size']:g}{'x' if r['mode'] == 'relative' else ''}",
                        (a["mean_difference"], d["mean_difference"]), fontsize=6)
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel("validation accuracy - none")
        ax.set_ylabel(f"validation {middle} - none")
        ax.set_title(f"{result['setting']} (circles: relative ε, squares: absolute)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default="minilm-200,textcnn")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--work", default="runs/sweep-epsilon")
    p.add_argument("--out", default=os.path.join(HERE, "results", "sweep-epsilon-cpu"))
    args = p.parse_args()
    t0 = time.time()
    results = []
    for name in args.settings.split(","):
        results.append(sweep(name, args.seeds, args.work))
        payload = {"command": " ".join(["python", "benchmarks/sweep_epsilon.py", *sys.argv[1:]]),
                   "rule": choose.__doc__, "results": results,
                   "seconds": round(time.time() - t0)}
        with open(args.out + ".json", "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1)
        with open(args.out + ".md", "w", encoding="utf-8") as f:
            f.write("\n\n".join(table(r) for r in results) + "\n")
        plot(results, args.out + ".png")
    print("\n\n".join(table(r) for r in results))
    print(f"written: {args.out}.json, .md, .png ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
