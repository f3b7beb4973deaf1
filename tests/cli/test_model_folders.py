"""A model folder is data, not a program: advnlp runs none of its Python files, whatever
stdin says, and unpickles none of its weights (issue 27, item 5)."""
import io
import json
import os
import pickle
import re
import shutil
import sys

import pytest
import torch

from cli_helpers import one_line_error, run

TAGGER = ["--task", "token-classification"]


def _task(task, sentiment_csv, ner):
    if task == "classification":
        return ["--train", sentiment_csv]
    return [*TAGGER, "--train", ner["train"], "--validation", ner["validation"],
            "--test", ner["test"]]


def _custom_code_folder(bert, folder, marker):
    """``bert``'s tokenizer under a config whose model class is the folder's own Python,
    which would leave ``marker`` if it ever ran."""
    shutil.copytree(bert, folder)
    os.remove(folder / "model.safetensors")
    names = {k: "evil.EvilModel" for k in ("AutoModel", "AutoModelForSequenceClassification",
                                           "AutoModelForTokenClassification")}
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evilnet", architectures=["EvilModel"],
                  auto_map={"AutoConfig": "evil.EvilConfig", **names})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evilnet'\n")
    return folder


@pytest.mark.parametrize("task", ["classification", "token-classification"])
def test_a_model_folder_with_custom_code_is_refused_without_asking_or_running_it(
        task, tiny_tagger, sentiment_csv, ner, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "the-folder's-code-ran"
    model = _custom_code_folder(tiny_tagger, tmp_path / "evil", marker)
    # transformers asks "Do you wish to run the custom code? [y/N]" on stdin when not told
    # trust_remote_code=False; `echo y | advnlp train` would answer it.
    stdin = io.StringIO("y\n")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert run("train", "--model", model, *_task(task, sentiment_csv, ner), "--quiet",
               "--output-dir", tmp_path / "run") == 2
    one_line_error(capsys, str(model), "would run Python code from the folder")
    assert not marker.exists()
    assert stdin.tell() == 0  # nothing was asked
    assert not (tmp_path / "run").exists()


def _pickled_weights(bert, folder, marker):
    """``bert`` with its weights as pytorch_model.bin, a pickle that would leave ``marker``
    if unpickled."""
    shutil.copytree(bert, folder)
    os.remove(folder / "model.safetensors")
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(str(marker))))
    return folder


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("task", ["classification", "token-classification"])
def test_pickled_weights_are_refused_unread_with_how_to_convert_them(
        task, tiny_tagger, sentiment_csv, ner, tmp_path, capsys):
    marker = tmp_path / "unpickled"
    model = _pickled_weights(tiny_tagger, tmp_path / "m", marker)
    assert run("train", "--model", model, *_task(task, sentiment_csv, ner), "--quiet",
               "--output-dir", tmp_path / "run") == 2
    one_line_error(capsys, f"--model {model}: its weights are pytorch_model.bin, a pickle",
                    ".from_pretrained(", ".save_pretrained(")
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_the_conversion_the_refusal_gives_makes_a_loadable_folder(tiny_bert, sentiment_csv,
                                                                   tmp_path, capsys):
    from safetensors.torch import load_file

    model = tmp_path / "m"
    shutil.copytree(tiny_bert, model)
    torch.save(load_file(str(model / "model.safetensors")), model / "pytorch_model.bin")
    os.remove(model / "model.safetensors")
    args = ["train", "--model", model, "--train", sentiment_csv, "--epochs", "1", "--quiet"]
    assert run(*args, "--output-dir", tmp_path / "refused") == 2
    command = re.search(r'python -c "(.*)"$', one_line_error(capsys)).group(1)
    assert "BertModel" in command  # the folder's own class: a classifier keeps its head
    exec(command, {})  # what the user would run, trusting the file
    assert os.path.isfile(model / "model.safetensors")
    assert run(*args, "--output-dir", tmp_path / "run") == 0
