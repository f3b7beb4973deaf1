"""compare's cost column: every method's training step timed against ``none``'s,
interleaved, with the timing core (:func:`timed_rounds`) ``benchmarks/step_cost.py`` and
``step_cost_llm.py`` use too.

Wall-clock training time is a poor measure of what a method costs: it moves with whatever
else the machine does while each run trains, minutes apart. Here every method's step
(the CLI's own: forward passes, backward passes, clipping, AdamW) runs on one fixed batch,
all methods in turn within each round, the order rotated from round to round, and a
method's cost is the median over rounds of its step time divided by ``none``'s in the same
round: load that changes between rounds cancels, load within a round is spread over the
methods by the rotation.
"""
from __future__ import annotations

import statistics
import time
import warnings
from typing import Callable, Dict, Iterator, Optional

import torch

HOW = ("interleaved: every method's training step on one fixed batch, in rotated order within "
       "each round; median over rounds of its time / none's time in the same round")


def timed_rounds(steps: Dict[str, Callable[[], None]], rounds: int,
                 clocks: Dict[str, Callable[[], float]],
                 sync: Callable[[], None] = lambda: None) -> Iterator[Dict[str, Dict[str, float]]]:
    """The interleaved timing core (also ``benchmarks/step_cost*.py``'s): ``rounds`` rounds,
    every step once per round, the order rotated by one from round to round; yields each
    round's ``{clock name: {step name: seconds}}``, every clock read around the same call."""
    names = list(steps)
    for r in range(rounds):
        k = r % len(names)
        this_round: Dict[str, Dict[str, float]] = {c: {} for c in clocks}
        for name in names[k:] + names[:k]:
            sync()
            start = {c: clock() for c, clock in clocks.items()}
            steps[name]()
            sync()
            for c, clock in clocks.items():
                this_round[c][name] = clock() - start[c]
        yield this_round


def interleaved(steps: Dict[str, Callable[[], None]], rounds: int, reference: str = "none",
                warmup: int = 2, clock: Callable[[], float] = time.perf_counter,
                sync: Callable[[], None] = lambda: None) -> Dict[str, dict]:
    """``{name: {"ratio", "seconds", "rounds"}}``: each step's median time over ``rounds``
    rounds, and the median of its per-round ratio to ``reference``'s."""
    if reference not in steps:
        raise ValueError(f"the reference step {reference!r} is not among {sorted(steps)}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(steps)
    for _ in range(warmup):  # optimizer state, allocator, first-call caches
        for name in names:
            steps[name]()
    times: Dict[str, list] = {name: [] for name in names}
    ratios: Dict[str, list] = {name: [] for name in names}
    for timed in timed_rounds(steps, rounds, {"s": clock}, sync):
        this_round = timed["s"]
        for name in names:
            times[name].append(this_round[name])
            ratios[name].append(this_round[name] / this_round[reference])
    return {name: {"ratio": statistics.median(ratios[name]),
                   "seconds": statistics.median(times[name]), "rounds": rounds}
            for name in names}


def measure(runs: Dict[str, "object"], rounds: int, log: Callable[[str], None] = lambda s: None
            ) -> Optional[dict]:
    """Time the training step of every :class:`~advnlp.cli.run.Run` in ``runs`` (one per
    compare row, untrained: built for this, never saved; ``"none"`` among them) on the first
    batch of the epoch order. Returns the compare.json ``step_cost`` block."""
    from .engines.loop import train_step

    reference = runs["none"]
    idx = reference.rank_order()[: reference.cfg.batch_size]
    steps = {}
    for name, run in runs.items():
        run.clf.model.train()
        batch = None if run.cfg.online_attack is not None else run.batch(idx)
        steps[name] = (lambda r, b: lambda: train_step(r, idx, b))(run, batch)
    device = reference.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    log(f"step cost: {len(steps)} methods x {rounds} rounds on one batch of {len(idx)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timed = interleaved(steps, rounds, sync=sync)
    return {"how": HOW, "rounds": rounds, "batch_examples": len(idx),
            "max_length": reference.cfg.max_length, "device": str(device),
            "threads": torch.get_num_threads(),
            "ratios": {name: t["ratio"] for name, t in timed.items()},
            "seconds": {name: t["seconds"] for name, t in timed.items()}}
