"""One file per method; each holds the method's math and its paper."""
from .atta import ATTA
from .awp import AWP
from .discrete import DiscreteAT
from .fgm import FGM
from .fgsm import FGSM
from .freeat import FreeAT
from .freelb import FreeLB
from .neftune import NEFTune
from .pgd import PGD
from .r3f import R3F
from .smart import SMART
from .vat import VAT
from .yopo import YOPO

__all__ = ["ATTA", "AWP", "DiscreteAT", "FGM", "FGSM", "FreeAT", "FreeLB", "NEFTune", "PGD", "R3F",
           "SMART", "VAT", "YOPO"]
