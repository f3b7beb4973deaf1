"""Test-suite set-up. Shared tiny models live in tinymodels.py (import them from there).

Re-exported here only for test modules written before the split.
"""
from tinymodels import *  # noqa: F401,F403
