"""One source for options: every flag of train and compare that sets a run's settings is a
field of TrainConfig or DataSpec (or a task's option, a TrainConfig field too), with the
field's default; the flags that are not settings are a short, named list."""
import dataclasses

import pytest

from cli_helpers import one_line_error, run

from advnlp.cli.config import TrainConfig
from advnlp.cli.data import DataSpec
from advnlp.cli.options import described
from advnlp.cli.parser import build_parser, config_from_args
from advnlp.cli.tasks import TASKS

# What train / compare take that is not a run's setting (the command's own flags).
COMMAND_FLAGS = {"train": {"command", "resume", "allow_changed_data", "distributed", "overwrite",
                           "quiet", "config"},
                 "compare": {"command", "methods", "seeds", "resume", "overwrite", "quiet",
                             "config", "attack_epsilon", "attack_steps", "attack_samples",
                             "typo_rate", "attack", "attack_limit", "jobs",
                             "validation_scores", "cost_rounds"}}


def _settings():
    fields = {**described(TrainConfig), **described(DataSpec)}
    for task in TASKS.values():
        for name in task.options:
            fields[name] = (next(f for f in dataclasses.fields(TrainConfig) if f.name == name).default,
                            task.options[name])
    return fields


@pytest.mark.parametrize("command", ["train", "compare"])
def test_every_flag_is_a_config_field_with_its_default(command):
    args = vars(build_parser().parse_args([command]))
    settings = _settings()
    if command == "compare":
        settings.pop("method")  # compare's entries set it
    assert set(args) == set(settings) | COMMAND_FLAGS[command]
    for name, (default, _) in settings.items():
        assert args[name] == default, name


def test_the_parsed_defaults_are_the_dataclasses_defaults():
    cfg = config_from_args(build_parser().parse_args(["train"]))
    assert cfg == TrainConfig()
    compare = config_from_args(build_parser().parse_args(["compare"]))
    assert compare == dataclasses.replace(TrainConfig(), method="none")


def test_one_text_column_or_a_pair(tmp_path):
    for given, want in (("review", ("review",)), ("premise,hypothesis", ("premise", "hypothesis"))):
        for flag in ("--text-column", "--text-columns"):
            cfg = config_from_args(build_parser().parse_args(["train", flag, given]))
            assert cfg.data.text_columns == want


def test_three_text_columns_are_refused_before_anything_is_written(tmp_path, capsys):
    assert run("train", "--text-columns", "a,b,c", "--output-dir", tmp_path / "x") == 2
    one_line_error(capsys, "--text-columns takes one or two column names")
    assert not (tmp_path / "x").exists()


def test_a_python_config_gets_the_same_data_checks():
    from advnlp.cli.errors import InputError

    with pytest.raises(InputError, match="--validation / --test need --train"):
        TrainConfig(data=DataSpec(validation="v.csv")).resolved()
    with pytest.raises(InputError, match="one or two column names"):
        TrainConfig(data=DataSpec(text_columns=())).resolved()
