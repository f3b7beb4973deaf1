"""`advnlp train` end to end on tiny models and generated data."""
import importlib.util
import os

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import read_json, run, write_csv


def test_single_label_textcnn_leaves_a_complete_run(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--epochs", "3",
               "--output-dir", out, "--quiet") == 0
    for f in ("config.json", "labels.json", "metrics.json", "model/model.safetensors",
              "model/vocab.json", "model/model_config.json"):
        assert (out / f).is_file(), f
    assert not (out / "checkpoint.pt").exists()  # only kept while the run is unfinished
    if importlib.util.find_spec("matplotlib"):
        assert (out / "plot.png").is_file()
    metrics = read_json(out, "metrics.json")
    assert len(metrics["epochs"]) == 3
    assert metrics["final"]["test"]["accuracy"] >= 0.8
    assert read_json(out, "labels.json") == {"labels": ["neg", "pos"], "multi_label": False}
    cfg = read_json(out, "config.json")
    assert cfg["method"] == "fgm" and cfg["data"]["train"] == sentiment_csv
    assert "accuracy" in capsys.readouterr().out


def test_multi_label_jsonl_uses_lists_and_reports_micro_f1(multilabel_jsonl, tmp_path):
    out = tmp_path / "run"
    assert run("train", "--model", "bilstm", "--train", multilabel_jsonl, "--label-column", "tags",
               "--multi-label", "--method", "pgd", "--steps", "2", "--epochs", "3",
               "--output-dir", out, "--quiet") == 0
    final = read_json(out, "metrics.json")["final"]["test"]
    assert set(final) == {"accuracy", "macro_f1", "micro_f1"}
    assert final["micro_f1"] > 0.5
    assert read_json(out, "labels.json")["labels"] == ["money", "sport", "tech"]


def test_multi_label_delimited_string(tmp_path):
    rows = [[f"{'red ' * (i % 2)}{'blue ' * (i % 3 == 0)}thing {i}", "|".join(
        [c for c, on in (("red", i % 2), ("blue", i % 3 == 0)) if on])] for i in range(60)]
    data = write_csv(tmp_path / "colors.csv", ["text", "label"], rows)
    out = tmp_path / "run"
    assert run("train", "--model", "textcnn", "--train", data, "--multi-label",
               "--label-delimiter", "|", "--epochs", "1", "--output-dir", out, "--quiet") == 0
    assert read_json(out, "labels.json")["labels"] == ["blue", "red"]


def test_sentence_pairs_with_a_hugging_face_model(pairs_tsv, tiny_bert, tmp_path):
    out = tmp_path / "run"
    assert run("train", "--model", tiny_bert, "--train", pairs_tsv, "--text-columns",
               "premise,hypothesis", "--method", "fgsm", "--epochs", "1", "--max-length", "16",
               "--output-dir", out, "--quiet") == 0
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "model" / "tokenizer_config.json").is_file()
    assert read_json(out, "model", "config.json")["id2label"] == {"0": "different", "1": "same"}
    assert run("eval", out, "--epsilons", "0.5", "--attack-steps", "1") == 0
    assert read_json(out, "eval.json")["examples"] == 8


def test_chinese_text_end_to_end(chinese_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", "--model", "textcnn", "--train", chinese_csv, "--text-column", "评论",
               "--label-column", "标签", "--epochs", "5", "--output-dir", out, "--quiet") == 0
    vocab = read_json(out, "model", "vocab.json")
    assert "好" in vocab and "差" in vocab  # one token per CJK character
    assert read_json(out, "labels.json")["labels"] == ["正面", "负面"]
    assert read_json(out, "metrics.json")["final"]["test"]["accuracy"] >= 0.8
    assert run("eval", out, "--data", chinese_csv, "--epsilons", "1") == 0
    assert "100 examples" in capsys.readouterr().out


def test_same_seed_same_weights(sentiment_csv, tmp_path):
    for name in ("a", "b"):
        assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--epochs", "1",
                   "--output-dir", tmp_path / name, "--quiet") == 0
    a, b = (load_file(os.path.join(tmp_path, n, "model", "model.safetensors")) for n in "ab")
    assert all(a[k].equal(b[k]) for k in a)


def test_plot_without_matplotlib_is_a_one_line_note(sentiment_csv, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "run"
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--epochs", "1",
               "--output-dir", out) == 0
    assert "note: no plot.png" in capsys.readouterr().err
    assert not (out / "plot.png").exists() and (out / "metrics.json").is_file()


@pytest.mark.parametrize("method, params", [("freelb", ["--steps", "2", "--alpha", "0.05"]),
                                            ("awp", ["--epsilon", "0.02"]),
                                            ("vat", ["--epsilon", "0.5"]),
                                            ("smart", ["--steps", "1", "--epsilon", "0.5"]),
                                            ("neftune", ["--epsilon", "5"]),
                                            ("r3f", ["--epsilon", "1e-4"])])
def test_later_methods_plug_into_the_registry(method, params, sentiment_csv, tmp_path):
    out = tmp_path / "run"
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--method", method,
               *params, "--epochs", "1", "--output-dir", out, "--quiet") == 0
    cfg = read_json(out, "config.json")
    assert cfg["method"] == method and cfg["alpha" if method == "freelb" else "epsilon"] == float(params[-1])


def test_vat_on_multi_label_data(multilabel_jsonl, tmp_path):
    # VAT/SMART compare logits: the CLI passes its BCE loss and sigmoid divergence.
    out = tmp_path / "run"
    assert run("train", "--model", "bilstm", "--train", multilabel_jsonl, "--label-column", "tags",
               "--multi-label", "--method", "vat", "--epochs", "1", "--output-dir", out,
               "--quiet") == 0
    assert read_json(out, "config.json")["method"] == "vat"


@pytest.mark.parametrize("engine", ["loop", "trainer"])
def test_progress_lines_without_a_terminal(sentiment_csv, tiny_bert, tmp_path, capsys, engine):
    """stderr is not a terminal here: a line at every tenth of the epoch instead of a bar
    (96 examples / batch 8 = 12 steps: a line every 2 steps), none with --quiet."""
    argv = ["train", "--model", tiny_bert, "--train", sentiment_csv, "--epochs", "1",
            "--batch-size", "8", "--engine", engine]
    assert run(*argv, "--output-dir", tmp_path / "a") == 0
    lines = [l for l in capsys.readouterr().err.splitlines() if ": step " in l]
    assert [l.split(",")[0] for l in lines] == [f"epoch 1/1: step {n}/12" for n in range(2, 13, 2)]
    assert all(", loss 0." in l and l.endswith(" s/step") for l in lines)
    assert run(*argv, "--output-dir", tmp_path / "b", "--quiet") == 0
    assert capsys.readouterr().err == ""


@pytest.fixture
def built(monkeypatch):
    """The adversary of every Run built while the test runs, in order."""
    from advnlp.cli import run as R

    adversaries = []
    init = R.Run.__init__

    def keep(self, *a, **kw):
        init(self, *a, **kw)
        adversaries.append(self.adv)

    monkeypatch.setattr(R.Run, "__init__", keep)
    return adversaries


def test_relative_epsilon_reaches_the_method_and_the_config(sentiment_csv, tmp_path, built):
    out = tmp_path / "r"
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--epochs", "1",
               "--method", "pgd", "--epsilon", "0.05", "--relative-epsilon", "--quiet",
               "--output-dir", out) == 0
    assert built[0].relative is True and built[0].epsilon == 0.05
    assert read_json(out, "config.json")["relative_epsilon"] is True


def test_neftune_defaults_to_noise_of_fgms_measured_size(sentiment_csv, tmp_path, built):
    """The noise control: NEFTune's alpha = sqrt(3) x FGM's measured relative epsilon, so
    its noise has the L2 size of FGM's perturbation; R3F keeps the paper's 1e-5."""
    for method in ("neftune", "r3f"):
        assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--epochs", "1",
                   "--method", method, "--quiet", "--output-dir", tmp_path / method) == 0
    neftune, r3f = built
    assert neftune.relative is True and neftune.alpha == pytest.approx(0.03 * 3 ** 0.5, abs=1e-4)
    assert read_json(tmp_path / "neftune", "config.json")["epsilon"] == neftune.alpha
    assert r3f.epsilon == 1e-5 and r3f.alpha == 1.0


@pytest.mark.parametrize("method", ["none", "awp", "smart", "r3f"])
def test_relative_epsilon_is_refused_by_methods_without_it(method, sentiment_csv, tmp_path, capsys):
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--method", method,
               "--relative-epsilon", "--output-dir", tmp_path / "r") == 2
    assert f"--method {method} takes no --relative-epsilon" in capsys.readouterr().err


def test_epsilon_sizes_freelbs_ball_and_its_random_start(sentiment_csv, tmp_path):
    """--epsilon is FreeLB's max_norm; init_mag keeps the released 1.0 : 0.6 ratio, so the
    defaults are the library's and --epsilon alone rescales the whole perturbation."""
    from advnlp import FreeLB
    from advnlp.cli.config import TrainConfig, build_adversary
    from advnlp.cli.data import DataSpec

    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    spec = DataSpec(train=sentiment_csv)
    default = build_adversary(TrainConfig(model="textcnn", method="freelb", data=spec).resolved(),
                              model)
    assert (default.max_norm, default.init_mag) == (FreeLB(model).max_norm, FreeLB(model).init_mag)
    small = build_adversary(TrainConfig(model="textcnn", method="freelb", epsilon=0.3,
                                        data=spec).resolved(), model)
    assert small.max_norm == 0.3 and small.init_mag == pytest.approx(0.5)
    old = TrainConfig(model="textcnn", method="freelb", data=spec)  # a config.json from before
    assert build_adversary(old, model).init_mag == 1.0 and build_adversary(old, model).max_norm == 0.6


@pytest.mark.parametrize("flags, relative, sizes", [
    (["--method", "fgm"], True, {"epsilon": 0.03}),
    (["--method", "pgd"], True, {"epsilon": 0.03, "alpha": 0.009}),
    (["--method", "fgm", "--epsilon", "1.0"], False, {"epsilon": 1.0}),  # a given size: absolute
    (["--method", "pgd", "--alpha", "0.2"], False, {"epsilon": 1.0, "alpha": 0.2}),
    (["--method", "fgm", "--absolute-epsilon"], False, {"epsilon": 1.0}),  # the library's default
    (["--method", "fgm", "--epsilon", "0.1", "--relative-epsilon"], True, {"epsilon": 0.1}),
    (["--method", "fgsm"], False, {"epsilon": 0.01}),
    (["--method", "vat"], False, {"epsilon": 3.0}),
    (["--method", "freelb"], False, {"epsilon": 0.6, "alpha": 0.1}),  # nothing measured helped
])
def test_the_measured_defaults_apply_only_when_no_size_is_given(flags, relative, sizes, sentiment_csv,
                                                                tmp_path):
    from advnlp.cli.config import MEASURED, TrainConfig
    from advnlp.cli.parser import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--model", "textcnn", "--train", sentiment_csv, *flags])
    cfg = config_from_args(args).resolved()
    assert cfg.relative_epsilon is relative
    assert {k: getattr(cfg, k) for k in sizes} == pytest.approx(sizes)
    if relative and "--epsilon" not in flags:
        assert {k: v for k, v in MEASURED[cfg.method].items() if k != "relative_epsilon"} == sizes
    old = TrainConfig.from_json({**cfg.to_json(), "relative_epsilon": False})  # a config from before
    assert old.relative_epsilon is False


def test_relative_and_absolute_epsilon_exclude_each_other(sentiment_csv, tmp_path, capsys):
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--relative-epsilon",
               "--absolute-epsilon", "--output-dir", tmp_path / "r") == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_yopo_trains_a_hugging_face_model_at_pgds_measured_sizes(sentiment_csv, tiny_bert, tmp_path):
    out = tmp_path / "run"
    assert run("train", "--model", tiny_bert, "--train", sentiment_csv, "--method", "yopo",
               "--epochs", "1", "--max-length", "16", "--output-dir", out, "--quiet") == 0
    cfg = read_json(out, "config.json")
    assert (cfg["method"], cfg["epsilon"], cfg["alpha"], cfg["relative_epsilon"]) == \
        ("yopo", 0.03, 0.009, True)


def test_yopo_on_a_model_without_a_stack_of_layers_exits_2(sentiment_csv, tmp_path, capsys):
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--method", "yopo",
               "--epochs", "1", "--output-dir", tmp_path / "run", "--quiet") == 2
    err = capsys.readouterr().err
    # The library's argument name (layer_list=) is no command-line option (issue 27, item 7)
    assert "--method yopo" in err and "stack" in err and "layer_list" not in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_train_config_retrains_a_run_to_the_same_weights(sentiment_csv, tmp_path, capsys):
    first, again = tmp_path / "first", tmp_path / "again"
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--epochs", "2",
               "--method", "pgd", "--steps", "2", "--seed", "7", "--quiet",
               "--output-dir", str(first)) == 0
    assert run("train", "--config", str(first / "config.json"), "--output-dir", str(again),
               "--quiet") == 0
    a = load_file(str(first / "model" / "model.safetensors"))
    b = load_file(str(again / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cfg = read_json(again, "config.json")
    assert cfg == {**read_json(first, "config.json"), "output_dir": str(again)}
    # a flag given on the command line overrides the file's value
    assert run("train", "--config", str(first / "config.json"), "--output-dir",
               str(tmp_path / "other"), "--seed", "8", "--epochs", "1", "--quiet") == 0
    assert read_json(tmp_path / "other", "config.json")["seed"] == 8


def test_compare_config_takes_a_runs_settings_and_reproduces_it(sentiment_csv, tmp_path,
                                                               capsys):
    """compare --config RUN/config.json: the run's settings for every method; its own method
    trained again gives the run's weights bit for bit."""
    first, cmp = tmp_path / "first", tmp_path / "cmp"
    assert run("train", "--model", "textcnn", "--train", sentiment_csv, "--epochs", "2",
               "--method", "fgm", "--seed", "7", "--batch-size", "8", "--quiet",
               "--output-dir", str(first)) == 0
    assert run("compare", "--config", str(first / "config.json"), "--methods", "none,fgm",
               "--attack-samples", "4", "--cost-rounds", "0", "--output-dir", str(cmp),
               "--quiet") == 0
    plan = read_json(cmp, "compare-config.json")["config"]
    assert (plan["seed"], plan["epochs"], plan["batch_size"]) == (7, 2, 8)
    a = load_file(str(first / "model" / "model.safetensors"))
    b = load_file(str(cmp / "fgm" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_config_that_is_no_config_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochs": "many"}')
    assert run("train", "--config", str(bad)) == 2
    assert f"--config {bad}: unreadable" in capsys.readouterr().err
    assert run("train", "--config", str(tmp_path / "missing.json")) == 2
