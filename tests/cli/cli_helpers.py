"""Calling the CLI in-process and reading what a run leaves."""
import csv
import json
import os
import signal

from advnlp.cli.tasks import classify as T
from advnlp.cli import main


def run(*argv):
    """Exit code of ``advnlp argv...``, run in-process."""
    return main([str(a) for a in argv])


def read_json(*parts):
    with open(os.path.join(*map(str, parts)), encoding="utf-8") as f:
        return json.load(f)


def write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def ctrl_c_after(monkeypatch, n):
    """Deliver a real SIGINT to this process after the n-th training step."""
    calls = {"n": 0}
    step = T.train_step

    def step_then_sigint(*args):
        loss = step(*args)
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(T, "train_step", step_then_sigint)


def save_wordpiece(folder, vocab):
    """A WordPiece tokenizer over ``vocab`` saved in ``folder`` (the test models' own).

    transformers 5 ignores ``BertTokenizerFast(vocab_file=...)``: the tokenizer it builds
    has only the special tokens and reads every word as [UNK]. ``vocab=`` is what it reads."""
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    assert tok.convert_tokens_to_ids(vocab[-1]) == len(vocab) - 1  # really this vocabulary
    tok.save_pretrained(str(folder))
