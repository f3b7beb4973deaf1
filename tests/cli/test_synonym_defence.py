"""--synonym-defence: the typo defence whose clusters also join each word with its embedding
neighbours, built from the pretrained embeddings, saved with the model, applied by eval,
attack and compare; refused where it cannot mean anything."""
import pytest
import torch
from cli_helpers import read_json, run, save_wordpiece
from conftest import FILLER, NEG, POS

ARGS = ["--epochs", "3", "--batch-size", "16", "--quiet", "--method", "none", "--lr", "5e-3"]


@pytest.fixture(scope="module")
def clustered_bert(tmp_path_factory):
    """A tiny BERT whose positive words sit near one point of the embedding space and whose
    negative words near another: each group is one another's word-attack substitutes."""
    from transformers import BertConfig, BertModel

    d = tmp_path_factory.mktemp("clustered_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(POS + NEG + FILLER))
    save_wordpiece(d, vocab)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32,
                                 max_position_embeddings=64))
    weight = model.embeddings.word_embeddings.weight
    with torch.no_grad():
        for group in (POS, NEG):
            centre = torch.randn(32)
            for w in group:
                weight[vocab.index(w)] = centre + 0.2 * torch.randn(32)
    model.save_pretrained(str(d))
    return str(d)


@pytest.fixture(scope="module")
def runs(clustered_bert, tmp_path_factory):
    import random

    from cli_helpers import write_csv
    from conftest import _sentence

    out = tmp_path_factory.mktemp("synonym")
    rng = random.Random(0)
    data = write_csv(out / "sentiment.csv", ["text", "label"],
                     [[_sentence(rng, "pos" if i % 2 else "neg"), "pos" if i % 2 else "neg"]
                      for i in range(120)])
    for name, extra in (("plain", []), ("defended", ["--synonym-defence"])):
        assert run("train", *ARGS, "--model", clustered_bert, "--train", data,
                   "--output-dir", out / name, *extra) == 0
    return out


def test_the_clusters_are_saved_with_the_model(runs):
    cfg = read_json(runs, "defended", "config.json")
    assert cfg["synonym_defence"] is True and cfg["typo_defence"] is True
    saved = read_json(runs, "defended", "model", "typo_defence.json")
    assert saved["settings"]["synonyms"] == {"k": 8, "threshold": 0.6, "max_cluster_size": 16}
    reps = saved["representatives"]
    # each group is one cluster: its words map to one of them, the rest to nothing else
    for group in (POS, NEG):
        heads = {reps.get(w, w) for w in group}
        assert len(heads) == 1 and heads <= set(group), (group, heads)
    assert not set(reps) & set(FILLER)


def test_eval_and_attack_read_the_defended_pipeline(runs, capsys):
    from advnlp.cli.rundir import load_run

    texts = [("the movie was great",), ("it was a good film",), ("an awful plot",),
             ("the story was poor",)]
    # each sentiment word swapped for another of its group, by hand
    swapped = [("the movie was nice",), ("it was a wonderful film",), ("an ugly plot",),
               ("the story was horrible",)]
    _, _, clf = load_run(str(runs / "defended"))
    assert clf.normalizer is not None and clf.normalizer.synonyms is not None
    logits = lambda c, t: c.model(**c.encode(t)).logits  # noqa: E731
    with torch.no_grad():
        assert torch.equal(logits(clf, texts), logits(clf, swapped))
        clf.normalizer = None  # the same weights without the defence read the swaps
        assert not torch.equal(logits(clf, texts), logits(clf, swapped))
    # the attack loads the run the same way, defence included (a refusal if its file is gone
    # is tests/cli/test_typo_defence.py's)
    assert run("attack", runs / "defended", "--attack", "word", "--limit", "8") == 0
    assert read_json(runs, "defended", "attack-word.json")["clean_accuracy"] > 0.5


def test_a_scratch_model_is_refused(sentiment_csv, tmp_path, capsys):
    assert run("train", *ARGS, "--model", "textcnn", "--train", sentiment_csv,
               "--output-dir", tmp_path / "r", "--synonym-defence") == 2
    err = capsys.readouterr().err
    assert "--synonym-defence" in err and "random embeddings" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_taggers_refuse_it(ner, tmp_path, capsys):
    assert run("train", "--task", "token-classification", "--model", "bilstm", "--train",
               ner["train"], "--output-dir", tmp_path / "t", "--synonym-defence", "--quiet") == 2
    assert "--synonym-defence" in capsys.readouterr().err


def test_compare_entries():
    from advnlp.cli.commands import compare_entry

    assert compare_entry("synonym-defence") == ("none", {"synonym_defence": True})
    assert compare_entry("greedy-char+synonym-defence") == (
        "none", {"online_attack": "char", "online_search": "greedy", "synonym_defence": True})
    assert compare_entry("fgm+synonym-defence") == ("fgm", {"synonym_defence": True})


def test_a_model_whose_embeddings_have_no_neighbours_is_refused(tiny_bert, sentiment_csv, tmp_path,
                                                                 capsys):
    import shutil

    from transformers import BertModel

    folder = tmp_path / "orthogonal"
    shutil.copytree(tiny_bert, folder)
    model = BertModel.from_pretrained(str(folder))
    weight = model.embeddings.word_embeddings.weight
    with torch.no_grad():  # one-hot rows: every cosine 0
        weight.zero_()
        weight[:, : weight.shape[1]].copy_(torch.eye(weight.shape[0], weight.shape[1]))
    model.save_pretrained(str(folder))
    assert run("train", *ARGS, "--model", folder, "--train", sentiment_csv, "--output-dir",
               tmp_path / "r", "--synonym-defence") == 2
    err = capsys.readouterr().err
    assert "--synonym-defence" in err and "no two editable words" in err and "Traceback" not in err
