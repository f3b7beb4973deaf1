"""The two ways a command ends early, and their exit codes."""
import signal


class InputError(Exception):
    """Bad user input: reported as one line on stderr, exit code 2."""


class Interrupted(Exception):
    """Training stopped by Ctrl-C (exit code 130) or SIGTERM (143) after saving a
    checkpoint; ``run_dir`` is what ``advnlp <command> --resume`` continues."""

    def __init__(self, run_dir: str, signum: int = signal.SIGINT, command: str = "train"):
        super().__init__(run_dir)
        self.run_dir, self.signal, self.command = run_dir, signal.Signals(signum), command
        # The shell's convention for "ended by signal N", kept although we exit normally.
        self.exit_code = 128 + self.signal
