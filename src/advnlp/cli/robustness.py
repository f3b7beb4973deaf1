"""Robustness of a CLI classifier through :mod:`advnlp.attacks`.

The embedding attack is :func:`advnlp.attacks.embedding_attack`: the training
methods' own hook and norm/projection helpers, so it perturbs the space they
defend (the input-embedding output, one ball per example, padding untouched).
``advnlp eval``, ``compare``'s robust-accuracy columns and ``advnlp attack
--attack embedding`` all use it. :func:`discrete_attack` runs the character- and
word-level attacks (``advnlp attack``, ``compare --attack``, ``--augment-with-attack``).
"""
from __future__ import annotations

from typing import Sequence

import torch

from advnlp.attacks import advnlp_classifier, char_attack, embedding_attack, word_attack

from .data import batches
from .errors import InputError
from .models import Classifier


def embedding_robustness(clf: Classifier, texts: Sequence[tuple], targets: torch.Tensor,
                         multi_label: bool, epsilons: Sequence[float], steps: int,
                         batch_size: int, device, *, norm: str = "l2",
                         random_start: bool = False, seed: int = 0) -> dict:
    """:func:`advnlp.attacks.embedding_attack` on a CLI classifier: the training methods' own
    hook and norm arithmetic (one ball per example, padding untouched), PGD with step
    ``2.5 * epsilon / steps`` (FGSM when ``steps == 1``). Multi-label: an example is
    correct only on an exact match of the label set, so the attack wins when any label flips.

    Returns the attack's dict (``clean_accuracy``, ``curve``, ``robust_accuracy`` per ε, ...).
    """
    def pairs():
        for idx in batches(len(texts), batch_size):
            enc = {k: v.to(device) for k, v in clf.encode([texts[i] for i in idx]).items()}
            yield enc, targets[idx.start:idx.stop].to(device)

    try:
        return embedding_attack(clf.model, clf, pairs(), list(epsilons), norm=norm, steps=steps,
                                random_start=random_start, multi_label=multi_label, seed=seed)
    except ValueError as e:
        raise InputError(str(e)) from None


# "word-swap" is the word attack with substitutions only (no deletion, no duplication): the
# edits a substitution defence is built against, scored apart from the deletions it cannot undo.
DISCRETE_ATTACKS = ("char", "word", "word-swap")
ATTACKS = (*DISCRETE_ATTACKS, "embedding")


def discrete_attack(attack: str, clf: Classifier, labels, texts: Sequence[str], targets,
                    device, *, max_change: float = 0.15, query_budget: int = 500,
                    threshold: float = 0.6, seed: int = 0, batch_size: int = 32):
    """The character- or word-level attack of :mod:`advnlp.attacks` on a CLI classifier
    (``attack``: one of :data:`DISCRETE_ATTACKS`).

    Each text is first cut to the part the model reads (``--max-length`` tokens), so the
    query budget is not spent on words the model never sees; the CSV shows that part."""
    classifier = advnlp_classifier(clf, multi_label=labels.multi_label, batch_size=batch_size,
                                   device=device, neighbours=attack != "char")
    texts = [clf.visible_prefix(t) for t in texts]
    try:
        if attack == "char":
            return char_attack(classifier, texts, targets, max_change=max_change,
                               query_budget=query_budget, seed=seed)
        edits = ("substitute",) if attack == "word-swap" else None
        result = word_attack(classifier, texts, targets, transformations=edits,
                             max_change=max_change, query_budget=query_budget,
                             threshold=threshold, seed=seed)
        result.attack = attack  # what the files and reports are named after
        return result
    except ValueError as e:
        raise InputError(f"--attack {attack}: {e}") from None
