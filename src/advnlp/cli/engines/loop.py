"""``--engine loop`` (the default): advnlp's own training loop, the reference example.

The only adversarial line is the training step's ``adv.backward(closure)``
(:func:`advnlp.cli.tasks.classify.train_step`); the optimizer, clipping at 1.0, the
schedule and fp16 loss scaling are the loop's, exactly as in a hand-written loop.

Checkpoints: ``checkpoint.pt`` at the end of every epoch and on Ctrl-C (written
atomically; loaded with ``weights_only=True``, so nothing is unpickled): weights,
optimizer, schedule, scaler, RNG states and the run's progress.
"""
from __future__ import annotations

import os
import random
import time
from typing import Tuple

import torch

from ..errors import InputError, Interrupted
from ..progress import progress_bar
from ..run import Run
from ..rundir import CHECKPOINT
from ..tasks import classify
from ..tasks.classify import batches


def fit(run: Run) -> None:
    while run.epoch < run.cfg.epochs:
        _run_epoch(run)
        entry = run.close_epoch()
        cfg = run.cfg
        if (cfg.augment_with_attack and run.epoch + 1 < cfg.epochs
                and (run.epoch + 1) % cfg.augment_every == 0):
            entry["augmentation"] = run.augment()
        run.next_epoch()
        save_checkpoint(run)
        if run.agree()[1]:  # Ctrl-C during validation
            raise Interrupted(run.run_dir, run.stop_signal)


def _run_epoch(run: Run) -> None:
    order = run.rank_order()
    spans = batches(len(order), run.cfg.batch_size)
    bar = progress_bar(run.progress, run.log, total=len(spans), initial=run.step,
                       desc=f"epoch {run.epoch + 1}/{run.cfg.epochs}")
    run.clf.model.train()
    try:
        for span in spans[run.step:]:
            idx = [order[i] for i in span]
            online = run.cfg.online_attack is not None  # DiscreteAT encodes the texts itself
            batch = None if online else run.batch(idx)
            y = run.targets["train"][idx].to(run.device)
            start = time.perf_counter()
            run.online_step()
            extra = {"texts": run.texts(idx)} if online else {}
            loss = classify.train_step(run.train_clf, run.adv, run.criterion, batch, y,
                                       run.autocast, run.backward_fn, **extra)
            _optimizer_step(run)
            if run.device.type == "cuda":
                torch.cuda.synchronize()
            loss, stop = run.end_step(loss, time.perf_counter() - start)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if stop:
                save_checkpoint(run)
                raise Interrupted(run.run_dir, run.stop_signal)
    finally:
        bar.close()


def _optimizer_step(run: Run) -> None:
    params = run.clf.model.parameters()
    if run.scaler is None:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        run.optimizer.step()
        run.scheduler.step()
    else:  # fp16: clip the true gradients; an overflowing step is skipped
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scale = run.scaler.get_scale()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.scaler.get_scale() >= scale:  # not skipped: the schedule moves on
            run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)


# -- checkpoints ----------------------------------------------------------------------
def has_checkpoint(run_dir: str) -> Tuple[bool, str]:
    return os.path.exists(os.path.join(run_dir, CHECKPOINT)), CHECKPOINT


def save_checkpoint(run: Run) -> None:
    if not run.is_main:  # rank 0 holds the same weights and optimizer state
        return
    state = {
        "model": run.clf.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        **run.progress_state(),
        "rng_torch": torch.get_rng_state(), "rng_python": random.getstate(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    path = os.path.join(run.run_dir, CHECKPOINT)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)  # a crash mid-write leaves the old one


def resume(run: Run) -> None:
    path = os.path.join(run.run_dir, CHECKPOINT)
    try:
        state = torch.load(path, map_location=run.device, weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{run.run_dir}: no {CHECKPOINT} to resume from") from None
    except Exception as e:  # a corrupt file must not become a traceback
        raise InputError(f"{path}: unreadable checkpoint ({e})") from None
    try:
        _load_state(run, state)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        # Loads without error but is something else: another model's, or not ours at all.
        what = f"no {e}" if isinstance(e, KeyError) else str(e).strip().splitlines()[0]
        raise InputError(f"{path}: not a checkpoint of this run ({what}); train again "
                         "with --overwrite") from None
    if run.rank > 0:
        # The checkpoint holds rank 0's random state; the others draw fresh dropout noise.
        run.reseed_rank(resumed=True)


def _load_state(run: Run, state: dict) -> None:
    run.clf.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.load_progress_state(state)
    torch.set_rng_state(state["rng_torch"].cpu())
    random.setstate(state["rng_python"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
