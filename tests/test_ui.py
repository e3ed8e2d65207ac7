"""runner.ui: the MLflow UI on a sweep's store, checked in a real headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from conftest import skip_unless_required

from runner.ui import main as ui_main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of the process group ``proc`` leads (started with ``start_new_session``)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is gone already
    proc.wait()


def chromium(url: str, profile: Path, budget_ms: int, *extra: str) -> subprocess.CompletedProcess:
    """One headless Chromium run with a fresh profile; virtual time lets the JS app fetch and render."""
    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra]
    proc = subprocess.Popen(
        [*command, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        kill_group(proc)  # Chromium's helper processes too, also when it timed out
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style|noscript)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def rendered_text(url: str, tmp_path: Path, expected: list[str]) -> str:
    """The page's text once everything expected shows, giving a slow machine more virtual time each try."""
    text = ""
    for attempt, budget in enumerate((15_000, 30_000, 60_000)):
        text = visible_text(chromium(url, tmp_path / f"profile-{attempt}-{budget}", budget, "--dump-dom").stdout)
        if all(item in text for item in expected):
            break
    return text


@pytest.fixture(scope="session")  # session: checked before the session fixtures that take seconds
def browser() -> str:
    """Headless Chromium's path; skips without it, unless ``RUNNER_REQUIRE_BROWSER=1`` (set by ``.ci/run``)."""
    if CHROMIUM is None:
        reason = "Debian's chromium is not installed (apt-get install chromium)"
        skip_unless_required(reason, "RUNNER_REQUIRE_BROWSER")
    return CHROMIUM


@pytest.mark.ui
@pytest.mark.e2e
@pytest.mark.usefixtures("browser")
def test_the_printed_link_opens_the_trial_runs_best_first_with_params_and_objective(
    run_sweep, store, tmp_path, premade_mlflow_db, scripted_f1
):
    scripted_f1([0.9, 0.6])  # one epoch each: trial 0 is the best, so best first is not newest first
    result = run_sweep("--trials", "2", "--set", "search_space.num_train_epochs=1")
    assert result.code == 0, result.err
    trials = sorted(store.children(), key=lambda run: run.info.run_name)
    assert [run.data.metrics["best_eval_f1"] for run in trials] == [0.9, 0.6]
    port = free_port()
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    server = subprocess.Popen(
        [sys.executable, "-m", "runner.ui", "--port", str(port), "--tracking-uri", uri],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a group of its own, to kill whatever is left of it in the end
    )
    try:
        printed = []
        for line in server.stdout:  # runner.ui gives up by itself if the server never answers
            printed.append(line)
            if line.startswith("press Ctrl-C"):
                break
        base = f"http://127.0.0.1:{port}"
        assert printed and printed[0].strip() == f"MLflow UI: {base}", printed
        experiment_id = trials[0].info.experiment_id
        link = f"#/experiments/{experiment_id}/runs?viewStateShareKey=runner-trials&workflowType=machine_learning"
        assert f"  study tiny: {base}/{link}\n" in printed
        assert f"python -m runner.ui, then open http://127.0.0.1:5000/{link}\n" in result.out  # the sweep's summary

        rates = [run.data.params["learning_rate"] for run in trials]
        expected = ["trial-000", "trial-001", "learning_rate", "best_eval_f1", *rates]
        runs_page = rendered_text(f"{base}/{link}", tmp_path, expected)
        missing = [item for item in expected if item not in runs_page]
        assert not missing, f"missing {missing} in: {runs_page[:3000]}"
        # Best first (trial 0 is older: newest first would show trial-001 first); only the searched params.
        assert runs_page.index("trial-000") < runs_page.index("trial-001"), runs_page[:3000]
        assert "per_device_train_batch_size" not in runs_page and "num_train_epochs" not in runs_page
        screenshot = tmp_path / "mlflow-ui-trial-runs.png"
        chromium(f"{base}/{link}", tmp_path / "profile-shot", 30_000, f"--screenshot={screenshot}")
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
        print(f"screenshot: {screenshot}")

        ids = quote(json.dumps([run.info.run_id for run in trials]))
        compare = f"{base}/#/compare-runs?runs={ids}&experiments={quote(json.dumps([experiment_id]))}"
        expected = ["trial-000", "trial-001", "learning_rate", "num_train_epochs", "best_eval_f1", "eval_f1", *rates]
        page = rendered_text(compare, tmp_path, expected)
        missing = [item for item in expected if item not in page]
        assert not missing, f"missing {missing} in: {page[:3000]}"
        assert "Comparing 2 Runs" in page
    finally:
        server.send_signal(signal.SIGINT)
        try:
            code = server.wait(timeout=60)
        finally:
            kill_group(server)
        err = server.stderr.read()
    assert code == 0, err
    assert "runner.ui: stopped" in err
    with socket.socket() as sock:
        # SO_REUSEADDR, as servers set it: the closed connections' TIME_WAIT does not count,
        # a server or worker still listening does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))  # the server and its workers are gone


def test_a_port_in_use_is_a_one_line_error(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        capsys.readouterr()
        code = ui_main(["--port", str(port)])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and f"port {port}" in err and out == ""


def test_a_missing_store_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = ui_main(["--port", str(free_port())])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "run a sweep first" in err
    assert not (tmp_path / "mlruns").exists()


def test_a_study_opens_on_its_runs_and_its_link_stores_the_trial_runs_view(tmp_path, monkeypatch, premade_mlflow_db):
    """The experiment kind the UI reads, and the shared view the printed link opens, without a browser."""
    from mlflow.tracking import MlflowClient

    from runner.record.runs import Tracker, TrialsView, trial_runs_link

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client, kind = MlflowClient(uri), "mlflow.experimentKind"
    client.set_experiment_tag(client.create_experiment("guessed"), kind, "genai_development_inferred")
    client.set_experiment_tag(client.create_experiment("chosen"), kind, "genai_development")
    trackers = {name: Tracker(uri, name, str(tmp_path / "art"), False) for name in ("new", "guessed", "chosen")}
    kinds = {e.name: e.tags.get(kind) for e in client.search_experiments() if e.name in trackers}
    # Runner's own and the UI's guess become the runs table; a kind someone chose in the UI stays.
    assert kinds == {
        "new": "custom_model_development",
        "guessed": "custom_model_development",
        "chosen": "genai_development",
    }

    eid = trackers["new"].experiment_id
    before = parse_qs(urlsplit(trial_runs_link(uri, eid)).fragment.partition("?")[2])
    assert before == {"searchFilter": ["tags.`runner.role` = 'trial'"], "workflowType": ["machine_learning"]}
    trackers["new"].store_trials_view(TrialsView("eval_loss", "minimize", ["learning_rate", "warmup_ratio"]))
    link = trial_runs_link(uri, eid)
    assert link == f"#/experiments/{eid}/runs?viewStateShareKey=runner-trials&workflowType=machine_learning"
    view = json.loads(client.get_experiment(eid).tags["mlflow.sharedViewState.runner-trials"])
    assert view == {
        "searchFilter": "tags.`runner.role` = 'trial'",
        "orderByKey": "metrics.`best_eval_loss`",
        "orderByAsc": True,
        "selectedColumns": ["params.`learning_rate`", "params.`warmup_ratio`", "metrics.`best_eval_loss`"],
    }
