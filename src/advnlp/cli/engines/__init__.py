"""The loops that step a :class:`~advnlp.cli.run.Run`: advnlp's own (``loop``), Hugging
Face's Trainer (``trainer``) and TRL's SFTTrainer (``trl``, causal LMs). Each engine module
offers the same three functions:

* ``fit(run)`` - train from where the run is to its last epoch; raises
  ``Interrupted`` after saving a checkpoint when Ctrl-C or SIGTERM stopped it before the end;
* ``has_checkpoint(run_dir)`` - whether there is a checkpoint to resume from, and its name;
* ``resume(run)`` - load the newest checkpoint into a freshly built run.
"""
from __future__ import annotations

import importlib

ENGINES = {"loop": "advnlp.cli.engines.loop", "trainer": "advnlp.cli.engines.hf_trainer",
           "trl": "advnlp.cli.engines.trl_sft"}


def engine(name: str):
    """The engine module (imported on first use: the Trainer engine needs transformers)."""
    return importlib.import_module(ENGINES[name])
