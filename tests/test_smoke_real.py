"""The install check on the real default model and real MRPC: `--config sweeps/smoke.yaml --trials 3`.

The smoke sweep confirms its 2 best configurations once each: this is also issue 11's end-to-end check
(3 search runs and 2 confirmation runs under one study run, intervals on every run, the confirmed result).

Needs the MRPC folder (RUNNER_DATA_DIR, else ../shared/data/mrpc next to the repo); skipped without it,
unless ``RUNNER_REQUIRE_DATA=1`` (set by ``.ci/run`` when it found the data) makes that a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from conftest import skip_unless_required
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RUNNER_DATA_DIR") or REPO.parent / "shared" / "data" / "mrpc")


# Beyond the suite's 300 s: the sweep itself may take up to its own 1200 s timeout below.
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1500)]


def test_smoke_sweep_end_to_end(tmp_path):
    if not (DATA / "train.tsv").is_file():
        skip_unless_required(f"MRPC not found at {DATA} (set RUNNER_DATA_DIR)", "RUNNER_REQUIRE_DATA")
    command = [sys.executable, "-m", "runner.sweep", "--config", str(REPO / "sweeps" / "smoke.yaml"), "--trials", "3"]
    proc = subprocess.run(
        [*command, "--data-dir", str(DATA), "--no-system-metrics"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trials: 3 complete" in proc.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mrpc-smoke")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("runner.role") == "study"]
    children = [r for r in runs if r.data.tags.get("runner.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in children)
    assert {r.data.params["train_samples"] for r in children} == {"256"}
    confirms = [r for r in runs if r.data.tags.get("runner.phase") == "confirm"]
    assert len(confirms) == 2 and {r.data.tags["mlflow.parentRunId"] for r in confirms} == {parents[0].info.run_id}
    for run in children + confirms:
        m = run.data.metrics
        assert m["best_eval_f1_ci_low"] <= m["best_eval_f1"] <= m["best_eval_f1_ci_high"]
    summary = parents[0].data.metrics
    assert {"confirmed_trial", "confirmed_mean_eval_f1", "confirmed_sd_eval_f1", "optimism_gap_eval_f1"} <= set(summary)
    assert summary["confirmed_runs"] == 2

    classify = transformers.pipeline("text-classification", model=str(tmp_path / "mlruns" / "best" / "mrpc-smoke"))
    scored = classify({"text": "The bank raised its rates.", "text_pair": "Rates were raised by the bank."})
    assert scored["label"] in {"equivalent", "not_equivalent"}
    assert 0.0 <= scored["score"] <= 1.0
