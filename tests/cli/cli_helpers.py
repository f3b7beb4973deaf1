"""Calling the CLI in-process and reading what a run leaves."""
import csv
import json
import os
import signal

from advnlp.cli.tasks.classification import classify as T
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

    def step_then_sigint(*args, **kwargs):
        loss = step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(T, "train_step", step_then_sigint)


def save_bert_without_dropout(folder, words, seed=0):
    """A one-layer BERT (hidden 16) with every dropout at 0 over a WordPiece vocabulary of the
    special tokens and ``words``, saved in ``folder`` (seeded unless ``seed`` is None): runs
    that should compute the same thing (two engines, two process counts) then do."""
    import torch
    from transformers import BertConfig, BertModel

    os.makedirs(folder, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(words)
    save_wordpiece(folder, vocab)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        classifier_dropout=0.0)
    if seed is not None:
        torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(folder))
    return str(folder)


def save_wordpiece(folder, vocab):
    """A WordPiece tokenizer over ``vocab`` saved in ``folder`` (the test models' own).

    transformers 5 ignores ``BertTokenizerFast(vocab_file=...)``: the tokenizer it builds
    has only the special tokens and reads every word as [UNK]. ``vocab=`` is what it reads."""
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    assert tok.convert_tokens_to_ids(vocab[-1]) == len(vocab) - 1  # really this vocabulary
    tok.save_pretrained(str(folder))


def sigterm_after_first_step(argv, first_line="step 1/6"):
    """Run ``python -m advnlp.cli argv`` (one thread, like the in-process runs it is compared
    with bit for bit), send SIGTERM after its first progress line; return (exit code, stderr)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "advnlp.cli", *map(str, argv)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        first = proc.stderr.readline()  # the first progress line (stderr is not a terminal)
        assert first_line in first, first
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, err


def one_line_error(capsys, *needles):
    """stderr is one ``advnlp: error:`` line holding every one of ``needles``."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("advnlp: error:") and "\n" not in err, err
    for n in needles:
        assert n in err, err
    return err


def file_tree(root):
    """Every file under ``root`` with its bytes."""
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            path = os.path.join(folder, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out
