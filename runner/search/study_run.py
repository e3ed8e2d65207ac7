"""The study's MLflow parent run: how to reproduce it (at the start), and its results (at the end).

The results: the best trial, which trials are tied with it, and the confirmation stage's outcome
(``confirmed_*`` and ``optimism_gap_*`` metrics, ``confirmed.csv``).
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from runner.config import SweepConfig, to_yaml
from runner.record import artifacts
from runner.record.history import CONFIRMED_CSV
from runner.record.runs import Tracker
from runner.redact import redact_argv, redact_url
from runner.search.confirm import done_counter, stored_plan, summarize
from runner.search.ties import TIED, tie_marks
from runner.workers.scheduler import FINISHED
from runner.workers.settle import running_elsewhere

log = logging.getLogger("runner")


def reproduction_tags(cfg: SweepConfig) -> dict[str, str]:
    """Tags that let someone rerun this sweep: command, code version, library versions."""
    from importlib.metadata import version

    libraries = ("transformers", "datasets", "torch", "optuna", "mlflow")
    tags = {
        # The command as typed, minus any password (a --storage or --tracking-uri URL may hold one).
        "runner.command": shlex.join([Path(sys.executable).name, "-m", "runner.sweep", *redact_argv(sys.argv[1:])]),
        "runner.storage": redact_url(cfg.study.storage),
        "runner.versions": " ".join(f"{name}={version(name)}" for name in libraries),
        "runner.model": cfg.model.name,
    }
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def finish_study_run(
    study: optuna.Study,
    tracker: Tracker,
    cfg: SweepConfig,
    status: str,
    labels: np.ndarray | None = None,
    confirm: optuna.Study | None = None,
) -> dict[int, str]:
    """Config, trials table, best trial, ties, confirmation and plots on the study run, then end it.

    ``labels`` are the validation labels the trials were scored on: with them each complete trial's
    run is tagged ``runner.tied_with_best`` (best, tied or worse, by a paired bootstrap); the marks
    are returned, for the summary. ``confirm``: the confirmation study, when the stage is on.
    With several workers the last one to stop ends it: a worker that stops while
    trials of other live workers still run leaves it RUNNING (each worker records
    its own trial's end before it looks, so the last to look sees none running).
    """
    marks: dict[int, str] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
            artifacts.trials_table(study).to_csv(folder / "trials.csv", index=False)
            files = [folder / "config.yaml", folder / "trials.csv"]
            if cfg.tracking.study_plots:
                files += artifacts.write_study_plots(study, folder)
            metrics, tags = {}, {"runner.trials_finished": len(study.get_trials(deepcopy=False, states=FINISHED))}
            if any(t.state == TrialState.COMPLETE for t in study.trials):
                best = study.best_trial
                metrics = {f"best_{k}": v for k, v in best.user_attrs.get("best_metrics", {}).items()}
                metrics |= {f"best_{cfg.study.metric}": best.value, "best_trial": best.number}
                run_id = tracker.trial_run_id(study.study_name, best) or ""
                tags |= {"best_trial.number": best.number, "best_trial.run_id": run_id}
                tags |= {f"best_trial.params.{k}": v for k, v in best.params.items()}
                if labels is not None:
                    marks = tie_marks(study, labels, cfg.study.metric)
                    metrics |= _tag_ties(study, tracker, marks)
            outcome = summarize(study, confirm, cfg.study.metric)
            if outcome is not None:
                done = sum(map(done_counter(stored_plan(confirm)), confirm.get_trials(deepcopy=False)))
                tags["runner.confirm_runs_done"] = f"{done}/{len(stored_plan(confirm))}"
                pd.DataFrame(outcome.table()).to_csv(folder / CONFIRMED_CSV, index=False)  # runner report reads it
                files.append(folder / CONFIRMED_CSV)
                if outcome.complete:
                    metrics |= outcome.metrics()
            tracker.update_study_run(metrics, tags, files)
    finally:
        # A sibling worker killed during this sweep: its trial was failed in Optuna by the
        # scheduler; fail its MLflow run too, so no run stays RUNNING for ever.
        live = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        tracker.settle_orphans(study.study_name, live)
        others = running_elsewhere(study)
        if confirm is not None:
            live = {t.number for t in confirm.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
            tracker.settle_orphans(study.study_name, live, role="confirm")
            others += [f"confirmation {n}" for n in running_elsewhere(confirm)]
        if others:
            log.info("study run left open: trial(s) %s still running on other workers", ", ".join(map(str, others)))
        else:
            tracker.close_study_run(status)
    return marks


def _tag_ties(study: optuna.Study, tracker: Tracker, marks: dict[int, str]) -> dict[str, float]:
    """Tag each complete trial's run with how it compares to the best; returns the count of ties."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number, mark in marks.items():
        run_id = tracker.trial_run_id(study.study_name, trials[number])
        if run_id:
            tracker.client.set_tag(run_id, "runner.tied_with_best", mark)
    return {"trials_tied_with_best": sum(mark == TIED for mark in marks.values())} if marks else {}
