"""Robustness evaluation: attacks on a trained text classifier, from Python.

Three attacks, one report format:

* :func:`embedding_attack` - FGSM/PGD (L2 or L∞, several ε, optional random
  start) on the input-embedding output, with the training methods' own hook
  and norm arithmetic. Needs the ``nn.Module`` and ``model_fn(inputs) -> logits``
  over ``(inputs, labels)`` batches. Returns a dict with robust accuracy per ε.
  :func:`perturbed_outputs` is the same attack on any loss, returning the model's
  outputs per ε for tasks that score them otherwise (a tagger's entity F1).
* :func:`char_attack` - one typo per word (swap / delete / insert / QWERTY
  substitute; CJK characters: delete / duplicate / swap).
* :func:`random_typos` - a typo'd copy of some texts (the same edits at random,
  no model queried): natural noise to evaluate on, not an attack.
* :func:`word_attack` - word deletion, duplication and substitution by nearest
  neighbours in the model's own input-embedding space (no downloads).

The two discrete attacks share a greedy, leave-one-out-importance-guided,
batched, query-budgeted, seeded search (:mod:`advnlp.attacks.search`) and
return an :class:`AttackResult`: ``summary()`` (clean accuracy, accuracy under
attack, success rate over originally-correct examples, average fraction of
words changed, average queries, seconds per example), ``records`` and
``to_csv()`` (original, perturbed, label, prediction, ...). They query a
:class:`TextClassifier`: ``predict_proba(list[str]) -> tensor [n, classes]``
plus ``multi_label`` and optional embedding ``neighbours``. Adapters:
:func:`hf_classifier` (model + tokenizer), :func:`advnlp_classifier`
(advnlp's ``models.Classifier``, e.g. from ``train.load_run``).

    from advnlp.attacks import advnlp_classifier, char_attack
    res = char_attack(advnlp_classifier(clf), texts, labels, max_change=0.15, seed=0)
    print(res.summary()); res.to_csv("adversarial-char.csv", label_names)
"""
from ._text import KEYBOARD, STOPWORDS
from .char import (
                   CJK_TRANSFORMATIONS,
                   LATIN_TRANSFORMATIONS,
                   char_attack,
                   editable_token,
                   random_typos,
                   token_kind,
                   word_typos,
)
from .classifier import (
                   EmbeddingNeighbours,
                   TextClassifier,
                   advnlp_classifier,
                   as_classifier,
                   hf_classifier,
)
from .embedding import embedding_attack, perturbed_outputs
from .search import AttackRecord, AttackResult, greedy_attack
from .word import WORD_TRANSFORMATIONS, word_attack

__all__ = [
    "AttackRecord", "AttackResult", "CJK_TRANSFORMATIONS", "EmbeddingNeighbours", "KEYBOARD",
    "LATIN_TRANSFORMATIONS", "STOPWORDS", "TextClassifier", "WORD_TRANSFORMATIONS",
    "advnlp_classifier", "as_classifier", "char_attack", "editable_token", "embedding_attack",
    "greedy_attack", "token_kind",
    "hf_classifier", "perturbed_outputs", "random_typos", "word_attack", "word_typos",
]
