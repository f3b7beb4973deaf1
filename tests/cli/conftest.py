"""Tiny generated datasets and a tiny BERT so every CLI test runs in seconds."""
import json
import random

import pytest
import torch

from cli_helpers import save_bert_without_dropout, save_wordpiece, write_csv
from tagging_data import CAPS, LOWER, conll, sentences


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: one thread beats several fighting over 2 cores.
    Restored afterwards so other suites in the same session are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def sigint_reaches_us():
    """Launched under nohup or a script's `&`, the suite starts with SIGINT ignored, and a
    run leaves an ignored SIGINT alone: the tests that press Ctrl-C need it back."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    if before is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


POS = "great good excellent wonderful fine nice".split()
NEG = "bad awful terrible poor horrible ugly".split()
FILLER = "the a movie film plot actor scene story it was".split()


def _sentence(rng, label):
    words = rng.choices(FILLER, k=6) + rng.choices(POS if label == "pos" else NEG, k=2)
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture
def sentiment_csv(tmp_path):
    rng = random.Random(0)
    rows = []
    for i in range(120):
        label = "pos" if i % 2 else "neg"
        rows.append([_sentence(rng, label), label])
    return write_csv(tmp_path / "sentiment.csv", ["text", "label"], rows)


@pytest.fixture
def multilabel_jsonl(tmp_path):
    rng = random.Random(1)
    topics = {"sport": "goal match team", "money": "bank price market", "tech": "chip phone code"}
    path = tmp_path / "multi.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(120):
            labels = rng.sample(sorted(topics), k=1 + i % 2)
            words = [w for t in labels for w in topics[t].split()] + rng.choices(FILLER, k=4)
            rng.shuffle(words)
            f.write(json.dumps({"text": " ".join(words), "tags": labels}) + "\n")
    return str(path)


@pytest.fixture
def pairs_tsv(tmp_path):
    rng = random.Random(2)
    rows = []
    for i in range(80):
        same = i % 2 == 0
        a = rng.choice(POS + NEG)
        b = a if same else rng.choice([w for w in POS + NEG if w != a])
        rows.append([f"the movie was {a}", f"it was {b}", "same" if same else "different"])
    return write_csv(tmp_path / "pairs.tsv", ["premise", "hypothesis", "label"], rows, "\t")


@pytest.fixture
def chinese_csv(tmp_path):
    rng = random.Random(3)
    good, bad = "好棒赞美妙", "差烂糟坏"
    rows = []
    for i in range(100):
        label = "正面" if i % 2 else "负面"
        chars = rng.choices("这部电影的剧情演员", k=6) + rng.choices(good if label == "正面" else bad, k=2)
        rng.shuffle(chars)
        rows.append(["".join(chars) + "。", label])
    return write_csv(tmp_path / "中文.csv", ["评论", "标签"], rows)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 1-layer BERT with a WordPiece vocabulary of the test words."""
    from transformers import BertConfig, BertModel

    d = tmp_path_factory.mktemp("tiny_bert")
    words = sorted(set(POS + NEG + FILLER + "it was movie the".split()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    save_wordpiece(d, vocab)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(d))
    return str(d)


@pytest.fixture(scope="session")
def bert_without_dropout(tmp_path_factory):
    """The tiny BERT with dropout off: runs that should compute the same thing (two engines,
    FGM with --adv-weight 0 and none) then do, bit for bit."""
    return save_bert_without_dropout(tmp_path_factory.mktemp("bert_no_dropout"),
                                     sorted(set(POS + NEG + FILLER)))


@pytest.fixture
def ner(tmp_path):
    return {"train": conll(tmp_path / "train.conll", sentences(160, 0)),
            "validation": conll(tmp_path / "dev.conll", sentences(30, 1)),
            "test": conll(tmp_path / "test.conll", sentences(30, 2))}


@pytest.fixture
def tiny_tagger(tmp_path):
    from transformers import BertConfig, BertModel

    d = tmp_path / "bert"
    d.mkdir()
    # London and Berlin are two word pieces each (lon ##don, ber ##lin)
    words = sorted(w.lower() for w in set(LOWER + CAPS) if w not in ("London", "Berlin"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + ["lon", "##don", "ber", "##lin"]
    save_wordpiece(d, vocab)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(str(d))
    return str(d)
