"""Bootstrap intervals and the paired test: they hold the score, shrink with more pairs, and tell ties from wins."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from runner.training import bootstrap


def noisy_predictions(n: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (about 2/3 positive, as in MRPC) and predictions right on about ``accuracy`` of them."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.68).astype(int)
    wrong = rng.random(n) > accuracy
    return labels, np.where(wrong, 1 - labels, labels)


def test_scores_match_sklearn():
    labels, predictions = noisy_predictions(300, 0.8, seed=1)
    found = bootstrap.scores(labels, predictions)
    assert found["eval_accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert found["eval_f1"] == pytest.approx(f1_score(labels, predictions))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_intervals_hold_the_score_and_shrink_as_the_split_grows(seed):
    widths = []
    for n in (100, 400, 1600):
        labels, predictions = noisy_predictions(n, 0.8, seed)
        found = bootstrap.intervals(labels, predictions)
        for value, low, high in found.values():
            assert low <= value <= high
            assert low < high
        widths.append(found["eval_f1"][2] - found["eval_f1"][1])
    assert widths[0] > widths[1] > widths[2]
    # Quadrupling the pairs about halves the width (standard error ~ 1/sqrt(n)).
    assert 1.5 < widths[0] / widths[1] < 2.7 and 1.5 < widths[1] / widths[2] < 2.7


def test_the_interval_on_408_pairs_is_as_wide_as_mrpc_noise():
    # On 408 validation pairs the standard error of F1 is about 0.013-0.015: a 95% interval about 0.05 wide.
    labels, predictions = noisy_predictions(408, 0.82, seed=4)
    _, low, high = bootstrap.intervals(labels, predictions)["eval_f1"]
    assert 0.035 < high - low < 0.075


def test_intervals_are_reproducible_and_validate_their_input():
    labels, predictions = noisy_predictions(200, 0.8, seed=5)
    assert bootstrap.intervals(labels, predictions) == bootstrap.intervals(labels, predictions)
    with pytest.raises(ValueError):
        bootstrap.intervals(labels, predictions[:-1])
    with pytest.raises(ValueError):
        bootstrap.intervals([], [])


def test_the_paired_test_calls_a_clearly_better_model_better_and_identical_models_tied():
    labels, weak = noisy_predictions(408, 0.70, seed=6)
    # A strong model: right wherever the weak one is, and on most of its mistakes too.
    fixed = np.random.default_rng(7).random(len(labels)) < 0.6
    strong = np.where(fixed, labels, weak)
    difference, low, high = bootstrap.paired_difference(labels, strong, weak)
    assert difference > 0 and low > 0, "clearly better: the whole interval is above zero"
    assert not bootstrap.tied(labels, strong, weak)
    assert bootstrap.tied(labels, weak, weak.copy())
    assert bootstrap.paired_difference(labels, weak, weak) == (0.0, 0.0, 0.0)


def test_pairing_sees_a_small_real_difference_that_separate_intervals_miss():
    # Two models that differ on only a few pairs, always in favour of one: their separate intervals
    # overlap almost entirely, yet on the same pairs the difference is consistently positive.
    labels, base = noisy_predictions(408, 0.8, seed=8)
    better = base.copy()
    wrong = np.flatnonzero(better != labels)[:12]
    better[wrong] = labels[wrong]
    _, low_a, high_a = bootstrap.intervals(labels, better)["eval_accuracy"]
    _, low_b, high_b = bootstrap.intervals(labels, base)["eval_accuracy"]
    assert low_a < high_b, "separate intervals overlap"
    _, low, _ = bootstrap.paired_difference(labels, better, base, "eval_accuracy")
    assert low > 0


def test_predictions_round_trip_through_their_compact_form():
    predictions = np.array([0, 1, 1, 0, 1])
    text = bootstrap.encode(predictions)
    assert text == "01101"
    assert bootstrap.decode(text).tolist() == predictions.tolist()


def test_tie_marks_compare_every_trial_with_the_best(tmp_path):
    import optuna

    from runner.search.ties import tie_marks

    labels, weak = noisy_predictions(408, 0.70, seed=9)
    strong = np.where(np.random.default_rng(10).random(len(labels)) < 0.6, labels, weak)
    almost = strong.copy()
    almost[:2] = 1 - almost[:2]  # two pairs apart: noise
    study = optuna.create_study(direction="maximize")
    for predictions in (strong, almost, weak):
        trial = study.ask()
        trial.set_user_attr("predictions", bootstrap.encode(predictions))
        study.tell(trial, bootstrap.scores(labels, predictions)["eval_f1"])
    marks = tie_marks(study, labels, "eval_f1")
    best = study.best_trial.number
    assert marks[best] == "best"
    assert sorted(marks.values()) == ["best", "tied", "worse"]
    assert marks[2] == "worse"
    assert tie_marks(study, labels, "eval_loss") == {}, "no paired test on the loss"
