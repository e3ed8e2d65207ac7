"""What the user sees while a sweep runs: trials done/total, epoch and step, best so far."""

from __future__ import annotations

import logging

from runner.training.metrics import is_better

log = logging.getLogger("runner")


class SweepProgress:
    """Logs one line per epoch and per trial, and a step line on long epochs."""

    def __init__(self, total: int, done: int, metric: str, maximize: bool, kind: str = "trial"):
        self.total, self.done, self.metric, self.maximize = total, done, metric, maximize
        self.kind = kind  # "trial", or "confirmation" for the confirmation stage's runs
        self.best: tuple[float, int] | None = None

    def set_best(self, value: float | None, trial_number: int | None) -> None:
        """Seed the best-so-far from the study (resumed sweeps)."""
        if value is not None and trial_number is not None:
            self.best = (value, trial_number)

    def _best_text(self) -> str:
        return f"best {self.metric}={self.best[0]:.4f} ({self.kind} {self.best[1]})" if self.best else "no best yet"

    def trial_started(self, number: int, params: dict) -> None:
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        log.info("%s %d started [%d/%d done] %s", self.kind, number, self.done, self.total, shown)

    def epoch(self, number: int, epoch: int, epochs: int, row: dict[str, float]) -> None:
        metrics = " ".join(
            f"{k.removeprefix('eval_')}={row[k]:.4f}" for k in ("eval_f1", "eval_accuracy", "eval_loss") if k in row
        )
        log.info("%s %d epoch %d/%d: %s | %s", self.kind, number, epoch, epochs, metrics, self._best_text())

    def step(self, number: int, epoch: float, step: int, steps: int) -> None:
        log.info("%s %d epoch %.2f step %d/%d", self.kind, number, epoch, step, steps)

    def trial_finished(self, number: int, state: str, value: float | None, note: str = "") -> None:
        if state in ("COMPLETE", "PRUNED"):
            self.done += 1
        if state == "COMPLETE" and value is not None:
            if is_better(value, self.best[0] if self.best else None, self.maximize):
                self.best = (value, number)
        shown = f" {self.metric}={value:.4f}" if value is not None else ""
        log.info(
            "%s %d %s%s%s [%d/%d done] | %s",
            *(self.kind, number, state, shown, note, self.done, self.total, self._best_text()),
        )


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
