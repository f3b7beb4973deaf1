"""A Hugging Face model folder whose tokenizer cannot read the data is refused, not trained
on [UNK]s; one that reads much of it as [UNK] is trained with a warning."""
import os
import shutil

from cli_helpers import run, write_csv

ARGS = ["--epochs", "1", "--batch-size", "16", "--lr", "0.01"]


def _unk_share(model_dir, texts):
    """Independently of advnlp: the share of [UNK] ids the folder's own tokenizer gives."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = [i for t in texts for i in tok(t, add_special_tokens=False)["input_ids"]]
    return sum(i == tok.unk_token_id for i in ids) / len(ids)


def test_a_model_folder_without_tokenizer_files_is_refused(tiny_bert, sentiment_csv, tmp_path,
                                                           capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(tiny_bert, f), bare / f)
    assert _unk_share(str(bare), ["the movie was great"]) == 1.0  # what it would train on
    assert run("train", "--model", bare, "--train", sentiment_csv, *ARGS,
               "--output-dir", tmp_path / "r") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advnlp: error:") and "\n" not in err
    assert "has no tokenizer files" in err and "save_pretrained" in err
    assert not (tmp_path / "r").exists()


def test_data_in_another_language_is_refused(tiny_bert, chinese_csv, tmp_path, capsys):
    assert run("train", "--model", tiny_bert, "--train", chinese_csv, "--text-column", "评论",
               "--label-column", "标签", *ARGS, "--output-dir", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "100% of the training text as [UNK]" in err and "this language" in err


def test_a_partly_unknown_vocabulary_trains_with_a_warning(tiny_bert, tmp_path, capsys):
    rows = [[f"the movie was {'great' if i % 2 else 'bad'} zorblax quuxly", "pos" if i % 2 else "neg"]
            for i in range(60)]
    data = write_csv(tmp_path / "odd.csv", ["text", "label"], rows)
    share = _unk_share(tiny_bert, [r[0] for r in rows])
    assert 0.2 < share < 0.9
    assert run("train", "--model", tiny_bert, "--train", data, *ARGS,
               "--output-dir", tmp_path / "r") == 0
    assert f"reads {share:.0%} of the training text as [UNK]" in capsys.readouterr().err
