"""A token-classification run (``--task token-classification``): a :class:`Run` whose data
are tagged sentences, whose model is a :class:`~advnlp.cli.tasks.tagging.tag.Tagger`, and whose
metrics are seqeval's entity scores.

Everything else is the classification run's: the loop, the schedule, checkpoints and
--resume, Ctrl-C, fp16/bf16, every method through ``adv.backward(closure)``. The closure
returns the model's own output (``.loss`` over the labelled sub-tokens, ``.logits`` per
token), so SMART and VAT compare per-token outputs; advnlp masks padding and special tokens
through the attention mask (the perturbation covers real tokens only).

Splits: ``--validation`` / ``--test`` files, or else 10% of the training sentences each,
split off with the run's seed. The tag set is the training file's; a validation or test
file with another tag is refused (file and line). Predictions of the test split are written
to ``predictions-test.jsonl`` (tokens, gold tags, predicted tags) beside ``metrics.json``.
"""
from __future__ import annotations

import os
import random
from types import SimpleNamespace
from typing import Dict, List, Optional

import torch

from advnlp import backward_step

from ...config import TrainConfig, build_adversary
from ...data import held_out
from ...distributed import seed_everything
from ...errors import InputError
from ...files import write_json, write_jsonl
from ...run import Run
from ..classification.classify import example_ids
from . import tag as TG
from .tag_data import Tagged, check_known_tags, read_tagged
from .tag_online import build_tag_online, sentence_text, split_batch


class TagLabels:
    """The tag names (labels.json of a tagger)."""

    def __init__(self, names: List[str], scheme: str):
        self.names, self.scheme = names, scheme

    def to_json(self) -> dict:
        return {"task": "token-classification", "names": self.names, "scheme": self.scheme}


def tag_splits(spec, seed: int, log) -> tuple:
    """(train, validation, test) sentence lists and the training file's :class:`Tagged`."""
    train = read_tagged(spec.train)
    notes = []
    if train.invalid_continuations:
        notes.append(f"{train.invalid_continuations} I- tag(s) that continue no entity of their "
                     "type (e.g. O I-PER): kept; seqeval's default mode reads them as a "
                     "beginning, its strict mode drops them")
    if train.bmes:
        notes.append("BMES tags: M- read as I- (BIOES)")
    if train.skipped_empty:
        notes.append(f"{train.skipped_empty} empty sentence(s) skipped")
    for n in notes:
        log(f"note: {spec.train}: {n}")
    sentences = list(train.sentences)
    splits = {}
    for name, path in (("test", spec.test), ("validation", spec.validation)):
        if path is not None:
            other = read_tagged(path)
            check_known_tags(train, other, name)
            splits[name] = list(other.sentences)
        else:
            sentences, splits[name] = held_out(sentences, 0.1, seed + (name == "test"), name,
                                               "sentence")
    if spec.max_train_samples is not None and spec.max_train_samples < len(sentences):
        order = list(range(len(sentences)))
        random.Random(seed).shuffle(order)
        sentences = [sentences[i] for i in sorted(order[: spec.max_train_samples])]
    return sentences, splits["validation"], splits["test"], train


class TagRun(Run):
    headline = "entity_f1"

    def _setup_task(self, cfg, log) -> None:
        train, validation, test, tagged = tag_splits(cfg.data, cfg.seed, log)
        tags = tagged.tags
        names = ["O"] + [t for t in tags if t != "O"]
        self.labels = TagLabels(names, tagged.scheme())
        self.splits = SimpleNamespace(train=train, validation=validation, test=test)
        index = {n: i for i, n in enumerate(names)}
        self.targets = {split: [[index[t] for t in tags] for _, tags in getattr(self.splits, split)]
                        for split in ("train", "validation", "test")}
        seed_everything(cfg.seed)  # before the random initialisation of the model (head)
        self.clf = TG.build_tagger(cfg.model, names, [s for s, _ in train], cfg.max_length,
                                   crf=cfg.crf, all_subtokens=cfg.label_all_subtokens)
        cfg.max_length = self.clf.max_length
        cut = self.clf.truncated([s for s, _ in train])
        if cut:
            log(f"warning: {cut} of {len(train)} training sentences are longer than --max-length "
                f"{cfg.max_length} tokens: their last words are not trained on (and are "
                "predicted O when scored); raise --max-length")
        self.criterion = None
        self._predictions: Dict[str, List[List[str]]] = {}

    def labelled_batch(self, idx: List[int]) -> dict:
        """The sentences ``idx`` encoded, with their tags aligned to the sub-tokens."""
        train = self.train_set
        enc, word_ids = self.clf.encode([train[i][0] for i in idx])
        enc["labels"] = self.clf.labels(word_ids, [self.targets["train"][i] for i in idx])
        return enc

    def batch(self, idx: List[int]) -> dict:
        return {k: v.to(self.device) for k, v in self.labelled_batch(idx).items()}

    def build_adversary(self, online_seed: int, cfg: Optional[TrainConfig] = None):
        """--online-attack char: DiscreteAT over the sentences' words (tag_online)."""
        cfg = self.cfg if cfg is None else cfg
        if cfg.online_attack is not None:
            spaced = next((t for s, _ in self.splits.train for t in s if " " in t), None)
            if spaced is not None:  # the edited text is split back into words at its spaces
                raise InputError(f"--online-attack char edits a sentence as its words joined by "
                                 f"spaces, but the training data has a word with a space "
                                 f"({spaced!r}): split such words, or train without it")
        return build_tag_online(cfg, self.train_clf, build_adversary(cfg, self.train_clf.model),
                                online_seed, lambda: self.autocast())  # set after it is built

    def task_step(self, idx: List[int], batch: Optional[dict]) -> torch.Tensor:
        model, adv = self.train_clf.model, self.adv
        if batch is None:  # --online-attack: DiscreteAT encodes the (edited) sentences
            def closure(encoded, tags):
                inputs, labels = split_batch(self.train_clf, encoded, tags)
                with self.autocast():
                    return model(**inputs, labels=labels).loss.float()

            train = self.train_set
            return adv.backward(closure, [sentence_text(train[i][0]) for i in idx],
                                [self.targets["train"][i] for i in idx], self.backward_fn)

        def output():
            with self.autocast():
                return model(**batch)

        # SMART, VAT get the output itself: its .loss and its per-token .logits
        return backward_step(adv, lambda: output().loss.float(), output, self.backward_fn,
                             **example_ids(adv, idx))

    def evaluate(self, split: str) -> dict:
        sentences = getattr(self.splits, split)
        pred = self.clf.predict([s for s, _ in sentences], self.cfg.batch_size * 2, self.device)
        self._predictions[split] = pred
        return TG.tag_metrics([t for _, t in sentences], pred, self.labels.scheme)

    def finish(self) -> Optional[dict]:
        result = super().finish()
        if result is not None:
            path = os.path.join(self.run_dir, "predictions-test.jsonl")
            write_jsonl(path, ({"tokens": tokens, "tags": gold, "predicted": pred}
                               for (tokens, gold), pred in zip(self.splits.test,
                                                               self._predictions["test"])))
            write_json(os.path.join(self.run_dir, "metrics.json"), {**result, "task": "token-classification"})
        return result


__all__ = ["TagRun", "TagLabels", "tag_splits", "Tagged"]
