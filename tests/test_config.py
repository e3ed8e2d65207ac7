"""runner.config: strict YAML loading, one-line errors with hints, and CLI precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.config import Categorical, FloatRange, IntRange, SweepConfig, load_config, to_yaml
from runner.errors import ConfigError
from runner.search.space import max_epochs, to_distributions
from runner.sweep import build_parser, resolve_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "sweeps").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert "\n" not in message, "config errors are reported on one line"
    return message


def test_sweeps_folder_is_not_empty():
    assert SHIPPED, "sweeps/*.yaml not found"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_sweep_loads(path, tmp_path):
    """Each shipped file validates, its space builds Optuna distributions, and it survives a YAML round trip."""
    cfg = load_config(path)
    distributions = to_distributions(cfg)
    assert set(distributions) == set(cfg.searched())
    assert max_epochs(cfg) >= 1
    # The resolved config logged on the study run must load back as the same config.
    assert load_config(write(tmp_path, to_yaml(cfg))) == cfg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("study:\n  nmae: x\n", ["study.nmae", "unknown key", "did you mean 'name'"]),
        ("serach_space: {}\n", ["serach_space", "unknown key", "did you mean 'search_space'"]),
        ("hyperparameters:\n  learning_rte: 1.0e-4\n", ["hyperparameters.learning_rte", "'learning_rate'"]),
        (
            "search_space:\n  learning_rate: {type: float, low: 1.0e-5, hgih: 1.0e-4}\n",
            ["search_space.learning_rate.hgih", "did you mean 'high'"],
        ),
        (
            "search_space:\n  learnin_rate: {type: float, low: 1.0e-5, high: 1.0e-4}\n",
            ["search_space.learnin_rate", "not a searchable hyperparameter", "'learning_rate'"],
        ),
    ],
    ids=["section-key", "top-level", "hyperparameter", "range-key", "space-name"],
)
def test_unknown_key_names_path_and_nearest_key(tmp_path, text, expected):
    message = config_error(tmp_path, text)
    for part in expected:
        assert part in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("study:\n  n_trials: ten\n", ["study.n_trials", "integer"]),
        ("study:\n  n_trials: 2.5\n", ["study.n_trials", "integer"]),
        ("tracking:\n  system_metrics: maybe\n", ["tracking.system_metrics", "boolean"]),
        ("study:\n  metric: f1\n", ["study.metric", "eval_f1"]),
        (
            "search_space:\n  learning_rate: {type: float, low: 1.0e-3, high: 1.0e-4}\n",
            ["learning_rate", "greater than high"],
        ),
        (
            "search_space:\n  learning_rate: {type: float, low: 0, high: 1.0e-4, log: true}\n",
            ["learning_rate", "log", "> 0"],
        ),
        ("search_space:\n  fp16: {type: categorical, choices: []}\n", ["search_space.fp16.choices", "at least 1"]),
        (
            "search_space:\n  per_device_train_batch_size: {type: int, low: 0, high: 8}\n",
            ["per_device_train_batch_size", "greater than 0"],
        ),
        (
            "search_space:\n  num_train_epochs: {type: categorical, choices: [2, -1]}\n",
            ["num_train_epochs", "-1 is not valid"],
        ),
        ("search_space:\n  num_train_epochs: 0\n", ["search_space.num_train_epochs", "greater than 0"]),
        ("search_space:\n  learning_rate: [1, 2]\n", ["search_space.learning_rate", "fixed value or a mapping"]),
        ("study: [\n", ["invalid YAML", "line"]),
        ("- a\n- b\n", ["top level must be a mapping"]),
    ],
    ids=[
        "str-for-int",
        "float-for-int",
        "str-for-bool",
        "literal",
        "low>high",
        "log-low<=0",
        "empty-categorical",
        "batch<=0",
        "epochs<0",
        "fixed-epochs=0",
        "list-entry",
        "bad-yaml",
        "not-a-mapping",
    ],
)
def test_invalid_values_are_one_line_errors(tmp_path, text, expected):
    message = config_error(tmp_path, text)
    for part in expected:
        assert part in message, message


def test_all_errors_reported_at_once(tmp_path):
    message = config_error(tmp_path, "study:\n  n_trials: 0\n  metric: f1\nmodel:\n  max_length: 2\n")
    assert "study.n_trials" in message and "study.metric" in message and "model.max_length" in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_unquoted_exponent_is_a_float(tmp_path):
    """PyYAML alone reads 1e-5 as a string; the runner's loader reads it as the number users mean."""
    text = (
        "hyperparameters:\n  learning_rate: 1e-5\nsearch_space:\n  weight_decay: {type: float, low: 1e-4, high: 1E-1}\n"
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.hyperparameters.learning_rate == pytest.approx(1e-5)
    assert cfg.search_space["weight_decay"] == FloatRange(type="float", low=1e-4, high=0.1)


@pytest.mark.parametrize(
    "text",
    [
        "hyperparameters:\n  learning_rate: '1e-5'\n",
        "search_space:\n  learning_rate: {type: float, low: '1e-5', high: 1.0e-4}\n",
        "search_space:\n  learning_rate: '1e-5'\n",
    ],
    ids=["hyperparameters", "range-bound", "fixed-space-value"],
)
def test_quoted_number_rejected_with_hint(tmp_path, text):
    message = config_error(tmp_path, text)
    assert "learning_rate" in message
    assert "remove the quotes" in message


def test_int_range_log_with_step_is_a_config_error(tmp_path):
    """Optuna refuses log together with step != 1; the sweep must say so up front (exit 2), not fail every trial."""
    config_error(
        tmp_path, "search_space:\n  per_device_train_batch_size: {type: int, low: 8, high: 32, step: 8, log: true}\n"
    )


def test_defaults_yaml_flags_set_precedence(tmp_path):
    """defaults < YAML < named flags < --set; a flag left unset never overrides the file."""
    path = write(
        tmp_path,
        "study:\n  name: from-yaml\n  n_trials: 5\n  metric: eval_accuracy\nmodel:\n  name: yaml-model\n",
    )
    parser = build_parser()
    only_file = resolve_config(parser.parse_args(["--config", str(path)]))
    assert (only_file.study.n_trials, only_file.model.name, only_file.study.name) == (5, "yaml-model", "from-yaml")
    assert only_file.study.direction == "maximize" and only_file.study.sampler == "tpe"  # defaults

    args = ["--config", str(path), "--trials", "7", "--model", "flag-model", "--set", "study.n_trials=9"]
    cfg = resolve_config(parser.parse_args(args))
    assert cfg.study.n_trials == 9  # --set beats --trials
    assert cfg.model.name == "flag-model"  # flag beats YAML
    assert cfg.study.name == "from-yaml" and cfg.study.metric == "eval_accuracy"  # YAML beats defaults
    assert cfg.tracking.system_metrics is True
    assert resolve_config(parser.parse_args([*args, "--no-system-metrics"])).tracking.system_metrics is False


def test_tracking_uri_flag_beats_environment(tmp_path, monkeypatch):
    path = write(tmp_path, "")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    parser = build_parser()
    assert resolve_config(parser.parse_args(["--config", str(path)])).tracking.tracking_uri == "sqlite:///from-env.db"
    args = ["--config", str(path), "--tracking-uri", "sqlite:///flag.db"]
    assert resolve_config(parser.parse_args(args)).tracking.tracking_uri == "sqlite:///flag.db"


def test_set_pins_a_searched_value(tmp_path):
    """--set search_space.learning_rate=5e-5 turns the range into a fixed value: logged, not searched."""
    path = write(tmp_path, "search_space:\n  learning_rate: {type: float, low: 1.0e-5, high: 1.0e-4, log: true}\n")
    parser = build_parser()
    searched = resolve_config(parser.parse_args(["--config", str(path)]))
    assert "learning_rate" in to_distributions(searched)
    pinned = resolve_config(parser.parse_args(["--config", str(path), "--set", "search_space.learning_rate=5e-5"]))
    assert "learning_rate" not in pinned.searched()
    assert "learning_rate" not in to_distributions(pinned)
    assert pinned.fixed_hyperparameters()["learning_rate"] == pytest.approx(5e-5)


@pytest.mark.parametrize("item", ["study.n_trials", "=3", "study.n_trials=[1"])
def test_malformed_set_is_a_config_error(tmp_path, item):
    args = build_parser().parse_args(["--config", str(write(tmp_path, "")), "--set", item])
    with pytest.raises(ConfigError, match="--set"):
        resolve_config(args)


@pytest.mark.parametrize("where", ["repo", "elsewhere"])
def test_default_config_file_is_picked_up(monkeypatch, tmp_path, where):
    """Without --config: sweeps/mrpc.yaml here, else the one in the source checkout."""
    monkeypatch.chdir(REPO if where == "repo" else tmp_path)
    cfg = resolve_config(build_parser().parse_args([]))
    assert cfg == load_config(REPO / "sweeps" / "mrpc.yaml")


def test_searched_and_fixed_split():
    cfg = SweepConfig.model_validate(
        {
            "hyperparameters": {"weight_decay": 0.0},
            "search_space": {
                "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-4},
                "num_train_epochs": {"type": "int", "low": 1, "high": 3},
                "fp16": {"type": "categorical", "choices": [True, False]},
                "per_device_train_batch_size": 16,
            },
        }
    )
    assert set(cfg.searched()) == {"learning_rate", "num_train_epochs", "fp16"}
    assert isinstance(cfg.searched()["num_train_epochs"], IntRange)
    assert isinstance(cfg.searched()["fp16"], Categorical)
    fixed = cfg.fixed_hyperparameters()
    assert fixed == {"per_device_train_batch_size": 16, "weight_decay": 0.0, "warmup_ratio": 0.1}
