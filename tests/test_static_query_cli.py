"""`dual-encoder train --architecture static-query`: the static_query_* options on the command line reach the
training configuration, keep TrainingConfig's defaults when left out, and bad values are refused with the flag
named. No model is trained: `train` is replaced by one that records the configuration it is given."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dual_encoder.cli import app
from dual_encoder.errors import ConfigurationError
from dual_encoder.training import TrainingConfig

runner = CliRunner()
STATIC_QUERY_FIELDS = (
    "static_query_init",
    "static_query_epochs",
    "static_query_learning_rate",
    "static_query_batch_size",
)


class _Recorded(Exception):
    """Raised by the stand-in for `train` once it has the configuration, so nothing is trained."""

    def __init__(self, config: TrainingConfig) -> None:
        super().__init__("recorded")
        self.config = config


@pytest.fixture
def recorded_config(monkeypatch):
    """Runs `dual-encoder train ...` and returns the TrainingConfig the command built."""
    import dual_encoder.training

    def fake_train(config, announce=None):
        raise _Recorded(config)

    monkeypatch.setattr(dual_encoder.training, "train", fake_train)

    def run(tmp_path: Path, *arguments: str) -> TrainingConfig:
        result = runner.invoke(app, ["train", str(tmp_path / "data"), "--output", str(tmp_path / "out"), *arguments])
        assert isinstance(result.exception, _Recorded), result.output
        return result.exception.config

    return run


def flat(output: str) -> str:
    """The output with rich's line wrapping and panel borders undone."""
    return " ".join(output.replace("│", " ").split())


def test_the_static_query_flags_reach_the_training_config(recorded_config, tmp_path):
    config = recorded_config(
        tmp_path,
        "--architecture",
        "static-query",
        "--static-query-init",
        "token-embeddings",
        "--static-query-epochs",
        "3",
        "--static-query-learning-rate",
        "0.2",
        "--static-query-batch-size",
        "64",
        "--light-query-objective",
        "distill",
    )
    assert config.architecture == "static-query"
    assert config.static_query_init == "token-embeddings"
    assert config.static_query_epochs == 3
    assert config.static_query_learning_rate == pytest.approx(0.2)
    assert config.static_query_batch_size == 64
    assert config.light_query_objective == "distill"


def test_left_out_flags_keep_the_training_config_defaults(recorded_config, tmp_path):
    config = recorded_config(tmp_path, "--architecture", "static-query")
    defaults = {field.name: field.default for field in fields(TrainingConfig)}
    for name in STATIC_QUERY_FIELDS:
        assert getattr(config, name) == defaults[name], name
    # The defaults themselves are those the measurements were made with.
    assert (config.static_query_init, config.static_query_epochs) == ("token-outputs", 6)
    assert (config.static_query_learning_rate, config.static_query_batch_size) == (0.01, 256)


def test_help_lists_every_static_query_flag_with_its_default():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0
    text = flat(result.output)
    for name in STATIC_QUERY_FIELDS:
        assert "--" + name.replace("_", "-") in text
    assert "static-query" in text
    assert "Default: token-outputs" in text and "Default: 256" in text


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--static-query-epochs", "0"], "'--static-query-epochs': Input should be greater than or equal to 1"),
        (
            ["--static-query-batch-size", "-5"],
            "'--static-query-batch-size': Input should be greater than or equal to 1",
        ),
        (["--static-query-epochs", "two"], "'--static-query-epochs': Input should be a valid integer"),
    ],
)
def test_out_of_range_values_are_refused_by_flag(recorded_config, tmp_path, arguments, message):
    result = runner.invoke(
        app,
        ["train", str(tmp_path / "data"), "-o", str(tmp_path / "out"), "--architecture", "static-query", *arguments],
    )
    assert result.exit_code == 2
    assert message in flat(result.output)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--static-query-init", "random"], "static_query_init must be one of token-outputs, token-embeddings"),
        (["--static-query-learning-rate", "0"], "static_query_learning_rate must be above 0"),
        (["--static-query-learning-rate", "50"], "static_query_learning_rate must be above 0 (and below 10)"),
    ],
)
def test_impossible_settings_are_refused_before_training(recorded_config, tmp_path, arguments, message):
    result = runner.invoke(
        app,
        ["train", str(tmp_path / "data"), "-o", str(tmp_path / "out"), "--architecture", "static-query", *arguments],
    )
    assert isinstance(result.exception, ConfigurationError), result.output
    assert message in str(result.exception)


def test_static_query_flags_with_another_architecture_are_refused(recorded_config, tmp_path):
    result = runner.invoke(
        app,
        [
            "train",
            str(tmp_path / "data"),
            "-o",
            str(tmp_path / "out"),
            "--architecture",
            "light-query",
            "--static-query-epochs",
            "3",
            "--static-query-init",
            "token-embeddings",
        ],
    )
    assert result.exit_code == 2
    text = flat(result.output)
    assert "--static-query-init, --static-query-epochs apply to --architecture static-query only" in text
    assert "--architecture is 'light-query', which would ignore them" in text
    assert "Add --architecture static-query" in text
