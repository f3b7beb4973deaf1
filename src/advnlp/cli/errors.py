"""The two ways a command ends early, and their exit codes."""


class InputError(Exception):
    """Bad user input: reported as one line on stderr, exit code 2."""


class Interrupted(Exception):
    """Training stopped by Ctrl-C after saving a checkpoint (exit code 130); the argument
    is the run directory to ``--resume``."""
