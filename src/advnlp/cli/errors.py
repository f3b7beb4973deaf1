"""The two ways a command ends early, and their exit codes."""
import signal


class InputError(Exception):
    """Bad user input: reported as one line on stderr, exit code 2."""


class Interrupted(Exception):
    """Training stopped by Ctrl-C (exit code 130) or SIGTERM (143) after saving a
    checkpoint; ``run_dir`` is the run directory to ``--resume``."""

    def __init__(self, run_dir: str, signum: int = signal.SIGINT):
        super().__init__(run_dir)
        self.run_dir, self.signal = run_dir, signal.Signals(signum)
        # The shell's convention for "ended by signal N", kept although we exit normally.
        self.exit_code = 128 + self.signal
