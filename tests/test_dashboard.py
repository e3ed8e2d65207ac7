"""optuna-dashboard on a study's storage (the optional extra ``runner[dashboard]``): its API serves the study."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import pytest
import requests
from conftest import skip_unless_required

from runner.config import SweepConfig
from runner.search.study import make_study


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        """No access log on stderr."""


@pytest.fixture
def dashboard():
    """``dashboard(storage_url)``: optuna-dashboard's WSGI app served on a free port; yields the base URL."""
    try:
        import optuna_dashboard
    except ImportError:
        skip_unless_required(
            "optuna-dashboard is not installed (pip install -e '.[dashboard]')", "RUNNER_REQUIRE_DASHBOARD"
        )
    servers = []

    def serve(storage: str) -> str:
        server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage), handler_class=QuietHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_the_dashboard_lists_the_study_with_its_metric_name_and_trials(tmp_path, dashboard):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = SweepConfig.model_validate({"study": {"name": "tiny", "storage": storage, "metric": "eval_f1"}})
    study = make_study(cfg)  # as the sweep makes it: the objective named in the storage
    study.optimize(lambda trial: trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True), n_trials=3)
    study.enqueue_trial({"learning_rate": 1e-4})  # waiting: listed, not finished
    optuna.create_study(study_name="other", storage=storage)

    base = dashboard(storage)
    found = requests.get(f"{base}/api/studies", timeout=30).json()["study_summaries"]
    assert {s["study_name"]: s["directions"] for s in found} == {"tiny": ["maximize"], "other": ["minimize"]}
    (study_id,) = [s["study_id"] for s in found if s["study_name"] == "tiny"]

    detail = requests.get(f"{base}/api/studies/{study_id}", timeout=30).json()
    assert detail["name"] == "tiny" and detail["objective_names"] == ["eval_f1"]
    assert [t["state"] for t in detail["trials"]] == ["Complete"] * 3 + ["Waiting"]
    assert detail["best_trials"][0]["number"] == max(study.trials[:3], key=lambda t: t.value).number
    # The trials table the dashboard exports carries the metric's name as its value column.
    header = requests.get(f"{base}/csv/{study_id}", timeout=30).text.splitlines()[0]
    assert "eval_f1" in header.split(",")
