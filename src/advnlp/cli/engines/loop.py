"""``--engine loop`` (the default): advnlp's own training loop, the reference example.

The only adversarial line is the training step's ``adv.backward(closure)``
(:func:`advnlp.cli.tasks.classification.classify.train_step`); the optimizer, clipping at 1.0, the
schedule and fp16 loss scaling are the loop's, exactly as in a hand-written loop.

Checkpoints: ``checkpoint.pt`` at the end of every epoch and on Ctrl-C (written
atomically; loaded with ``weights_only=True``, so nothing is unpickled): weights,
optimizer, schedule, scaler, RNG states and the run's progress, FreeAT's delta
between two replays of a batch and ATTA's perturbation per example (each rank's), so a
resumed run goes on exactly where it stopped.

In one process a signal also stops a step between two of the method's passes (the
adversary's ``stop_check``): a PGD with many steps must not hold a SIGTERM for minutes.
The partial step is dropped (its gradients and random draws) and the checkpoint is
the last finished step's. Under torchrun the stop waits for the step's end: a rank
leaving mid-step would leave the others waiting in its all-reduce.
"""
from __future__ import annotations

import os
import random
import time
from typing import Tuple

import torch
import torch.distributed as dist

from advnlp import ATTA, FreeAT, StepAborted

from ..errors import InputError, Interrupted
from ..files import atomic_path
from ..progress import progress_bar
from ..run import Run
from ..rundir import CHECKPOINT


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
    schedule = run.epoch_schedule()
    bar = progress_bar(run.progress, run.log, total=len(schedule), initial=run.step,
                       desc=f"epoch {run.epoch + 1}/{run.cfg.epochs}")
    run.clf.model.train()
    if run.adv is not None and run.dist is None:
        run.adv.stop_check = lambda: bool(run.stop_requested)
    batch, encoded = None, None
    try:
        for span, replay in schedule[run.step:]:
            idx = [order[i] for i in span]
            online = run.cfg.online_attack is not None  # DiscreteAT encodes the texts itself
            if replay == 0 and isinstance(run.adv, FreeAT):
                run.adv.new_batch()  # FreeAT: delta starts at 0 on every new batch
            if not online and encoded != span:  # FreeAT's replays reuse the encoded batch
                batch, encoded = run.batch(idx), span
            start = time.perf_counter()
            loss = _finished_step(run, idx, batch)
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


def _finished_step(run: Run, idx, batch) -> torch.Tensor:
    """:func:`train_step`; a step a signal aborted between two passes is dropped, with its
    gradients and random draws, and the run stops at the last finished step's checkpoint."""
    before = _rng_state()
    try:
        return train_step(run, idx, batch)
    except StepAborted:
        run.optimizer.zero_grad(set_to_none=True)
        _set_rng_state(before)
        save_checkpoint(run)
        run.agree()  # sets stop_signal
        raise Interrupted(run.run_dir, run.stop_signal) from None


def train_step(run: Run, idx, batch) -> torch.Tensor:
    """One optimizer step on the training examples ``idx`` (``batch``: their encoding;
    None under --online-attack, whose DiscreteAT encodes the texts itself)."""
    run.online_step()
    loss = run.task_step(idx, batch)
    _optimizer_step(run)
    return loss


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


def _replay_state(run: Run):
    """FreeAT between two replays of a batch: delta and the replays it has had, one entry
    per rank (each rank's shard has its own delta; rank 0 writes them all). None for the
    other methods, whose state between steps is the model's and the optimizer's."""
    adv = run.adv
    if not isinstance(adv, FreeAT):
        return None
    mine = {"delta": None if adv.delta is None else [d.detach().cpu() for d in adv.delta],
            "calls": adv.calls_on_batch}
    return _per_rank(run, mine)


def _example_state(run: Run):
    """ATTA's stored perturbations, one entry per rank (each holds its own examples')."""
    return _per_rank(run, run.adv.state_dict()) if isinstance(run.adv, ATTA) else None


def _per_rank(run: Run, mine):
    """``[every rank's mine]`` on rank 0 (None elsewhere), ``[mine]`` in one process."""
    if run.dist is None:
        return [mine]
    every = [None] * run.world if run.is_main else None
    dist.gather_object(mine, every, dst=0)
    return every


def _load_replay_state(run: Run, states) -> None:
    if not isinstance(run.adv, FreeAT) or not states:
        return
    mine = states[run.rank]
    run.adv.delta = None if mine["delta"] is None else [d.to(run.device) for d in mine["delta"]]
    run.adv.calls_on_batch = mine["calls"]


def save_checkpoint(run: Run) -> None:
    replay = _replay_state(run)  # every rank takes part in the gathers
    examples = _example_state(run)
    weights, optim = run.model_state()  # a sharded model's gathered on rank 0
    if not run.is_main:  # rank 0 holds the same weights and optimizer state
        return
    state = {
        "model": weights,
        "optimizer": optim,
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        **run.progress_state(),
        "replay_state": replay,
        "example_state": examples,
        **_rng_state(),
    }
    path = os.path.join(run.run_dir, CHECKPOINT)
    with atomic_path(path) as tmp:  # a crash mid-write leaves the old one
        torch.save(state, tmp)


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
    run.load_model_state(state["model"], state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.load_progress_state(state)
    _load_replay_state(run, state.get("replay_state"))
    if isinstance(run.adv, ATTA):  # a checkpoint without it: every example starts at zero
        run.adv.load_state_dict((state.get("example_state") or [{"store": {}}])[run.rank])
    _set_rng_state(state)


def _rng_state() -> dict:
    return {"rng_torch": torch.get_rng_state(), "rng_python": random.getstate(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["rng_torch"].cpu())
    random.setstate(state["rng_python"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
