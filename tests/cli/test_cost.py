"""compare's step-cost column: methods timed against none, interleaved (advnlp.cli.cost)."""
import pytest

from advnlp.cli import cost
from advnlp.cli.tasks.classification import classify as T
from cli_helpers import read_json, run


class FakeClock:
    """Time that moves only when a step says so: step costs are known exactly."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _steps(clock, costs, load, calls):
    """Steps that take ``costs[name] * load[k]`` on their k-th call (machine load that
    changes from call to call) and record their order."""
    def make(name):
        def step():
            k = sum(1 for c in calls if c == name)
            calls.append(name)
            clock.now += costs[name] * load[k % len(load)]
        return step
    return {name: make(name) for name in costs}


def test_ratios_are_per_round_medians_and_the_order_rotates():
    clock, calls = FakeClock(), []
    # load changes every call, the same for every method's k-th call: per-round ratios
    # are exact, while the times themselves vary 1x..5x
    load = [1.0, 1.0, 3.0, 5.0, 1.0, 2.0]
    steps = _steps(clock, {"none": 1.0, "fgm": 2.0, "pgd": 3.5}, load, calls)
    out = cost.interleaved(steps, rounds=4, warmup=2, clock=clock)
    assert out["none"]["ratio"] == 1.0
    assert out["fgm"]["ratio"] == pytest.approx(2.0)
    assert out["pgd"]["ratio"] == pytest.approx(3.5)
    # fgm's timed calls are its 3rd..6th: loads 3, 5, 1, 2, times 6, 10, 2, 4, median 5
    assert out["fgm"]["seconds"] == pytest.approx(5.0)
    assert all(o["rounds"] == 4 for o in out.values())
    timed = calls[6:]  # after 2 warm-up calls of each
    assert timed == ["none", "fgm", "pgd", "fgm", "pgd", "none", "pgd", "none", "fgm",
                     "none", "fgm", "pgd"]


def test_the_median_ignores_one_disturbed_round():
    clock, calls = FakeClock(), []
    steps = _steps(clock, {"none": 1.0, "fgm": 2.0}, [1.0], calls)
    slow = steps["fgm"]
    rounds_seen = {"n": 0}

    def sometimes_disturbed():  # the 2nd timed call of fgm hits a busy machine
        slow()
        rounds_seen["n"] += 1
        if rounds_seen["n"] == 4:
            clock.now += 100.0
    steps["fgm"] = sometimes_disturbed
    out = cost.interleaved(steps, rounds=3, warmup=2, clock=clock)
    assert out["fgm"]["ratio"] == pytest.approx(2.0)


def test_interleaved_checks_its_arguments():
    with pytest.raises(ValueError, match="reference step 'none'"):
        cost.interleaved({"fgm": lambda: None}, rounds=1)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        cost.interleaved({"none": lambda: None}, rounds=0)


ARGS = ["--model", "textcnn", "--epochs", "1", "--batch-size", "16", "--attack-samples", "8",
        "--quiet"]


def test_compare_measures_every_method_with_its_own_adversary(sentiment_csv, tmp_path,
                                                              monkeypatch, capsys):
    used = []
    step = T.train_step

    def recording(clf, adv, *a, **k):
        used.append(type(adv).__name__ if adv is not None else "none")
        return step(clf, adv, *a, **k)

    monkeypatch.setattr(T, "train_step", recording)
    out = tmp_path / "cmp"
    assert run("compare", *ARGS, "--train", sentiment_csv, "--methods", "fgm,pgd",
               "--cost-rounds", "3", "--output-dir", out) == 0
    # 6 training steps per run, then the measurement: 2 warm-up + 3 timed steps of each
    # method and of none, which is not a row but is the reference
    assert used[:12] == ["FGM"] * 6 + ["PGD"] * 6
    assert sorted(used[12:]) == sorted(["FGM"] * 5 + ["PGD"] * 5 + ["none"] * 5)
    res = read_json(out, "compare.json")
    block = res["step_cost"]
    assert block["rounds"] == 3 and block["batch_examples"] == 16 and "interleaved" in block["how"]
    assert set(block["ratios"]) == {"fgm", "pgd", "none"} and block["ratios"]["none"] == 1.0
    for row in res["methods"]:
        assert row["step_cost"] == block["ratios"][row["method"]] > 0
        assert row["relative_cost"] is None  # no none row: no wall-clock reference
    table = capsys.readouterr().out
    assert "step cost vs none (interleaved)" in table and "(wall clock)" in table


def test_cost_rounds_0_leaves_the_wall_clock_column_alone(sentiment_csv, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run("compare", *ARGS, "--train", sentiment_csv, "--methods", "none,fgm",
               "--cost-rounds", "0", "--output-dir", out) == 0
    res = read_json(out, "compare.json")
    assert "step_cost" not in res and all("step_cost" not in r for r in res["methods"])
    assert res["methods"][0]["relative_cost"] == 1.0
    table = capsys.readouterr().out
    assert "interleaved" not in table and "training time vs none (wall clock)" in table


@pytest.mark.parametrize("value", ["-1", "x"])
def test_bad_cost_rounds_exit_2(sentiment_csv, tmp_path, capsys, value):
    assert run("compare", *ARGS, "--train", sentiment_csv, "--methods", "none",
               "--cost-rounds", value, "--output-dir", tmp_path / "cmp") == 2
    assert "--cost-rounds" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_timed_rounds_reads_every_clock_around_the_same_call():
    """The core the step-cost benchmarks share: per round, each clock's time of each step."""
    wall, cpu, calls = FakeClock(), FakeClock(), []
    steps = _steps(wall, {"none": 1.0, "fgm": 2.0}, [1.0], calls)
    fgm = steps["fgm"]

    def fgm_half_on_cpu():
        fgm()
        cpu.now += 1.0
    steps["fgm"] = fgm_half_on_cpu
    got = list(cost.timed_rounds(steps, 2, {"wall": wall, "cpu": cpu}))
    assert got == [{"wall": {"none": 1.0, "fgm": 2.0}, "cpu": {"none": 0.0, "fgm": 1.0}}] * 2
    assert calls == ["none", "fgm", "fgm", "none"]
