"""compare --seeds N: every method N times, paired seeds, intervals and verdicts."""
import math
import statistics

import pytest

from cli_helpers import ctrl_c_after, read_json, run

ARGS = ["--model", "textcnn", "--epochs", "1", "--batch-size", "16", "--attack-samples", "8",
        "--attack-steps", "2", "--quiet"]
T_975 = {1: 12.706204736174707, 2: 4.302652729911275}  # Student t quantiles, from tables


def _interval(diffs):
    """The 95% t-interval of the mean, by the textbook formula."""
    n, mean = len(diffs), statistics.mean(diffs)
    half = T_975[n - 1] * statistics.stdev(diffs) / math.sqrt(n) if n > 1 else 0.0
    return mean - half, mean + half


def test_three_seeds_per_method_with_intervals_and_verdicts(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run("compare", *ARGS, "--methods", "none,fgm", "--seeds", "3", "--seed", "7",
               "--train", sentiment_csv, "--output-dir", out) == 0
    result = read_json(out, "compare.json")
    assert result["seeds"] == [7, 8, 9]
    runs = {(r["method"], r["seed"]): r for r in result["runs"]}
    assert sorted(runs) == [(m, s) for m in ("fgm", "none") for s in (7, 8, 9)]
    for (m, s), r in runs.items():
        cfg = read_json(out, m, f"seed-{s}", "config.json")
        assert cfg["seed"] == s and cfg["method"] == m
    for key in ("accuracy", "robust_accuracy@0.5", "macro_f1", "validation_accuracy"):
        diffs = [runs["fgm", s][key] - runs["none", s][key] for s in (7, 8, 9)]
        got = result["versus_none"]["fgm"][key]
        assert got["mean_difference"] == pytest.approx(statistics.mean(diffs))
        if statistics.pstdev(diffs) > 0:
            assert got["interval"] == pytest.approx(list(_interval(diffs)))
        low, high = got["interval"]
        want = "helped" if low > 0 else "hurt" if high < 0 else "no detectable effect"
        assert got["verdict"] == want
    fgm = next(r for r in result["methods"] if r["method"] == "fgm")
    accs = [runs["fgm", s]["accuracy"] for s in (7, 8, 9)]
    assert fgm["accuracy"] == pytest.approx(statistics.mean(accs))
    assert fgm["std"]["accuracy"] == pytest.approx(statistics.stdev(accs))
    printed = capsys.readouterr().out
    assert "3 seeds (7..9)" in printed and "95% t-interval" in printed
    assert result["versus_none"]["fgm"]["accuracy"]["verdict"] in printed
    assert (out / "compare.png").is_file()


def test_a_method_that_cannot_differ_from_none_has_no_detectable_effect(bert_without_dropout,
                                                                        sentiment_csv, tmp_path):
    """FGM with --adv-weight 0 adds zero to every gradient: on a model without dropout it
    trains exactly as none, so every paired difference is 0."""
    out = tmp_path / "cmp"
    assert run("compare", "--model", bert_without_dropout, "--epochs", "1", "--batch-size", "16",
               "--lr", "0.01", "--attack-samples", "8", "--attack-steps", "2", "--quiet",
               "--methods", "none,fgm", "--adv-weight", "0", "--seeds", "2",
               "--train", sentiment_csv, "--output-dir", out) == 0
    versus = read_json(out, "compare.json")["versus_none"]["fgm"]
    for key, d in versus.items():
        assert d["mean_difference"] == 0 and d["interval"] == [0.0, 0.0], key
        assert d["verdict"] == "no detectable effect"


def test_an_interrupted_compare_resumes_from_its_finished_runs(sentiment_csv, tmp_path, monkeypatch,
                                                               capsys):
    out = tmp_path / "cmp"
    argv = ["compare", *ARGS, "--methods", "none,fgm", "--seeds", "2", "--train", sentiment_csv,
            "--output-dir", out]
    with monkeypatch.context() as m:
        ctrl_c_after(m, 2 * 6 + 3)  # 96 training examples / 16 = 6 steps a run: inside the 3rd
        assert run(*argv) == 130
    done = out / "none" / "seed-42" / "model" / "model.safetensors"
    stamp = done.stat().st_mtime_ns
    assert not (out / "compare.json").exists()
    capsys.readouterr()
    assert run("compare", "--resume", out, "--quiet") == 0
    assert done.stat().st_mtime_ns == stamp  # a finished run is kept, not retrained
    result = read_json(out, "compare.json")
    assert len(result["runs"]) == 4 and "fgm" in result["versus_none"]


@pytest.mark.parametrize("argv, needle", [
    (["--seeds", "0"], "--seeds takes a number of seeds >= 1"),
    (["--seeds", "-2"], "--seeds takes a number of seeds >= 1"),
    (["--methods", "none,fgm,fgm", "--seeds", "2"], "lists fgm more than once"),
])
def test_bad_seed_arguments(argv, needle, sentiment_csv, tmp_path, capsys):
    assert run("compare", *ARGS, "--train", sentiment_csv, "--output-dir", tmp_path / "c", *argv) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_resume_takes_the_comparisons_own_settings(tmp_path, capsys):
    assert run("compare", "--resume", tmp_path, "--seeds", "3") == 2
    assert "drop --seeds" in capsys.readouterr().err
    assert run("compare", "--resume", tmp_path) == 2
    assert "not a compare folder" in capsys.readouterr().err


def test_an_interrupted_compare_says_how_to_resume_it(sentiment_csv, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    with monkeypatch.context() as m:
        ctrl_c_after(m, 3)
        assert run("compare", *ARGS, "--methods", "none,fgm", "--train", sentiment_csv,
                   "--output-dir", out) == 130
    assert f"advnlp compare --resume {out}" in capsys.readouterr().err


def test_a_trained_but_unscored_run_is_scored_not_retrained(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run("compare", *ARGS, "--methods", "none,fgm", "--seeds", "2", "--train", sentiment_csv,
               "--output-dir", out) == 0
    want = read_json(out, "compare.json")["runs"]
    folder = out / "fgm" / "seed-43"
    (folder / "compare-row.json").unlink()  # as if stopped while being scored
    stamp = (folder / "model" / "model.safetensors").stat().st_mtime_ns
    assert run("compare", "--resume", out, "--quiet") == 0
    assert (folder / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    assert read_json(out, "compare.json")["runs"] == want


def test_compare_resume_refuses_changed_data(sentiment_csv, tmp_path, monkeypatch, capsys):
    import shutil

    data = shutil.copy(sentiment_csv, tmp_path / "data.csv")
    out = tmp_path / "cmp"
    with monkeypatch.context() as m:
        ctrl_c_after(m, 6 + 2)  # none finished, fgm interrupted
        assert run("compare", *ARGS, "--methods", "none,fgm", "--train", data,
                   "--output-dir", out) == 130
    shutil.rmtree(out / "fgm")  # the next run has not started: only the plan knows its data
    with open(data, "a", encoding="utf-8") as f:
        f.write("one more,pos\n")
    capsys.readouterr()
    assert run("compare", "--resume", out) == 2
    assert "changed since this run started" in capsys.readouterr().err


def test_identical_nonzero_differences_give_no_interval():
    from advnlp.cli.statistics import paired_difference

    d = paired_difference([0.6, 0.7], [0.5, 0.6])  # +0.1 on both seeds, no spread
    assert d["interval"] is None and d["verdict"] == "no detectable effect" and "spread" in d["note"]
    assert paired_difference([0.5, 0.5], [0.5, 0.5])["interval"] == [0.0, 0.0]


def test_rows_written_before_several_radii_keep_their_one_radius():
    """A compare folder from before --attack-epsilon took a list resumes: its plan holds one
    number and its finished rows one robust_accuracy."""
    from advnlp.cli.commands import _upgraded, metric_keys

    plan = {"attack_epsilon": 0.5, "attack": None}
    assert _upgraded({"accuracy": 0.9, "robust_accuracy": 0.4}, plan) == \
        {"accuracy": 0.9, "robust_accuracy@0.5": 0.4}
    assert metric_keys(plan)[:3] == ["accuracy", "macro_f1", "robust_accuracy@0.5"]


def test_rows_written_before_several_discrete_attacks_keep_their_one_attack():
    from advnlp.cli.commands import _upgraded, metric_keys

    plan = {"attack_epsilon": [0.5], "attack": "word"}  # one name: a plan from before the lists
    assert _upgraded({"attacked_accuracy": 0.3, "attack_success_rate": 0.6}, plan) == \
        {"attacked_accuracy@word": 0.3, "attack_success_rate@word": 0.6}
    assert "attacked_accuracy@word" in metric_keys(plan)
