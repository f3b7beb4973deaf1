#!/usr/bin/env python
"""What ``advnlp train --engine trainer`` costs next to the default loop.

This is a benchmark, not a test: it asserts nothing. It prints a markdown table
and writes ``benchmarks/results/engines-<device>.json``.

Both engines train the same run (the embedded MiniLM on a BBC News slice, the
same method, data order and optimizer) in one process, interleaved A B B A ...
so that load from other processes hits both alike. ``s/step`` is each run's own
measure (an optimizer step, from the batch on the device to ``zero_grad``); the
ratio is the median over rounds of ``trainer / loop`` within the same round.
Test accuracy is reported too: with dropout on, the engines draw different
noise, so it agrees only roughly (on a model without dropout the weights are
equal: ``tests/cli/test_engine_trainer.py``).

Run:  python benchmarks/engines.py                 (~4 min on 2 cores)
      python benchmarks/engines.py --rounds 1 --method pgd
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

from advnlp.cli.commands import train
from advnlp.cli.config import TrainConfig
from advnlp.cli.data import DataSpec

HERE = os.path.dirname(os.path.abspath(__file__))


def run_once(engine: str, args, out_dir: str) -> dict:
    cfg = TrainConfig(method=args.method, epochs=1, batch_size=args.batch_size,
                      max_length=args.max_length, seed=args.seed, device=args.device,
                      output_dir=out_dir, engine=engine, precision=args.precision,
                      data=DataSpec(max_train_samples=args.train_samples))
    start = time.perf_counter()
    result = train(cfg.resolved(), overwrite=True)
    return {"engine": engine, "seconds_per_step": result["seconds_per_step"],
            "steps": sum(e["steps"] for e in result["epochs"]),
            "test_accuracy": result["final"]["test"]["accuracy"],
            "train_loss": result["epochs"][0]["train_loss"],
            "run_seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="A B B A rounds (default 2)")
    p.add_argument("--method", default="fgm")
    p.add_argument("--train-samples", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", help="default benchmarks/results/engines-<device>.json")
    args = p.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    runs, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ("loop", "trainer") if r % 2 == 0 else ("trainer", "loop")
            got = {}
            for engine in order:
                got[engine] = run_once(engine, args, os.path.join(tmp, f"{r}-{engine}"))
                got[engine]["round"] = r
                runs.append(got[engine])
                print(f"round {r} {engine}: {got[engine]['seconds_per_step']:.3f} s/step", file=sys.stderr)
            ratios.append(got["trainer"]["seconds_per_step"] / got["loop"]["seconds_per_step"])

    def median(engine, key):
        return statistics.median(x[key] for x in runs if x["engine"] == engine)

    device = "cuda" if (args.device == "auto" and torch.cuda.is_available()) else (
        "cpu" if args.device == "auto" else args.device)
    name = torch.cuda.get_device_name().replace(" ", "_") if device.startswith("cuda") else "cpu"
    out = {
        "benchmark": "engines", "method": args.method, "precision": args.precision,
        "batch": [args.batch_size, args.max_length], "train_samples": args.train_samples,
        "rounds": args.rounds, "device": name, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "machine": platform.machine(),
        "runs": runs,
        "summary": {
            "loop_seconds_per_step": median("loop", "seconds_per_step"),
            "trainer_seconds_per_step": median("trainer", "seconds_per_step"),
            "trainer_over_loop": statistics.median(ratios),
            "loop_test_accuracy": median("loop", "test_accuracy"),
            "trainer_test_accuracy": median("trainer", "test_accuracy"),
        },
    }
    path = args.out or os.path.join(HERE, "results", f"engines-{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    s = out["summary"]
    print(f"| engine | s/step (median) | test accuracy | vs loop |\n|---|---|---|---|\n"
          f"| loop | {s['loop_seconds_per_step']:.3f} | {s['loop_test_accuracy']:.4f} | 1.00x |\n"
          f"| trainer | {s['trainer_seconds_per_step']:.3f} | {s['trainer_test_accuracy']:.4f} "
          f"| {s['trainer_over_loop']:.2f}x |")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
