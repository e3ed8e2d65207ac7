"""Which trials are statistically tied with the best one, on the same validation pairs.

Each complete trial keeps its best epoch's hard predictions (the ``predictions`` user
attr, written by the objective). Against the best trial, a paired bootstrap of the
score difference (``runner.training.bootstrap.paired_difference``) says whether the
gap could be the luck of which 408 pairs were drawn: when its 95% interval holds
zero, the two are tied, and the sweep cannot tell them apart.
"""

from __future__ import annotations

import numpy as np
import optuna
from optuna.trial import TrialState

from runner.training import bootstrap

BEST, TIED, WORSE = "best", "tied", "worse"


def tie_marks(study: optuna.Study, labels, metric: str) -> dict[int, str]:
    """``{trial number: "best" | "tied" | "worse"}`` for complete trials that kept their predictions.

    Empty when the metric has no paired test (``eval_loss``) or the best trial has no predictions;
    a trial scored on a different number of pairs (another data slice) is left out.
    """
    pairs = np.asarray(labels)
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if metric not in bootstrap.SCORES or not complete:
        return {}
    best = study.best_trial
    kept = {t.number: bootstrap.decode(t.user_attrs["predictions"]) for t in complete if "predictions" in t.user_attrs}
    kept = {n: p for n, p in kept.items() if len(p) == len(pairs)}
    if best.number not in kept:
        return {}
    marks = {}
    for number, predictions in kept.items():
        if number == best.number:
            marks[number] = BEST
        else:
            is_tied = bootstrap.tied(pairs, kept[best.number], predictions, metric)
            marks[number] = TIED if is_tied else WORSE
    return marks
