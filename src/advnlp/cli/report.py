"""What a person reads: the summary of a run, the compare table, and plot.png."""
from __future__ import annotations

import os
from typing import Callable

from .files import atomic_path
from .tasks import task_named


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def summary(run_dir: str, result: dict, task: str) -> str:
    """What ``advnlp train`` prints at the end of a run of ``task`` (its module's summary)."""
    return task_named(task).parts.summary(run_dir, result)


def column(key: str, out: dict) -> str:
    """A compare metric's column heading."""
    if key.startswith("robust_accuracy@"):
        return f"robust acc (eps={key.split('@', 1)[1]})"
    if key.startswith("robust_entity_f1@"):
        return f"robust entity F1 (eps={key.split('@', 1)[1]})"
    if key.startswith("attacked_entity_f1@"):
        return f"entity F1 under {key.split('@', 1)[1]} attack"
    if key == "typo_accuracy":
        return f"acc on typo'd test (p={out['typos']['rate']:g})"
    if key.startswith("attacked_accuracy@"):
        return f"acc under {key.split('@', 1)[1]} attack"
    if "@" in key and not key.startswith("validation_"):  # robust_completion_loss@0.5, ...
        stem, eps = key.split("@", 1)
        return f"{stem.replace('_', ' ')} (eps={eps})"
    return {"accuracy": "accuracy", "macro_f1": "macro-F1", "validation_accuracy": "val accuracy",
            "validation_macro_f1": "val macro-F1", "entity_f1": "entity F1",
            "strict_entity_f1": "strict entity F1",
            "completion_loss": "completion loss"}.get(key, key)


def _shown(out: dict) -> list:
    """The metrics a printed table shows: the test split's (validation is in compare.json)."""
    return [k for k in out["metrics"] if not k.startswith("validation_")]


def _cost_head(out: dict) -> list:
    measured = ["step cost vs none (interleaved)"] if "step_cost" in out else []
    return ["s/step (training)", "training time vs none (wall clock)", *measured]


def _cost_cells(r: dict) -> list:
    times = lambda x: _fmt(None if x is None else f"{x:.2f}x")  # noqa: E731
    measured = [times(r["step_cost"])] if "step_cost" in r else []
    return [f"{r['seconds_per_step']:.3f}", times(r["relative_cost"]), *measured]


def compare_table(out: dict) -> str:
    """The compare table; with several seeds, mean ± std per method and, against ``none``,
    the mean paired difference with its 95% interval and verdict for every metric."""
    keys = _shown(out)
    head = ["method"] + [column(k, out) for k in keys] + _cost_head(out)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    seeds = out.get("seeds")
    if seeds:
        lines.insert(0, f"{len(seeds)} seeds ({seeds[0]}..{seeds[-1]}) per method; "
                        "mean ± std over seeds")
    for r in out["methods"]:
        cells = [f"{r[k]:.4f} ± {r['std'][k]:.4f}" if seeds else _fmt(r[k]) for k in keys]
        lines.append("| " + " | ".join([r["method"], *cells, *_cost_cells(r)]) + " |")
    versus = out.get("versus_none")
    if versus:
        from .statistics import format_difference

        lines += ["", "against none: mean paired difference [95% t-interval over seeds] verdict",
                  "| method | " + " | ".join(column(k, out) for k in keys) + " |",
                  "|" + "---|" * (len(keys) + 1)]
        for m, diffs in versus.items():
            lines.append(f"| {m} | " + " | ".join(format_difference(diffs.get(k)) for k in keys)
                         + " |")
    return "\n".join(lines)


def compare_plot(out_dir: str, out: dict, log: Callable[[str], None]) -> None:
    """compare.png: accuracy (a tagger's entity F1) against the attack radius per method (ε = 0 is
    clean; mean and std over seeds) and, against ``none``, the clean difference with its 95% interval."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("note: no compare.png (pip install matplotlib to get one)")
        return
    rows, seeds = out["methods"], out.get("seeds")
    versus = out.get("versus_none") or {}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    eps = out["attack"]["epsilons"]
    score = out.get("score", "accuracy")  # entity_f1 for taggers
    keys = [score] + [f"robust_{score}@{e:g}" for e in eps]
    for r in rows:
        left.errorbar([0.0] + list(eps), [r[k] for k in keys],
                      yerr=[r["std"][k] for k in keys] if seeds else None,
                      marker="o", capsize=3, label=r["method"])
    left.set_xlabel(f"embedding attack radius (L2, {out['attack']['steps']}-step PGD; 0 = clean)")
    what = score.replace("_f1", " F1").replace("_", " ")
    left.set_ylabel(f"test {what}" + (f", mean ± std over {len(seeds)} seeds" if seeds else ""))
    if not out.get("lower_is_better"):  # a share; a loss has no upper bound
        left.set_ylim(0, 1)
    left.legend(loc="lower left", fontsize=8)
    others = [m for m in versus if versus[m][score]["interval"] is not None]
    for i, m in enumerate(others):
        d = versus[m][score]
        low, high = d["interval"]
        right.errorbar(i, d["mean_difference"], yerr=[[d["mean_difference"] - low],
                                                       [high - d["mean_difference"]]],
                       fmt="o", capsize=4)
        right.annotate(d["verdict"], (i, high), textcoords="offset points", xytext=(0, 5),
                       ha="center", fontsize=8)
    right.axhline(0, color="grey", lw=0.8)
    right.set_xticks(range(len(others)), others)
    right.set_ylabel(f"clean {what} - none (95% interval)" if others else
                     "(an interval needs several seeds and none)")
    fig.tight_layout()
    with atomic_path(os.path.join(out_dir, "compare.png")) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def plot(run_dir: str, history: list, log: Callable[[str], None], key: str = "accuracy",
         bounded: bool = True) -> None:
    """plot.png: training loss per step and validation ``key`` (accuracy; entity_f1 for a
    tagger) per epoch (needs matplotlib)."""
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
    shown = [(end, h["validation"][key]) for end, h in zip(ends, history) if h["validation"]]
    acc.plot([e for e, _ in shown], [v for _, v in shown], "s-", color="tab:orange")
    acc.set_ylabel(f"validation {key.replace('_', ' ')} (end of epoch)")
    if bounded:  # a share in [0, 1]; a loss is not
        acc.set_ylim(0, 1)
    fig.tight_layout()
    with atomic_path(os.path.join(run_dir, "plot.png")) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
