"""The typed sweep configuration: one frozen, strict pydantic model per YAML section.

Unknown keys and wrong types are rejected with their dotted path, all at once; the bounds below
turn a typo into an error before a sweep starts. Loading from YAML is in runner.config.loading.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, model_validator

from runner.config.space import Categorical, FloatRange, IntRange, SpaceEntry, _Strict, values_of
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
# A time budget (--timeout, study.timeout): 30 days, far above any sweep's, so an extra zero is an error.
MAX_TIMEOUT_S = 30 * 24 * 3600


def check_name(flag: str, value: str) -> str:
    """``value`` if it is a valid study or model name, else a one-line ConfigError naming ``flag``.

    The same rule as ``study.name`` in the config, for the commands that take a name as a flag.
    """
    if not re.fullmatch(NAME_PATTERN, value):
        raise ConfigError(f"{flag} {value!r} is not a valid name: use {NAME_RULE}")
    return value


DURATION_RULE = "a duration such as 90s, 45m, 2h or 1h30m, or a number of seconds"
_DURATION = re.compile(r"(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?")


def parse_duration(value: Any) -> float:
    """Seconds in ``90s``, ``45m``, ``2h``, ``1h30m`` or a bare number of seconds; ValueError otherwise.

    The one reader of ``--timeout`` and ``study.timeout``, so the flag and the file accept the same text.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and looks_numeric(value.strip()):
        seconds = float(value.strip())
    elif isinstance(value, str) and value.strip() and (found := _DURATION.fullmatch(value.strip().lower())):
        parts = {unit: float(n) for unit, n in found.groupdict().items() if n is not None}
        seconds = 3600 * parts.get("h", 0) + 60 * parts.get("m", 0) + parts.get("s", 0)
    else:
        raise ValueError(f"expected {DURATION_RULE}, got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"expected a duration of more than 0 seconds, got {value!r}")
    if seconds > MAX_TIMEOUT_S:
        raise ValueError(f"at most {MAX_TIMEOUT_S // 86400} days, got {value!r}")
    return seconds


def _optional_duration(value: Any) -> float | None:
    return None if value is None else parse_duration(value)


# Seconds, read from a duration; validated before pydantic's strict float check sees it.
Duration = Annotated[float | None, BeforeValidator(_optional_duration)]


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


# Configurations re-trained by the confirmation stage, and re-runs of each: a few of each is what
# tells a real difference from a lucky seed; more is hours of CPU time per sweep.
MAX_CONFIRM_TOP_K = 20
MAX_CONFIRM_SEEDS = 20


class ConfirmConfig(_Strict):
    """The confirmation stage: after the search, re-train the best configurations with new seeds.

    The winner is then the configuration with the best mean over its runs, not the luckiest
    single run. ``top_k: 0`` turns the stage off.
    """

    top_k: Annotated[int, Field(ge=0, le=MAX_CONFIRM_TOP_K)] = 0
    seeds: Annotated[int, Field(gt=0, le=MAX_CONFIRM_SEEDS)] = 2


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
    # Trials that must finish before the median pruner prunes anything. 5, Optuna's own default:
    # replayed on the default sweep's curves, 3 pruned a slow starter the confirmation stage
    # takes (its second best), 5 keeps all three for 3% more epochs (bench/README.md, section 5).
    pruner_startup_trials: Annotated[int, Field(ge=0)] = 5
    # Epochs every trial runs before it can be pruned.
    pruner_warmup_epochs: Annotated[int, Field(ge=0)] = 1
    storage: str = "sqlite:///mlruns/optuna.db"
    # Stop the sweep once this share of its trials failed (after at least 3 failures).
    max_failure_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    # Rerun a trial whose worker crashed or was stopped up to this many times, with the same
    # params. Trials that raised (a NaN loss, a bad batch size) would fail the same way again.
    retry_failed: Annotated[int, Field(ge=0, le=MAX_RETRIES)] = 0
    # A time budget for the whole command (search and confirmation), e.g. 45m; null means none.
    # The same command with a larger budget continues the study (runner.search.budget).
    timeout: Duration = None
    confirm: ConfirmConfig = ConfirmConfig()


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
    # A local folder (GLUE TSVs or csv/json/parquet); null means the Hub. --data-dir and
    # RUNNER_DATA_DIR override it (resolve_data_dir), and the config saved with runs and
    # models holds the folder actually used, as an absolute path.
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
    # Paraphrase is symmetric: each time a training pair is drawn, it is shown as (sentence2,
    # sentence1) with this probability (ELECTRA trains MRPC on both orders). 0 keeps the order.
    swap_order: Annotated[float, Field(ge=0, le=1)] = 0.0
    # torch.compile for training and evaluation: true, false, or "auto", which compiles only where a
    # whole trial was measured to get faster (bench/README.md, "torch.compile"). A boolean, not on/off:
    # YAML reads a bare `on` as true.
    compile: bool | Literal["auto"] = "auto"
    # With compile on: None lets torch mark a dimension dynamic after its first change; True compiles
    # one dynamic graph from the start; False compiles each shape (at most 8, then eager).
    compile_dynamic: bool | None = None
    # Pad each batch's length up to a multiple of this (1: to its longest pair). Compiled, a few
    # lengths then cover every batch (MRPC at 16: 8 lengths up to 128).
    pad_to_multiple_of: Annotated[int, Field(ge=1, le=128)] = 1


class TrackingConfig(_Strict):
    """Where MLflow records the sweep."""

    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_location: str = "mlruns/artifacts"
    system_metrics: bool = True
    # Optuna's plots (optimization history, parallel coordinates, importances) as PNGs on the
    # study run at the end of each sweep process: a couple of seconds, more with many trials.
    study_plots: bool = True
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
                raise ValueError(
                    f"search_space.{name}: not a searchable hyperparameter{did_you_mean(name, SEARCHABLE)}"
                )
            # Every value the space can produce must be a valid hyperparameter.
            for value in values_of(entry):
                try:
                    Hyperparameters.model_validate({name: value})
                except ValidationError as err:
                    msg = err.errors()[0]["msg"]
                    if isinstance(value, str) and looks_numeric(value):
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


def did_you_mean(name: str, valid: tuple[str, ...] | list[str]) -> str:
    """A " (did you mean 'x'?)" hint naming the closest of ``valid``, or "" when none is close."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def looks_numeric(text: str) -> bool:
    """Whether ``text`` reads as a number: a quoted number in YAML is a string, and says so."""
    try:
        float(text)
    except ValueError:
        return False
    return True
