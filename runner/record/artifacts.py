"""Files that go next to runs: predictions, confusion matrix, history, trials table, plots.

Pure file writers: they know nothing of MLflow, which uploads what they write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from runner.training.data import LABEL_NAMES  # noqa: E402


def write_predictions(eval_split, probs: np.ndarray, path: Path) -> Path:
    """Validation predictions: sentence1, sentence2, label, prediction, probability (of the prediction)."""
    predictions = probs.argmax(axis=-1)
    pd.DataFrame(
        {
            "sentence1": eval_split["sentence1"],
            "sentence2": eval_split["sentence2"],
            "label": eval_split["label"],
            "prediction": predictions,
            "probability": probs[np.arange(len(predictions)), predictions].round(6),
        }
    ).to_csv(path, index=False)
    return path


def write_confusion_matrix(labels, probs: np.ndarray, path: Path, title: str) -> Path:
    """Confusion matrix of the validation predictions as a PNG."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(
        labels, probs.argmax(axis=-1), labels=[0, 1], display_labels=LABEL_NAMES, ax=ax, colorbar=False
    )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_json(data: Any, path: Path) -> Path:
    """Pretty JSON (e.g. the Trainer's log history)."""
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    return path


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, searched params, precision, accuracy, best epoch, duration.

    Optuna's ``trials_dataframe``, with the user attrs the objective records given short names and
    the params in the order the space lists them (Optuna sorts them). The sweep's view of its trials,
    from the study; ``runner.report`` builds its table from the MLflow runs instead.
    """
    frame = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params", "user_attrs"))
    if frame.empty:
        return frame

    def attr(name: str) -> list:
        column = f"user_attrs_{name}"
        return frame[column].tolist() if column in frame.columns else [None] * len(frame)

    params = dict.fromkeys(name for t in study.get_trials(deepcopy=False) for name in t.params)
    return pd.DataFrame(
        {
            "trial": frame["number"],
            "state": frame["state"],
            # A study that names its objective (runner.search.study) gets ``value_<name>`` from Optuna.
            "value": frame["value" if "value" in frame.columns else f"value_{study.metric_names[0]}"],
            **{name: frame[f"params_{name}"] for name in params},
            "precision": attr("precision"),
            "accuracy": [b.get("eval_accuracy") if isinstance(b, dict) else None for b in attr("best_metrics")],
            # The best epoch's 95% bootstrap interval on F1 (runner.training.bootstrap).
            **{
                f"f1_ci_{side}": [i["eval_f1"][end] if isinstance(i, dict) else None for i in attr("intervals")]
                for end, side in enumerate(("low", "high"))
            },
            # Whole numbers even beside a running trial's blank (a float column would show "3.0").
            "best_epoch": pd.array(attr("best_epoch"), dtype="Int64"),
            "epochs_run": pd.array(attr("epochs_run"), dtype="Int64"),
            "seconds": [round(d.total_seconds(), 1) if pd.notna(d) else None for d in frame["duration"]],
            "error": [e if isinstance(e, str) else "" for e in attr("error")],
        }
    )


def write_study_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Optuna's optimization history, parallel coordinates and importances as PNGs for the study run.

    Needs two complete trials; returns the files written (none before that).
    """
    from runner.record.plots import optuna_plot

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return []
    names = ("optimization_history", "parallel_coordinate", "param_importances")
    return [path for name in names for path in optuna_plot(study, name, out_dir, html=False)]
