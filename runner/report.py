"""``python -m runner.report``: compare a study's trials from what MLflow recorded.

One row per trial run (``mlflow.search_runs`` into pandas): trial number, state,
the searched params, precision, best F1 and accuracy at that epoch (each with its
95% bootstrap interval), whether the trial is statistically tied with the best
(``vs_best``), best epoch and training time, best first; pruned and failed trials
are listed as such. When the sweep ran a confirmation stage, a second table follows:
one row per confirmed configuration with its runs, mean ± sd, min and max, the
winner marked, and a line with the winner's curse (search best minus confirmed mean).
``--study A --study B`` puts studies side by side; ``--plots DIR`` writes the
study's plots as PNG and HTML.

Exit codes: 0 done, 1 a plot could not be written, 2 bad input (unknown study, no store).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from runner.cli import OneLineParser, run_checked, shared_flags
from runner.config import MAX_TRIALS, SEARCHABLE, check_name
from runner.errors import ConfigError
from runner.redact import printable, redact_url

log = logging.getLogger("runner")

FORMATS = ("table", "markdown", "csv", "json")
STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "FAIL": 3}
# The bounds of each score's 95% interval: numeric columns in csv and json, folded into the score elsewhere.
INTERVALS = {"best_f1": ("f1_ci_low", "f1_ci_high"), "accuracy": ("accuracy_ci_low", "accuracy_ci_high")}
WINNER_MARK = "<- winner"


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
        parents=[shared_flags(storage="env")],
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


def with_interval(value, low, high) -> str:
    """``0.8740 (0.851-0.896)``: a score and its 95% interval; the score alone without one; empty without a score."""
    import pandas as pd

    if pd.isna(value):
        return ""
    if pd.isna(low) or pd.isna(high):
        return f"{value:.4f}"
    return f"{value:.4f} ({low:.3f}-{high:.3f})"


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


def confirmed_frame(trial_runs, confirm_runs, outcome: dict[str, float], searched: list[str], study: str):
    """One row per confirmed configuration (search trial ``n``): its searched params, and over its runs
    (the search run and each complete confirmation run) their count, mean, sd (ddof=1), min and max.

    ``winner`` marks the configuration the study run names in ``confirmed_trial``. Empty when the
    study has no confirmation run.
    """
    import pandas as pd

    metric = stage_metric(outcome)
    winner = _finite(outcome, "confirmed_trial")
    repeats = pd.to_numeric(_tag(confirm_runs, "runner.confirms"), errors="coerce")
    numbers = pd.to_numeric(_tag(trial_runs, "optuna.trial_number"), errors="coerce")
    rows = []
    for n in sorted(int(v) for v in repeats.dropna().unique()):
        search, confirms = trial_runs[numbers == n], confirm_runs[repeats == n]
        values = pd.concat([_complete_scores(search, metric), _complete_scores(confirms, metric)])
        if values.empty:
            continue
        source = search if len(search) else confirms
        rows.append(
            {
                "study": study,
                "trial": n,
                **{name: _param(source, name) for name in searched},
                "runs": len(values),
                "mean": float(values.mean()),
                "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "min": float(values.min()),
                "max": float(values.max()),
                "winner": winner is not None and n == winner,
            }
        )
    return _printable_cells(pd.DataFrame(rows))


def _tag(runs, name: str):
    import pandas as pd

    return runs[f"tags.{name}"] if f"tags.{name}" in runs.columns else pd.Series(None, index=runs.index, dtype=object)


def _complete_scores(runs, metric: str):
    """The ``best_<metric>`` of the runs that completed (Optuna state COMPLETE), as floats."""
    import pandas as pd

    column = f"metrics.best_{metric}"
    if runs.empty or column not in runs.columns:
        return pd.Series(dtype=float)
    complete = runs[_tag(runs, "optuna.state") == "COMPLETE"]
    return pd.to_numeric(complete[column], errors="coerce").dropna()


def _param(runs, name: str):
    """The value of param ``name`` on the first of ``runs``, a number when it reads as one."""
    import pandas as pd

    column = f"params.{name}"
    if runs.empty or column not in runs.columns:
        return None
    value = runs[column].iloc[0]
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    return value if pd.isna(number) else number.item()


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
        confirm_runs, outcome = history.search_confirm_runs(uri, study)
        if not confirm_runs.empty:
            table = confirmed_frame(runs, confirm_runs, outcome, searched, study)
            confirmed.append(Confirmed(study, table, verdict(outcome)))
    combined = pd.concat([f.head(args.top) if args.top else f for f in frames], ignore_index=True)
    sys.stdout.write(render(combined, args.format, several=len(frames) > 1, confirmed=confirmed))
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
