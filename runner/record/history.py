"""The read side: what sweeps recorded, for export, report and the UI.

Every function takes the tracking URI explicitly, and none changes the status or
end time of an existing run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow

from runner.record.store import TrackingError, mlflow_client

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)

# The Optuna trial user attr that holds the trial's MLflow run id: the one place it is kept.
TRIAL_RUN_ATTR = "mlflow_run_id"
CONFIRMED_CSV = "confirmed.csv"  # the study run's artifact: the confirmation stage's table


def list_studies(tracking_uri: str) -> list[tuple[str, str]]:
    """(name, experiment id) of every study in the store, by name (MLflow's "Default" left out)."""
    experiments = mlflow_client(tracking_uri).search_experiments(order_by=["name ASC"])
    return [(e.name, e.experiment_id) for e in experiments if e.name != "Default"]


def study_experiment_id(tracking_uri: str, study: str) -> str:
    """The experiment id of a study; an unknown study is a TrackingError naming the known ones."""
    client = mlflow_client(tracking_uri)
    found = client.get_experiment_by_name(study)
    if found is None:
        known = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        hint = f" (known: {', '.join(known)})" if known else " (the store holds no study yet)"
        raise TrackingError(f"no MLflow experiment for study {study!r}{hint}")
    return found.experiment_id


def trial_run_id(tracking_uri: str, study: str, trial: FrozenTrial) -> str | None:
    """The MLflow run id of one trial of a study, or None.

    The objective stores it on the trial (``TRIAL_RUN_ATTR``) as soon as the run exists.
    Trials recorded before it did have no such attribute: for them only, the run is found
    by its tags.
    """
    run_id = trial.user_attrs.get(TRIAL_RUN_ATTR)
    if run_id:
        return run_id
    runs = mlflow_client(tracking_uri).search_runs(
        [study_experiment_id(tracking_uri, study)],
        filter_string=f"tags.`runner.role` = 'trial' and tags.`optuna.trial_number` = '{trial.number}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def study_data_source(tracking_uri: str, study: str) -> str | None:
    """The local data folder the study's sweep trained on (from its dataset inputs), if any.

    Only for models saved before the saved config held ``data.data_dir``: export reads that first.
    """
    import json

    client = mlflow_client(tracking_uri)
    runs = client.search_runs(
        [study_experiment_id(tracking_uri, study)], filter_string="tags.`runner.role` = 'study'", max_results=1
    )
    for dataset_input in runs[0].inputs.dataset_inputs if runs else []:
        try:
            uri = json.loads(dataset_input.dataset.source).get("uri")
        except (ValueError, AttributeError):
            continue
        if uri and Path(uri).is_dir():
            return uri
    return None


def search_trial_runs(tracking_uri: str, study: str):
    """All trial runs of a study as a pandas DataFrame (``mlflow.search_runs``), one row per run."""
    experiment_id = study_experiment_id(tracking_uri, study)
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(
        experiment_ids=[experiment_id], filter_string="tags.`runner.role` = 'trial'", output_format="pandas"
    )


def confirmed_result(tracking_uri: str, study: str):
    """The confirmation stage's result as the study run records it: (its table, the study run's metrics).

    The table is the ``confirmed.csv`` the sweep logs (one row per configuration: trial, params, runs,
    mean, sd, min, max, winner), computed once by the sweep (``runner.search.confirm.summarize``);
    an empty DataFrame when the study has no confirmation stage. The metrics: ``confirmed_trial``,
    ``confirmed_mean_*``, ``optimism_gap_*``..., read together because they name the winner.
    """
    import tempfile

    import pandas as pd

    client = mlflow_client(tracking_uri)
    parent = client.search_runs(
        [study_experiment_id(tracking_uri, study)], filter_string="tags.`runner.role` = 'study'", max_results=1
    )
    if not parent:
        return pd.DataFrame(), {}
    run = parent[0]
    table = pd.DataFrame()
    if CONFIRMED_CSV in {f.path for f in client.list_artifacts(run.info.run_id)}:
        with tempfile.TemporaryDirectory() as tmp:
            table = pd.read_csv(client.download_artifacts(run.info.run_id, CONFIRMED_CSV, tmp))
    return table, dict(run.data.metrics)


def searched_param_names(tracking_uri: str, study: str) -> list[str] | None:
    """The searched hyperparameters, as the study run records them (tags ``best_trial.params.*``), or None."""
    runs = mlflow_client(tracking_uri).search_runs(
        [study_experiment_id(tracking_uri, study)], filter_string="tags.`runner.role` = 'study'", max_results=1
    )
    if not runs:
        return None
    prefix = "best_trial.params."
    names = [k.removeprefix(prefix) for k in runs[0].data.tags if k.startswith(prefix)]
    return sorted(names) or None
