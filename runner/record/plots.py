"""The report's plots, each as a PNG (matplotlib) and an interactive HTML page (plotly).

Optuna's own plots come from the study in its storage: optimization history,
parallel coordinates, parameter importances, intermediate values (the per-epoch
learning curves). F1 against learning rate, coloured by batch size, comes from
the MLflow runs. HTML pages share one ``plotly.min.js`` in the folder, so they
open offline.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

log = logging.getLogger("runner")

OPTUNA_PLOTS = ("optimization_history", "parallel_coordinate", "param_importances", "intermediate_values")


def write_report_plots(study: optuna.Study | None, runs: pd.DataFrame, folder: Path) -> list[Path]:
    """Write every plot that the data allows into ``folder``; returns the files written.

    ``study`` None (not in the Optuna storage): only the plots from the MLflow ``runs``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if study is not None:
        for name in OPTUNA_PLOTS:
            written += optuna_plot(study, name, folder)
    written += f1_vs_learning_rate(runs, folder)
    return written


def optuna_plot(study: optuna.Study, name: str, folder: Path, html: bool = True) -> list[Path]:
    """One of Optuna's plots (``plot_<name>``) as ``<name>.png``, and ``<name>.html`` when ``html``."""
    from optuna.visualization import matplotlib as optuna_plt

    written = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
            ax = getattr(optuna_plt, f"plot_{name}")(study)
            if html:
                import optuna.visualization as optuna_plotly

                figure = getattr(optuna_plotly, f"plot_{name}")(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        # e.g. importances need two complete trials that differ in a searched param
        log.info("skipped %s: %s", name, err)
        plt.close("all")
        return written
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(9, 5)
    fig.tight_layout()
    written.append(_save_png(fig, folder / f"{name}.png"))
    if html:
        written.append(_save_html(figure, folder / f"{name}.html"))
    return written


def f1_vs_learning_rate(runs: pd.DataFrame, folder: Path) -> list[Path]:
    """Best validation F1 of each trial against its learning rate, one colour per batch size."""
    needed = ("params.learning_rate", "metrics.best_eval_f1")
    if any(c not in runs.columns for c in needed):
        log.info("skipped f1_vs_learning_rate: the runs lack %s", " or ".join(needed))
        return []
    data = pd.DataFrame(
        {
            "trial": runs.get("tags.optuna.trial_number"),
            "state": runs.get("tags.optuna.state", pd.Series("", index=runs.index)).fillna(""),
            "learning_rate": pd.to_numeric(runs["params.learning_rate"], errors="coerce"),
            "best_f1": pd.to_numeric(runs["metrics.best_eval_f1"], errors="coerce"),
            "batch_size": runs.get("params.per_device_train_batch_size", pd.Series("?", index=runs.index)).astype(str),
        }
    ).dropna(subset=["learning_rate", "best_f1"])
    if data.empty:
        return []
    fig, ax = plt.subplots(figsize=(8, 5))
    for (batch, state), group in data.groupby(["batch_size", "state"], sort=True):
        marker = "o" if state == "COMPLETE" else "x"
        ax.scatter(
            group["learning_rate"], group["best_f1"], marker=marker, s=50, label=f"batch {batch}, {state.lower()}"
        )
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="best validation F1", title="F1 against learning rate, by batch size")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written = [_save_png(fig, folder / "f1_vs_learning_rate.png")]

    import plotly.express as px

    figure = px.scatter(
        data.sort_values("batch_size"),
        x="learning_rate",
        y="best_f1",
        color="batch_size",
        symbol="state",
        hover_data=["trial"],
        log_x=True,
        title="F1 against learning rate, by batch size",
        labels={"learning_rate": "learning rate", "best_f1": "best validation F1", "batch_size": "batch size"},
    )
    written.append(_save_html(figure, folder / "f1_vs_learning_rate.html"))
    return written


def _save_png(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _save_html(figure, path: Path) -> Path:
    figure.write_html(path, include_plotlyjs="directory")
    return path
