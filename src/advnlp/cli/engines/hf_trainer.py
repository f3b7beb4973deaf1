"""``advnlp train --engine trainer``: the same run, stepped by Hugging Face's Trainer.

Everything but the loop is the run's (:class:`advnlp.cli.run.Run`): data and splits,
model, AdamW with its linear warm-up and decay, gradient clipping at 1.0, the
batch order (a shuffle that depends on (seed, epoch) alone), validation after
every epoch, and the run directory with its files. The loop is
:class:`advnlp.integrations.transformers.AdversarialTrainer`, the class Trainer
users call, so the CLI exercises the same adversarial step, and the Trainer's
device placement and DDP (under torchrun) apply. On a model without dropout both
engines reach the same weights (tested); dropout and random starts (FreeLB,
VAT, SMART) draw different noise, since the Trainer seeds the generator itself.

Checkpoints are the Trainer's own (``checkpoints/checkpoint-<step>/``: weights,
optimizer, scheduler, RNG states, ``trainer_state.json``) plus
``advnlp_state.json`` with the run's history. Each is written into a staging
folder and renamed into place, so a crash mid-write leaves the previous one
intact. They are written at the end of each epoch but the last and on Ctrl-C;
``advnlp train --resume RUN_DIR`` continues from the newest. A Ctrl-C during the
last epoch's last step or validation lets the run finish instead. Under torchrun
every rank decides on the same all-reduced Ctrl-C flag, once per step.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import time
from typing import List, Optional, Tuple

import torch

# ``TrainConfig.resolved`` has checked that these import (a one-line error otherwise).
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from advnlp.integrations.transformers import AdversarialTrainer

from ..errors import InputError, Interrupted
from ..models import check_safetensors
from ..progress import progress_bar
from ..run import Run
from ..rundir import CHECKPOINTS

STATE_FILE = "advnlp_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
# What every checkpoint of this engine holds besides the weights and the RNG states.
_REQUIRED = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def latest_checkpoint(run_dir: str) -> Optional[str]:
    """The newest complete checkpoint folder of a ``--engine trainer`` run, or None."""
    root = os.path.join(run_dir, CHECKPOINTS)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return None
    steps = [int(m.group(1)) for m in map(_NAME.match, names)
             if m and os.path.isfile(os.path.join(root, m.group(0), STATE_FILE))]
    return os.path.join(root, f"checkpoint-{max(steps)}") if steps else None


def has_checkpoint(run_dir: str) -> Tuple[bool, str]:
    return latest_checkpoint(run_dir) is not None, f"{CHECKPOINTS}/checkpoint-*"


def resume(run: Run) -> None:
    """The run's own progress (epoch, history) from its newest checkpoint; the Trainer
    itself reloads weights, optimizer, schedule and RNG states in :func:`fit`."""
    path = latest_checkpoint(run.run_dir)
    # The Trainer silently starts afresh without an optimizer or scheduler file, and
    # fails with a traceback on a missing or broken trainer_state.json: check them first.
    missing = [n for n in _REQUIRED if not os.path.isfile(os.path.join(path, n))]
    if missing:
        raise InputError(f"{path}: incomplete checkpoint (no {missing[0]}); train again "
                         "with --overwrite")
    for name in os.listdir(path):  # header only: before anything runs or is logged
        if name.endswith(".safetensors"):
            check_safetensors(os.path.join(path, name))
    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
            json.load(f)
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
            run.load_progress_state(json.load(f))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: unreadable checkpoint ({e})") from None
    run.resumed_from = path


@contextlib.contextmanager
def _loading(checkpoint: str, what: str):
    try:
        yield
    except Exception as e:  # SafetensorError, torch's unpickling and size errors, OSError...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{checkpoint}: cannot load its {what} ({first}); resume from an "
                         "intact checkpoint or train again with --overwrite") from None


class _Examples(torch.utils.data.Dataset):
    """Item i is training example i; the collator tokenizes a batch at once."""

    def __init__(self, run: Run):
        self.run = run

    def __len__(self) -> int:
        return len(self.run.train_set)

    def __getitem__(self, i: int) -> int:
        return i


class _RankOrder(torch.utils.data.Sampler):
    """This rank's share of the default engine's shuffle for the run's current epoch
    (all of it in one process). It reads the epoch from the run, which the callback
    advances, so the order is right on resume too."""

    def __init__(self, run: Run):
        self.run = run

    def __len__(self) -> int:
        return self.run.shard_size()

    def __iter__(self):
        return iter(self.run.rank_order())


class _Collate:
    def __init__(self, run: Run):
        self.run = run

    def __call__(self, idx: List[int]) -> dict:
        return self.run.labelled_batch(idx)


class RunSteps:
    """A Trainer (AdversarialTrainer; TRL's in ``--engine trl``) fed the run's batches,
    keeping each step's loss for the run, and writing checkpoints atomically with the run's
    state beside the Trainer's."""

    def __init__(self, run: Run, **kwargs):
        self.run = run
        self._staging: Optional[str] = None
        super().__init__(**kwargs)
        # A sequence classifier's loss is the batch mean whatever num_items_in_batch says, but
        # transformers' Trainer sees forward(**kwargs) and treats it as a sum over items: it
        # would skip the division by accumulation steps and, under DDP, multiply the loss by
        # the world size (measured: twice the loss and other weights with 2 ranks).
        self.model_accepts_loss_kwargs = False

    # --resume: the Trainer reads the checkpoint's files itself, deep inside train(); a
    # corrupt one must be a one-line error naming it. These methods only load files.
    def _load_from_checkpoint(self, checkpoint, *args, **kwargs):
        with _loading(checkpoint, "model.safetensors (the weights)"):
            return super()._load_from_checkpoint(checkpoint, *args, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint, *args, **kwargs):
        with _loading(checkpoint, "optimizer.pt or scheduler.pt"):
            return super()._load_optimizer_and_scheduler(checkpoint, *args, **kwargs)

    def _load_rng_state(self, checkpoint, *args, **kwargs):
        with _loading(checkpoint, "rng_state*.pth"):
            return super()._load_rng_state(checkpoint, *args, **kwargs)

    def get_train_dataloader(self):
        # Each rank gets the default engine's batches of its shard, so both engines see the
        # same global batches. (Left to accelerate, the sharding would top a short last
        # global batch up with examples from the start of the epoch.)
        run = self.run
        return torch.utils.data.DataLoader(
            _Examples(run), batch_size=run.cfg.batch_size, sampler=_RankOrder(run),
            collate_fn=_Collate(run), pin_memory=self.args.dataloader_pin_memory)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.run_loss = loss.detach().float()  # reduced over the ranks in on_step_end
        return loss

    def _get_output_dir(self, trial):
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial, *args, **kwargs) -> None:
        final = self.args.output_dir
        name = f"checkpoint-{self.state.global_step}"
        self._staging = os.path.join(final, ".staging")
        if self.args.should_save:  # what a crash mid-write left there (a link: itself only)
            if os.path.islink(self._staging):
                os.remove(self._staging)
            shutil.rmtree(self._staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        try:
            super()._save_checkpoint(model, trial, *args, **kwargs)
        finally:
            self._staging = None
        staged = os.path.join(final, ".staging", name)
        if self.args.should_save:
            with open(os.path.join(staged, STATE_FILE), "w", encoding="utf-8") as f:
                json.dump(self.run.progress_state(), f)
        self.accelerator.wait_for_everyone()  # every rank wrote its RNG state
        if self.args.should_save:
            older = [n for n in os.listdir(final) if _NAME.match(n)]
            # Each step is saved at most once (the callback sees to it), so the name is new.
            os.replace(staged, os.path.join(final, name))
            shutil.rmtree(os.path.join(final, ".staging"), ignore_errors=True)
            for n in older:
                shutil.rmtree(os.path.join(final, n), ignore_errors=True)
        self.accelerator.wait_for_everyone()


class _RunTrainer(RunSteps, AdversarialTrainer):
    pass


class _RunCallback(TrainerCallback):
    """Step timing, progress bar, Ctrl-C, and the run's epoch bookkeeping."""

    def __init__(self, run: Run, trainer: RunSteps):
        self.run, self.trainer = run, trainer
        self.bar = None
        self.started = 0.0
        self.stopping = False  # Ctrl-C, agreed by every rank

    def on_epoch_begin(self, args, state, control, **kwargs):
        run = self.run
        self.bar = progress_bar(run.progress, run.log, total=run.steps_per_epoch(), initial=run.step,
                                 desc=f"epoch {run.epoch + 1}/{run.cfg.epochs}")

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        run = self.run
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        loss, self.stopping = run.end_step(self.trainer.run_loss, time.perf_counter() - self.started)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")
        if self.stopping:
            control.should_training_stop = True
            # At an epoch's last step the epoch closes first (on_epoch_end) and saves then.
            control.should_save = run.step < run.steps_per_epoch()
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        run = self.run
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if run.step < run.steps_per_epoch():  # stopped by Ctrl-C mid-epoch
            return control
        run.close_epoch()
        run.next_epoch()
        self.stopping = run.agree()[1]  # Ctrl-C during validation too
        # After the last epoch nothing is saved: the run finishes (model/, metrics.json)
        # even if Ctrl-C came during its last step or validation.
        control.should_save = run.epoch < run.cfg.epochs
        if self.stopping:
            control.should_training_stop = True
        return control


def fit(run: Run) -> None:
    """Train ``run`` to its last epoch with the HF Trainer;
    raises ``Interrupted`` after saving a checkpoint on Ctrl-C before the last epoch ended."""
    fit_with(run, _RunTrainer, TrainingArguments)


def fit_with(run: Run, trainer_class, args_class, args_extra: Optional[dict] = None,
             examples=None, **trainer_extra) -> None:
    """:func:`fit` with another Trainer (a :class:`RunSteps`), its arguments' class, and
    ``examples``, the dataset the Trainer is given (default: the run's example indices; the
    batches always come from the run, through :meth:`RunSteps.get_train_dataloader`)."""
    if run.epoch >= run.cfg.epochs:
        return
    cpu = run.device.type == "cpu"
    args = args_class(
        output_dir=os.path.join(run.run_dir, CHECKPOINTS),
        per_device_train_batch_size=run.cfg.batch_size,
        num_train_epochs=run.cfg.epochs,
        max_grad_norm=1.0,
        bf16=run.cfg.precision == "bf16", fp16=run.cfg.precision == "fp16",
        seed=run.cfg.seed,
        use_cpu=cpu,
        # The run's callback decides when to save and evaluate; nothing is reported out.
        save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none",
        disable_tqdm=True, remove_unused_columns=False, dataloader_pin_memory=not cpu,
        ddp_find_unused_parameters=False, **(args_extra or {}),
    )
    hf = trainer_class(run, model=run.clf.model, args=args,
                       train_dataset=_Examples(run) if examples is None else examples,
                       data_collator=_Collate(run), optimizers=(run.optimizer, run.scheduler),
                       adversary=run.adv, adversary_mask=run.adversary_mask(), **trainer_extra)
    if hf.args.n_gpu > 1:  # check_environment refuses this first; DataParallel otherwise
        raise InputError(f"{hf.args.n_gpu} GPUs in one process: launch with torchrun")
    callback = _RunCallback(run, hf)
    hf.add_callback(callback)
    hf.remove_callback(PrinterCallback)  # it prints the Trainer's dicts to stdout
    hf.remove_callback(ProgressCallback)  # the run's own bar, as with --engine loop
    if run.rank > 0:  # the Trainer seeded every rank alike: own dropout noise per rank
        run.reseed_rank()
    hf.train(resume_from_checkpoint=run.resumed_from)
    if callback.stopping and run.epoch < run.cfg.epochs:
        raise Interrupted(run.run_dir, run.stop_signal)
    if callback.stopping:
        by = "SIGTERM" if run.stop_signal == signal.SIGTERM else "Ctrl-C"
        run.log(f"{by} during the last epoch's last step or validation: finishing the run")
