"""``advnlp``: train, compare and evaluate adversarially trained text classifiers.

This module only parses arguments and prints; the work is in train.py and
evaluate.py. Exit codes: 0 success, 2 bad input (one line on stderr), 130
interrupted (a checkpoint was saved; continue with ``advnlp train --resume``).

``advnlp train`` also runs as N processes under torchrun
(``torchrun --nproc_per_node N -m advnlp.cli train ...``): see train.py.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from . import __version__
from .data import DataSpec, InputError
from .evaluate import ATTACKS, attack_run, evaluate_run
from .train import (METHODS, Interrupted, TrainConfig, compare, distributed_requested, read_config,
                    resume, setup_distributed, train)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        print(f"advnlp: error: {message} (see advnlp {self.prog.split()[-1]} --help)", file=sys.stderr)
        raise SystemExit(2)


def _floats(text: str) -> List[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None


def _training_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and training")
    g.add_argument("--model", help="a local Hugging Face model directory, or textcnn / bilstm "
                   "(trained from scratch). Default: the bundled pretrained MiniLM")
    g.add_argument("--epochs", type=int, help="default 1 (pretrained) or 5 (from scratch)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--lr", type=float, help="default 1e-4 (pretrained) or 2e-3 (from scratch)")
    g.add_argument("--max-length", type=int, default=128, help="tokens per example (default 128)")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    g.add_argument("--output-dir", help="default runs/<timestamp>-<method>")
    g.add_argument("--overwrite", action="store_true", help="replace a previous run in --output-dir")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    g.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="fp32 (default); bf16 or fp16: autocast mixed precision "
                        "(fp16 with dynamic loss scaling)")
    g.add_argument("--engine", default="loop", choices=("loop", "trainer"),
                   help="loop (default): advnlp's own loop; trainer: Hugging Face's Trainer "
                        "(AdversarialTrainer), Hugging Face models only")
    a = p.add_argument_group("adversarial method parameters (each method takes some)")
    a.add_argument("--epsilon", type=float, help="perturbation radius (fgm, fgsm, pgd)")
    a.add_argument("--alpha", type=float, help="PGD step size")
    a.add_argument("--steps", type=int, help="PGD ascent steps")
    a.add_argument("--adv-weight", type=float, help="weight of the adversarial loss (default 1)")
    x = p.add_argument_group("adversarial data augmentation (discrete attacks)")
    x.add_argument("--augment-with-attack", metavar="char|word",
                   help="after each epoch but the last, attack a sample of the training set and "
                        "train on the successful adversarial texts too")
    x.add_argument("--augment-every", type=int, default=1, help="epochs between rounds (default 1)")
    x.add_argument("--augment-samples", type=int, default=64,
                   help="training examples attacked per round (default 64)")
    d = p.add_argument_group("data (default: the bundled BBC News corpus, 5 topics)")
    d.add_argument("--train", help="training file: .csv, .tsv or .jsonl")
    d.add_argument("--validation", help="validation file (default: split off the training file)")
    d.add_argument("--test", help="test file (default: split off the training file)")
    d.add_argument("--text-column", default="text")
    d.add_argument("--text-columns", help="two columns for sentence pairs, e.g. premise,hypothesis")
    d.add_argument("--label-column", default="label")
    d.add_argument("--multi-label", action="store_true",
                   help="labels are a JSON list or a delimiter-separated string")
    d.add_argument("--label-delimiter", default=",")
    d.add_argument("--max-train-samples", type=int,
                   help="a class-balanced subset of the training set (default 640 for BBC News)")


def _attack_options(p: argparse.ArgumentParser, eps_flag: str, eps_default: str) -> None:
    g = p.add_argument_group("robustness: L2 PGD attack on the input embeddings")
    g.add_argument(eps_flag, type=_floats, default=_floats(eps_default),
                   help=f"attack radius{'es' if eps_flag.endswith('s') else ''} (default {eps_default})")
    g.add_argument("--attack-steps", type=int, default=5, help="default 5")
    g.add_argument("--attack-samples", type=int, default=100, help="test examples attacked (default 100)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="advnlp", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--version", action="version", version=f"advnlp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,compare,eval,attack}")
    t = sub.add_parser("train", help="fine-tune a classifier with adversarial training")
    t.add_argument("--method", default="fgm", help=f"{' | '.join(METHODS)} (default fgm)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    t.add_argument("--distributed", action="store_true",
                   help="one rank of a torchrun job (automatic when torchrun starts more than one "
                        "process); --batch-size is per process")
    _training_options(t)
    c = sub.add_parser("compare", help="train once per method and tabulate accuracy, robustness, cost")
    c.add_argument("--methods", default="none,fgm,pgd", help="comma-separated (default none,fgm,pgd)")
    _training_options(c)
    _attack_options(c, "--attack-epsilon", "0.5")
    c.add_argument("--attack", metavar="char|word",
                   help="also tabulate accuracy under this discrete attack")
    c.add_argument("--attack-limit", type=int, default=50,
                   help="test examples for --attack (default 50)")
    e = sub.add_parser("eval", help="clean metrics and a robustness curve for a saved run")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--data", help="a labelled file with the run's columns (default: its test split)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--device", default="auto")
    _attack_options(e, "--epsilons", "0.1,0.25,0.5,1")
    a = sub.add_parser("attack", help="attack a saved run: typos, word swaps or embedding PGD")
    a.add_argument("run_dir", metavar="RUN_DIR")
    a.add_argument("--attack", required=True, help="char | word | embedding")
    a.add_argument("--data", help="a labelled file with the run's columns (default: its test split)")
    a.add_argument("--limit", type=int, default=100, help="examples attacked (default 100)")
    a.add_argument("--seed", type=int, help="default: the run's seed")
    a.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--device", default="auto")
    d = a.add_argument_group("char and word attacks")
    d.add_argument("--max-change", type=float, default=0.15,
                   help="fraction of the words (CJK: characters) that may be edited (default 0.15)")
    d.add_argument("--query-budget", type=int, default=500,
                   help="model evaluations per example (default 500)")
    d.add_argument("--threshold", type=float, default=0.6,
                   help="word: minimum cosine similarity of a substitute (default 0.6)")
    g = a.add_argument_group("embedding attack (FGSM/PGD on the input-embedding output)")
    g.add_argument("--epsilons", type=_floats, default=_floats("0.1,0.25,0.5,1.0"),
                   help="radii (default 0.1,0.25,0.5,1.0)")
    g.add_argument("--norm", default="l2", help="l2 (per example, default) or linf (per coordinate)")
    g.add_argument("--steps", type=int, default=10, help="ascent steps; 1 = FGSM (default 10)")
    g.add_argument("--random-start", action="store_true", help="start from a random point in the ball")
    return parser


def _config(args) -> TrainConfig:
    columns = args.text_columns.split(",") if args.text_columns else [args.text_column]
    columns = [c.strip() for c in columns if c.strip()]
    if len(columns) not in (1, 2):
        raise InputError("--text-columns takes one or two column names")
    if (args.validation or args.test) and not args.train:
        raise InputError("--validation / --test need --train")
    data = DataSpec(args.train, args.validation, args.test, tuple(columns), args.label_column,
                    args.multi_label, args.label_delimiter, args.max_train_samples)
    return TrainConfig(
        model=args.model, method=getattr(args, "method", "none"), epsilon=args.epsilon,
        alpha=args.alpha, steps=args.steps, adv_weight=args.adv_weight, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, max_length=args.max_length, seed=args.seed,
        device=args.device, output_dir=args.output_dir,
        augment_with_attack=args.augment_with_attack, augment_every=args.augment_every,
        augment_samples=args.augment_samples, engine=args.engine,
        precision=args.precision, data=data)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def _summary(run_dir: str, result: dict) -> str:
    test = result["final"]["test"]
    extra = f", micro-F1 {test['micro_f1']:.4f}" if "micro_f1" in test else ""
    return (f"done: {run_dir}\n"
            f"  {result['train_examples']} training examples"
            f"{' + %d adversarial' % result['augmented_examples'] if result.get('augmented_examples') else ''}"
            f", {len(result['epochs'])} epoch(s), "
            f"{result['seconds_per_step']:.2f} s/step\n"
            f"  test ({result['test_examples']} examples): accuracy {test['accuracy']:.4f}, "
            f"macro-F1 {test['macro_f1']:.4f}{extra}")


def _table(out: dict) -> str:
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


def _train(args, progress: bool, log) -> None:
    info = None
    if distributed_requested(args.distributed):
        device = read_config(args.resume).device if args.resume else args.device
        info = setup_distributed(device)
        if info.rank != 0:  # rank 0 alone shows progress and logs
            progress, log = False, (lambda s: None)
    if args.resume:
        # The run's config.json decides everything; a silently ignored option would mislead.
        defaults = vars(build_parser().parse_args(["train"]))
        extra = [k for k, v in vars(args).items()
                 if k not in ("resume", "quiet", "distributed") and v != defaults[k]]
        if extra:
            raise InputError(f"--resume takes the run's own settings; drop --{extra[0].replace('_', '-')}")
        result = resume(args.resume, progress, log, info)
        if result is not None:
            print(_summary(args.resume, result))
        return
    cfg = _config(args).resolved()
    result = train(cfg, args.overwrite, progress, log, info)
    if result is not None:
        print(_summary(cfg.output_dir, result))


def _compare(args, progress: bool, log) -> None:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if len(args.attack_epsilon) != 1 or args.attack_epsilon[0] <= 0:
        raise InputError("--attack-epsilon takes one number > 0")
    if args.attack_steps < 1 or args.attack_samples < 1:
        raise InputError("--attack-steps and --attack-samples must be >= 1")
    out = compare(_config(args), methods, args.attack_epsilon[0], args.attack_steps,
                  args.attack_samples, args.overwrite, progress, log, args.attack, args.attack_limit)
    print(_table(out))
    print(f"written: {out['path']}")


def _eval(args) -> None:
    if any(e <= 0 for e in args.epsilons) or args.attack_steps < 1 or args.attack_samples < 1:
        raise InputError("--epsilons must be > 0, --attack-steps and --attack-samples >= 1")
    out = evaluate_run(args.run_dir, args.data, args.epsilons, args.attack_steps,
                       args.attack_samples, args.batch_size, args.device)
    c = out["clean"]
    print(f"{out['data']} ({out['examples']} examples): accuracy {c['accuracy']:.4f}, "
          f"macro-F1 {c['macro_f1']:.4f}")
    print("robust accuracy, L2 PGD on the embeddings "
          f"({out['attack']['examples']} examples, {out['attack']['steps']} steps):")
    for point in out["robust"]:
        print(f"  epsilon {point['epsilon']:<5g} {point['accuracy']:.4f}")
    print(f"written: {os.path.join(args.run_dir, 'eval.json')}")


def _attack(args) -> None:
    if args.attack not in ATTACKS:
        raise InputError(f"unknown attack {args.attack!r}; choose one of {', '.join(ATTACKS)}")
    if args.limit < 1 or args.batch_size < 1 or args.query_budget < 1 or args.steps < 1:
        raise InputError("--limit, --batch-size, --query-budget and --steps must be >= 1")
    if not 0 < args.max_change <= 1:
        raise InputError(f"--max-change must be a fraction in (0, 1], got {args.max_change:g}")
    if not -1 <= args.threshold <= 1:
        raise InputError(f"--threshold is a cosine similarity in [-1, 1], got {args.threshold:g}")
    if not args.epsilons or any(not 0 < e < float("inf") for e in args.epsilons):
        raise InputError("--epsilons takes numbers > 0")
    if args.norm not in ("l2", "linf"):
        raise InputError(f"--norm must be l2 or linf, got {args.norm!r}")
    out = attack_run(args.run_dir, args.attack, args.data, args.limit,
                     max_change=args.max_change, query_budget=args.query_budget,
                     threshold=args.threshold, seed=args.seed, epsilons=args.epsilons,
                     norm=args.norm, steps=args.steps, random_start=args.random_start,
                     batch_size=args.batch_size, device=args.device)
    print(f"{args.attack} attack on {out['examples']} examples of {out['data']} (seed {out['seed']}):")
    if args.attack == "embedding":
        print(f"| epsilon ({out['norm']}) | accuracy | success rate |\n|---|---|---|")
        for p in out["curve"]:
            print(f"| {p['epsilon']:g} | {p['accuracy']:.4f} | {p['success_rate']:.4f} |")
    else:
        print("| clean accuracy | accuracy under attack | success rate | words changed "
              "| queries/example | s/example |\n|---|---|---|---|---|---|")
        print(f"| {out['clean_accuracy']:.4f} | {out['attacked_accuracy']:.4f} "
              f"| {out['success_rate']:.4f} ({out['successes']}) | {out['avg_changed_fraction']:.3f} "
              f"| {out['avg_queries']:.1f} | {out['seconds_per_example']:.3f} |")
    print("written: " + ", ".join(out["files"].values()))


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings from tokenizers
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    quiet = getattr(args, "quiet", False)
    progress = not quiet and sys.stderr.isatty()  # no bars in logs and pipes
    log = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr))
    code = _dispatch(args, progress, log)
    if _dist_initialized():
        # A torchrun rank: leave the process group and skip interpreter teardown, where
        # gloo's threads can meet C++ static destructors ("terminate called ...").
        import torch.distributed as dist

        if code == 0:
            dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _dist_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _dispatch(args, progress: bool, log) -> int:
    try:
        if args.command != "train" and distributed_requested(False):
            raise InputError(f"advnlp {args.command} runs in one process; only advnlp train "
                             "takes several (launch it without torchrun)")
        if args.command == "train":
            _train(args, progress, log)
        elif args.command == "compare":
            _compare(args, progress, log)
        elif args.command == "attack":
            _attack(args)
        else:
            _eval(args)
    except InputError as e:
        print(f"advnlp: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        how = "advnlp train"
        if _dist_initialized():
            import torch.distributed as dist

            # Every rank stopped on the same agreed flag; wait for rank 0's checkpoint, or
            # torchrun would kill it mid-save as soon as another rank exits.
            dist.barrier()
            if dist.get_rank() != 0:  # rank 0 saved the checkpoint and says so
                return 130
            how = f"torchrun --nproc_per_node {dist.get_world_size()} -m advnlp.cli train"
        print(f"advnlp: interrupted; checkpoint saved. Continue with: {how} --resume {e}",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("advnlp: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
