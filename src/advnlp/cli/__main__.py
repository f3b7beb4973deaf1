"""``python -m advnlp.cli`` (and ``torchrun ... -m advnlp.cli``)."""
import sys

from .main import main

sys.exit(main())
