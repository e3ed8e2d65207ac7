"""``compute_metrics`` for the Trainer: accuracy and F1 through a local `evaluate` module; which score is better."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import evaluate

_MODULE_DIR = Path(__file__).with_name("mrpc_metric")


@functools.cache
def mrpc_metric() -> evaluate.EvaluationModule:
    """The MRPC metric, loaded once per process from the package (works offline)."""
    import evaluate  # here, not at the top: ``is_better``'s importers need no metric library

    return evaluate.load(str(_MODULE_DIR))


def is_better(value: float, best: float | None, maximize: bool) -> bool:
    """Does ``value`` beat ``best`` (None: nothing yet) in the study's direction? A tie does not.

    The one rule for a trial's best epoch, the sweep's best trial so far and the model kept on disk.
    """
    return best is None or (value > best if maximize else value < best)


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the class axis, computed stably."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def compute_metrics(eval_pred) -> dict[str, float]:
    """Trainer hook: logits and labels in, ``{"accuracy", "f1"}`` out."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    predictions = np.asarray(logits).argmax(axis=-1)
    return mrpc_metric().compute(predictions=predictions, references=np.asarray(labels))
