"""Load a model folder that can run no code of its own, whoever published it.

transformers runs a model's own code only through ``auto_map`` (or ``custom_pipelines``)
in its JSON files, the Python files beside them, and ``trust_remote_code``; MLflow turns
that on for a class transformers lacks. A registry is writable by whoever may publish,
so every model folder runner loads for prediction is checked first: standard transformers
classes only, no code keys, no Python file; then it loads with ``trust_remote_code`` off.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from runner.errors import ConfigError
from runner.redact import printable

# Files Python would import. A model needs none: only custom code (auto_map) would load them.
CODE_SUFFIXES = (".py", ".pyc", ".pyo")
# JSON keys through which transformers loads code shipped with a model (with trust_remote_code).
CODE_KEYS = ("auto_map", "custom_pipelines")


class RefusedModel(ConfigError):
    """A model that could run code of its own when loaded; refused before anything in it is loaded (exit 2)."""


def load_folder(
    model_dir: Path,
    tokenizer_dir: Path | None = None,
    name: str = "",
    safetensors_only: bool = False,
    code_root: Path | None = None,
):
    """The pipeline of a model folder (and its tokenizer's, when apart), checked first, ``trust_remote_code`` off.

    ``code_root``: a folder above both (a whole downloaded model) that must hold no Python file either.
    ``safetensors_only`` refuses pickled weights too (a registry model: the publisher chose the files).
    """
    name = name or str(model_dir)
    folders = list(dict.fromkeys([model_dir, tokenizer_dir or model_dir]))
    for folder in folders:
        check_model_folder(folder, name)
    # After the checks above, whose messages say more: a stray Python file is the last line of defence.
    for folder in [code_root] if code_root is not None else folders:
        check_no_code(folder, name)
    from transformers import pipeline

    return pipeline(
        "text-classification",
        model=str(model_dir),
        tokenizer=str(tokenizer_dir) if tokenizer_dir is not None else None,
        trust_remote_code=False,
        model_kwargs={"use_safetensors": True} if safetensors_only else {},
    )


def check_model_folder(folder: Path, name: str) -> None:
    """Refuse (RefusedModel) a folder whose configs point at custom code or name classes transformers lacks.

    transformers runs a model's own code only through ``auto_map`` (or ``custom_pipelines``) and
    the Python files beside it (``check_no_code``), and only for a class it lacks; each of those
    is refused, so the model loads with transformers' own classes or not at all.
    """
    for path in sorted(folder.glob("*.json")):
        data = _json_object(path)
        for key in CODE_KEYS:
            if key in data:
                raise RefusedModel(f"refused model {printable(name)}: {path.name} has {key} (custom code)")
    config = _json_object(folder / "config.json")
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        architectures = [architectures]
    for architecture in architectures:
        check_class_name(architecture, "config.json architectures", name)
    tokenizer_config = _json_object(folder / "tokenizer_config.json")
    for key in ("tokenizer_class", "processor_class"):
        if tokenizer_config.get(key) is not None:
            check_class_name(tokenizer_config[key], f"tokenizer_config.json {key}", name)


def check_no_code(folder: Path, name: str) -> None:
    """Refuse a folder with a Python file anywhere in it: a model needs none, custom code does."""
    for root, _dirs, files in os.walk(folder):
        for file in sorted(files):
            if file.endswith(CODE_SUFFIXES):
                where = (Path(root) / file).relative_to(folder)
                raise RefusedModel(f"refused model {printable(name)}: it holds Python code ({printable(where)})")


def check_class_name(value: object, where: str, name: str) -> None:
    """Refuse a class name that transformers itself does not define (MLflow would load it as remote code)."""
    import transformers

    if not (isinstance(value, str) and isinstance(getattr(transformers, value, None), type)):
        raise RefusedModel(
            f"refused model {printable(name)}: {where} names {printable(repr(value))}, not a transformers class"
        )


def _json_object(path: Path) -> dict:
    """The JSON object in ``path``; empty when the file is missing or holds something else (transformers rejects it)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
