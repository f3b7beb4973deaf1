#!/usr/bin/env python
"""Step cost of the noise controls and the adversarial methods on a small causal LM with LoRA.

A benchmark, not a test: it asserts nothing. One process, one fixed batch, a randomly
initialised Llama-architecture model (no download; the cost of a step does not depend on
the weights) wrapped by PEFT LoRA on q_proj and v_proj, so that only the adapters train, as
in instruction tuning. Every method's full optimizer step (``adv.backward`` with a
completion-only loss and ``mask=attention_mask``, ``optimizer.step()``, ``zero_grad()``) is
timed interleaved with the others, the starting method rotating every round; a method's
ratio is the median over rounds of its time over the plain step's in the same round, so
other load on the machine hits every method alike.

    python benchmarks/step_cost_llm.py            # ~2 min on a quiet 2-core CPU
    python benchmarks/step_cost_llm.py --quick    # a smaller model, a smoke test

Writes ``benchmarks/results/step_cost-llm-lora-<device>.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

import advnlp  # noqa: E402
from advnlp import FGM, NEFTune, PGD, R3F, SMART, YOPO  # noqa: E402
from advnlp.cli.cost import timed_rounds  # noqa: E402

# (name, method factory, closure returns the output (logits needed) rather than the loss)
METHODS = [
    ("none", None, False),
    ("neftune", lambda m: NEFTune(m, alpha=5.0), False),
    ("r3f", lambda m: R3F(m), True),
    ("fgm", lambda m: FGM(m, epsilon=1.0), False),
    ("pgd(3)", lambda m: PGD(m, epsilon=1.0, alpha=0.3, steps=3), False),
    ("yopo(3)", lambda m: YOPO(m, epsilon=1.0, alpha=0.3, steps=3), False),
    ("smart", lambda m: SMART(m), True),
]


def llama_size(quick: bool) -> dict:
    """The benchmarked Llama's shape (``quick``: a smaller one, a smoke test)."""
    return (dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, vocab_size=2048) if quick else
            dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=8192))


def parse_args(doc: str, engine_rounds: bool = False):
    """The options the causal-LM step-cost benchmarks share."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    if engine_rounds:
        ap.add_argument("--engine-rounds", type=int, default=3,
                        help="rounds of whole loop / trainer / trl runs per method (0: none)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return ap.parse_args()


def build(quick: bool, device):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    size = llama_size(quick)
    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=512, **size)
    model = LlamaForCausalLM(config)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    return get_peft_model(model, lora).to(device).train(), config


def make_batch(config, batch: int, seq: int, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, config.vocab_size, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1::2, : seq // 4] = 0  # every other row left-padded by a quarter
    labels = ids.clone()
    labels[:, : seq // 2] = -100  # the prompt: completion-only loss
    labels[mask == 0] = -100
    return {k: v.to(device) for k, v in
            {"input_ids": ids, "attention_mask": mask, "labels": labels}.items()}


def main() -> None:
    args = parse_args(__doc__)
    device = torch.device(args.device)
    model, config = build(args.quick, device)
    b = make_batch(config, args.batch, args.seq, device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    steps = {}
    for name, factory, wants_output in METHODS:
        # every method built once; an idle method's hook only counts calls
        adv = factory(model) if factory else None

        def step(adv=adv, wants_output=wants_output):
            if adv is None:
                model(**b).loss.backward()
            elif wants_output:
                adv.backward(lambda: model(**b), mask=b["attention_mask"])
            else:
                adv.backward(lambda: model(**b).loss, mask=b["attention_mask"])
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
        steps[name] = step
    names = list(steps)
    for name in names:  # warm-up
        steps[name]()
    times = {n: [] for n in names}
    for timed in timed_rounds(steps, args.rounds, {"s": time.perf_counter}):
        for name in names:
            times[name].append(timed["s"][name])
    ratios = {n: statistics.median(t / p for t, p in zip(times[n], times["none"])) for n in names}
    rows = [{"method": n, "ratio": ratios[n], "median_seconds": statistics.median(times[n]),
             "seconds": times[n]} for n in names]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    out = {"benchmark": "step_cost_llm", "advnlp": advnlp.__version__, "torch": torch.__version__,
           "device": str(device), "machine": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "model": {"architecture": "LlamaForCausalLM (random init)", **config.to_diff_dict(),
                     "lora": "r=8 on q_proj, v_proj", "parameters": total, "trainable": trainable},
           "batch": args.batch, "seq": args.seq, "rounds": args.rounds,
           "loss": "completion-only (second half of each row), every other row left-padded, "
                   "mask=attention_mask",
           "ratio": "median over rounds of t(method) / t(none) in the same round", "rows": rows}
    kind = "cuda" if device.type == "cuda" else "cpu"
    path = os.path.join(HERE, "results", f"step_cost-llm-lora-{kind}{'-quick' if args.quick else ''}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"{config.num_hidden_layers}-layer Llama, hidden {config.hidden_size}, LoRA r=8 "
          f"({trainable:,} of {total:,} parameters train), batch {args.batch} x {args.seq}, "
          f"{args.device}, {args.rounds} interleaved rounds\n")
    print("| method | step cost vs plain | median s/step |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['ratio']:.2f}x | {r['median_seconds']:.3f} |")
    print(f"\nwritten: {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
