"""A run's state: its data, model, adversary, optimizer, schedule and progress.

:class:`Run` is what both engines step (``engines/loop.py``, ``engines/hf_trainer.py``)
and what ``--resume`` restores. It is written against advnlp's public API: the only
adversarial object is ``run.adv``, a method built by :func:`config.build_adversary`,
which the training step calls as ``adv.backward(closure)``.

Under torchrun every process holds a Run: the model is wrapped in
DistributedDataParallel (loop engine; the Trainer wraps it itself), the adversary is
built on the wrapper (so its extra passes run under ``no_sync()``), each rank takes its
DistributedSampler-style shard of the epoch order, and rank 0 alone evaluates and
writes the run directory. With ``--fsdp`` the model is sharded in place instead (FSDP2);
its forward passes are then collective, so every rank evaluates and the weights and
optimizer state are gathered for checkpoints and ``model/`` (:meth:`Run.model_state`).
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from advnlp import ATTA, EmbeddingAdversary

from .config import PRECISIONS, TrainConfig, build_adversary, build_online
from .data import Example, batches
from .distributed import DistInfo, derive_seed, device_of, full_state, load_full_state, shard
from .errors import InputError
from .files import atomic_dir, write_json
from .report import plot
from .rundir import CHECKPOINT, CHECKPOINTS
from .tracking import Tracker, numeric, tracker

# What stops a run after its current step with a checkpoint: Ctrl-C, and what schedulers,
# `timeout` and container runtimes send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Run:
    """One run: data, model, adversary, optimizer and schedule, and how far it has got.

    Progress is ``epoch``, ``step`` (within the epoch), ``history`` (one entry per
    finished epoch) and ``partial`` (the current epoch's step losses and seconds).
    """

    def __init__(self, cfg: TrainConfig, progress: bool = False,
                 log: Callable[[str], None] = lambda s: None, dist_info: Optional[DistInfo] = None):
        self.cfg, self.progress, self.log = cfg, progress, log
        self.dist = dist_info
        self.rank, self.world = (dist_info.rank, dist_info.world_size) if dist_info else (0, 1)
        self.is_main = self.rank == 0
        self.run_dir = cfg.output_dir
        self.device = dist_info.device if dist_info else device_of(cfg.device)
        # --augment-with-attack: successful adversarial texts with their original labels,
        # trained on from the epoch after they were found (kept in the checkpoint).
        self.extra: List[Example] = []
        self._setup_task(cfg, log)
        self.clf.model.to(self.device)
        self.sharded = dist_info is not None and cfg.fsdp
        self.train_clf = self._distributed_model()
        self.adv = self.build_adversary(derive_seed(cfg.seed, "online-attack", self.rank, 0))
        self._online_before = (0, 0)
        # --method freeat replays each batch m (--steps) times; an epoch keeps a plain
        # epoch's number of optimizer steps (see epoch_schedule).
        self.replays = cfg.steps if cfg.method == "freeat" else 1
        if self.batches_per_pass() < self.replays:
            raise InputError(f"--method freeat replays each batch --steps {self.replays} times and "
                             f"splits every pass over the data into that many epochs, but a pass "
                             f"has {self.batches_per_pass()} batch(es); lower --steps or "
                             "--batch-size, or give more training data")
        params = [p for p in self.clf.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
        self.epoch, self.step, self.history = 0, 0, []
        self.warmup = max(1, self._total_steps() // 10)
        # Linear warm-up then linear decay to zero: the usual fine-tuning schedule. The
        # total is recomputed when augmentation grows the training set, so it still ends at 0.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.partial = {"losses": [], "seconds": 0.0}
        self.resumed_from: Optional[str] = None  # the checkpoint --resume loaded, if any
        # 0, or the first stop signal this process received (SIGINT or SIGTERM)
        self.stop_requested = 0
        self._tracker: Optional[Tracker] = None  # --report-to, made at the first report
        # The agreed stop signal (under torchrun, any rank's), once agree() has seen one.
        self.stop_signal = 0
        self._previous: Dict[int, object] = {}
        dtype = PRECISIONS[cfg.precision]
        self.autocast = (contextlib.nullcontext if dtype is None else
                         lambda: torch.autocast(self.device.type, dtype=dtype))
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        self.backward_fn = (None if self.scaler is None else
                            lambda loss: self.scaler.scale(loss).backward())

    def _distributed_model(self):
        """What the training step calls: the model itself, or its DDP wrapper (the adversary
        is built on the wrapper so that every pass but the last skips the all-reduce). With
        --fsdp the model is sharded in place (FSDP2), each rank holding its shards; every
        forward pass is then collective, so every rank evaluates (rank 0 alone writes)."""
        if self.sharded:
            shard(self.clf.model)
            self.reseed_rank()  # the same initial weights everywhere, own dropout noise per rank
            return self.clf
        if self.dist is None or self.cfg.engine != "loop":  # the Trainer wraps it itself
            return self.clf
        ddp = nn.parallel.DistributedDataParallel(
            self.clf.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        wrapped = copy.copy(self.clf)
        wrapped.model = ddp
        # Same initial weights everywhere (DDP broadcast rank 0's); own dropout noise per rank.
        self.reseed_rank()
        return wrapped

    # -- the task: what a subclass for another task replaces -------------------------------
    headline = "accuracy"  # the validation metric each epoch's log line shows

    def build_adversary(self, online_seed: int, cfg: Optional[TrainConfig] = None):
        """The step's adversary: the method's, inside DiscreteAT under --online-attack (a
        classifier's texts; a task that edits other data replaces this). ``cfg``: another
        configuration's on this run's model (compare's check that every entry fits it)."""
        cfg = self.cfg if cfg is None else cfg
        return build_online(cfg, self.train_clf, build_adversary(cfg, self.train_clf.model),
                            online_seed)

    def positions(self, batch: dict) -> Optional[torch.Tensor]:
        """The (batch, length) positions of ``batch`` that the embedding methods may perturb
        (a causal LM's prompt); None: every real token (padding is the method's to skip)."""
        return None

    def adversary_mask(self):
        """:meth:`positions` as the Trainer's ``adversary_mask`` (None: the default), for a
        method that perturbs positions (AWP perturbs weights)."""
        if type(self).positions is Run.positions or not isinstance(self.adv, EmbeddingAdversary):
            return None
        return self.positions
    bounded_headline = True  # a share in [0, 1] (accuracy, F1), not a loss

    def _setup_task(self, cfg: TrainConfig, log) -> None:
        """Set ``splits`` (train / validation / test examples), ``labels`` (labels.json),
        ``targets`` and ``clf`` (the model protocol: ``model``, ``save(dir)``, ...; not yet
        on the device); a task's run class fills these in."""
        raise NotImplementedError

    def task_step(self, idx: List[int], batch: Optional[dict]) -> torch.Tensor:
        """One step's gradients on the training examples ``idx`` (``batch``: their
        encoding, from :meth:`batch`); the loss."""
        raise NotImplementedError

    def batch(self, idx: List[int]) -> dict:
        """The training examples ``idx`` as the model's inputs, on the run's device."""
        raise NotImplementedError

    def labelled_batch(self, idx: List[int]) -> dict:
        """The training examples ``idx`` with their ``labels``, on the CPU: what
        ``--engine trainer``'s collator gives the model, whose own loss is the closure."""
        raise NotImplementedError

    def evaluate(self, split: str) -> Dict[str, float]:
        """The task's metrics on ``split`` (validation / test), ``headline`` among them."""
        raise NotImplementedError

    def reseed_rank(self, resumed: bool = False) -> None:
        """Own dropout noise for this rank (after a DDP broadcast, or on resume: the
        checkpoint holds rank 0's random state)."""
        torch.manual_seed(derive_seed(self.cfg.seed, "dropout-resumed", self.rank, self.epoch, self.step)
                          if resumed else derive_seed(self.cfg.seed, "dropout", self.rank))

    # -- the training set, which --augment-with-attack grows ----------------------------
    @property
    def train_set(self) -> List[Example]:
        return self.splits.train + self.extra

    def shard_size(self) -> int:
        """Examples per rank and epoch (the epoch order padded to a multiple of the ranks)."""
        return -(-len(self.train_set) // self.world)

    def batches_per_pass(self) -> int:
        return len(batches(self.shard_size(), self.cfg.batch_size))

    def _chunk(self, epoch: int) -> Tuple[int, int]:
        """The batches [start, end) of its pass that ``epoch`` trains on."""
        n, m, c = self.batches_per_pass(), self.replays, epoch % self.replays
        return c * n // m, (c + 1) * n // m

    def epoch_schedule(self, epoch: Optional[int] = None) -> List[Tuple[List[int], int]]:
        """The epoch's optimizer steps, in order, as (positions in this rank's order,
        replay). One step per batch and replay 0, except for FreeAT: its m replays of a
        batch are m steps, so that an epoch costs what a plain one does (one forward and
        backward per step), each pass over the data is split into m consecutive chunks of
        batches, and epoch e trains on chunk e mod m of pass e div m, each batch m times in
        a row. E epochs of FreeAT thus cost E plain epochs and see the data E/m times."""
        epoch = self.epoch if epoch is None else epoch
        spans = batches(self.shard_size(), self.cfg.batch_size)
        start, end = self._chunk(epoch)
        return [(span, r) for span in spans[start:end] for r in range(self.replays)]

    def steps_per_epoch(self, epoch: Optional[int] = None) -> int:
        start, end = self._chunk(self.epoch if epoch is None else epoch)
        return (end - start) * self.replays

    def _total_steps(self) -> int:
        done = sum(h["steps"] for h in self.history[: self.epoch])
        return done + sum(self.steps_per_epoch(e) for e in range(self.epoch, self.cfg.epochs))

    def _lr_factor(self, s: int) -> float:
        total, warmup = self._total_steps(), self.warmup
        return min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))

    def set_extra(self, extra: list) -> None:
        """The augmented examples of a checkpoint (--augment-with-attack); a task without
        augmentation has none."""
        if extra:
            raise InputError("this checkpoint holds augmented examples, which runs of this "
                             "task never have: not a checkpoint of this run")
        self.extra = []

    def epoch_order(self) -> torch.Tensor:
        # A function of (seed, pass) alone, so a resumed run sees the same batches. A pass
        # is an epoch, except under FreeAT, whose m epochs share one pass's order.
        data_pass = self.epoch // self.replays
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "epoch-order", data_pass))
        return torch.randperm(len(self.train_set), generator=g)

    def rank_order(self) -> List[int]:
        """This rank's examples, in order: like DistributedSampler (drop_last=False), the
        epoch order is padded by wrapping around to a multiple of the world size and rank r
        takes every world-size-th example from position r. Batch k of all ranks together is
        then positions [k*B*W, (k+1)*B*W) of the padded order: the same global batches as
        one process with batch size B*W. Except for ATTA: see :meth:`_fixed_shard`."""
        order = self.epoch_order().tolist()
        if self.world == 1:
            return order
        if isinstance(self.adv, ATTA):
            return self._fixed_shard(order)
        total = self.shard_size() * self.world
        padded = (order * (-(-total // len(order))))[:total]
        return padded[self.rank::self.world]

    def _fixed_shard(self, order: List[int]) -> List[int]:
        """Rank r's examples every epoch are those whose index is r modulo the world size, in
        the epoch's order: ATTA keeps each example's perturbation on the rank that trained
        on it, with no exchange between ranks. A shorter shard is padded with the first
        example of the others (as DistributedSampler pads), which then has a state here too."""
        mine = [i for i in order if i % self.world == self.rank]
        need = self.shard_size() - len(mine)
        return mine + [i for i in order if i % self.world != self.rank][:need]

    def augment(self) -> dict:
        """--augment-with-attack: rank 0 attacks, every rank gets the same new examples."""
        if self.dist is None:
            return self._augment_here()
        out = [self._augment_here() if self.is_main else None, self.extra]
        dist.broadcast_object_list(out, src=0)
        if not self.is_main:
            self.set_extra(out[1])
        return out[0]

    def _augment_here(self) -> dict:
        """--augment-with-attack's round on rank 0 (the task's; its checks refuse the flag
        for a task that has none)."""
        raise NotImplementedError

    # -- progress, shared by both engines -----------------------------------------------
    def progress_state(self) -> dict:
        """How far the run has got, JSON-ready (both engines' checkpoints carry it)."""
        return {"epoch": self.epoch, "step": self.step, "history": self.history,
                "partial": self.partial, "extra": [[list(t), lab] for t, lab in self.extra]}

    def load_progress_state(self, state: dict) -> None:
        self.epoch, self.step = state["epoch"], state["step"]
        self.history, self.partial = state["history"], state["partial"]
        self.set_extra([(tuple(t), lab) for t, lab in state.get("extra", [])])

    def online_step(self) -> None:
        """Before a step: --online-attack's draws depend on (seed, rank, epoch, step) alone,
        so a resumed run edits exactly what the uninterrupted one did."""
        adv = self.adv
        if self.cfg.online_attack is not None:
            adv.seed = derive_seed(self.cfg.seed, "online-attack", self.rank, self.epoch)
            adv.steps = self.step
            self._online_before = (adv.edited_examples, adv.unedited_examples)

    def end_step(self, loss: torch.Tensor, seconds: float) -> Tuple[float, bool]:
        """Book one finished step: its (globally averaged) loss and time. Returns the loss
        and whether any rank asked to stop."""
        self.partial["seconds"] += seconds
        if self.cfg.online_attack is not None:
            for key, before, now in zip(("edited_examples", "unedited_examples"), self._online_before,
                                        (self.adv.edited_examples, self.adv.unedited_examples)):
                self.partial[key] = self.partial.get(key, 0) + now - before
        value, stop = self.agree(loss)
        self.partial["losses"].append(value)
        self.step += 1
        adv_loss = getattr(self.adv, "last_adv_loss", None)
        self.report({"train/loss": value, "train/learning_rate": self.scheduler.get_last_lr()[0],
                     "train/adversarial_loss": adv_loss.item() if torch.is_tensor(adv_loss)
                     else None})
        return value, stop

    # -- --report-to ----------------------------------------------------------------------
    def finished_steps(self) -> int:
        """Optimizer steps of the finished epochs."""
        return sum(h["steps"] for h in self.history)

    def report(self, values: dict, step: Optional[int] = None) -> None:
        """Scalars for --report-to at ``step`` (default: the current global step); rank 0
        only, nothing for --report-to none."""
        if not self.is_main or self.cfg.report_to == "none":
            return
        if self._tracker is None:
            self._tracker = tracker(self.cfg.report_to, self.run_dir, self.tracking_tags())
        self._tracker.scalars(values, self.finished_steps() + self.step if step is None else step)

    def tracking_tags(self) -> Dict[str, str]:
        """What --report-to mlflow tags the run with, so that runs can be filtered and overlaid."""
        return {"method": self.cfg.method, "seed": str(self.cfg.seed), "task": self.cfg.task}

    def close_tracker(self) -> None:
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None

    def agree(self, loss: Optional[torch.Tensor] = None) -> Tuple[Optional[float], bool]:
        """The global batch's loss (equal shards: the mean of the ranks' means) and whether
        any rank has seen Ctrl-C or SIGTERM (which one: ``stop_signal``). Under torchrun
        every rank calls it at the same point and decides on the reduced flags alone, so no
        rank stops while another goes on; a signal arriving after the reduction is kept for
        the next one."""
        value = float("nan") if loss is None else loss.item()
        sigint, sigterm = (self.stop_requested == s for s in STOP_SIGNALS)
        if self.dist is not None:
            t = torch.tensor([value, float(sigint), float(sigterm)], device=self.device)
            dist.all_reduce(t)
            value, sigint, sigterm = t[0].item() / self.world, t[1].item() > 0, t[2].item() > 0
        if sigint or sigterm:  # SIGTERM first: every rank then exits with the same code
            self.stop_signal = signal.SIGTERM if sigterm else signal.SIGINT
        return (None if loss is None else value), bool(sigint or sigterm)

    def close_epoch(self) -> dict:
        """The finished epoch's history entry, with validation (on rank 0; the others
        wait at the barrier), logged. Both engines call it at the end of every epoch."""
        steps = self.steps_per_epoch()
        entry = {
            "epoch": self.epoch + 1,
            "train_loss": sum(self.partial["losses"]) / steps,
            "step_losses": self.partial["losses"],
            "steps": steps,
            "train_examples": len(self.train_set),
            "train_seconds": self.partial["seconds"],
            "validation": self.evaluate("validation") if self.evaluates() and self._validates() else {},
        }
        if self.cfg.online_attack is not None:
            counts = torch.tensor([self.partial.get("edited_examples", 0),
                                   self.partial.get("unedited_examples", 0)], device=self.device)
            if self.dist is not None:
                dist.all_reduce(counts)
            entry["online_attack"] = {"edited_examples": int(counts[0]),
                                      "unedited_examples": int(counts[1])}
        self.barrier()
        self.history.append(entry)
        self.report({"train/epoch_loss": entry["train_loss"],
                     **numeric("validation", entry["validation"])}, self.finished_steps())
        if self.is_main:
            shown = entry["validation"]
            self.log(f"epoch {entry['epoch']}: train loss {entry['train_loss']:.4f}"
                     + (f", validation {self.headline.replace('_', ' ')} "
                        f"{shown[self.headline]:.4f}" if shown else ""))
        return entry

    def evaluates(self) -> bool:
        """Whether this rank evaluates: rank 0, or every rank of a sharded model (whose
        forward passes gather the shards from all of them)."""
        return self.is_main or self.sharded

    def model_state(self) -> Tuple[dict, dict]:
        """The weights and the optimizer state, whole, on rank 0 (every rank calls it: a
        sharded model all-gathers them; the other ranks get empty ones)."""
        if self.sharded:
            return full_state(self.clf.model, self.optimizer)
        return self.clf.model.state_dict(), self.optimizer.state_dict()

    def load_model_state(self, weights: dict, optim: dict) -> None:
        """:meth:`model_state`'s inverse, on every rank (each keeps its shards)."""
        if self.sharded:
            load_full_state(self.clf.model, weights, self.optimizer, optim)
        else:
            self.clf.model.load_state_dict(weights)
            self.optimizer.load_state_dict(optim)

    def _validates(self) -> bool:
        """Whether this epoch ends with a validation: every epoch, or the last one only
        (--eval-strategy end), whose numbers are the run's final validation either way."""
        return self.cfg.eval_strategy == "epoch" or self.epoch + 1 >= self.cfg.epochs

    def next_epoch(self) -> None:
        self.epoch, self.step = self.epoch + 1, 0
        self.partial = {"losses": [], "seconds": 0.0}

    def barrier(self) -> None:
        if self.dist is not None:
            dist.barrier()

    # -- Ctrl-C and SIGTERM ---------------------------------------------------------------
    @contextlib.contextmanager
    def stopping_on_signals(self):
        """While inside, Ctrl-C (SIGINT) or SIGTERM asks the run to stop after the current
        step (a checkpoint is saved); a second one aborts at once."""
        self._previous = {}
        for signum in STOP_SIGNALS:
            try:
                previous = signal.getsignal(signum)
                # An ignored signal was the caller's choice (nohup, a script's `&`): keep it.
                if previous is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread: no signal can reach us anyway
                pass
        try:
            yield
        finally:
            self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous.items():
            # None: a handler not installed from Python; SIG_DFL is the closest we can do.
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = self.stop_requested or signum
        # A second signal meets what was there before the run: normally KeyboardInterrupt
        # for Ctrl-C and the default death for SIGTERM, i.e. an abort without checkpoint.
        self._restore_handlers()

    # -- the end ------------------------------------------------------------------------
    def finish(self) -> Optional[dict]:
        """Test metrics, model/, metrics.json and plot.png (rank 0); returns the metrics."""
        test = self.evaluate("test") if self.evaluates() else None
        weights = full_state(self.clf.model)[0] if self.sharded else None
        if not self.is_main:
            if self.adv is not None:
                self.adv.remove()
            self.barrier()  # wait for rank 0's files
            return None
        steps = sum(h["steps"] for h in self.history)
        result = {
            "epochs": self.history,
            "final": {"validation": self.history[-1]["validation"], "test": test},
            "seconds_per_step": sum(h["train_seconds"] for h in self.history) / max(steps, 1),
            "train_examples": len(self.splits.train),
            "augmented_examples": len(self.extra),
            "validation_examples": len(self.splits.validation),
            "test_examples": len(self.splits.test),
        }
        if self.cfg.online_attack is not None:  # selected examples with no word to edit, counted
            result["online_attack"] = {
                "attack": self.cfg.online_attack, "fraction": self.cfg.online_fraction,
                **{k: sum(h["online_attack"][k] for h in self.history)
                   for k in ("edited_examples", "unedited_examples")}}
        with atomic_dir(os.path.join(self.run_dir, "model")) as staged:
            if weights is None:
                self.clf.save(staged)
            else:  # a sharded model's, gathered
                self.clf.save(staged, weights)
        write_json(os.path.join(self.run_dir, "metrics.json"), result)
        if self.adv is not None:
            self.adv.remove()  # the model leaves training without advnlp's hook
        # The final weights are in model/; the optimizer state is no longer needed.
        checkpoint = os.path.join(self.run_dir, CHECKPOINT)
        if os.path.exists(checkpoint):
            os.remove(checkpoint)
        shutil.rmtree(os.path.join(self.run_dir, CHECKPOINTS), ignore_errors=True)
        plot(self.run_dir, self.history, self.log, self.headline, self.bounded_headline)
        self.report(numeric("test", result["final"]["test"]), self.finished_steps())
        self.close_tracker()
        self.barrier()
        return result
