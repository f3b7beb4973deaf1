"""``advnlp``: train, compare and evaluate adversarially trained text classifiers.

This module only parses arguments and prints; the work is in train.py and
evaluate.py. Exit codes: 0 success, 2 bad input (one line on stderr), 130
interrupted (a checkpoint was saved; continue with ``advnlp train --resume``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from . import __version__
from .data import DataSpec, InputError
from .evaluate import evaluate_run
from .train import METHODS, Interrupted, TrainConfig, compare, resume, train


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
    a = p.add_argument_group("adversarial method parameters (each method takes some)")
    a.add_argument("--epsilon", type=float, help="perturbation radius (fgm, fgsm, pgd)")
    a.add_argument("--alpha", type=float, help="PGD step size")
    a.add_argument("--steps", type=int, help="PGD ascent steps")
    a.add_argument("--adv-weight", type=float, help="weight of the adversarial loss (default 1)")
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
    sub = parser.add_subparsers(dest="command", metavar="{train,compare,eval}")
    t = sub.add_parser("train", help="fine-tune a classifier with adversarial training")
    t.add_argument("--method", default="fgm", help=f"{' | '.join(METHODS)} (default fgm)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    _training_options(t)
    c = sub.add_parser("compare", help="train once per method and tabulate accuracy, robustness, cost")
    c.add_argument("--methods", default="none,fgm,pgd", help="comma-separated (default none,fgm,pgd)")
    _training_options(c)
    _attack_options(c, "--attack-epsilon", "0.5")
    e = sub.add_parser("eval", help="clean metrics and a robustness curve for a saved run")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--data", help="a labelled file with the run's columns (default: its test split)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--device", default="auto")
    _attack_options(e, "--epsilons", "0.1,0.25,0.5,1")
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
        device=args.device, output_dir=args.output_dir, data=data)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def _summary(run_dir: str, result: dict) -> str:
    test = result["final"]["test"]
    extra = f", micro-F1 {test['micro_f1']:.4f}" if "micro_f1" in test else ""
    return (f"done: {run_dir}\n"
            f"  {result['train_examples']} training examples, {len(result['epochs'])} epoch(s), "
            f"{result['seconds_per_step']:.2f} s/step\n"
            f"  test ({result['test_examples']} examples): accuracy {test['accuracy']:.4f}, "
            f"macro-F1 {test['macro_f1']:.4f}{extra}")


def _table(out: dict) -> str:
    eps = out["attack"]["epsilon"]
    head = ["method", "accuracy", "macro-F1", f"robust acc (eps={eps:g})", "s/step", "cost vs none"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in out["methods"]:
        cost = None if r["relative_cost"] is None else f"{r['relative_cost']:.2f}x"
        cells = [r["method"], r["accuracy"], r["macro_f1"], r["robust_accuracy"],
                 f"{r['seconds_per_step']:.3f}", cost]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def _train(args, progress: bool, log) -> None:
    if args.resume:
        # The run's config.json decides everything; a silently ignored option would mislead.
        defaults = vars(build_parser().parse_args(["train"]))
        extra = [k for k, v in vars(args).items()
                 if k not in ("resume", "quiet") and v != defaults[k]]
        if extra:
            raise InputError(f"--resume takes the run's own settings; drop --{extra[0].replace('_', '-')}")
        print(_summary(args.resume, resume(args.resume, progress, log)))
        return
    cfg = _config(args).resolved()
    print(_summary(cfg.output_dir, train(cfg, args.overwrite, progress, log)))


def _compare(args, progress: bool, log) -> None:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if len(args.attack_epsilon) != 1 or args.attack_epsilon[0] <= 0:
        raise InputError("--attack-epsilon takes one number > 0")
    if args.attack_steps < 1 or args.attack_samples < 1:
        raise InputError("--attack-steps and --attack-samples must be >= 1")
    out = compare(_config(args), methods, args.attack_epsilon[0], args.attack_steps,
                  args.attack_samples, args.overwrite, progress, log)
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
    try:
        if args.command == "train":
            _train(args, progress, log)
        elif args.command == "compare":
            _compare(args, progress, log)
        else:
            _eval(args)
    except InputError as e:
        print(f"advnlp: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"advnlp: interrupted; checkpoint saved. Continue with: advnlp train --resume {e}",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("advnlp: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
