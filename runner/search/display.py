"""The live display of a sweep in a terminal: one block that stays in place, with an ETA.

``SweepDisplay`` is the view of one sweep process, fed by SweepProgress (runner.search.progress)
with the same events as the plain lines: the study (done/total, elapsed, ETA, best with its
interval) and the current trial (params, epoch x/y, a step bar with steps/s, last epoch's metrics).
The ``--workers K`` launcher's view of the shared study (runner.search.watch) reuses the session and
the lines built here.

While a display runs, log records go to the same rich Console, above it: the same lines as in
plain mode, so nothing is lost. None is shown when stderr is no terminal or with ``--quiet``.

The ETA is runner.search.estimate's ``eta_seconds``: trials not yet started times a typical trial,
plus what the running trials have left, divided by the number of workers. Until an epoch has been
timed the step rate stands in, and a typical finished trial for one that has not stepped yet;
before the first trial's steps it says "measuring".
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from runner.search.estimate import Running, TrialTimes, eta_seconds
from runner.search.progress import SweepProgress, best_text, epoch_metrics, params_text

log = logging.getLogger("runner")

REFRESH_PER_SECOND = 4
RATE_WINDOW_S = 10.0  # steps/s over the last seconds: an evaluation pause fades out of it


def live_wanted(quiet: bool = False, stream=None) -> bool:
    """Whether to show the live display: stderr is an interactive terminal and the user did not ask for quiet."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return not quiet and bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


def duration(seconds: float | None) -> str:
    """``1:02:03``, ``4:05``; "measuring..." for None."""
    if seconds is None:
        return "measuring..."
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# --- rendering, shared by both views -------------------------------------------------------------


def study_line(kind: str, done: int, total: int, elapsed: float, eta: float | None, best: str) -> Text:
    """The study's line: done/total, elapsed, ETA, best."""
    label = "trials" if kind == "trial" else "confirmation runs"
    return Text(f"{label} {done}/{total} done | elapsed {duration(elapsed)} | ETA {duration(eta)} | {best}")


def interval_of(trial: FrozenTrial | None, metric: str) -> list[float] | None:
    """The trial's 95% interval of ``metric`` (user attr ``intervals``, set by the objective), if any."""
    found = (trial.user_attrs.get("intervals") or {}).get(metric) if trial is not None else None
    return list(found) if found and len(found) == 2 else None


class ConsoleHandler(logging.Handler):
    """Log records as the plain handler formats them, printed by the live display's Console above it."""

    def __init__(self, console: Console, like: logging.Handler | None):
        super().__init__()
        self.console = console
        if like is not None:
            self.setFormatter(like.formatter)
            self.setLevel(like.level)
            for found in like.filters:
                self.addFilter(found)  # the RedactingFilter: no line shows a password

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(Text(self.format(record)), soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never stop the sweep
            self.handleError(record)


@contextlib.contextmanager
def live_session(render: Callable[[], RenderableType]) -> Iterator[Console]:
    """Show ``render()`` in place on stderr until the block ends, the root logger printing above it.

    At the end, normal or not (an error, Ctrl-C), the last frame stays on screen once, the cursor
    comes back and the plain log handlers are restored: what follows (the summary, an error line)
    prints below a finished display.
    """
    console = Console(file=sys.stderr)
    root = logging.getLogger()
    plain = list(root.handlers)
    root.handlers = [ConsoleHandler(console, plain[0] if plain else None)]
    live = Live(
        get_renderable=render,
        console=console,
        refresh_per_second=REFRESH_PER_SECOND,
        transient=False,
        redirect_stdout=True,  # a stray print or library line lands above the display, not through it
        redirect_stderr=True,
    )
    live.start()
    try:
        yield console
    finally:
        try:
            live.stop()
        finally:
            root.handlers = plain


# --- one sweep process -----------------------------------------------------------------------------


@dataclass
class _Current:
    """The trial this process runs now."""

    number: int
    params: dict
    started: float
    epochs: int | None = None
    epoch: int = 0
    epoch_seconds: list[float] | None = None
    last_epoch_at: float = 0.0
    step: int = 0
    steps: int | None = None
    row: dict[str, float] | None = None
    samples: collections.deque | None = None  # (time, step) of the last RATE_WINDOW_S

    def rate(self) -> float | None:
        if not self.samples or len(self.samples) < 2:
            return None
        (t0, s0), (t1, s1) = self.samples[0], self.samples[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None

    def running(self, precision: str | None) -> Running:
        return Running(
            self.params, precision, self.epochs, tuple(self.epoch_seconds or ()), self.step, self.steps, self.rate()
        )


class SweepDisplay:
    """The live view of this process's sweep; a ProgressView that SweepProgress feeds.

    ``attach(study, times)`` names the stage's study (where a best trial's interval is read) and
    how to get the measured trial times (read once per trial, never per frame).
    """

    def __init__(self, precision: str | None = None):
        self.precision = precision
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._progress: SweepProgress | None = None
        self._study: optuna.Study | None = None
        self._times_of: Callable[[], TrialTimes] = TrialTimes
        self._times = TrialTimes()
        self._current: _Current | None = None
        self._interval: list[float] | None = None
        self._interval_for: tuple[str, int] | None = None

    def attach(self, study: optuna.Study, times: Callable[[], TrialTimes] | None = None) -> None:
        """The stage's study (search or confirmation), and where the measured times come from."""
        self._study = study
        if times is not None:
            self._times_of = times
        self._times = self._read_times()

    @contextlib.contextmanager
    def shown(self) -> Iterator[SweepDisplay]:
        """The display on screen for the block (see live_session)."""
        with live_session(self.render):
            yield self

    # ProgressView: each runs in the sweep's thread; render() in rich's refresh thread.
    def trial_started(self, progress: SweepProgress, number: int, params: dict) -> None:
        times = self._read_times()
        interval = self._best_interval(progress)  # a resumed sweep's best, seeded from the study
        now = time.monotonic()
        epochs = params.get("num_train_epochs")
        with self._lock:
            self._progress, self._times, self._interval = progress, times, interval
            self._interval_for = (progress.kind, progress.best.number) if progress.best else None
            self._current = _Current(number, dict(params), now, epochs if isinstance(epochs, int) else None)
            self._current.epoch_seconds, self._current.last_epoch_at = [], now
            self._current.samples = collections.deque()

    def epoch(self, progress: SweepProgress, number: int, epoch: int, epochs: int, row: dict[str, float]) -> None:
        now = time.monotonic()
        with self._lock:
            self._progress, current = progress, self._current
            if current is None or current.number != number:
                return
            current.epoch_seconds.append(now - current.last_epoch_at)
            current.last_epoch_at, current.epoch, current.epochs, current.row = now, epoch, epochs, dict(row)

    def step(self, progress: SweepProgress, number: int, epoch: float, step: int, steps: int) -> None:
        now = time.monotonic()
        with self._lock:
            current = self._current
            if current is None or current.number != number:
                return
            current.step, current.steps = step, steps
            if current.epochs is None and epoch > 0 and step > 0:
                current.epochs = max(1, round(steps / (step / epoch)))
            current.samples.append((now, step))
            while len(current.samples) > 2 and now - current.samples[0][0] > RATE_WINDOW_S:
                current.samples.popleft()

    def trial_finished(self, progress: SweepProgress, number: int, state: str, value: float | None) -> None:
        interval = self._best_interval(progress)
        times = self._read_times()
        with self._lock:
            self._progress, self._times, self._interval = progress, times, interval
            self._interval_for = (progress.kind, progress.best.number) if progress.best else None
            if self._current is not None and self._current.number == number:
                self._current = None

    def _best_interval(self, progress: SweepProgress) -> list[float] | None:
        """The best trial's interval; none for a configuration's mean (the confirmation stage shows its sd)."""
        if progress.best is None or progress.best.runs is not None or self._study is None:
            return None
        key = (progress.kind, progress.best.number)
        if key == self._interval_for:
            return self._interval
        found = [t for t in self._study.get_trials(deepcopy=False) if t.number == progress.best.number]
        return interval_of(found[0] if found else None, progress.metric)

    def _read_times(self) -> TrialTimes:
        try:
            return self._times_of()
        except Exception as err:  # noqa: BLE001 - a slow or locked storage must not stop the sweep
            log.debug("display: cannot read trial times: %s", err)
            return self._times

    def eta(self) -> float | None:
        """Seconds this stage has left, from what was measured so far."""
        with self._lock:
            progress, current, times = self._progress, self._current, self._times
            running = [current.running(self.precision)] if current is not None else []
        if progress is None:
            return None
        not_started = max(0, progress.total - progress.done - len(running))
        if not_started == 0 and not running:
            return 0.0
        return eta_seconds(times, not_started, running)

    def render(self) -> RenderableType:
        """The whole block: the study's line, then the current trial's."""
        eta = self.eta()
        with self._lock:
            progress, current, interval = self._progress, self._current, self._interval
            if progress is None:
                return Text(f"starting... | elapsed {duration(time.monotonic() - self.started)}")
            if progress.best is not None and self._interval_for != (progress.kind, progress.best.number):
                interval = None  # seeded from the study (a resumed sweep): not looked up yet
            best = best_text(progress.metric, progress.best, progress.kind, interval)
            head = study_line(progress.kind, progress.done, progress.total, time.monotonic() - self.started, eta, best)
            return Group(head, *self._trial_lines(progress.kind, current))

    def _trial_lines(self, kind: str, current: _Current | None) -> list[RenderableType]:
        if current is None:
            return [
                Text(
                    "stage done" if self._progress and self._progress.done >= self._progress.total else "next trial..."
                )
            ]
        lines: list[RenderableType] = [Text(f"{kind} {current.number}: {params_text(current.params)}")]
        grid = Table.grid(padding=(0, 1))
        epochs = current.epochs if current.epochs is not None else "?"
        rate = current.rate()
        steps = current.steps or 0
        grid.add_row(
            Text(f"epoch {min(current.epoch + 1, current.epochs or current.epoch + 1)}/{epochs}"),
            ProgressBar(total=steps or None, completed=current.step, width=30),
            Text(f"step {current.step}/{steps or '?'}"),
            Text(f"{rate:.1f} steps/s" if rate else "-- steps/s"),
        )
        lines.append(grid)
        if current.row:
            lines.append(Text(f"last epoch ({current.epoch}): {epoch_metrics(current.row)}"))
        return lines
