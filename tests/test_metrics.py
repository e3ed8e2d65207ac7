"""runner.metrics: accuracy and F1 through the packaged evaluate module, offline."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score
from transformers import EvalPrediction

from runner.training.metrics import compute_metrics, mrpc_metric, probabilities


@pytest.fixture
def offline_metric(monkeypatch):
    """Load the metric module afresh with the Hub switched off (evaluate's `glue` would need it)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mrpc_metric.cache_clear()
    yield
    mrpc_metric.cache_clear()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compute_metrics_matches_sklearn(offline_metric, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(57, 2)).astype(np.float32)
    labels = rng.integers(0, 2, size=57)
    predictions = logits.argmax(axis=-1)
    result = compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    assert set(result) == {"accuracy", "f1"}
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert result["f1"] == pytest.approx(f1_score(labels, predictions))


def test_compute_metrics_accepts_a_tuple_of_outputs(offline_metric):
    """Some models return (logits, hidden_states); the metric must use the logits."""
    logits = np.array([[2.0, -1.0], [0.0, 3.0], [1.0, 0.5]])
    labels = np.array([0, 1, 1])
    result = compute_metrics(EvalPrediction(predictions=(logits, np.zeros((3, 4))), label_ids=labels))
    assert result == {"accuracy": pytest.approx(2 / 3), "f1": pytest.approx(f1_score(labels, [0, 1, 0]))}


def test_f1_is_zero_when_no_positive_is_predicted(offline_metric):
    """A collapsed model (always class 0) scores F1 0 instead of raising or warning to stderr."""
    logits = np.tile([1.0, -1.0], (6, 1))
    result = compute_metrics(EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 0, 1, 1, 0])))
    assert result == {"accuracy": pytest.approx(0.5), "f1": 0.0}


def test_probabilities_are_a_stable_softmax():
    logits = np.array([[1000.0, 1001.0], [-5.0, 5.0], [0.0, 0.0]])
    probs = probabilities(logits)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0)
    np.testing.assert_allclose(probs[0], [1 / (1 + np.e), np.e / (1 + np.e)])
    np.testing.assert_allclose(probs[2], [0.5, 0.5])
