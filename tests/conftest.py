"""Test-suite set-up. Shared tiny models live in tinymodels.py: `from tinymodels import ...`
(tests/ is on pytest's pythonpath; a module named conftest is ambiguous between sub-suites)."""
