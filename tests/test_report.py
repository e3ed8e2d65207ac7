"""runner.report: one row per trial from MLflow, best first, pruned and failed shown; plots; several studies;
scores with their intervals, ties with the best, and the confirmed table."""

from __future__ import annotations

import io
import json
import re
import statistics

import optuna
import pandas as pd
import pytest

from runner.report import UNFINISHED
from runner.report import main as report_main

COLUMNS = [
    "study", "trial", "state", "learning_rate", "num_train_epochs", "precision",
    "best_f1", "f1_ci_low", "f1_ci_high", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "vs_best",
    "best_epoch", "train_s", "note",
]  # fmt: skip
# The table format: each score and its interval in one cell, so no bound columns.
TEXT_COLUMNS = [
    "trial", "state", "learning_rate", "num_train_epochs", "precision",
    "best_f1", "accuracy", "vs_best", "best_epoch", "train_s", "note",
]  # fmt: skip
VERDICTS = {"best", "tied", "worse"}  # runner.tied_with_best
INTERVAL = re.compile(r"(\d\.\d{4}) \((\d\.\d{3})-(\d\.\d{3})\)")
CONFIRM = (
    "--set",
    "study.confirm.top_k=2",
    "--set",
    "study.confirm.seeds=1",
    "--set",
    "search_space.num_train_epochs=1",
)


def report(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = report_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def sweep_with_every_fate(run_sweep, monkeypatch) -> None:
    """A real sweep whose trials end complete, pruned, failed and complete, in that order.

    The validation F1 is scripted so the median pruner stops trial 1 after epoch 1, and the
    third model load raises, so the report reads what the sweep really records for each fate.
    """
    import runner.search.objective
    import runner.training.train

    scores = iter([0.8, 0.8, 0.25, 0.9, 0.9])  # trial 0 (2 epochs), trial 1 (pruned at 1), trial 3 (2 epochs)
    monkeypatch.setattr(runner.training.train, "compute_metrics", lambda _: {"accuracy": 0.5, "f1": next(scores)})
    real, loads = runner.search.objective.new_model, []

    def new_model(*args, **kwargs):
        loads.append(1)
        if len(loads) == 3:
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner.search.objective, "new_model", new_model)
    pruning = ("study.pruner=median", "study.pruner_startup_trials=1", "study.pruner_warmup_epochs=0")
    flags = [x for setting in pruning for x in ("--set", setting)]
    assert run_sweep("--trials", "3", "--set", "search_space.num_train_epochs=2", *flags).code == 0


def test_every_trial_is_a_row_best_first_in_every_format(
    run_sweep, store, tmp_path, capsys, monkeypatch, premade_mlflow_db
):
    sweep_with_every_fate(run_sweep, monkeypatch)
    values = {t.number: t.value for t in store.study().trials if t.state == optuna.trial.TrialState.COMPLETE}

    code, out, err = report(capsys, "--study", "tiny", "--format", "csv")

    assert code == 0, err
    table = pd.read_csv(io.StringIO(out))
    assert list(table.columns) == [c for c in COLUMNS if c != "num_train_epochs"]  # pinned, not searched
    assert list(table["state"]) == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    complete = table[table["state"] == "COMPLETE"]
    assert list(complete["best_f1"]) == sorted(complete["best_f1"], reverse=True)
    assert {int(t): f for t, f in zip(complete["trial"], complete["best_f1"], strict=True)} == pytest.approx(values)
    assert set(table["trial"]) == {0, 1, 2, 3}
    assert "RuntimeError: out of memory" in table.iloc[3]["note"]
    assert pd.isna(table.iloc[3]["best_f1"])
    assert table.iloc[2]["best_f1"] == pytest.approx(0.25)
    assert (complete["best_epoch"] >= 1).all() and (complete["train_s"].astype(float) > 0).all()

    code, out, _ = report(capsys, "--study", "tiny")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 5
    assert lines[0].split() == [c for c in TEXT_COLUMNS if c != "num_train_epochs"]
    assert "PRUNED" in lines[3] and "FAIL" in lines[4]
    # Complete and pruned trials carry an interval on F1 and accuracy; the failed one has no score.
    assert all(len(INTERVAL.findall(line)) == 2 for line in lines[1:4])
    assert "0.2500 (" in lines[3] and not INTERVAL.findall(lines[4])

    code, out, _ = report(capsys, "--study", "tiny", "--format", "markdown", "--top", "2")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 4 and lines[0].startswith("| trial | state |") and lines[1].startswith("|---")

    code, out, _ = report(capsys, "--study", "tiny", "--format", "json", "--top", "1")
    (row,) = json.loads(out)
    assert code == 0 and row["state"] == "COMPLETE" and row["best_f1"] == pytest.approx(max(values.values()))


def test_two_studies_side_by_side_and_plots(run_sweep, store, tmp_path, capsys, premade_mlflow_db):
    assert run_sweep("--trials", "2").code == 0
    assert run_sweep("--trials", "1", "--study", "other").code == 0

    code, out, err = report(capsys, "--study", "tiny", "--study", "other", "--format", "csv")
    assert code == 0, err
    table = pd.read_csv(io.StringIO(out))
    assert table.groupby("study").size().to_dict() == {"tiny": 2, "other": 1}

    code, out, err = report(capsys, "--study", "tiny", "--study", "other", "--plots", str(tmp_path / "plots"))
    assert code == 0, err
    summary = out.splitlines()[0].split()
    assert summary[:2] == ["study", "trials"] and "other" in out and "tiny" in out
    for study in ("tiny", "other"):
        names = {p.name for p in (tmp_path / "plots" / study).iterdir()}
        expected = {"optimization_history", "parallel_coordinate", "intermediate_values", "f1_vs_learning_rate"}
        if study == "tiny":
            expected.add("param_importances")  # needs two complete trials
        for name in expected:
            assert f"{name}.png" in names and f"{name}.html" in names, (study, name)
        assert "plotly.min.js" in names
    png = tmp_path / "plots" / "tiny" / "f1_vs_learning_rate.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotly" in (tmp_path / "plots" / "tiny" / "parallel_coordinate.html").read_text()

    # No such Optuna storage: the MLflow plot alone, and no storage file is created.
    missing = tmp_path / "none.db"
    code, _, err = report(
        capsys, "--study", "tiny", "--plots", str(tmp_path / "p2"), "--storage", f"sqlite:///{missing}"
    )
    assert code == 0, err
    assert {p.suffix for p in (tmp_path / "p2").glob("f1_vs_learning_rate.*")} == {".png", ".html"}
    assert not (tmp_path / "p2" / "optimization_history.png").exists() and not missing.exists()
    # A malformed storage URL: one line, exit 2.
    code, _, err = report(
        capsys, "--study", "tiny", "--plots", str(tmp_path / "p3"), "--storage", "postgresql+nope://h/db"
    )
    assert code == 2 and err.count("\n") == 1 and "invalid Optuna storage URL" in err


def test_a_missing_store_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = report(capsys, "--study", "tiny")
    assert code == 2 and err.count("\n") == 1 and "run a sweep first" in err and out == ""
    assert not (tmp_path / "mlruns").exists()


def test_an_unknown_study_is_a_one_line_error(tmp_path, monkeypatch, capsys, premade_mlflow_db):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}").create_experiment("tiny")
    code, out, err = report(capsys, "--study", "nope")
    assert code == 2 and err.count("\n") == 1 and "'nope'" in err and "known: tiny" in err
    assert out == ""


def interval_rows(text: str) -> dict[int, list[tuple[float, float, float]]]:
    """Trial number -> the (score, low, high) cells of its row in the table format."""
    found = {}
    for line in text.splitlines():
        cells = INTERVAL.findall(line)
        if cells and line.split()[0].isdigit():
            found[int(line.split()[0])] = [tuple(map(float, cell)) for cell in cells]
    return found


def test_intervals_ties_and_the_confirmed_table(run_sweep, store, capsys, premade_mlflow_db):
    result = run_sweep("--trials", "3", *CONFIRM)
    assert result.code == 0, result.err
    trials = {int(r.data.tags["optuna.trial_number"]): r for r in store.children()}
    confirms = store.runs(role="confirm")
    parent = store.parent().data.metrics
    assert len(trials) == 3 and len(confirms) == 2

    code, out, err = report(capsys, "--study", "tiny")
    assert code == 0, err
    head, title, rest = out.partition("confirmed configurations")
    assert title, out
    # Every trial row: F1 and accuracy, each inside its interval, as the trial's run recorded them.
    rows = interval_rows(head)
    assert set(rows) == set(trials)
    for number, cells in rows.items():
        metrics = trials[number].data.metrics
        for (score, low, high), name in zip(cells, ("eval_f1", "eval_accuracy"), strict=True):
            assert low - 5e-4 <= score <= high + 5e-4, (number, name, cells)
            assert score == pytest.approx(metrics[f"best_{name}"], abs=5e-5)
            assert (low, high) == pytest.approx(
                (metrics[f"best_{name}_ci_low"], metrics[f"best_{name}_ci_high"]), abs=5e-4
            )
    # The note (a collapsed model) may follow: find the mark by its words, not its place.
    row_marks = {int(line.split()[0]): VERDICTS.intersection(line.split()) for line in head.splitlines()[1:] if line}
    assert all(len(found) == 1 for found in row_marks.values()), row_marks
    marks = {number: found.pop() for number, found in row_marks.items()}
    assert list(marks.values()).count("best") == 1 and set(marks.values()) <= {"best", "tied", "worse"}
    assert marks == {n: r.data.tags["runner.tied_with_best"] for n, r in trials.items()}
    (best,) = [n for n, mark in marks.items() if mark == "best"]
    assert trials[best].data.metrics["best_eval_f1"] == max(r.data.metrics["best_eval_f1"] for r in trials.values())

    # The confirmed table: one row per configuration, its search run and its confirmation run.
    winner = int(parent["confirmed_trial"])
    table = [line.split() for line in rest.splitlines()[2:4]]
    assert {int(cells[0]) for cells in table} == {int(r.data.tags["runner.confirms"]) for r in confirms}
    assert [cells[2] for cells in table] == ["2", "2"]
    assert [cells[0] for cells in table if cells[-1] == "winner"] == [str(winner)]
    verdict = rest.splitlines()[4]
    assert verdict == (
        f"confirmed winner: trial {winner}, f1 {parent['confirmed_mean_eval_f1']:.4f} ± "
        f"{parent['confirmed_sd_eval_f1']:.4f} over 2 runs; search best {parent['search_best_eval_f1']:.4f}; "
        f"optimism gap {parent['optimism_gap_eval_f1']:+.4f}"
    )

    code, out, err = report(capsys, "--study", "tiny", "--format", "json")
    assert code == 0, err
    found = json.loads(out)
    assert set(found) == {"trials", "confirmed"} and len(found["trials"]) == 3
    for row in found["trials"]:
        assert row["f1_ci_low"] <= row["best_f1"] <= row["f1_ci_high"]
        assert row["accuracy_ci_low"] <= row["accuracy"] <= row["accuracy_ci_high"]
    assert len(found["confirmed"]) == 2
    for row in found["confirmed"]:
        (again,) = [r for r in confirms if int(r.data.tags["runner.confirms"]) == row["trial"]]
        values = [trials[row["trial"]].data.metrics["best_eval_f1"], again.data.metrics["best_eval_f1"]]
        assert row["runs"] == 2 and row["winner"] == (row["trial"] == winner)
        assert isinstance(row["mean"], float) and isinstance(row["sd"], float)
        assert row["mean"] == pytest.approx(statistics.fmean(values))
        assert row["sd"] == pytest.approx(statistics.stdev(values))
        assert (row["min"], row["max"]) == pytest.approx((min(values), max(values)))
        assert row["learning_rate"] == pytest.approx(float(trials[row["trial"]].data.params["learning_rate"]))
    (won,) = [row for row in found["confirmed"] if row["winner"]]
    assert won["mean"] == pytest.approx(parent["confirmed_mean_eval_f1"])

    code, out, err = report(capsys, "--study", "tiny", "--format", "csv")
    table = pd.read_csv(io.StringIO(out))
    assert code == 0, err
    assert len(table) == 3 and "mean" not in table.columns and table["f1_ci_low"].dtype == float
    assert sorted(table["vs_best"]) == sorted(marks.values())

    code, out, err = report(capsys, "--study", "tiny", "--format", "markdown")
    assert code == 0, err
    assert out.count("| trial | learning_rate | runs | mean ± sd |") == 1 and out.count("<- winner") == 1


def test_a_store_from_before_intervals_and_ties_still_renders(tmp_path, monkeypatch, capsys, premade_mlflow_db):
    """Runs logged with their scores alone (no interval, no tie tag, no confirmation) render as before."""
    from runner.record.runs import Tracker

    monkeypatch.chdir(tmp_path)
    tracker = Tracker("sqlite:///mlruns/mlflow.db", "tiny", str(tmp_path / "mlruns" / "artifacts"), False)
    tracker.open_study_run(optuna.create_study(study_name="tiny"), {})
    for number, (rate, f1) in enumerate([(1e-4, 0.6), (3e-4, 0.8)]):
        with tracker.trial_run("tiny", number, {"learning_rate": rate, "precision": "fp32"}) as run:
            run.log_metrics({"best_eval_f1": f1, "best_eval_accuracy": f1 - 0.1, "best_epoch": 1})

    code, out, err = report(capsys, "--study", "tiny")
    lines = out.strip().splitlines()
    assert code == 0, err
    assert lines[0].split() == ["trial", "state", "learning_rate", "precision", "best_f1", "accuracy", "vs_best"] + [
        "best_epoch",
        "train_s",
        "note",
    ]
    assert lines[1].split()[:6] == ["1", "COMPLETE", "3.00e-04", "fp32", "0.8000", "0.7000"]
    assert lines[2].split()[:6] == ["0", "COMPLETE", "1.00e-04", "fp32", "0.6000", "0.5000"]
    assert "(" not in out and "confirmed" not in out and len(lines) == 3

    code, out, err = report(capsys, "--study", "tiny", "--format", "json")
    rows = json.loads(out)
    assert code == 0 and isinstance(rows, list) and [r["best_f1"] for r in rows] == [0.8, 0.6]
    assert all(r["f1_ci_low"] is None and r["accuracy_ci_high"] is None and r["vs_best"] == "" for r in rows)


def test_an_unfinished_confirmation_stage_is_reported_without_a_winner(
    tmp_path, monkeypatch, capsys, premade_mlflow_db
):
    """A stage the budget cut short records its table as the sweep computed it: no row marked, and a note."""
    from conftest import staged_confirmation

    from runner.record.history import CONFIRMED_CSV
    from runner.record.runs import Tracker
    from runner.search.confirm import summarize

    monkeypatch.chdir(tmp_path)
    search, confirm = staged_confirmation([0.90, 0.85, 0.50], [0.60])  # 1 of 4 runs in: trial 1 leads
    tracker = Tracker("sqlite:///mlruns/mlflow.db", "tiny", str(tmp_path / "mlruns" / "artifacts"), False)
    tracker.open_study_run(optuna.create_study(study_name="tiny"), {})
    for trial in search.trials:
        with tracker.trial_run("tiny", trial.number, trial.params) as run:
            run.log_metrics({"best_eval_f1": trial.value, "best_epoch": 1})
    table = tmp_path / CONFIRMED_CSV
    pd.DataFrame(summarize(search, confirm, "eval_f1").table()).to_csv(table, index=False)
    tracker.update_study_run({}, {}, [table])

    code, out, err = report(capsys, "--study", "tiny")
    assert code == 0, err
    assert "confirmed configurations" in out and "<- winner" not in out
    assert out.rstrip().endswith(UNFINISHED)


def test_html_report_is_one_self_contained_page(run_sweep, store, tmp_path, capsys, premade_mlflow_db):
    """--html: each trial's row with its intervals, the confirmed table and verdict, the plots; no external script."""
    result = run_sweep("--trials", "3", *CONFIRM)
    assert result.code == 0, result.err
    trials = {int(r.data.tags["optuna.trial_number"]): r.data.metrics for r in store.children()}
    parent = store.parent().data.metrics
    page_file = tmp_path / "out" / "report.html"
    page_file.parent.mkdir()

    code, out, err = report(capsys, "--study", "tiny", "--html", str(page_file))
    assert code == 0, err
    page = page_file.read_text(encoding="utf-8")
    assert [p.name for p in page_file.parent.iterdir()] == ["report.html"]  # no temporary file left
    rows = re.findall(r"<tr>(.*?)</tr>", page, flags=re.S)
    cells = [re.findall(r"<td>(.*?)</td>", row, flags=re.S) for row in rows]
    trial_rows = {int(c[0]): c for c in cells if len(c) > 8}
    assert set(trial_rows) == set(trials)
    for number, metrics in trials.items():
        f1 = metrics["best_eval_f1"]
        low, high = metrics["best_eval_f1_ci_low"], metrics["best_eval_f1_ci_high"]
        assert f"{f1:.4f} ({low:.3f}-{high:.3f})" in trial_rows[number], trial_rows[number]
    # The confirmed table: one row per configuration, the winner marked, and the verdict under it.
    winner = int(parent["confirmed_trial"])
    confirmed = [c for c in cells if "&lt;- winner" in c or (len(c) <= 8 and "±" in " ".join(c))]
    assert len(confirmed) == 2 and [c[0] for c in confirmed if "&lt;- winner" in c] == [str(winner)]
    won = next(c for c in confirmed if c[0] == str(winner))
    assert f"{parent['confirmed_mean_eval_f1']:.4f} ± {parent['confirmed_sd_eval_f1']:.4f}" in won
    assert f"confirmed winner: trial {winner}, f1 {parent['confirmed_mean_eval_f1']:.4f}" in page
    # Optuna's plots as plotly divs, plotly.js inlined: nothing is fetched from the network.
    for name in ("optimization_history", "parallel_coordinate", "intermediate_values"):
        assert f'id="plot-tiny-{name}"' in page
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.min.js itself is megabytes
    assert not re.search(r"<script[^>]*\bsrc=", page, flags=re.I)
    assert not re.search(r"<(link|img|iframe)[^>]*(href|src)=[\"']?https?://", page, flags=re.I)


def test_html_report_to_a_bad_file_is_a_one_line_error(run_sweep, tmp_path, capsys, premade_mlflow_db):
    assert run_sweep("--trials", "1").code == 0
    for bad, words in ((tmp_path / "missing" / "r.html", "no folder"), (tmp_path, "is a folder")):
        code, out, err = report(capsys, "--study", "tiny", "--html", str(bad))
        assert code == 2 and err.count("\n") == 1 and words in err and out == "", err
    assert not (tmp_path / "missing").exists()
    # A folder that goes away between the check and the write: still one line, nothing half-written.
    import runner.report

    folder = tmp_path / "gone"
    folder.mkdir()
    real = runner.report.html_page

    def page_then_folder_gone(*args):
        text = real(*args)
        folder.rmdir()
        return text

    runner.report.html_page = page_then_folder_gone
    try:
        code, out, err = report(capsys, "--study", "tiny", "--html", str(folder / "r.html"))
    finally:
        runner.report.html_page = real
    assert code == 2 and err.count("\n") == 1 and "cannot write there" in err, err
    assert not folder.exists()
