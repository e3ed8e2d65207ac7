"""The end-of-sweep summary on stdout: the trials table, the ties, the confirmation, and where to look next."""

from __future__ import annotations

import collections
import sys
from urllib.parse import urlparse

import optuna
import pandas as pd

from runner.config import SweepConfig, TrackingConfig
from runner.record import artifacts
from runner.record.checkpoint import BestCheckpoint
from runner.record.history import study_experiment_id
from runner.record.runs import trial_runs_link
from runner.record.store import absolute_sqlite_uri
from runner.redact import redact_url
from runner.search.confirm import Confirmation, summarize
from runner.search.progress import best_text, leading
from runner.training.bootstrap import with_interval


def trials_view(study: optuna.Study, marks: dict[int, str], metric: str) -> pd.DataFrame:
    """The trials table as shown: the value with its interval (F1) and how it compares to the best (``marks``)."""
    table = artifacts.trials_table(study)
    if table.empty:
        return table
    if metric == "eval_f1":
        rows = zip(table["value"], table["f1_ci_low"], table["f1_ci_high"], strict=True)
        table["value"] = [with_interval(*row) for row in rows]
    if marks:
        table.insert(3, "vs_best", [marks.get(n, "") for n in table["trial"]])
    return table.drop(columns=["f1_ci_low", "f1_ci_high"])


def confirmation_view(outcome: Confirmation) -> pd.DataFrame:
    """One row per confirmed configuration: runs, mean ± sd, min and max; the winner marked, or while
    runs are missing the configuration leading so far (a leader is no winner yet)."""
    rows = pd.DataFrame(outcome.table())
    spread = [f"{m:.4f} ± {s:.4f}" for m, s in zip(rows.pop("mean"), rows.pop("sd"), strict=True)]
    rows.insert(rows.columns.get_loc("min"), "mean ± sd", spread)
    for column in ("min", "max"):
        rows[column] = rows[column].map("{:.4f}".format)
    mark = "<- winner" if outcome.complete else "<- leading"
    rows["winner"] = [mark if r.trial == outcome.winner.trial else "" for r in outcome.rows]
    return rows


def print_summary(
    study: optuna.Study,
    cfg: SweepConfig,
    checkpoint: BestCheckpoint,
    marks: dict[int, str] | None = None,
    confirm: optuna.Study | None = None,
    stopped: str | None = None,
    workers_note: str | None = None,
) -> None:
    """The trials table, the confirmation table and where to look next, on stdout.

    ``marks``: each complete trial against the best (runner.search.ties, computed once by the study
    run's finish); ``confirm``: the confirmation study, when the stage is on.

    ``stopped``: what the time budget left undone (``7/20 trials finished``), when it cut the sweep short.
    ``workers_note``: what ``--workers auto`` chose and why.
    """
    out = sys.stdout
    metric = cfg.study.metric
    marks = marks or {}
    out.write("\n" + trials_view(study, marks, metric).to_string(index=False) + "\n\n")
    states = collections.Counter(t.state.name for t in study.trials)
    out.write("trials: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) + "\n")
    if workers_note:
        out.write(f"ran as: {workers_note}\n")
    if states.get("COMPLETE"):
        best = study.best_trial
        low, high = best.user_attrs.get("intervals", {}).get(metric, (None, None))
        score = with_interval(best.value, low, high)
        out.write(f"search best: trial {best.number}, {metric}={score}, params {best.params}\n")
        tied = sorted(n for n, mark in marks.items() if mark == "tied")
        if tied:
            out.write(
                f"tied with it (paired bootstrap on the same validation pairs, 95%): trial(s) "
                f"{', '.join(map(str, tied))}\n"
            )
        outcome = summarize(study, confirm, metric)
        if outcome is not None:
            out.write("\nconfirmation (each configuration's search run and its re-runs with new seeds):\n")
            out.write(confirmation_view(outcome).to_string(index=False) + "\n")
            _write_verdict(out, outcome)
        out.write(f"best model: {checkpoint.path}  (ship it: python -m runner.export --study {cfg.study.name})\n")
    flags = (
        ""
        if cfg.tracking.tracking_uri == TrackingConfig().tracking_uri
        else f" --tracking-uri {redact_url(cfg.tracking.tracking_uri)}"
    )
    out.write(
        f"compare the runs: python -m runner.ui{flags}  or  python -m runner.report --study {cfg.study.name}{flags}\n"
    )
    out.write(trial_runs_line(study, cfg, flags))
    if stopped is not None:
        out.write(_budget_line(study, cfg, stopped, summarize(study, confirm, metric)))


def _budget_line(study: optuna.Study, cfg: SweepConfig, stopped: str, outcome: Confirmation | None) -> str:
    """The sweep's state when the time budget ran out, its best so far (the confirmation stage's leader,
    once it has one), and how to go on."""
    best = "no complete trial yet"
    if outcome is not None:
        best = best_text(cfg.study.metric, leading(outcome))
    elif any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        best = f"best so far: trial {study.best_trial.number}, {cfg.study.metric}={study.best_value:.4f}"
    return f"time budget used up: {stopped}; {best}. The same command with a larger --timeout continues the study.\n"


def trial_runs_line(study: optuna.Study, cfg: SweepConfig, flags: str) -> str:
    """Where the study's trial runs open in the MLflow UI: the view the sweep stored (best first, params as columns).

    A tracking server serves the page itself; a SQLite store needs ``runner.ui`` (default port 5000) to serve it.
    """
    uri = absolute_sqlite_uri(cfg.tracking.tracking_uri)
    link = trial_runs_link(uri, study_experiment_id(uri, study.study_name))
    if urlparse(uri).scheme in ("http", "https"):
        return f"trial runs, best first: {redact_url(uri).rstrip('/')}/{link}\n"
    return f"trial runs, best first: python -m runner.ui{flags}, then open http://127.0.0.1:5000/{link}\n"


def _write_verdict(out, outcome: Confirmation) -> None:
    w = outcome.winner
    m = outcome.metric
    head = "confirmed winner" if outcome.complete else "leading so far (stage not finished: some runs are missing)"
    out.write(f"{head}: trial {w.trial}'s configuration, {m} {w.mean:.4f} ± {w.sd:.4f} over {w.runs} runs\n")
    gap = outcome.optimism_gap
    if gap is not None:
        out.write(
            f"search best {outcome.search_best.value:.4f} (trial {outcome.search_best.number}); optimism gap "
            f"{gap:+.4f} (its single run above its own mean: the winner's curse)\n"
        )
