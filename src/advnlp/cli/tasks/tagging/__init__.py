"""Token classification (``--task token-classification``): a tag per word (NER).

:mod:`.tag_data` reads CoNLL / JSONL, :mod:`.tag` is the model (a Hugging Face token
classifier or a BiLSTM with an optional CRF), :mod:`.tag_run` the run, :mod:`.tag_attacks`
the attacks and :mod:`.tag_commands` its ``eval``, ``attack`` and compare scores.
"""
from __future__ import annotations

from ...errors import InputError
from .. import Task

NAME = "token-classification"


def _check(cfg) -> None:
    if cfg.data.train is None:
        raise InputError(f"--task {NAME} needs --train: a CoNLL file (token and tag "
                         "columns) or JSONL (tokens/tags, or text/entities)")
    if cfg.model == "textcnn":
        raise InputError("--model textcnn classifies texts; a tagger is --model bilstm or a "
                         "Hugging Face model directory")
    if cfg.crf and cfg.model != "bilstm":
        raise InputError("--crf is for --model bilstm; a Hugging Face tagger has a softmax head")
    if cfg.online_attack not in (None, "char"):
        raise InputError(f"--task {NAME} takes --online-attack char; {cfg.online_attack}'s "
                         "edits (delete or duplicate a word) would move the tags")
    refused = {"--typo-defence": cfg.typo_defence,
               "--synonym-defence": cfg.synonym_defence,
               "--augment-with-attack": cfg.augment_with_attack is not None,
               "--multi-label": cfg.data.multi_label,
               "--text-columns": len(cfg.data.text_columns) != 1}
    for flag, given in refused.items():
        if given:
            raise InputError(f"--task {NAME} does not take {flag} (it edits or "
                             "reads whole texts); drop it")


# A tagger's closure returns the model's output, whose .loss is the task loss: SMART and VAT
# need no loss of their own (the Task default, no logits_loss).
TASK = Task(
    name=NAME,
    help=f"{NAME}: a tag per word (NER; CoNLL or JSONL data)",
    module=f"{__name__}.tag_commands", loader=f"{__name__}.tag_commands.load_tag_run",
    score="entity_f1", clean_keys=("entity_f1", "strict_entity_f1"),
    table={"task": NAME, "score": "entity_f1"},
    check=_check, attacks=("char",),
    attacks_note=" for taggers (the word attack edits whole texts)",
    typo_rate="--typo-rate is for classifiers; a tagger's typo robustness is --attack char "
              "(typos on non-entity words, entity F1 under attack)")
