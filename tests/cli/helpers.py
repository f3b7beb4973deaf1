"""Calling the CLI in-process and reading what a run leaves."""
import json
import os

from advnlp.cli import main


def run(*argv, capsys=None):
    """Exit code of ``advnlp argv...`` (quiet, in-process)."""
    return main([str(a) for a in argv])


def read_json(*parts):
    with open(os.path.join(*map(str, parts)), encoding="utf-8") as f:
        return json.load(f)
