"""Stop a sweep whose trials keep failing, and say what failed most."""

from __future__ import annotations

import collections
import logging

import optuna
from optuna.trial import TrialState

log = logging.getLogger("runner")


class FailureGuard:
    """Stops the study when too many of this sweep's trials fail."""

    def __init__(self, max_rate: float):
        self.max_rate, self.attempts, self.errors = max_rate, 0, []

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.attempts += 1
        if trial.state == TrialState.FAIL:
            self.errors.append(trial.user_attrs.get("error", "unknown error"))
        if len(self.errors) >= 3 and len(self.errors) / self.attempts >= self.max_rate:
            study.stop()

    @property
    def tripped(self) -> bool:
        return len(self.errors) >= 3 and len(self.errors) / max(self.attempts, 1) >= self.max_rate

    def common_error(self) -> str:
        return collections.Counter(self.errors).most_common(1)[0][0] if self.errors else ""
