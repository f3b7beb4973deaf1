"""One file per method; each holds the method's math and its paper."""
from .awp import AWP
from .discrete import DiscreteAT
from .fgm import FGM
from .fgsm import FGSM
from .freeat import FreeAT
from .freelb import FreeLB
from .pgd import PGD
from .smart import SMART
from .vat import VAT
from .yopo import YOPO

__all__ = ["AWP", "DiscreteAT", "FGM", "FGSM", "FreeAT", "FreeLB", "PGD", "SMART", "VAT", "YOPO"]
