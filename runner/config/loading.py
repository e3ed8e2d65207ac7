"""Loading the sweep config: strict YAML, ``--set`` overrides, one-line errors, facts given outside the file.

Precedence: model defaults < sweep YAML < named CLI flags < ``--set a.b=v``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from runner.config.schema import SEARCHABLE, SweepConfig, did_you_mean, looks_numeric
from runner.errors import ConfigError, first_line

# The Optuna storage URL when no --storage is given: keeps a URL with a password out of the command
# line (ps shows it to everyone), and the --workers launcher hands it to its workers this way.
STORAGE_ENV = "RUNNER_STORAGE"

# --- facts given outside the file -------------------------------------------------

DATA_DIR_ENV = "RUNNER_DATA_DIR"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def tracking_uri_override(flag: str | None) -> str | None:
    """The tracking URI given outside the config: ``--tracking-uri`` > ``$MLFLOW_TRACKING_URI``, else None.

    None keeps the config's ``tracking.tracking_uri`` (the sweep file's, or the default for the
    commands that read a store without one). The one rule for every command.
    """
    return flag or os.environ.get(TRACKING_URI_ENV) or None


def resolve_data_dir(cfg: SweepConfig, flag: str | None) -> SweepConfig:
    """``cfg`` with ``data.data_dir`` resolved: ``--data-dir`` > ``$RUNNER_DATA_DIR`` > the config's.

    Stored absolute (against the working directory, where the data was read from), so the
    config saved with a model still finds the data when read from another folder.
    None stays None: the data comes from the Hub.
    """
    chosen = flag or os.environ.get(DATA_DIR_ENV) or cfg.data.data_dir
    if chosen:
        chosen = str(Path(chosen).expanduser().resolve())
    if chosen == cfg.data.data_dir:
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": chosen})})


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
        problem = getattr(err, "problem", None) or first_line(err)
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
        # A union's tag is never the first part: a top-level key named "fixed" is the user's key.
        loc = [_printable(p) for i, p in enumerate(e["loc"]) if not (i and _is_union_tag(p))]
        path = ".".join(loc)
        if e["type"] == "extra_forbidden":
            parts.append(f"{path}: unknown key{did_you_mean(loc[-1], _valid_keys(loc[:-1]))}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if "fixed" in e["loc"][1:]:
            msg = "expected a fixed value or a mapping with type: float, int or categorical"
        elif isinstance(e.get("input"), str) and looks_numeric(e["input"]):
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


def _valid_keys(loc: list[str]) -> tuple[str, ...]:
    """The keys allowed in the section at ``loc`` (the dotted path of an unknown key, less the key).

    Walks the models from ``SweepConfig`` down the field annotations, for the "did you mean"
    hint. ``search_space`` is a dict, not a model, so the walk finds no field for a
    hyperparameter's name there: an entry of the space takes the distribution keys (the union
    of float, int and categorical). Any other path without a model gives no hint.
    """
    model: Any = SweepConfig
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            if part in SEARCHABLE:
                return ("type", "low", "high", "log", "step", "choices")
            return ()
        model = field.annotation
    return tuple(getattr(model, "model_fields", {}))


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
