"""Input files that used to load wrongly or fail with a misleading message."""
import json

import pytest

from advnlp.cli.data import DataSpec, read_file
from advnlp.cli.errors import InputError

from cli_helpers import run, write_csv


def _jsonl(path, labels):
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": lab}) + "\n"
                            for i, lab in enumerate(labels)), encoding="utf-8")
    return str(path)


def _refused(path, spec=None):
    with pytest.raises(InputError) as e:
        read_file(str(path), spec or DataSpec())
    return str(e.value)


# 1. Values that silently became classes --------------------------------------
@pytest.mark.parametrize("value", [["a", "b"], {"a": 1}])
def test_jsonl_list_or_object_label_without_multi_label(tmp_path, value):
    path = _jsonl(tmp_path / "d.jsonl", ["a", "b", value])
    msg = _refused(path)
    assert f"{path}:3" in msg and json.dumps(value) in msg, msg
    if isinstance(value, list):
        assert "--multi-label" in msg, msg


def test_jsonl_list_labels_still_load_with_multi_label(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [["a", "b"], ["b"]])
    assert read_file(path, DataSpec(multi_label=True)) == [(("t0",), ["a", "b"]), (("t1",), ["b"])]


@pytest.mark.parametrize("first, second", [(1, 1.0), (1, True), (0.0, 0)])
def test_jsonl_one_number_spelled_two_ways(tmp_path, first, second):
    path = _jsonl(tmp_path / "d.jsonl", [first, 2, second])
    msg = _refused(path)
    assert f"{path}:3" in msg and json.dumps(first) in msg and json.dumps(second) in msg, msg
    assert "line 1" in msg, msg


def test_jsonl_numbers_and_booleans_spelled_one_way_still_load(tmp_path):
    assert [lab for _, lab in read_file(_jsonl(tmp_path / "n.jsonl", [1, 2, 1]), DataSpec())] \
        == ["1", "2", "1"]
    assert [lab for _, lab in read_file(_jsonl(tmp_path / "b.jsonl", [True, False]), DataSpec())] \
        == ["True", "False"]


def test_csv_row_with_more_fields_than_the_header(tmp_path):
    path = tmp_path / "d.csv"
    # The quoted field spans lines 2-3, so the unquoted comma is on physical line 4.
    path.write_text('text,label\n"two\nlines",a\nfine, then not,b\n', encoding="utf-8")
    msg = _refused(path)
    assert f"{path}:4" in msg and "3 fields" in msg and "quot" in msg, msg


def test_tsv_row_with_more_fields_than_the_header(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("text\tlabel\nok\ta\ntab\there\tb\n", encoding="utf-8")
    msg = _refused(path)
    assert f"{path}:3" in msg and "quot" in msg, msg


def test_csv_row_missing_a_needed_field(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nok,a\nno label here\n", encoding="utf-8")
    msg = _refused(path)
    assert f"{path}:3" in msg and "'label'" in msg, msg


def test_csv_row_short_of_an_unneeded_field_still_loads(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label,note\nok,a,x\nfine,b\n", encoding="utf-8")
    assert read_file(str(path), DataSpec()) == [(("ok",), "a"), (("fine",), "b")]


# 2. Long fields ----------------------------------------------------------------
@pytest.mark.parametrize("ext, delimiter", [(".csv", ","), (".tsv", "\t")])
def test_text_longer_than_the_csv_module_default_limit(tmp_path, ext, delimiter):
    import csv
    before = csv.field_size_limit()
    long = "word " * 40_000  # 200,000 characters
    path = write_csv(tmp_path / f"d{ext}", ["text", "label"], [[long, "a"], ["short", "b"]], delimiter)
    assert read_file(path, DataSpec()) == [((long,), "a"), (("short",), "b")]
    assert csv.field_size_limit() == before  # not left changed for other code


# 3. Empty files ------------------------------------------------------------------
@pytest.mark.parametrize("name, content", [("d.csv", ""), ("d.tsv", "\n"), ("d.jsonl", ""),
                                           ("e.jsonl", "\n  \n")])
def test_empty_file_says_so(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    msg = _refused(path)
    assert "is empty" in msg and str(path) in msg and "columns are" not in msg, msg


# 4. Delimiter does not match the extension ------------------------------------
def test_tsv_saved_as_csv(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [["a b", "x"], ["c d", "y"]], "\t")
    msg = _refused(path)
    assert "tab-separated" in msg and ".tsv" in msg, msg


# Through the CLI: one line, exit code 2 -----------------------------------------
def test_cli_reports_a_bad_label_as_one_line(tmp_path, capsys):
    path = _jsonl(tmp_path / "d.jsonl", ["a", ["a", "b"]])
    assert run("train", "--model", "textcnn", "--train", path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advnlp: error:") and "\n" not in err and "--multi-label" in err, err


def test_jsonl_text_may_hold_unicode_line_separators(tmp_path):
    # json.dumps(..., ensure_ascii=False) writes U+2028 as is; it does not end a JSONL line.
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\r\n"
                            for t, lab in [("one\u2028two\x85", "a"), ("three", "b")]),
                    encoding="utf-8")
    assert read_file(str(path), DataSpec()) == [(("one\u2028two\x85",), "a"), (("three",), "b")]


# 5. Half a character: a lone UTF-16 surrogate (issue 27, item 6) --------------------------
# Valid JSON ("\ud83d", a truncated tweet's emoji), but no text: it trained every epoch and
# then failed to save the vocabulary, leaving half a model/.
def _with_lone_surrogate(path):
    """``path`` holding one on its last line, and that line."""
    if path.suffix == ".jsonl":
        path.write_text('{"text": "fine film", "label": "a"}\n'
                        '{"text": "so bad", "label": "b"}\n'
                        '{"text": "great film \\ud83d", "label": "a"}\n', encoding="utf-8")
        return path, 3
    else:  # a UTF-8 file cannot hold one; its CESU-8 bytes are what an editor might write
        path.write_bytes(b"text,label\nfine film,a\nso bad,b\ngreat film \xed\xa0\xbd,a\n")
        return path, 4


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv"])
def test_a_lone_surrogate_is_refused_naming_its_line(tmp_path, name):
    path, line = _with_lone_surrogate(tmp_path / name)
    msg = _refused(path)
    assert f"{path}:{line}:" in msg, msg
    assert ("\\ud83d" if name.endswith("jsonl") else "not valid UTF-8") in msg, msg


def test_a_whole_surrogate_pair_is_an_emoji_and_loads(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "great film \\ud83d\\ude00", "label": "a"}\n', encoding="utf-8")
    assert read_file(str(path), DataSpec()) == [(("great film \U0001F600",), "a")]


def test_train_refuses_a_lone_surrogate_before_anything_is_written(sentiment_csv, tmp_path,
                                                                    capsys):
    path = tmp_path / "train.jsonl"
    with open(sentiment_csv, encoding="utf-8") as f:
        rows = [line.rstrip("\n").rsplit(",", 1) for line in f][1:]
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows)
                    + '{"text": "great film \\ud83d", "label": "pos"}\n', encoding="utf-8")
    assert run("train", "--model", "textcnn", "--train", path, "--epochs", "1", "--quiet",
               "--output-dir", tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{path}:{len(rows) + 1}" in err, err
    assert not (tmp_path / "run").exists()


def test_attack_data_with_a_lone_surrogate_is_refused(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--epochs", "1",
               "--quiet", "--output-dir", out) == 0
    path, line = _with_lone_surrogate(tmp_path / "attack.jsonl")
    capsys.readouterr()
    assert run("attack", out, "--attack", "char", "--data", path, "--limit", "5") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{path}:{line}:" in err, err
    assert not (out / "attack-char.json").exists()


# 6. One number, two spellings, in every format (issue 27, item 12) ------------------------
# "1" and "1.0" would be two classes of one value. The JSONL reader refused JSON numbers
# spelled two ways; the same rule now covers CSV/TSV text and JSONL strings.
@pytest.mark.parametrize("name, labels", [
    ("d.csv", ["1", "2", "1.0"]),
    ("d.tsv", ["1", "2", "01"]),
    ("d.jsonl", ["1", 2, "1e0"]),
    ("e.jsonl", [1, "2", "1.0"]),
])
def test_labels_that_are_one_number_spelled_two_ways_are_refused(tmp_path, name, labels):
    path = tmp_path / name
    if name.endswith("jsonl"):
        _jsonl(path, labels)
    else:
        write_csv(path, ["text", "label"], [[f"t{i}", lab] for i, lab in enumerate(labels)],
                  "\t" if name.endswith("tsv") else ",")
    msg = _refused(path)
    assert f"{path}:{4 if name.endswith('sv') else 3}" in msg and "line" in msg, msg
    assert "one number" in msg and str(labels[2]) in msg, msg


def test_multi_labels_that_are_one_number_spelled_two_ways_are_refused(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [["t0", "1,2"], ["t1", "2.0"]])
    msg = _refused(path, DataSpec(multi_label=True))
    assert f"{path}:3" in msg and "2.0" in msg and "line 2" in msg, msg


def test_numbers_spelled_one_way_and_number_like_names_still_load(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"],
                     [["a", "1.0"], ["b", "2.0"], ["c", "1.0"], ["d", "1.5x"], ["e", "nan"],
                      ["f", "NaN"], ["g", "1_0"], ["h", "10"]])
    assert [lab for _, lab in read_file(path, DataSpec())] \
        == ["1.0", "2.0", "1.0", "1.5x", "nan", "NaN", "1_0", "10"]
