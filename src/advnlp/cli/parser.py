"""The command line's arguments: ``build_parser()`` and their translation to a run's config."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import List, Optional

from advnlp import __version__

from .config import TrainConfig
from .data import DataSpec
from .errors import InputError, comma_list
from .options import add_option, add_options, described, field_default, option_values
from .plan import VALIDATION_SCORES
from .tasks import TASKS

CHANGED_DATA = ("use the run's data files even if they changed since it started (size or "
                "sha256 differ); without it such a run is refused")
DESCRIPTION = "train, compare and evaluate adversarially trained text classifiers"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        command = " ".join(["advnlp", *self.prog.split()[1:]])  # "advnlp" or "advnlp train"
        print(f"advnlp: error: {message} (see {command} --help)", file=sys.stderr)
        raise SystemExit(2)

    def parse_args(self, args=None, namespace=None):
        # argparse reports unknown options from the top-level parser; name the command's help.
        args, extra = self.parse_known_args(args, namespace)
        if extra:
            command = getattr(self, "commands", {}).get(getattr(args, "command", None), self)
            command.error(f"unrecognized arguments: {' '.join(extra)}")
        return args


def _floats(text: str) -> List[float]:
    try:
        return [float(x) for x in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None


def _config_option(p) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="a run's config.json (or YAML of the same keys): its settings are the "
                        "defaults, the options given here override them")


# The help sections of train's and compare's options; each config field names its own
# (options.Option.section), each task's options have one of their own.
SECTIONS = {"model": "model and training",
            "method": "adversarial method parameters (each method takes some)",
            "discrete": "adversarial data augmentation (discrete attacks)",
            "data": "data (default: the bundled BBC News corpus, 5 topics)"}


def _training_options(p: argparse.ArgumentParser) -> None:
    """train's and compare's options: the fields of TrainConfig and DataSpec, by section."""
    for key, title in SECTIONS.items():
        group = p.add_argument_group(title)
        add_options(group, TrainConfig, key)
        add_options(group, DataSpec, key)
        if key == "model":  # what the command does with the run folder, not the run's settings
            group.add_argument("--overwrite", action="store_true",
                               help="replace a previous run in --output-dir")
            group.add_argument("--quiet", action="store_true",
                               help="no progress bars or per-epoch lines")
    for task in TASKS.values():  # each task's own options (e.g. a causal LM's LoRA)
        if task.options:
            group = p.add_argument_group(task.options_title)
            for name, spec in task.options.items():
                add_option(group, name, field_default(TrainConfig, name), spec)


def _attack_options(p: argparse.ArgumentParser, eps_flag: str, eps_default: str) -> None:
    g = p.add_argument_group("robustness: L2 PGD attack on the input embeddings")
    g.add_argument(eps_flag, type=_floats, default=_floats(eps_default),
                   help=f"attack radii, comma-separated (default {eps_default})")
    g.add_argument("--attack-steps", type=int, default=5, help="default 5")
    g.add_argument("--attack-samples", type=int, default=100, help="test examples attacked (default 100)")


def build_parser(config: Optional[dict] = None) -> argparse.ArgumentParser:
    """The command line; ``config`` (:func:`config_defaults`): train's and compare's defaults."""
    parser = _Parser(prog="advnlp", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"advnlp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,compare,eval,attack}")
    t = sub.add_parser("train", help="fine-tune a classifier with adversarial training")
    _train_command(t, config)
    c = sub.add_parser("compare", help="train once per method and tabulate accuracy, robustness, cost")
    _compare_command(c, config)
    e = sub.add_parser("eval", help="clean metrics and a robustness curve for a saved run")
    _eval_command(e)
    a = sub.add_parser("attack", help="attack a saved run: typos, word swaps or embedding PGD")
    _attack_command(a)
    parser.commands = {"train": t, "compare": c, "eval": e, "attack": a}
    return parser


def _train_command(t: argparse.ArgumentParser, config: Optional[dict]) -> None:
    """``advnlp train``'s options."""
    add_option(t, "method", *described(TrainConfig)["method"])
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    t.add_argument("--allow-changed-data", action="store_true", help=CHANGED_DATA)
    t.add_argument("--distributed", action="store_true",
                   help="one rank of a torchrun job (automatic when torchrun starts more than one "
                        "process); --batch-size is per process")
    _training_options(t)
    _config_option(t)
    t.set_defaults(**(config or {}))


def _compare_command(c: argparse.ArgumentParser, config: Optional[dict]) -> None:
    """``advnlp compare``'s options."""
    c.add_argument("--methods", default="none,fgm,pgd",
                   help="comma-separated (default none,fgm,pgd): methods, online-char / online-word "
                        "(none + --online-attack), greedy-char / greedy-word (the same with "
                        "--online-search greedy), augment-char / augment-word (none + "
                        "--augment-with-attack), typo-defence (none + --typo-defence), "
                        "synonym-defence (none + --synonym-defence), or a "
                        "method joined to these by + (fgm+online-char, greedy-char+typo-defence)")
    c.add_argument("--seeds", type=int, default=1,
                   help="train every method this many times, seeds --seed, --seed+1, ... paired "
                        "across methods; reports mean, spread and each method's difference "
                        "from none with a 95%% interval and a verdict (default 1)")
    c.add_argument("--resume", metavar="COMPARE_DIR",
                   help="finish an interrupted compare: finished runs are kept")
    _training_options(c)
    _attack_options(c, "--attack-epsilon", "0.5")
    c.add_argument("--typo-rate", type=float, metavar="P",
                   help="also score every run on a typo'd copy of the test split: each word the "
                        "char attack may edit gets one random typo with probability P (one "
                        "fixed copy for every method and seed; no model is queried)")
    c.add_argument("--attack", metavar="char|word|word-swap|char,word",
                   help="also tabulate accuracy under these discrete attacks (comma-separated)")
    c.add_argument("--attack-limit", type=int, default=50,
                   help="test examples for each --attack (default 50)")
    c.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train and score N runs at once, each in its own process with its "
                        "share of the CPU threads (default 1; on a 2-core CPU --jobs 2 did "
                        "1.3x the work of one run with both threads); with --resume, how many "
                        "from now on")
    c.add_argument("--validation-scores", default="full", choices=VALIDATION_SCORES,
                   help="full (default): score the validation split under every attack too "
                        "(validation_* in compare.json: what to choose settings by); clean: "
                        "only its clean metrics (faster, when no setting is being chosen)")
    c.add_argument("--cost-rounds", type=int, default=5, metavar="N",
                   help="after training, time every method's step against none's, interleaved "
                        "on one batch, N rounds: the table's step-cost column (0: none; the "
                        "wall-clock column remains) (default 5)")
    _config_option(c)
    c.set_defaults(**_without(config, "method"))


def _eval_command(e: argparse.ArgumentParser) -> None:
    """``advnlp eval``'s options."""
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--data", help="a labelled file with the run's columns (default: its test split)")
    e.add_argument("--allow-changed-data", action="store_true", help=CHANGED_DATA)
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--device", default="auto")
    _attack_options(e, "--epsilons", "0.1,0.25,0.5,1")


def _attack_command(a: argparse.ArgumentParser) -> None:
    """``advnlp attack``'s options."""
    a.add_argument("run_dir", metavar="RUN_DIR")
    a.add_argument("--attack", required=True,
                   help="char | word | word-swap (substitutions only) | embedding")
    a.add_argument("--data", help="a labelled file with the run's columns (default: its test split)")
    a.add_argument("--allow-changed-data", action="store_true", help=CHANGED_DATA)
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
    d.add_argument("--edit-entities", action="store_true",
                   help="a tagger, char: edit entity words too (they keep their "
                        "gold tags; by default only words tagged O are edited)")
    g = a.add_argument_group("embedding attack (FGSM/PGD on the input-embedding output)")
    g.add_argument("--epsilons", type=_floats, default=_floats("0.1,0.25,0.5,1.0"),
                   help="radii (default 0.1,0.25,0.5,1.0)")
    g.add_argument("--norm", default="l2", help="l2 (per example, default) or linf (per coordinate)")
    g.add_argument("--steps", type=int, default=10, help="ascent steps; 1 = FGSM (default 10)")
    g.add_argument("--random-start", action="store_true", help="start from a random point in the ball")


# Options that only mean something beside another one: given without it, they would be
# silently ignored, so they are refused.  option -> (the option it needs, its value's test)
# (compare enables the discrete attacks' training by --methods entries too: online-char...)
def _online(a) -> bool:
    methods = getattr(a, "methods", "")
    return a.online_attack is not None or "online-" in methods or "greedy-" in methods


def _augment(a) -> bool:
    return a.augment_with_attack is not None or "augment-" in getattr(a, "methods", "")


NEEDS = {"online_fraction": ("online_attack", _online),
         "online_search": ("online_attack", _online),
         "augment_every": ("augment_with_attack", _augment),
         "augment_samples": ("augment_with_attack", _augment),
         "label_delimiter": ("multi_label", lambda a: a.multi_label)}


def check_enabled(args) -> None:
    """Refuse an option given without the option that enables it."""
    defaults = build_parser().parse_args([args.command])
    for name, (needed, enabled) in NEEDS.items():
        if getattr(args, name) != getattr(defaults, name) and not enabled(args):
            raise InputError(f"--{name.replace('_', '-')} goes with --{needed.replace('_', '-')}, "
                             "which is not given: add it, or drop the option (it would be ignored)")


def config_from_args(args) -> TrainConfig:
    """The run's settings from parsed ``train`` / ``compare`` options (compare has no
    --method: its config's is none, each entry sets its own)."""
    values = option_values(args, TrainConfig)
    values.setdefault("method", "none")
    tasks = {name: getattr(args, name) for task in TASKS.values() for name in task.options}
    return TrainConfig(**values, **tasks, data=DataSpec(**option_values(args, DataSpec)))


def _without(config: Optional[dict], key: str) -> dict:
    return {k: v for k, v in (config or {}).items() if k != key}


def config_defaults(path: str) -> dict:
    """A run's ``config.json`` (or the same in YAML) as train's and compare's defaults, by
    their options' names: the options given on the command line override it, so
    ``advnlp train --config RUN/config.json --output-dir NEW`` trains RUN again."""
    try:
        with open(path, encoding="utf-8") as f:
            if path.endswith((".yaml", ".yml")):
                try:
                    import yaml  # type: ignore[import-untyped]  # optional: PyYAML
                except ImportError:
                    raise InputError(f"--config {path}: reading YAML needs PyYAML "
                                     "(pip install pyyaml); or give the JSON") from None
                raw = yaml.safe_load(f)
            else:
                raw = json.load(f)
        if not isinstance(raw, dict):
            raise ValueError("not a mapping of option names to values")
        cfg = TrainConfig.from_json(raw)
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"--config {path}: unreadable ({e})") from None
    values = dataclasses.asdict(cfg)
    data = values.pop("data")
    values.pop("world_size")  # torchrun's, not an option
    data.pop("fingerprints")  # taken anew when the run starts
    data["text_columns"] = ",".join(data["text_columns"])
    return {**values, **data}
