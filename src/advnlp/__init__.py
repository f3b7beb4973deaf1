"""advnlp: adversarial training for NLP models, in two lines of your training loop.

    from advnlp import PGD
    adv = PGD(model, epsilon=1.0, alpha=0.3, steps=3)
    loss = adv.backward(lambda: criterion(model(**batch).logits, batch["labels"]))
"""
from ._base import Adversary, EmbeddingAdversary, StepAborted
from .methods import (
                      ATTA,
                      AWP,
                      FGM,
                      FGSM,
                      PGD,
                      R3F,
                      SMART,
                      VAT,
                      YOPO,
                      DiscreteAT,
                      FreeAT,
                      FreeLB,
                      NEFTune,
)
from .methods._gradient import GradientAdversary
from .outputs import as_loss, split_output
from .training import backward_step

__version__ = "0.1.0"
__all__ = ["ATTA", "AWP", "Adversary", "DiscreteAT", "EmbeddingAdversary", "FGM", "FGSM", "FreeAT",
           "FreeLB", "GradientAdversary", "NEFTune", "PGD", "R3F", "SMART", "StepAborted", "VAT",
           "YOPO", "as_loss", "backward_step", "split_output", "__version__"]
