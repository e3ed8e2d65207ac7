"""Typed sweep configuration, loaded strictly from YAML.

Each YAML section maps to one frozen pydantic model with ``extra="forbid"``, so
unknown keys and wrong types are rejected with their dotted path, all at once.
Precedence: model defaults < sweep YAML < named CLI flags < ``--set a.b=v``.

``space`` holds the search-space entries, ``schema`` the sections and bounds, ``loading`` the
YAML, the overrides, the one-line errors and the facts given outside the file (flags, environment).
Import from ``runner.config``: this face stays when the modules behind it move.
"""

from runner.config.loading import (
    DATA_DIR_ENV,
    STORAGE_ENV,
    TRACKING_URI_ENV,
    format_errors,
    load_config,
    parse_override,
    parse_yaml,
    resolve_data_dir,
    to_yaml,
    tracking_uri_override,
)
from runner.config.schema import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_RETRIES,
    MAX_TRIALS,
    NAME_PATTERN,
    NAME_RULE,
    SEARCHABLE,
    ConfirmConfig,
    DataConfig,
    Hyperparameters,
    ModelConfig,
    StudyConfig,
    SweepConfig,
    TrackingConfig,
    TrainConfig,
    check_name,
)
from runner.config.space import Categorical, Distribution, FloatRange, IntRange, Scalar, SpaceEntry
from runner.errors import ConfigError

__all__ = [
    "DATA_DIR_ENV",
    "MAX_BATCH_SIZE",
    "MAX_EPOCHS",
    "MAX_RETRIES",
    "MAX_TRIALS",
    "NAME_PATTERN",
    "NAME_RULE",
    "SEARCHABLE",
    "STORAGE_ENV",
    "TRACKING_URI_ENV",
    "Categorical",
    "ConfigError",
    "ConfirmConfig",
    "DataConfig",
    "Distribution",
    "FloatRange",
    "Hyperparameters",
    "IntRange",
    "ModelConfig",
    "Scalar",
    "SpaceEntry",
    "StudyConfig",
    "SweepConfig",
    "TrackingConfig",
    "TrainConfig",
    "check_name",
    "format_errors",
    "load_config",
    "parse_override",
    "parse_yaml",
    "resolve_data_dir",
    "to_yaml",
    "tracking_uri_override",
]
