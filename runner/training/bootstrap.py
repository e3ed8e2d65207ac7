"""How far a score on a few hundred pairs can be trusted: bootstrap intervals and a paired test.

MRPC's validation split has 408 pairs. One pair moves F1 by about 0.003, and the
standard error of F1 is about 0.014: two trials 0.005 apart are usually not
different models. Each function here resamples the evaluated pairs with
replacement (a seeded generator, so the same predictions always give the same
interval) and recomputes the score on every resample.

``paired_difference`` draws the *same* pairs for both models in each resample. The
two models are scored on one validation split, so their errors are correlated:
an easy pair is easy for both. A paired test measures the difference on the same
pairs and is much tighter than comparing two separate intervals; it is the
bootstrap counterpart of McNemar's test, and unlike McNemar it works for F1 too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0
# Scores computed from hard predictions (accuracy, F1 of the "paraphrase" class 1).
SCORES = ("eval_accuracy", "eval_f1")
_CHUNK = 200_000  # resampled pairs held in memory at once (resamples x pairs)


def _resamples(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Index arrays of shape (k, n), k resamples at a time, from one seeded generator."""
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK // max(n, 1))
    done = 0
    while done < resamples:
        k = min(per_chunk, resamples - done)
        yield rng.integers(0, n, size=(k, n))
        done += k


def _scores(labels: np.ndarray, predictions: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and F1 along the last axis (one value per row of resampled pairs)."""
    positive, predicted = labels == 1, predictions == 1
    tp = np.sum(positive & predicted, axis=-1)
    fp = np.sum(~positive & predicted, axis=-1)
    fn = np.sum(positive & ~predicted, axis=-1)
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros(np.shape(tp), dtype=float), where=denominator > 0)
    return {"eval_accuracy": np.mean(labels == predictions, axis=-1), "eval_f1": f1}


def scores(labels, predictions) -> dict[str, float]:
    """Accuracy and F1 of hard predictions (the same numbers the MRPC metric gives)."""
    return {k: float(v) for k, v in _scores(np.asarray(labels), np.asarray(predictions)).items()}


def _check(labels: np.ndarray, *predictions: np.ndarray) -> None:
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError("need a non-empty 1-d array of labels")
    for p in predictions:
        if p.shape != labels.shape:
            raise ValueError(f"predictions of shape {p.shape} for labels of shape {labels.shape}")


def _bounds(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def intervals(
    labels, predictions, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED
) -> dict[str, tuple[float, float, float]]:
    """``{score: (value, low, high)}``: the score and its percentile-bootstrap interval.

    The interval always holds the value: with very few pairs the percentiles of a
    lumpy bootstrap distribution can miss it by one step, and an interval that
    excludes the measured score would only confuse.
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    _check(labels, predictions)
    point = _scores(labels, predictions)
    drawn: dict[str, list[np.ndarray]] = {k: [] for k in SCORES}
    for idx in _resamples(len(labels), resamples, seed):
        for key, values in _scores(labels[idx], predictions[idx]).items():
            drawn[key].append(values)
    out = {}
    for key in SCORES:
        value = float(point[key])
        low, high = _bounds(np.concatenate(drawn[key]), level)
        out[key] = (value, min(low, value), max(high, value))
    return out


def paired_difference(
    labels, a, b, score: str = "eval_f1", resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED
) -> tuple[float, float, float]:
    """``(difference, low, high)`` of ``score(a) - score(b)`` on the same pairs, resampled together."""
    labels, a, b = np.asarray(labels), np.asarray(a), np.asarray(b)
    _check(labels, a, b)
    if score not in SCORES:
        raise ValueError(f"no paired test for {score!r}: use one of {', '.join(SCORES)}")
    difference = float(_scores(labels, a)[score] - _scores(labels, b)[score])
    drawn = [
        _scores(labels[idx], a[idx])[score] - _scores(labels[idx], b[idx])[score]
        for idx in _resamples(len(labels), resamples, seed)
    ]
    low, high = _bounds(np.concatenate(drawn), level)
    return difference, low, high


def tied(labels, best, other, score: str = "eval_f1", **kwargs) -> bool:
    """Is ``other`` statistically tied with ``best``? True when the paired interval of the difference holds 0."""
    _, low, high = paired_difference(labels, best, other, score, **kwargs)
    return low <= 0.0 <= high


def encode(predictions) -> str:
    """Hard predictions as a compact string ("0110..."), for a trial's attrs."""
    return "".join(str(int(p)) for p in np.asarray(predictions).tolist())


def decode(text: str) -> np.ndarray:
    """The inverse of ``encode``."""
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8) - ord("0")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def with_interval(value, low=None, high=None) -> str:
    """``0.8740 (0.851-0.896)``: a score and its 95% interval, as every view prints it.

    The score alone when it has no interval; empty without a score (None or NaN, as tables hold it).
    """
    if _missing(value):
        return ""
    if _missing(low) or _missing(high):
        return f"{value:.4f}"
    return f"{value:.4f} ({low:.3f}-{high:.3f})"
