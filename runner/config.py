"""Typed sweep configuration, loaded strictly from YAML.

Each YAML section maps to one frozen pydantic model with ``extra="forbid"``, so
unknown keys and wrong types are rejected with their dotted path, all at once.
Precedence: model defaults < sweep YAML < named CLI flags < ``--set a.b=v``.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from runner.errors import ConfigError

# A study or registered-model name: it becomes a folder under mlruns/best, an MLflow experiment and
# a quoted value in MLflow filter strings, so no path separator, no "..", no quote, no space.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit"

# Upper bounds on sizes: far above any sensible MRPC sweep, low enough that a typo (an extra zero
# or three) is an error at once rather than a sweep that runs for months or a batch that cannot fit.
# Trials in one study: Optuna's TPE slows down as its history grows, and every trial is an MLflow run.
MAX_TRIALS = 10_000
# Epochs of one trial: fine-tuning converges in a handful; 100 already means days per trial on a CPU.
MAX_EPOCHS = 100
# Examples per device batch (train and eval): more than any GPU holds for a transformer at this length.
MAX_BATCH_SIZE = 4096
# Reruns of a crashed trial: a trial that keeps crashing its worker is broken, not unlucky.
MAX_RETRIES = 10


def check_name(flag: str, value: str) -> str:
    """``value`` if it is a valid study or model name, else a one-line ConfigError naming ``flag``.

    The same rule as ``study.name`` in the config, for the commands that take a name as a flag.
    """
    if not re.fullmatch(NAME_PATTERN, value):
        raise ConfigError(f"{flag} {value!r} is not a valid name: use {NAME_RULE}")
    return value


class _Strict(BaseModel):
    # No .inf / .nan anywhere: YAML reads them as floats, and a range up to .inf or a weight
    # decay of .inf passes every bound check, then fails (or trains garbage) inside a trial.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# --- search space ---------------------------------------------------------------


class FloatRange(_Strict):
    """A float searched between ``low`` and ``high`` (log-uniform when ``log``)."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self


class IntRange(_Strict):
    """An integer searched between ``low`` and ``high`` inclusive."""

    type: Literal["int"]
    low: int
    high: int
    step: Annotated[int, Field(gt=0)] = 1
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("log and step other than 1 cannot be combined")
        return self


Scalar = bool | int | float | str


class Categorical(_Strict):
    """One of a list of values."""

    type: Literal["categorical"]
    choices: Annotated[list[Scalar], Field(min_length=1)]


def _check_range(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low ({low}) is greater than high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log scale needs low > 0, got {low}")


Distribution = Annotated[FloatRange | IntRange | Categorical, Field(discriminator="type")]


def _entry_kind(value: Any) -> str:
    return "range" if isinstance(value, (dict, BaseModel)) else "fixed"


# A search-space entry is either a distribution (a mapping with `type`) or a fixed value.
SpaceEntry = Annotated[
    Annotated[Distribution, Tag("range")] | Annotated[Scalar, Tag("fixed")],
    Discriminator(_entry_kind),
]


# --- sections ---------------------------------------------------------------------


class Hyperparameters(_Strict):
    """One trial's training hyperparameters, named as in ``TrainingArguments``.

    The defaults are the fixed settings; ``search_space`` entries override them.
    """

    learning_rate: Annotated[float, Field(gt=0, lt=1)] = 5.0e-5
    per_device_train_batch_size: Annotated[int, Field(gt=0, le=MAX_BATCH_SIZE)] = 32
    num_train_epochs: Annotated[int, Field(gt=0, le=MAX_EPOCHS)] = 3
    # Mixed precision on the device at hand (fp16 on CUDA, bf16 on a capable CPU).
    fp16: bool = False
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    # Fraction of the total steps spent warming up the learning rate.
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.1


SEARCHABLE = tuple(Hyperparameters.model_fields)


class StudyConfig(_Strict):
    """The Optuna study: what is optimised, how trials are proposed and pruned."""

    name: Annotated[str, Field(min_length=1, pattern=NAME_PATTERN)] = "mrpc"
    metric: Literal["eval_f1", "eval_accuracy", "eval_loss"] = "eval_f1"
    direction: Literal["maximize", "minimize"] = "maximize"
    n_trials: Annotated[int, Field(gt=0, le=MAX_TRIALS)] = 20
    sampler: Literal["tpe", "random"] = "tpe"
    # Trials before TPE starts modelling: random exploration first.
    n_startup_trials: Annotated[int, Field(ge=0)] = 5
    pruner: Literal["median", "hyperband", "none"] = "median"
    # Trials that must finish before the median pruner prunes anything.
    pruner_startup_trials: Annotated[int, Field(ge=0)] = 3
    # Epochs every trial runs before it can be pruned.
    pruner_warmup_epochs: Annotated[int, Field(ge=0)] = 1
    storage: str = "sqlite:///mlruns/optuna.db"
    # Stop the sweep once this share of its trials failed (after at least 3 failures).
    max_failure_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    # Rerun a trial whose worker crashed or was stopped up to this many times, with the same
    # params. Trials that raised (a NaN loss, a bad batch size) would fail the same way again.
    retry_failed: Annotated[int, Field(ge=0, le=MAX_RETRIES)] = 0


class ModelConfig(_Strict):
    """The pretrained model: a Hub id or a local folder."""

    name: Annotated[str, Field(min_length=1)] = "sentence-transformers/all-MiniLM-L6-v2"
    # Longest tokenized pair; MRPC pairs rarely exceed 100 word pieces.
    max_length: Annotated[int, Field(gt=8, le=4096)] = 128
    # Dropout on the attention probabilities; null keeps the checkpoint's (0.1 for BERT).
    # At 0, attention draws no random mask per score and PyTorch can use its fused kernel.
    attention_dropout: Annotated[float, Field(ge=0, lt=1)] | None = None
    # "auto" is eager attention on CPU, where it measured faster than PyTorch's SDPA for
    # bf16 training (bench/README.md, section 6), and the library's choice (SDPA) on GPUs.
    attn_implementation: Literal["auto", "eager", "sdpa"] = "auto"


class DataConfig(_Strict):
    """Where MRPC comes from, and optional slices for quick runs."""

    hub_id: str = "nyu-mll/glue"
    hub_config: str = "mrpc"
    # A local folder (GLUE TSVs or csv/json/parquet); RUNNER_DATA_DIR also sets it.
    data_dir: str | None = None
    max_train_samples: Annotated[int, Field(gt=0)] | None = None
    max_eval_samples: Annotated[int, Field(gt=0)] | None = None


class TrainConfig(_Strict):
    """Settings of every training run that are not hyperparameters."""

    seed: int = 42
    per_device_eval_batch_size: Annotated[int, Field(gt=0, le=MAX_BATCH_SIZE)] = 128
    # Batches of similar length waste less compute on padding.
    group_by_length: bool = True
    lr_scheduler_type: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0


class TrackingConfig(_Strict):
    """Where MLflow records the sweep."""

    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_location: str = "mlruns/artifacts"
    system_metrics: bool = True
    best_model_dir: str = "mlruns/best"


class SweepConfig(_Strict):
    """The whole sweep, one section per concern."""

    study: StudyConfig = StudyConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    hyperparameters: Hyperparameters = Hyperparameters()
    tracking: TrackingConfig = TrackingConfig()
    search_space: dict[str, SpaceEntry] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_space(self) -> SweepConfig:
        for name, entry in self.search_space.items():
            if name not in SEARCHABLE:
                raise ValueError(f"search_space.{name}: not a searchable hyperparameter{_hint(name, SEARCHABLE)}")
            # Every value the space can produce must be a valid hyperparameter.
            for value in _values_of(entry):
                try:
                    Hyperparameters.model_validate({name: value})
                except ValidationError as err:
                    msg = err.errors()[0]["msg"]
                    if isinstance(value, str) and _looks_numeric(value):
                        msg += " (remove the quotes around the number)"
                    raise ValueError(f"search_space.{name}: {value!r} is not valid: {msg}") from None
        return self

    def searched(self) -> dict[str, FloatRange | IntRange | Categorical]:
        """The entries that are searched (distributions), by name."""
        return {k: v for k, v in self.search_space.items() if isinstance(v, BaseModel)}

    def fixed_hyperparameters(self) -> dict[str, Any]:
        """Every hyperparameter that is not searched, with its value."""
        base = self.hyperparameters.model_dump()
        base.update({k: v for k, v in self.search_space.items() if not isinstance(v, BaseModel)})
        return {k: v for k, v in base.items() if k not in self.searched()}


def _values_of(entry: SpaceEntry) -> list[Any]:
    if isinstance(entry, Categorical):
        return list(entry.choices)
    if isinstance(entry, (FloatRange, IntRange)):
        return [entry.low, entry.high]
    return [entry]


# --- YAML -------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-5`` as a float (PyYAML's YAML 1.1 reads a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text, turning syntax errors into a one-line ConfigError."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}:{where}: invalid YAML: {problem}") from None


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Load a sweep file, apply dotted-key overrides, and validate everything at once.

    ``path`` None means the built-in defaults. ``overrides`` maps dotted keys
    (``study.name``, ``search_space.learning_rate``) to already-parsed values.
    """
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from None
        raw = parse_yaml(text, source) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source}: {format_errors(err)}") from None


def parse_override(item: str) -> tuple[str, Any]:
    """Parse one ``--set a.b=value`` item; the value is read as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
    return key.strip(), parse_yaml(value, f"--set {key.strip()}")


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def format_errors(err: ValidationError) -> str:
    """Join pydantic's errors into one line: ``path: problem; path: problem``."""
    parts = []
    for e in err.errors():
        loc = [_printable(p) for p in e["loc"] if not _is_union_tag(p)]
        path = ".".join(loc)
        if e["type"] == "extra_forbidden":
            parts.append(f"{path}: unknown key{_hint(loc[-1], _valid_keys(loc[:-1]))}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if "fixed" in e["loc"]:
            msg = "expected a fixed value or a mapping with type: float, int or categorical"
        elif isinstance(e.get("input"), str) and _looks_numeric(e["input"]):
            msg += " (remove the quotes around the number)"
        parts.append(f"{path}: {msg}" if path else msg)
    # A union reports one error per alternative; keep each message once.
    return "; ".join(dict.fromkeys(parts))


_UNION_TAGS = {"range", "fixed", "float", "int", "categorical", "bool", "str"}


def _printable(part: Any) -> str:
    # A key is whatever the YAML says; one with a newline or control character would break the
    # one-line error (found by the fuzz in tests/test_fuzz.py): show it quoted and escaped.
    text = str(part)
    return text if text.isprintable() and text.strip() == text and text else repr(text)


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and part in _UNION_TAGS


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _valid_keys(loc: list[str]) -> tuple[str, ...]:
    model: Any = SweepConfig
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            if part in SEARCHABLE or model is None:
                return ("type", "low", "high", "log", "step", "choices")
            return ()
        model = field.annotation
    return tuple(getattr(model, "model_fields", {}))


def _hint(name: str, valid: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def to_yaml(cfg: SweepConfig) -> str:
    """The resolved config as YAML, for logging next to runs and exports, with no password in it.

    The text is recorded in MLflow and shipped inside the exported model, while the storage URL
    and tracking URI may carry passwords (runner.redact drops them; libpq and MLflow read them
    from PGPASSWORD / ~/.pgpass / MLFLOW_TRACKING_PASSWORD when the saved config is reused).
    """
    from runner.redact import redact_text, redact_url

    data = cfg.model_dump(mode="json")
    data["study"]["storage"] = redact_url(data["study"]["storage"])
    data["tracking"]["tracking_uri"] = redact_url(data["tracking"]["tracking_uri"])
    return redact_text(yaml.safe_dump(data, sort_keys=False))
