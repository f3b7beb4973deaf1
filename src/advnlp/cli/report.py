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
