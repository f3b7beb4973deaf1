"""What a person reads: the summary of a run, the compare table, and plot.png."""
from __future__ import annotations

import os
from typing import Callable


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def summary(run_dir: str, result: dict) -> str:
    test = result["final"]["test"]
    extra = f", micro-F1 {test['micro_f1']:.4f}" if "micro_f1" in test else ""
    return (f"done: {run_dir}\n"
            f"  {result['train_examples']} training examples"
            f"{' + %d adversarial' % result['augmented_examples'] if result.get('augmented_examples') else ''}"
            f", {len(result['epochs'])} epoch(s), "
            f"{result['seconds_per_step']:.2f} s/step\n"
            f"  test ({result['test_examples']} examples): accuracy {test['accuracy']:.4f}, "
            f"macro-F1 {test['macro_f1']:.4f}{extra}")


def compare_table(out: dict) -> str:
    """The compare table; with several seeds, mean ± std per method and, against ``none``,
    the mean paired difference with its 95% interval and verdict (clean and robust)."""
    if "seeds" in out:
        return _seeds_table(out)
    eps = out["attack"]["epsilon"]
    head = ["method", "accuracy", "macro-F1", f"robust acc (eps={eps:g})", "s/step", "cost vs none"]
    discrete = out.get("discrete_attack")
    if discrete:
        head.insert(4, f"acc under {discrete['attack']} attack")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in out["methods"]:
        cost = None if r["relative_cost"] is None else f"{r['relative_cost']:.2f}x"
        cells = [r["method"], r["accuracy"], r["macro_f1"], r["robust_accuracy"],
                 f"{r['seconds_per_step']:.3f}", cost]
        if discrete:
            cells.insert(4, r["attacked_accuracy"])
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def _seeds_table(out: dict) -> str:
    from .statistics import format_difference

    eps, seeds = out["attack"]["epsilon"], out["seeds"]
    discrete = out.get("discrete_attack")
    metrics = [("accuracy", "accuracy"), ("robust_accuracy", f"robust acc (eps={eps:g})")]
    if discrete:
        metrics.append(("attacked_accuracy", f"acc under {discrete['attack']} attack"))
    head = ["method"] + [name for _, name in metrics] + ["s/step", "cost vs none"]
    lines = [f"{len(seeds)} seeds ({seeds[0]}..{seeds[-1]}) per method; mean ± std over seeds",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in out["methods"]:
        cost = None if r["relative_cost"] is None else f"{r['relative_cost']:.2f}x"
        cells = [r["method"]] + [f"{r[k]:.4f} ± {r['std'][k]:.4f}" for k, _ in metrics]
        lines.append("| " + " | ".join(cells + [f"{r['seconds_per_step']:.3f}", _fmt(cost)]) + " |")
    versus = out.get("versus_none")
    if versus:
        lines += ["", "against none: mean paired difference [95% t-interval over seeds] verdict",
                  "| method | " + " | ".join(name for _, name in metrics) + " |",
                  "|" + "---|" * (len(metrics) + 1)]
        for m, diffs in versus.items():
            lines.append(f"| {m} | " + " | ".join(format_difference(diffs.get(k)) for k, _ in metrics)
                         + " |")
    return "\n".join(lines)


def compare_plot(out_dir: str, out: dict, log: Callable[[str], None]) -> None:
    """compare.png: each method's clean and robust accuracy (mean, std over seeds) and,
    against ``none``, the clean difference with its 95% interval."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("note: no compare.png (pip install matplotlib to get one)")
        return
    rows = out["methods"]
    names = [r["method"] for r in rows]
    versus = out.get("versus_none") or {}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = range(len(rows))
    for shift, key, label in ((-0.2, "accuracy", "clean"),
                              (0.2, "robust_accuracy", f"robust (eps={out['attack']['epsilon']:g})")):
        left.bar([i + shift for i in x], [r[key] for r in rows], width=0.4,
                 yerr=[r["std"][key] for r in rows], capsize=3, label=label)
    left.set_xticks(list(x), names)
    left.set_ylabel(f"accuracy, mean ± std over {len(out['seeds'])} seeds")
    left.set_ylim(0, 1)
    left.legend(loc="lower right")
    others = [m for m in names if m in versus and versus[m]["accuracy"]["interval"] is not None]
    for i, m in enumerate(others):
        d = versus[m]["accuracy"]
        low, high = d["interval"]
        right.errorbar(i, d["mean_difference"], yerr=[[d["mean_difference"] - low],
                                                       [high - d["mean_difference"]]],
                       fmt="o", capsize=4)
        right.annotate(d["verdict"], (i, high), textcoords="offset points", xytext=(0, 5),
                       ha="center", fontsize=8)
    right.axhline(0, color="grey", lw=0.8)
    right.set_xticks(range(len(others)), others)
    right.set_ylabel("clean accuracy - none (95% interval)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "compare.png"), dpi=100)
    plt.close(fig)


def plot(run_dir: str, history: list, log: Callable[[str], None]) -> None:
    """plot.png: training loss per step and validation accuracy per epoch (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("note: no plot.png (pip install matplotlib to get one)")
        return
    losses = [x for h in history for x in h["step_losses"]]
    ends = [sum(h["steps"] for h in history[: i + 1]) for i in range(len(history))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, color="tab:blue", label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (clean)")
    acc = ax.twinx()
    acc.plot(ends, [h["validation"]["accuracy"] for h in history], "s-", color="tab:orange")
    acc.set_ylabel("validation accuracy (end of epoch)")
    acc.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "plot.png"), dpi=100)
    plt.close(fig)
