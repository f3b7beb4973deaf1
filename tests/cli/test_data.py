"""Data loading details the end-to-end tests do not pin down."""
from collections import Counter

from advnlp.cli.data import DataSpec, read_file, split, subset, tokenize


def test_csv_fields_may_hold_line_breaks_and_json_label_lists(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"line one\nline two","[""a"", ""b""]"\nplain,c\n', encoding="utf-8")
    spec = DataSpec(multi_label=True)
    assert read_file(str(path), spec) == [(("line one\nline two",), ["a", "b"]), (("plain",), ["c"])]


def test_split_is_seeded_stratified_and_complete():
    examples = [((f"t{i}",), "ab"[i % 2] if i < 80 else "c") for i in range(100)]
    a = split(examples, [0.1, 0.2])
    assert a == split(examples, [0.1, 0.2])
    assert sorted(sum(a, [])) == sorted(examples)
    assert Counter(lab for _, lab in a[2]) == {"a": 8, "b": 8, "c": 4}


def test_subset_is_class_balanced():
    examples = [((f"t{i}",), "a" if i < 90 else "b") for i in range(100)]
    picked = subset(examples, 20, seed=1)
    assert Counter(lab for _, lab in picked) == {"a": 10, "b": 10}


def test_tokenize_splits_cjk_into_characters_and_others_into_words():
    assert tokenize("这部电影 Great, film!") == ["这", "部", "电", "影", "great", ",", "film", "!"]
