"""A classification run: a :class:`~advnlp.cli.run.Run` whose examples are texts (one
column, or a pair) with a label or a label set, whose model is a
:class:`~advnlp.cli.models.Classifier` (a Hugging Face sequence classifier, TextCNN or
BiLSTM), and whose metrics are accuracy and F1.

What only this task does lives here too: ``--typo-defence`` (the normalizer before the
tokenizer), ``--augment-with-attack`` (successful adversarial texts added between epochs)
and ``--online-attack`` (DiscreteAT, which edits the texts of each step itself).
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional

import torch

from ...data import Example, Labels, Splits, load_splits
from ...distributed import derive_seed, seed_everything
from ...models import build, build_defence, check_tokenizer
from ...robustness import discrete_attack
from ...run import Run
from . import classify
from .classify import loss_fn, metrics, predict


class ClassifyRun(Run):
    headline = "accuracy"

    def _setup_task(self, cfg, log) -> None:
        """Data, labels, targets, the model (``clf``, not yet on the device) and the loss."""
        self.splits: Splits = load_splits(cfg.data, cfg.seed)
        multi = cfg.data.multi_label
        self.labels = Labels.from_examples(self.splits.train, multi)
        self.targets = {
            name: self.labels.encode([lab for _, lab in getattr(self.splits, name)], f"{name} data")
            for name in ("train", "validation", "test")
        }
        seed_everything(cfg.seed)  # before the random initialisation of the model (head)
        self.clf = build(cfg.model, len(self.labels.names),
                         [t for t, _ in self.splits.train], cfg.max_length)
        cfg.max_length = self.clf.max_length  # the default resolved: config.json records it
        check_tokenizer(self.clf, [t for t, _ in self.splits.train], log)
        if cfg.typo_defence:  # rebuilt alike on --resume: the data files are unchanged
            self.clf.normalizer = build_defence(self.clf, [t for t, _ in self.splits.train],
                                                synonyms=cfg.synonym_defence)
        if self.clf.is_hf:  # so the saved model works as-is in a transformers pipeline
            config = self.clf.model.config
            config.id2label = dict(enumerate(self.labels.names))
            config.label2id = {n: i for i, n in config.id2label.items()}
            config.problem_type = ("multi_label_classification" if multi
                                   else "single_label_classification")
        self.criterion = loss_fn(multi)

    def task_step(self, idx: List[int], batch: Optional[dict]) -> torch.Tensor:
        """One step's gradients on the training examples ``idx`` (``batch``: their encoding,
        None under --online-attack); the loss."""
        y = self.targets["train"][idx].to(self.device)
        extra = ({"texts": self.texts(idx)} if batch is None
                 else classify.example_ids(self.adv, idx))
        return classify.train_step(self.train_clf, self.adv, self.criterion, batch, y,
                                   self.autocast, self.backward_fn, **extra)

    def batch(self, idx: List[int]) -> dict:
        """The encoded training examples ``idx``, on the run's device."""
        train = self.train_set  # a property that joins two lists: once per batch, not per example
        enc = self.clf.encode([train[i][0] for i in idx])
        return {k: v.to(self.device) for k, v in enc.items()}

    def labelled_batch(self, idx: List[int]) -> dict:
        """The training examples ``idx`` encoded with their ``labels``, on the CPU: what
        ``--engine trainer``'s collator gives the model, whose own loss is the closure."""
        train = self.train_set
        batch = dict(self.clf.encode([train[i][0] for i in idx]))
        batch["labels"] = self.targets["train"][idx]  # float multi-hot for multi-label
        return batch

    def texts(self, idx: List[int]) -> List[tuple]:
        """The training texts ``idx`` (what ``--online-attack`` edits)."""
        train = self.train_set
        return [train[i][0] for i in idx]

    def evaluate(self, split: str) -> Dict[str, float]:
        texts = [t for t, _ in getattr(self.splits, split)]
        logits = predict(self.clf, texts, self.cfg.batch_size * 2, self.device)
        return metrics(logits, self.targets[split], self.cfg.data.multi_label)

    # -- --augment-with-attack, which grows the training set --------------------------------
    def set_extra(self, extra: List[Example]) -> None:
        self.extra = list(extra)
        self.targets["train"] = self.labels.encode([lab for _, lab in self.train_set], "train data")

    def _augment_here(self) -> dict:
        """Attack a seeded sample of the original training set with the current model; keep
        the successful adversarial texts, with their original labels."""
        train = self.splits.train
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "augment-sample", self.epoch))
        pick = sorted(torch.randperm(len(train), generator=g)[: self.cfg.augment_samples].tolist())
        start = time.perf_counter()
        res = discrete_attack(self.cfg.augment_with_attack, self.clf, self.labels,
                              [train[i][0][0] for i in pick], self.targets["train"][pick],
                              self.device, seed=derive_seed(self.cfg.seed, "augment-attack", self.epoch),
                              batch_size=self.cfg.batch_size * 2)
        new = [((r.perturbed,), train[i][1]) for i, r in zip(pick, res.records)
               if r.status == "success"]
        self.set_extra(self.extra + new)
        info = {"attack": self.cfg.augment_with_attack, "attacked": len(pick), "added": len(new),
                "success_rate": res.summary()["success_rate"],
                "train_examples": len(self.train_set), "seconds": time.perf_counter() - start}
        self.log(f"  augmentation: {info['added']} adversarial examples added "
                 f"({info['attacked']} attacked), {info['train_examples']} training examples now")
        return info


__all__ = ["ClassifyRun"]
