"""``advnlp train --task causal-lm --engine trl``: the run stepped by TRL's ``SFTTrainer``.

The engine of ``--engine trainer`` (:mod:`.hf_trainer`: the run's batches, optimizer,
schedule, checkpoints, Ctrl-C and resume) with :class:`advnlp.integrations.trl.AdversarialSFTTrainer`
as the Trainer, the class TRL users call: ``SFTTrainer``'s own ``compute_loss`` is the
closure. The run has tokenized the data and built the labels (-100 on the prompt) itself, so
``SFTTrainer``'s dataset preparation is skipped and its collator is the run's: both engines
train on the same batches, and on a model without dropout reach the same weights (tested).
"""
from __future__ import annotations

import warnings

import datasets
from trl import SFTConfig

from advnlp.integrations.trl import AdversarialSFTTrainer

from ..run import Run
from .hf_trainer import RunSteps, fit_with, has_checkpoint, resume


class _RunSFTTrainer(RunSteps, AdversarialSFTTrainer):
    pass


def fit(run: Run) -> None:
    """Train ``run`` to its last epoch with SFTTrainer."""
    # SFTTrainer takes a datasets.Dataset only: the training examples' indices, which is
    # what the run's data loader serves too (the Trainer reads its length, not its rows).
    indices = datasets.Dataset.from_dict({"index": list(range(len(run.train_set)))})
    with warnings.catch_warnings():  # SFTConfig sets a field transformers has renamed
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing. is deprecated",
                                category=FutureWarning)
        fit_with(run, _RunSFTTrainer, SFTConfig,
                 {"dataset_kwargs": {"skip_prepare_dataset": True}, "max_length": None,
                  "packing": False}, examples=indices, processing_class=run.clf.tokenizer)


__all__ = ["fit", "has_checkpoint", "resume"]
