"""``advnlp``: train, compare and evaluate adversarially trained text classifiers.

This module parses arguments and prints; the work is in :mod:`advnlp.cli.commands`.
Exit codes: 0 success, 2 bad input (one line on stderr), 130 interrupted by Ctrl-C,
143 by SIGTERM (a checkpoint was saved; continue with ``advnlp train --resume``).

``advnlp train`` also runs as N processes under torchrun
(``torchrun --nproc_per_node N -m advnlp.cli train ...``).
"""
from __future__ import annotations

import os
import signal
import sys
from typing import List, Optional

from . import distributed
from .commands import attack_run, compare, evaluate_run, resume, resume_compare, train
from .distributed import distributed_requested, setup_distributed
from .errors import WARNING, InputError, Interrupted, comma_list
from .parser import build_parser, check_enabled, config_defaults, config_from_args
from .report import compare_table, summary
from .robustness import ATTACKS
from .rundir import read_config
from .tasks import task_of


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
                 if k not in ("resume", "quiet", "distributed", "allow_changed_data")
                 and v != defaults[k]]
        if extra:
            raise InputError(f"--resume takes the run's own settings; drop --{extra[0].replace('_', '-')}")
        result = resume(args.resume, progress, log, info, args.allow_changed_data)
        if result is not None:
            print(summary(args.resume, result, read_config(args.resume).task))
        return
    if args.allow_changed_data:
        raise InputError("--allow-changed-data goes with --resume (a new run reads its data as it is)")
    check_enabled(args)
    cfg = config_from_args(args).resolved()
    result = train(cfg, args.overwrite, progress, log, info)
    if result is not None:
        print(summary(cfg.output_dir, result, cfg.task))


def _compare(args, progress: bool, log) -> None:
    if args.resume:
        defaults = vars(build_parser().parse_args(["compare"]))
        extra = [k for k, v in vars(args).items()
                 if k not in ("resume", "quiet", "jobs") and v != defaults[k]]
        if extra:
            raise InputError(f"compare --resume takes the comparison's own settings; drop "
                             f"--{extra[0].replace('_', '-')}")
        out = resume_compare(args.resume, progress, log,
                             None if args.jobs == defaults["jobs"] else args.jobs)
        print(compare_table(out))
        print(f"written: {out['path']}")
        return
    check_enabled(args)
    methods = comma_list(args.methods)
    if args.attack_steps < 1 or args.attack_samples < 1:
        raise InputError("--attack-steps and --attack-samples must be >= 1")
    attacks = None if args.attack is None else comma_list(args.attack)
    out = compare(config_from_args(args), methods, args.attack_epsilon, args.attack_steps,
                  args.attack_samples, args.overwrite, progress, log, attacks, args.attack_limit,
                  args.seeds, args.typo_rate, args.cost_rounds, args.validation_scores,
                  args.jobs)
    print(compare_table(out))
    print(f"written: {out['path']}")


def _eval(args) -> None:
    if any(e <= 0 for e in args.epsilons) or args.attack_steps < 1 or args.attack_samples < 1:
        raise InputError("--epsilons must be > 0, --attack-steps and --attack-samples >= 1")
    out = evaluate_run(args.run_dir, args.data, args.epsilons, args.attack_steps,
                       args.attack_samples, args.batch_size, args.device,
                       allow_changed_data=args.allow_changed_data)
    for line in task_of(read_config(args.run_dir)).parts.eval_report(out):
        print(line)
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
                     batch_size=args.batch_size, device=args.device,
                     allow_changed_data=args.allow_changed_data,
                     edit_entities=args.edit_entities)
    for line in task_of(read_config(args.run_dir)).parts.attack_report(args.attack, out):
        print(line)
    print("written: " + ", ".join(out["files"].values()))


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings from tokenizers
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "config", None):  # its settings are defaults; the flags given win
            args = build_parser(config_defaults(args.config)).parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    except InputError as e:
        print(f"advnlp: error: {e}", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    quiet = getattr(args, "quiet", False)
    progress = not quiet and sys.stderr.isatty()  # no bars in logs and pipes

    def log(line: str) -> None:  # --quiet hides progress, never a warning
        if not quiet or line.startswith(WARNING):
            print(line, file=sys.stderr)
    code = _dispatch(args, progress, log)
    if distributed.initialized():
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
        how = f"advnlp {e.command}"
        if distributed.initialized():
            import torch.distributed as dist

            # Every rank stopped on the same agreed flag; wait for rank 0's checkpoint, or
            # torchrun would kill it mid-save as soon as another rank exits.
            dist.barrier()
            if dist.get_rank() != 0:  # rank 0 saved the checkpoint and says so
                return e.exit_code
            how = f"torchrun --nproc_per_node {dist.get_world_size()} -m advnlp.cli train"
        by = "Ctrl-C (SIGINT)" if e.signal == signal.SIGINT else e.signal.name
        what = (f"interrupted by {by}; the finished runs and the last checkpoint are kept"
                if e.command == "compare" else f"interrupted; checkpoint saved after {by}")
        print(f"advnlp: {what}. Continue with: {how} --resume {e.run_dir}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("advnlp: interrupted", file=sys.stderr)
        return 130
    return 0
