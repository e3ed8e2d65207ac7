"""The export's checks around the model it ships: which trial the saved folder holds, a staged copy,
the folder it may replace, and the re-evaluation compared with what the sweep recorded.

No MLflow here: ``runner.export`` runs these, then logs and registers through runner.record.registry.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from runner.errors import ConfigError, WorkFailed
from runner.record.checkpoint import INFO_FILE, private_dir, read_info, staging_dir
from runner.redact import redact_text
from runner.training.data import LABEL_NAMES

# Re-evaluated metrics may differ from the recorded ones by float rounding only.
TOLERANCE = {"eval_f1": 1e-4, "eval_accuracy": 1e-4, "eval_loss": 1e-3}


class ExportFailed(WorkFailed):
    """The export could not be completed or verified (exit 1)."""


def saved_trial(source: Path, study, confirmed_winner: int | None = None):
    """The search trial whose configuration the sweep kept in ``source``, and its trial.json.

    Without a confirmation stage that is the study's best trial (or one tied with it). After
    one (``confirmed_winner``: the winning configuration's search trial), it is the winner,
    and trial.json says so (its ``confirmed`` entry).
    """
    try:
        info = json.loads((source / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"no saved model for this study in {source} (missing {INFO_FILE}): pass --best-dir") from None
    number = info.get("trial")
    if confirmed_winner is not None:
        if number != confirmed_winner or not info.get("confirmed"):
            raise ExportFailed(
                f"{source} holds trial {number} but the confirmation stage's winner is trial {confirmed_winner}: "
                "the folder is stale (rerun the sweep's command to keep the winner)"
            )
        return study.trials[number], info
    best = study.best_trial
    if number != best.number and not (isinstance(number, int) and study.trials[number].value == best.value):
        raise ExportFailed(
            f"{source} holds trial {number} ({info.get('value')}) but the study's best is trial "
            f"{best.number} ({best.value}): the folder is stale"
        )
    return study.trials[number], info


def stage(source: Path, out: Path) -> Path:
    """Copy the best model next to ``out`` under a hidden, unpredictable name (removed if this fails)."""

    private_dir(out.parent)
    staging = staging_dir(out, "export")
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        # The sweep's models carry the MRPC label names (runner.training.model.new_model); say so if one does not.
        labels = json.loads((staging / "config.json").read_text(encoding="utf-8")).get("id2label", {})
        if list(labels.values()) != LABEL_NAMES:
            raise ExportFailed(f"{source} has labels {labels}, not {LABEL_NAMES}: it was not written by runner.sweep")
        # A model saved by an older runner may hold a storage password in its config: never ship it.
        saved_config = staging / "runner_config.yaml"
        if saved_config.is_file():
            saved_config.write_text(redact_text(saved_config.read_text(encoding="utf-8")), encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def check_out(out: Path, source: Path, study: str) -> None:
    """Refuse to replace ``out`` unless it is missing, empty, or a previous export of ``study`` (ConfigError).

    The swap deletes what ``out`` held: ``--out ~/models`` must not wipe that folder.
    An export is recognised by its metrics.json (or the sweep's trial.json) naming the study.
    """
    if out.resolve() == source.resolve() or not (out.exists() or out.is_symlink()):
        return
    if out.is_dir() and not out.is_symlink():
        if not any(out.iterdir()):
            return
        if any((read_info(out, marker) or {}).get("study") == study for marker in ("metrics.json", INFO_FILE)):
            return
    raise ConfigError(
        f"--out {out} exists and is not an export of study {study!r}: not replacing it (pass a new or empty folder)"
    )


def previous_test_scores(out: Path, record) -> dict[str, float]:
    """Test scores a previous export of the same trial wrote, so a plain re-export keeps them."""
    try:
        previous = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    same = previous.get("run_id") == record.run_id and previous.get("trial") == record.trial
    return dict(previous.get("test", {})) if same else {}


def compare(recorded: dict[str, float], measured: dict[str, float]) -> list[str]:
    """Metrics whose re-evaluated value differs from the recorded one beyond rounding."""
    return [
        f"{key} {measured[key]:.6f} vs recorded {recorded[key]:.6f}"
        for key, tolerance in TOLERANCE.items()
        if key in recorded and key in measured and abs(measured[key] - recorded[key]) > tolerance
    ]
