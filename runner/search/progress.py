"""What the user sees while a sweep runs: trials done/total, epoch and step, best so far.

SweepProgress writes the plain lines (one per trial and epoch, a step line every 30 s on long
epochs) and feeds the same events to an optional second view, the live display of a terminal
(runner.search.display): objective.py talks to SweepProgress alone, whichever view runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from runner.training.bootstrap import with_interval
from runner.training.metrics import is_better

if TYPE_CHECKING:
    from runner.search.confirm import Confirmation

log = logging.getLogger("runner")

STEP_LINE_SECONDS = 30.0  # a step line at most this often: logs stay readable; the live view gets every call


@dataclass(frozen=True)
class Best:
    """The best so far, as every view of a sweep shows it.

    In the search, one trial's value. In the confirmation stage, the leading configuration: the mean
    of its runs so far (``runs`` of them, spread ``sd``), which is what the stage ranks by, and
    ``number`` is the search trial whose configuration it is. One lucky run never leads there.
    """

    value: float
    number: int
    runs: int | None = None  # None: one trial's value; else the number of runs ``value`` is the mean of
    sd: float = 0.0


def leading(outcome: Confirmation | None) -> Best | None:
    """The confirmation stage's leader so far (its ``winner`` while runs are missing), as a Best."""
    if outcome is None:
        return None
    w = outcome.winner
    return Best(w.mean, w.trial, w.runs, w.sd)


def best_text(metric: str, best: Best | None, kind: str = "trial", interval: Sequence[float] | None = None) -> str:
    """``best eval_f1=0.8421 (0.801-0.880), trial 3``, the interval when the trial recorded one; in the
    confirmation stage ``leading eval_f1=0.8675 ± 0.0098 over 3 runs of trial 3`` (its configuration's)."""
    if best is None:
        return "no best yet"
    if best.runs is not None:
        runs = "1 run" if best.runs == 1 else f"{best.runs} runs"
        return f"leading {metric}={best.value:.4f} ± {best.sd:.4f} over {runs} of trial {best.number}"
    low, high = interval or (None, None)
    return f"best {metric}={with_interval(best.value, low, high)}, {kind} {best.number}"


class ProgressView(Protocol):
    """A second view of the sweep's events; each call comes after SweepProgress updated its counts."""

    def trial_started(self, progress: SweepProgress, number: int, params: dict) -> None: ...

    def epoch(self, progress: SweepProgress, number: int, epoch: int, epochs: int, row: dict[str, float]) -> None: ...

    def step(self, progress: SweepProgress, number: int, epoch: float, step: int, steps: int) -> None: ...

    def trial_finished(self, progress: SweepProgress, number: int, state: str, value: float | None) -> None: ...


class SweepProgress:
    """Logs one line per epoch and per trial, and a step line on long epochs; feeds ``view`` the same events."""

    def __init__(
        self,
        total: int,
        done: int,
        metric: str,
        maximize: bool,
        kind: str = "trial",
        view: ProgressView | None = None,
        count_done: Callable[[], int] | None = None,
        best_now: Callable[[dict[int, float]], Best | None] | None = None,
    ):
        """``count_done``: the finished runs in the storage now, every worker's (a running one not among them);
        ``best_now(pending)``: the storage's best, counting ``pending`` (trial number -> value: a run that
        finished here but is not told to Optuna yet) as complete; None before any is complete.

        With them, a line shows the study's count and best, not this process's: the trials another
        worker finished while this one ran count too. Without ``best_now`` the best is this process's
        best single run.
        """
        self.total, self.done, self.metric, self.maximize = total, done, metric, maximize
        self.kind = kind  # "trial", or "confirmation" for the confirmation stage's runs
        self.view = view
        self.count_done, self.best_now = count_done, best_now
        self.best: Best | None = best_now({}) if best_now is not None else None  # a resumed study's, at once
        self._last_step_line = time.monotonic()

    def _refresh(self, pending: dict[int, float] | None = None) -> None:
        """The study's count and best from the storage, when this progress was given how to read them."""
        if self.count_done is not None:
            self.done = self.count_done()
        if self.best_now is not None and (best := self.best_now(pending or {})) is not None:
            self.best = best

    def _best_text(self) -> str:
        return best_text(self.metric, self.best, self.kind)

    def trial_started(self, number: int, params: dict) -> None:
        self._refresh()
        log.info("%s %d started [%d/%d done] %s", self.kind, number, self.done, self.total, params_text(params))
        self._last_step_line = time.monotonic()
        if self.view is not None:
            self.view.trial_started(self, number, params)

    def epoch(self, number: int, epoch: int, epochs: int, row: dict[str, float]) -> None:
        self._refresh()
        log.info("%s %d epoch %d/%d: %s | %s", self.kind, number, epoch, epochs, epoch_metrics(row), self._best_text())
        if self.view is not None:
            self.view.epoch(self, number, epoch, epochs, row)

    def step(self, number: int, epoch: float, step: int, steps: int) -> None:
        """Training's step hook (often, see runner.training.train): a line every 30 s, the view every call."""
        if time.monotonic() - self._last_step_line > STEP_LINE_SECONDS:
            self._last_step_line = time.monotonic()
            log.info("%s %d epoch %.2f step %d/%d", self.kind, number, epoch, step, steps)
        if self.view is not None:
            self.view.step(self, number, epoch, step, steps)

    def trial_finished(self, number: int, state: str, value: float | None, note: str = "") -> None:
        complete = state == "COMPLETE" and value is not None
        # This run is not told yet: it is still running in the storage, so it counts as pending.
        self._refresh({number: value} if complete else None)
        if state in ("COMPLETE", "PRUNED"):
            self.done += 1
        if complete and self.best_now is None:
            if is_better(value, self.best.value if self.best else None, self.maximize):
                self.best = Best(value, number)
        shown = f" {self.metric}={value:.4f}" if value is not None else ""
        log.info(
            "%s %d %s%s%s [%d/%d done] | %s",
            *(self.kind, number, state, shown, note, self.done, self.total, self._best_text()),
        )
        if self.view is not None:
            self.view.trial_finished(self, number, state, value)


def params_text(params: dict) -> str:
    """``learning_rate=5e-05, num_train_epochs=3``: a trial's params as every view shows them."""
    return ", ".join(f"{k}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in params.items())


def epoch_metrics(row: dict[str, float]) -> str:
    """``f1=0.8123 accuracy=0.7700 loss=0.4512``: an epoch's scores as every view shows them."""
    return " ".join(
        f"{k.removeprefix('eval_')}={row[k]:.4f}" for k in ("eval_f1", "eval_accuracy", "eval_loss") if k in row
    )
