"""One file per method; each holds the method's math and its paper."""
from .awp import AWP
from .fgm import FGM
from .fgsm import FGSM
from .freelb import FreeLB
from .pgd import PGD
from .smart import SMART
from .vat import VAT

__all__ = ["AWP", "FGM", "FGSM", "FreeLB", "PGD", "SMART", "VAT"]
