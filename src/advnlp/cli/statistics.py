"""Several seeds per method: summaries, the paired difference against ``none``, a verdict.

The unit of randomness a user controls is the seed (head initialisation, data order,
dropout, random starts), and ``compare --seeds N`` pairs seed s of every method with
seed s of ``none`` (same split, same order, same initial head). The interval is the
two-sided 95% t-interval of the mean paired difference over seeds (``scipy.stats.t``):
it asks whether the method helps *across training runs*, which is the question a user
retraining with another seed faces. (A bootstrap over test examples would treat one
run's test-set noise as the whole uncertainty and ignore seed-to-seed variation, which is
what makes single-run gains of +0.2 to +2.5 points unreliable.) With fewer than two seeds
there is no interval and no verdict.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

from .errors import InputError

LEVEL = 0.95
HELPED, HURT, NO_EFFECT = "helped", "hurt", "no detectable effect"


def summary(values: Sequence[float]) -> Dict[str, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def paired_difference(method: Sequence[float], baseline: Sequence[float],
                      level: float = LEVEL, lower_is_better: bool = False) -> Dict[str, object]:
    """Mean of ``method[s] - baseline[s]`` over seeds, its t-interval and the verdict:
    ``helped`` when the whole interval is above 0 (below 0 for a score where lower is
    better, a loss), ``hurt`` when on the other side, else ``no detectable effect``.
    ``interval`` and ``verdict`` are None for a single seed."""
    diffs = [a - b for a, b in zip(method, baseline)]
    s = summary(diffs)
    out: Dict[str, object] = {"mean_difference": s["mean"], "std": s["std"], "seeds": s["n"],
                              "interval": None, "verdict": None}
    if s["n"] < 2:
        return out
    if s["std"] == 0:
        if s["mean"] == 0:  # not one seed differed: the method did exactly what none did
            out.update(interval=[0.0, 0.0], verdict=NO_EFFECT)
        else:  # identical nonzero differences give no spread to build an interval from
            out.update(verdict=NO_EFFECT, note="every seed gave the same difference: no "
                       "spread to build an interval from; run more seeds")
        return out
    low, high = require_scipy().t.interval(level, df=s["n"] - 1, loc=s["mean"],
                                           scale=s["std"] / math.sqrt(s["n"]))
    out["interval"] = [float(low), float(high)]
    out["verdict"] = verdict(-high, -low) if lower_is_better else verdict(low, high)
    if lower_is_better:
        out["better"] = "lower"
    return out


def require_scipy():
    """``scipy.stats``, or a one-line error saying how to get it."""
    try:
        from scipy import stats
    except ImportError:
        raise InputError("compare --seeds needs scipy for its intervals: "
                         "pip install 'advnlp[cli]'") from None
    return stats


def verdict(low: float, high: float) -> str:
    return HELPED if low > 0 else HURT if high < 0 else NO_EFFECT


def format_difference(d: Optional[dict]) -> str:
    """``+0.0123 [-0.0040, +0.0286] no detectable effect``."""
    if d is None:
        return "-"
    if d["interval"] is None:
        why = "1 seed: no interval" if d["seeds"] < 2 else f"{d['verdict']}, no spread"
        return f"{d['mean_difference']:+.4f} ({why})"
    low, high = d["interval"]
    return f"{d['mean_difference']:+.4f} [{low:+.4f}, {high:+.4f}] {d['verdict']}"
