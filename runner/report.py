"""``python -m runner.report``: compare a study's trials from what MLflow recorded.

One row per trial run (``mlflow.search_runs`` into pandas): trial number, state,
the searched params, precision, best F1, accuracy at that epoch, best epoch and
training time, best first; pruned and failed trials are listed as such.
``--study A --study B`` puts studies side by side; ``--plots DIR`` writes the
study's plots as PNG and HTML.

Exit codes: 0 done, 1 a plot could not be written, 2 bad input (unknown study, no store).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from runner.cli import OneLineParser, run_checked, shared_flags
from runner.config import MAX_TRIALS, SEARCHABLE, check_name
from runner.errors import ConfigError
from runner.redact import printable, redact_url

log = logging.getLogger("runner")

FORMATS = ("table", "markdown", "csv", "json")
STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "FAIL": 3}


PROG = "python -m runner.report"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """Command-line flags; ``prog`` is the command as typed (``runner report`` from the ``runner`` command).

    ``--storage`` is read only for ``--plots`` (Optuna's plots).
    """
    p = OneLineParser(
        prog=prog,
        description="Compare the trials of one or more studies from MLflow: a table, CSV or JSON, and plots "
        "(--plots; they read the Optuna --storage).",
        parents=[shared_flags(storage="env")],
    )
    p.add_argument("--study", action="append", required=True, help="study name; repeat to compare studies")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default %(default)s)")
    p.add_argument("--top", type=int, metavar="K", help="only the K best trials of each study")
    p.add_argument("--plots", type=Path, metavar="DIR", help="write the study's plots (PNG and HTML) into DIR")
    return p


def _numeric(series):
    import pandas as pd

    converted = pd.to_numeric(series, errors="coerce")
    return converted if converted.notna().sum() == series.notna().sum() else series


def trials_frame(runs, searched: list[str], study: str):
    """MLflow's run rows -> one tidy row per trial, best first."""
    import pandas as pd

    def column(name: str, default=None):
        return runs[name] if name in runs.columns else pd.Series(default, index=runs.index, dtype=object)

    note = (
        column("tags.runner.error").fillna(column("tags.runner.pruned_reason")).fillna(column("tags.runner.collapsed"))
    )
    frame = pd.DataFrame(
        {
            "study": study,
            "trial": pd.to_numeric(column("tags.optuna.trial_number"), errors="coerce").astype("Int64"),
            "state": column("tags.optuna.state").fillna("UNKNOWN"),
            **{name: _numeric(column(f"params.{name}")) for name in searched},
            "precision": column("params.precision"),
            "best_f1": pd.to_numeric(column("metrics.best_eval_f1"), errors="coerce"),
            "accuracy": pd.to_numeric(column("metrics.best_eval_accuracy"), errors="coerce"),
            "best_epoch": pd.to_numeric(column("metrics.best_epoch"), errors="coerce").astype("Int64"),
            "train_s": pd.to_numeric(column("metrics.train_runtime"), errors="coerce").round(1),
            # Redacted and escaped before it is cut: a cut URL would hide its password from the redaction.
            "note": note.fillna("").astype(str).map(printable).str.slice(0, 60),
        }
    )
    # Every text cell comes from the tracking store, which anyone who can log a run writes to:
    # no escape sequence (clear the screen, retitle the terminal) or password reaches the output.
    for name in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[name]):
            frame[name] = frame[name].map(lambda v: printable(v) if isinstance(v, str) else v)
    frame["_order"] = frame["state"].map(STATE_ORDER).fillna(9)
    frame = frame.sort_values(["_order", "best_f1", "trial"], ascending=[True, False, True], na_position="last")
    return frame.drop(columns="_order").reset_index(drop=True)


def searched_params(tracking_uri: str, study: str, runs) -> list[str]:
    """Searched hyperparameters: as the study run records them, else those that vary across trials."""
    from runner.record import history

    # Only real hyperparameter names become columns: the tag is store text like any other.
    names = [n for n in history.searched_param_names(tracking_uri, study) or [] if n in SEARCHABLE]
    if names:
        return names
    present = [n for n in SEARCHABLE if f"params.{n}" in runs.columns]
    varying = [n for n in present if runs[f"params.{n}"].nunique() > 1]
    return varying or present


def study_summary(frame):
    """One row per study: trial counts by state and the best trial."""
    import pandas as pd

    rows = []
    for study, group in frame.groupby("study", sort=False):
        complete = group[group["state"] == "COMPLETE"]
        best = complete.iloc[0] if len(complete) else None
        rows.append(
            {
                "study": study,
                "trials": len(group),
                **{state.lower(): int((group["state"] == state).sum()) for state in ("COMPLETE", "PRUNED", "FAIL")},
                "best_trial": best["trial"] if best is not None else None,
                "best_f1": best["best_f1"] if best is not None else None,
                "accuracy": best["accuracy"] if best is not None else None,
            }
        )
    return pd.DataFrame(rows)


def to_markdown(frame) -> str:
    """A GitHub-style markdown table (no extra dependency)."""
    shown = frame.astype(object).where(frame.notna(), "")
    header = "| " + " | ".join(map(str, shown.columns)) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value).replace("|", "\\|")


def render(frame, fmt: str, several: bool) -> str:
    """The report in one format; several studies get a summary table first (table and markdown)."""
    import pandas as pd

    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "json":
        return frame.to_json(orient="records", indent=2) + "\n"
    table = frame if several else frame.drop(columns="study")
    if fmt == "markdown":
        head = to_markdown(study_summary(frame)) + "\n" if several else ""
        return head + to_markdown(table)
    with pd.option_context("display.float_format", _cell, "display.max_colwidth", 60, "display.width", 200):
        head = study_summary(frame).to_string(index=False) + "\n\n" if several else ""
        return head + table.to_string(index=False) + "\n"


def check_flags(args: argparse.Namespace) -> int:
    """0 when the flags are valid, else a ConfigError (exit 2).

    A study name becomes a plots folder (``--plots DIR/<study>``): ``../x`` would write outside DIR.
    """
    for study in args.study:
        check_name("--study", study)
    if args.top is not None and not 1 <= args.top <= MAX_TRIALS:
        raise ConfigError(f"--top must be between 1 and {MAX_TRIALS}, got {args.top}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Build the table from MLflow, print it, and write the plots."""
    import pandas as pd

    from runner.record import history, store

    uri = store.resolve_tracking_uri(args.tracking_uri)
    store.check_store_exists(uri)
    frames, all_runs = [], {}
    for study in dict.fromkeys(args.study):
        runs = history.search_trial_runs(uri, study)
        if runs.empty:
            raise ConfigError(f"study {study!r} has no trial runs in {redact_url(uri)}")
        all_runs[study] = runs
        frames.append(trials_frame(runs, searched_params(uri, study, runs), study))
    combined = pd.concat([f.head(args.top) if args.top else f for f in frames], ignore_index=True)
    sys.stdout.write(render(combined, args.format, several=len(frames) > 1))
    if args.plots is not None:
        from runner.record import plots
        from runner.workers.storage import UnknownStudy, load_existing_study

        for study, runs in all_runs.items():  # plots show every trial, whatever --top says
            folder = args.plots / study if len(all_runs) > 1 else args.plots
            try:
                optuna_study = load_existing_study(args.storage, study)
            except UnknownStudy as err:
                log.warning("%s: only the MLflow plots are written", err)
                optuna_study = None
            written = plots.write_report_plots(optuna_study, runs, folder)
            log.info("%s: wrote %d plot files to %s", study, len(written), folder)
    return 0


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """CLI entry point; returns the exit code. ``prog``: the command as typed, for help and errors."""
    args = build_parser(prog).parse_args(argv)
    return run_checked(prog, lambda: check_flags(args), lambda: run(args), args.debug, lambda: (OSError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
