"""The command line's arguments: ``build_parser()`` and their translation to a run's config."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import List, Optional

from advnlp import __version__

from .config import ENGINES, EVAL_STRATEGIES, METHODS, TrainConfig
from .data import DataSpec
from .errors import InputError, comma_list
from .plan import VALIDATION_SCORES
from .tasks import DEFAULT_TASK, TASKS
from .tracking import REPORTERS

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


def _training_options(p: argparse.ArgumentParser) -> None:
    _model_options(p)
    _method_options(p)
    _discrete_options(p)
    _data_options(p)
    for task in TASKS.values():  # each task's own options (e.g. a causal LM's LoRA)
        task.add_options(p)


def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and training")
    g.add_argument("--model", help="a local Hugging Face model directory, or textcnn / bilstm "
                   "(trained from scratch). Default: the bundled pretrained MiniLM")
    g.add_argument("--epochs", type=int, help="default 1 (pretrained) or 5 (from scratch)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--lr", type=float, help="default 1e-4 (pretrained) or 2e-3 (from scratch)")
    g.add_argument("--max-length", type=int, default=None,
                   help="tokens per example (default 128, or fewer if the model reads fewer)")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    g.add_argument("--output-dir", help="default runs/<timestamp>-<method>")
    g.add_argument("--overwrite", action="store_true", help="replace a previous run in --output-dir")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    g.add_argument("--report-to", default="none", choices=REPORTERS,
                   help="tensorboard: write the run's losses (clean and adversarial), learning "
                        "rate, validation and test metrics (and compare's scores) to "
                        "<run>/tensorboard/ as it trains; mlflow: the same into a local MLflow "
                        "store (mlruns/ beside the run or the compare's runs, or "
                        "$MLFLOW_TRACKING_URI); nothing is sent anywhere (default none)")
    g.add_argument("--eval-strategy", default="epoch", choices=EVAL_STRATEGIES,
                   help="epoch (default): score the validation split after every epoch; end: "
                        "after the last one only (the run's final validation either way; the "
                        "earlier epochs' lines and plot points go)")
    g.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="fp32 (default); bf16 or fp16: autocast mixed precision "
                        "(fp16 with dynamic loss scaling)")
    g.add_argument("--task", default=DEFAULT_TASK, choices=tuple(TASKS),
                   help="; ".join(t.help for t in TASKS.values()))
    g.add_argument("--crf", action="store_true",
                   help="a tagger with --model bilstm: a CRF layer over the tags")
    g.add_argument("--label-all-subtokens", action="store_true",
                   help="a tagger: train on every sub-token of a word (I- on the "
                        "later ones), not only the first")
    g.add_argument("--engine", default="loop", choices=ENGINES,
                   help="loop (default): advnlp's own loop; trainer: Hugging Face's Trainer "
                        "(AdversarialTrainer), Hugging Face models only; trl: TRL's SFTTrainer "
                        "(AdversarialSFTTrainer), for causal LMs")


def _method_options(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("adversarial method parameters (each method takes some)")
    a.add_argument("--epsilon", type=float,
                   help="perturbation radius (fgm, fgsm, pgd, yopo, freelb, freeat, vat, atta, ...)")
    a.add_argument("--alpha", type=float,
                   help="step size (pgd, yopo, smart, freeat; atta: the step added to an "
                        "example's perturbation per visit, default = --epsilon)")
    a.add_argument("--steps", type=int, help="ascent steps (pgd, yopo, freelb, smart); for freeat "
                   "m, the replays of each batch")
    a.add_argument("--adv-weight", type=float, help="weight of the adversarial loss (default 1)")
    units = a.add_mutually_exclusive_group()
    units.add_argument("--relative-epsilon", dest="relative_epsilon", action="store_const",
                       const=True, default=None,
                       help="--epsilon and the step sizes are fractions of each example's own "
                            "embedding (L2 norm over its real tokens; RMS coordinate for fgsm): "
                            "0.05 means 5%% on every model (fgm, fgsm, pgd, freelb, vat, atta). "
                            "The default for fgm, pgd and atta when no --epsilon/--alpha is "
                            "given (FGM's and PGD's measured sizes, docs/methods.md)")
    units.add_argument("--absolute-epsilon", dest="relative_epsilon", action="store_const",
                       const=False,
                       help="--epsilon and the step sizes in the model's own embedding units (the "
                            "library's default; the CLI's whenever --epsilon or --alpha is given)")


def _discrete_options(p: argparse.ArgumentParser) -> None:
    x = p.add_argument_group("adversarial data augmentation (discrete attacks)")
    x.add_argument("--augment-with-attack", metavar="char|word",
                   help="after each epoch but the last, attack a sample of the training set and "
                        "train on the successful adversarial texts too")
    x.add_argument("--online-attack", metavar="char|word",
                   help="online discrete adversarial training (advnlp.DiscreteAT): in every step, "
                        "edit the highest-gradient words of a share of the batch (typos, or word "
                        "deletions/duplications/substitutions) and train on the edited texts too; "
                        "combines with --method none, fgm, fgsm, pgd, freelb")
    x.add_argument("--online-fraction", type=float, default=0.5,
                   help="share of each batch --online-attack edits (default 0.5: ~1.5x a plain step)")
    x.add_argument("--online-search", default="random", choices=("random", "greedy"),
                   help="how --online-attack picks each word's edit: random (default; one random "
                        "edit per word, ~1.5x a plain step) or greedy (every candidate edit "
                        "scored against the current model, per example, the worst kept: ~2.8x)")
    x.add_argument("--augment-every", type=int, default=1, help="epochs between rounds (default 1)")
    x.add_argument("--augment-samples", type=int, default=64,
                   help="training examples attacked per round (default 64)")
    x.add_argument("--typo-defence", action="store_true",
                   help="map every one-edit typo of a known word (the training text's words and "
                        "the tokenizer's whole words) back to that word before the tokenizer "
                        "(advnlp.defences.TypoNormalizer); saved with the model and applied by "
                        "eval, attack and compare. Not for CJK text")


def _data_options(p: argparse.ArgumentParser) -> None:
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
    t.add_argument("--method", default="fgm", help=f"{' | '.join(METHODS)} (default fgm)")
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
                        "--augment-with-attack), typo-defence (none + --typo-defence), or a "
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
    c.add_argument("--attack", metavar="char|word|char,word",
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
    a.add_argument("--attack", required=True, help="char | word | embedding")
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
    columns = comma_list(args.text_columns) if args.text_columns \
        else [args.text_column]
    if len(columns) not in (1, 2):
        raise InputError("--text-columns takes one or two column names")
    if (args.validation or args.test) and not args.train:
        raise InputError("--validation / --test need --train")
    data = DataSpec(args.train, args.validation, args.test, tuple(columns), args.label_column,
                    args.multi_label, args.label_delimiter, args.max_train_samples)
    return TrainConfig(
        model=args.model, method=getattr(args, "method", "none"), epsilon=args.epsilon,
        alpha=args.alpha, steps=args.steps, adv_weight=args.adv_weight,
        relative_epsilon=args.relative_epsilon, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, max_length=args.max_length, seed=args.seed,
        device=args.device, output_dir=args.output_dir,
        augment_with_attack=args.augment_with_attack, augment_every=args.augment_every,
        augment_samples=args.augment_samples, online_attack=args.online_attack,
        online_fraction=args.online_fraction, online_search=args.online_search,
        engine=args.engine,
        precision=args.precision, task=args.task, crf=args.crf,
        eval_strategy=args.eval_strategy,
        typo_defence=args.typo_defence, report_to=args.report_to,
        label_all_subtokens=args.label_all_subtokens, data=data,
        **{name: getattr(args, name) for task in TASKS.values() for name in task.options})


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
