"""The two ways a command ends early, their exit codes, and the rules for reading option values."""
import signal

WARNING = "warning: "  # how a log line that --quiet must not hide begins


class InputError(Exception):
    """Bad user input: reported as one line on stderr, exit code 2."""


def comma_list(text: str) -> list:
    """The items of a comma-separated option, stripped. One rule for every such option
    (radii, attacks, methods, columns): empty items (a trailing comma) are dropped, and the
    option's own check refuses a list left empty."""
    return [item.strip() for item in text.split(",") if item.strip()]


class Interrupted(Exception):
    """Training stopped by Ctrl-C (exit code 130) or SIGTERM (143) after saving a
    checkpoint; ``run_dir`` is what ``advnlp <command> --resume`` continues."""

    def __init__(self, run_dir: str, signum: int = signal.SIGINT, command: str = "train"):
        super().__init__(run_dir)
        self.run_dir, self.signal, self.command = run_dir, signal.Signals(signum), command
        # The shell's convention for "ended by signal N", kept although we exit normally.
        self.exit_code = 128 + self.signal

    def __reduce__(self):  # from a compare --jobs worker to the compare, signal and all
        return (Interrupted, (self.run_dir, int(self.signal), self.command))
