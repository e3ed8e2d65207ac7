"""``python -m runner.report``: compare a study's trials from what MLflow recorded.

One row per trial run (``mlflow.search_runs`` into pandas): trial number, state,
the searched params, precision, best F1 and accuracy at that epoch (each with its
95% bootstrap interval), whether the trial is statistically tied with the best
(``vs_best``), best epoch and training time, best first; pruned and failed trials
are listed as such. When the sweep ran a confirmation stage, a second table follows:
one row per confirmed configuration with its runs, mean ± sd, min and max, the
winner marked, and a line with the winner's curse (search best minus confirmed mean).
``--study A --study B`` puts studies side by side; ``--plots DIR`` writes the
study's plots as PNG and HTML; ``--html FILE`` writes one self-contained page (the
tables and Optuna's plots, plotly inlined) to open offline or send.

Exit codes: 0 done, 1 a plot could not be written, 2 bad input (unknown study, no store).
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from runner.cli import OneLineParser, log_level, run_checked, shared_flags, verbosity_flags
from runner.config import MAX_TRIALS, SEARCHABLE, check_name
from runner.errors import ConfigError
from runner.redact import printable, redact_url
from runner.training.bootstrap import with_interval

log = logging.getLogger("runner")

FORMATS = ("table", "markdown", "csv", "json")
STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "FAIL": 3}
# The bounds of each score's 95% interval: numeric columns in csv and json, folded into the score elsewhere.
INTERVALS = {"best_f1": ("f1_ci_low", "f1_ci_high"), "accuracy": ("accuracy_ci_low", "accuracy_ci_high")}
WINNER_MARK = "<- winner"
# A stage the time budget (or a crash) cut short records its table, but names no winner until every run is in.
UNFINISHED = "confirmation stage not finished: no winner yet (the same runner sweep command finishes it)"


@dataclass
class Confirmed:
    """A study's confirmation stage: one row per configuration, and the line naming the winner (or None)."""

    study: str
    table: object  # pandas DataFrame; pandas is imported late to keep --help fast
    verdict: str | None


PROG = "python -m runner.report"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """Command-line flags; ``prog`` is the command as typed (``runner report`` from the ``runner`` command).

    ``--storage`` is read only for ``--plots`` (Optuna's plots).
    """
    p = OneLineParser(
        prog=prog,
        description="Compare the trials of one or more studies from MLflow: a table, CSV or JSON, and plots "
        "(--plots; they read the Optuna --storage).",
        parents=[shared_flags(storage="env"), verbosity_flags()],
    )
    p.add_argument("--study", action="append", required=True, help="study name; repeat to compare studies")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="output format (default %(default)s); the confirmed table of a study that ran a confirmation "
        'stage is in table, markdown and json ({"trials": [...], "confirmed": [...]}), not in csv',
    )
    p.add_argument(
        "--top", type=int, metavar="K", help="only the K best trials of each study (the confirmed table is whole)"
    )
    p.add_argument("--plots", type=Path, metavar="DIR", help="write the study's plots (PNG and HTML) into DIR")
    p.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="write one self-contained HTML page (the tables and Optuna's plots; opens offline) to FILE",
    )
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
            "f1_ci_low": pd.to_numeric(column("metrics.best_eval_f1_ci_low"), errors="coerce"),
            "f1_ci_high": pd.to_numeric(column("metrics.best_eval_f1_ci_high"), errors="coerce"),
            "accuracy": pd.to_numeric(column("metrics.best_eval_accuracy"), errors="coerce"),
            "accuracy_ci_low": pd.to_numeric(column("metrics.best_eval_accuracy_ci_low"), errors="coerce"),
            "accuracy_ci_high": pd.to_numeric(column("metrics.best_eval_accuracy_ci_high"), errors="coerce"),
            # best, tied or worse: a paired bootstrap against the best trial, tagged when the sweep ends.
            "vs_best": column("tags.runner.tied_with_best").fillna(""),
            "best_epoch": pd.to_numeric(column("metrics.best_epoch"), errors="coerce").astype("Int64"),
            "train_s": pd.to_numeric(column("metrics.train_runtime"), errors="coerce").round(1),
            # Redacted and escaped before it is cut: a cut URL would hide its password from the redaction.
            "note": note.fillna("").astype(str).map(printable).str.slice(0, 60),
        }
    )
    frame = _printable_cells(frame)
    frame["_order"] = frame["state"].map(STATE_ORDER).fillna(9)
    frame = frame.sort_values(["_order", "best_f1", "trial"], ascending=[True, False, True], na_position="last")
    return frame.drop(columns="_order").reset_index(drop=True)


def _printable_cells(frame):
    """``frame`` with every text cell made printable.

    Every text cell comes from the tracking store, which anyone who can log a run writes to:
    no escape sequence (clear the screen, retitle the terminal) or password reaches the output.
    """
    import pandas as pd

    for name in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[name]):
            frame[name] = frame[name].map(lambda v: printable(v) if isinstance(v, str) else v)
    return frame


def shown_trials(frame):
    """The trials table as read by a person: each score with its interval in one text cell."""
    shown = frame.copy()
    for score, (low, high) in INTERVALS.items():
        shown[score] = [with_interval(*row) for row in zip(frame[score], frame[low], frame[high], strict=True)]
        shown = shown.drop(columns=[low, high])
    return shown


def _finite(outcome: dict[str, float], key: str) -> float | None:
    value = outcome.get(key)
    return float(value) if value is not None and math.isfinite(value) else None


def stage_metric(outcome: dict[str, float]) -> str:
    """The objective the confirmation stage averaged, as the study run's ``confirmed_mean_<metric>`` names it."""
    found = sorted(k.removeprefix("confirmed_mean_") for k in outcome if k.startswith("confirmed_mean_"))
    return found[0] if found else "eval_f1"


def confirmed_frame(table, searched: list[str], study: str):
    """The confirmed table as the sweep recorded it (the study run's ``confirmed.csv``), for this report.

    One row per configuration (search trial ``n``): its searched params, and over its runs (the search
    run and each complete confirmation run) their count, mean, sd, min and max; ``winner`` marks the
    confirmed one. The sweep computes it once (``runner.search.confirm.summarize``); the report does not
    recompute it. Empty when the study has no confirmation stage.
    """
    import pandas as pd

    if table.empty:
        return pd.DataFrame()
    known = [name for name in searched if name in table.columns]
    columns = ["trial", *known, "runs", "mean", "sd", "min", "max", "winner"]
    shown = table[columns].copy()
    shown["winner"] = shown["winner"].astype(str).str.lower() == "true"
    shown.insert(0, "study", study)
    return _printable_cells(shown)


def verdict(outcome: dict[str, float]) -> str | None:
    """``confirmed winner: trial N, f1 0.xxxx ± 0.xxxx over K runs; search best ...; optimism gap ...``.

    None when the study run does not record a finished confirmation stage.
    """
    metric = stage_metric(outcome)
    trial, runs = _finite(outcome, "confirmed_trial"), _finite(outcome, "confirmed_runs")
    mean, sd = _finite(outcome, f"confirmed_mean_{metric}"), _finite(outcome, f"confirmed_sd_{metric}")
    if trial is None or runs is None or mean is None or sd is None:
        return None
    label = printable(metric.removeprefix("eval_"))
    line = f"confirmed winner: trial {int(trial)}, {label} {mean:.4f} ± {sd:.4f} over {int(runs)} runs"
    best, gap = _finite(outcome, f"search_best_{metric}"), _finite(outcome, f"optimism_gap_{metric}")
    if best is not None:
        line += f"; search best {best:.4f}"
    if gap is not None:
        line += f"; optimism gap {gap:+.4f}"
    return line


def shown_confirmed(table):
    """The confirmed table as read by a person: ``mean ± sd`` in one cell, the winner marked."""
    shown = table.drop(columns=["mean", "sd", "winner"])
    shown.insert(
        shown.columns.get_loc("runs") + 1,
        "mean ± sd",
        [f"{m:.4f} ± {s:.4f}" for m, s in zip(table["mean"], table["sd"], strict=True)],
    )
    for column in ("min", "max"):  # the same digits as the mean: 0.8000, not 0.8
        shown[column] = table[column].map("{:.4f}".format)
    shown["winner"] = table["winner"].map({True: WINNER_MARK, False: ""})
    return shown


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


def render(frame, fmt: str, several: bool, confirmed: list[Confirmed] | None = None) -> str:
    """The report in one format; several studies get a summary table first (table and markdown).

    ``confirmed``: the confirmation stages to show after the trials (table, markdown and json; csv
    holds the trials alone). Without any, json stays the plain list of trial rows.
    """
    import pandas as pd

    confirmed = [c for c in confirmed or [] if not c.table.empty]
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "json":
        if not confirmed:
            return frame.to_json(orient="records", indent=2) + "\n"
        rows = pd.concat([c.table for c in confirmed], ignore_index=True)
        both = {key: json.loads(f.to_json(orient="records")) for key, f in (("trials", frame), ("confirmed", rows))}
        return json.dumps(both, indent=2) + "\n"
    table = shown_trials(frame if several else frame.drop(columns="study"))
    if fmt == "markdown":
        head = to_markdown(study_summary(frame)) + "\n" if several else ""
        return head + to_markdown(table) + "".join(_confirmed_section(c, fmt, several) for c in confirmed)
    with pd.option_context("display.float_format", _cell, "display.max_colwidth", 60, "display.width", 200):
        head = study_summary(frame).to_string(index=False) + "\n\n" if several else ""
        body = table.to_string(index=False) + "\n"
        return head + body + "".join(_confirmed_section(c, fmt, several) for c in confirmed)


def _confirmed_section(confirmed: Confirmed, fmt: str, several: bool) -> str:
    """A title, the confirmed table (table or markdown) and the verdict line."""
    import pandas as pd

    of = f" of {confirmed.study}" if several else ""
    title = f"\nconfirmed configurations{of} (each one's search run and its confirmation runs with new seeds):\n"
    shown = shown_confirmed(confirmed.table if several else confirmed.table.drop(columns="study"))
    if fmt == "markdown":
        body = to_markdown(shown)
    else:
        with pd.option_context("display.float_format", _cell, "display.max_colwidth", 60, "display.width", 200):
            body = shown.to_string(index=False) + "\n"
    return title + body + (confirmed.verdict + "\n" if confirmed.verdict else "")


def check_flags(args: argparse.Namespace) -> int:
    """0 when the flags are valid, else a ConfigError (exit 2).

    A study name becomes a plots folder (``--plots DIR/<study>``): ``../x`` would write outside DIR.
    """
    for study in args.study:
        check_name("--study", study)
    if args.top is not None and not 1 <= args.top <= MAX_TRIALS:
        raise ConfigError(f"--top must be between 1 and {MAX_TRIALS}, got {args.top}")
    if args.html is not None:
        folder = args.html.parent
        if args.html.is_dir():
            raise ConfigError(f"--html {printable(str(args.html))} is a folder: pass a file name")
        if not folder.is_dir():
            raise ConfigError(f"--html: no folder {printable(str(folder))}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Build the table from MLflow, print it, and write the plots."""
    import pandas as pd

    from runner.record import history, store

    uri = store.resolve_tracking_uri(args.tracking_uri)
    store.check_store_exists(uri)
    frames, all_runs, confirmed = [], {}, []
    for study in dict.fromkeys(args.study):
        runs = history.search_trial_runs(uri, study)
        if runs.empty:
            raise ConfigError(f"study {study!r} has no trial runs in {redact_url(uri)}")
        all_runs[study] = runs
        searched = searched_params(uri, study, runs)
        frames.append(trials_frame(runs, searched, study))
        stage, outcome = history.confirmed_result(uri, study)
        if not stage.empty:
            found = verdict(outcome) or UNFINISHED
            confirmed.append(Confirmed(study, confirmed_frame(stage, searched, study), found))
    combined = pd.concat([f.head(args.top) if args.top else f for f in frames], ignore_index=True)
    sys.stdout.write(render(combined, args.format, several=len(frames) > 1, confirmed=confirmed))
    if args.html is not None:
        figures = {study: study_figures(args.storage, study) for study in all_runs}
        write_atomically(args.html, html_page(combined, confirmed, figures))
        log.info("wrote %s", args.html)
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


def study_figures(storage: str, study: str) -> list[tuple[str, object]]:
    """Optuna's plots of ``study`` as plotly figures, those its trials allow; none when the storage lacks it."""
    import optuna.visualization as optuna_plotly

    from runner.record.plots import OPTUNA_PLOTS
    from runner.workers.storage import UnknownStudy, load_existing_study

    try:
        optuna_study = load_existing_study(storage, study)
    except UnknownStudy as err:
        log.warning("%s: the HTML page has no plots of it", err)
        return []
    figures = []
    for name in OPTUNA_PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figures.append((name, getattr(optuna_plotly, f"plot_{name}")(optuna_study)))
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. importances need two complete trials
            log.info("skipped %s: %s", name, err)
    return figures


HTML_STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
)


def html_page(frame, confirmed: list[Confirmed], figures: dict[str, list[tuple[str, object]]]) -> str:
    """One self-contained page: per study its trials table (scores with intervals), its confirmed table
    and verdict when it has one, and its plots; plotly.js is inlined once, so it opens offline."""
    from plotly.offline import get_plotlyjs

    studies = list(dict.fromkeys(frame["study"]))
    title = html.escape(f"runner report: {', '.join(studies)}")
    parts = [
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title><style>{HTML_STYLE}</style>',
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body><h1>{title}</h1>',
    ]
    if len(studies) > 1:
        parts.append(_html_table(study_summary(frame), "studies"))
    stages = {c.study: c for c in confirmed if not c.table.empty}
    for study in studies:
        parts.append(f"<h2>{html.escape(study)}</h2>")
        trials = shown_trials(frame[frame["study"] == study].drop(columns="study"))
        parts.append(_html_table(trials, "trials"))
        if study in stages:
            stage = stages[study]
            parts.append("<h3>confirmed configurations (each one's search run and its confirmation runs)</h3>")
            parts.append(_html_table(shown_confirmed(stage.table.drop(columns="study")), "confirmed"))
            parts.append(f'<p class="verdict">{html.escape(stage.verdict or "")}</p>')
        for name, figure in figures.get(study, []):
            div = figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{study}-{name}")
            parts.append(f"<h3>{html.escape(name.replace('_', ' '))}</h3>{div}")
    return "\n".join([*parts, "</body></html>\n"])


def _html_table(frame, css_class: str) -> str:
    """``frame`` as an HTML table: every cell escaped, numbers as the text table prints them."""
    shown = frame.astype(object).where(frame.notna(), "")
    formatters = {c: lambda v: _cell(v) if isinstance(v, float) else str(v) for c in shown.columns}
    return shown.to_html(index=False, classes=css_class, formatters=formatters, border=0)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: a temporary file in the same folder, renamed over it.

    A write that fails (folder gone, not writable, disk full) is a ConfigError and leaves nothing behind.
    """
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise ConfigError(f"--html {printable(str(path))}: cannot write there: {err.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except OSError as err:
        Path(temporary).unlink(missing_ok=True)
        raise ConfigError(f"--html {printable(str(path))}: cannot write it: {err.strerror}") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """CLI entry point; returns the exit code. ``prog``: the command as typed, for help and errors."""
    args = build_parser(prog).parse_args(argv)

    def failures() -> tuple[type[BaseException], ...]:
        return (OSError, RuntimeError)

    return run_checked(prog, lambda: check_flags(args), lambda: run(args), args.debug, failures, level=log_level(args))


if __name__ == "__main__":
    sys.exit(main())
