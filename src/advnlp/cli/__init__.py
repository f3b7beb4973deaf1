"""The ``advnlp`` command line: the application wing, built on advnlp's public API.

Imports flow one way: ``main`` (parse, print) -> ``commands`` -> ``engines`` (loop,
hf_trainer) -> ``run`` -> ``config`` / ``rundir`` / ``distributed`` / ``data`` /
``models`` / ``tasks``. The library (``advnlp``) never imports this package.
"""
from .main import main

__all__ = ["main"]
