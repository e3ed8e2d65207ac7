"""``python -m runner.export``: a study's best trial -> a self-contained model folder and a registered MLflow model.

The sweep already keeps the best trial's best epoch in ``mlruns/best/<study>/``.
Export copies it into a staging folder, adds the label names, metrics.json and a
model card, re-evaluates the staged folder on validation (and test when asked)
and compares with what the sweep recorded, then swaps it into place in one
rename. Only then is it logged under the trial's MLflow run, registered, and the
``champion`` alias pointed at it; re-exporting the same trial reuses its version.

Exit codes: 0 exported; 1 the work failed (re-evaluation mismatch, stale model
folder, MLflow error); 2 bad input (unknown study, no complete trial, no data).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from runner.cli import run_command
from runner.config import StudyConfig, TrackingConfig, check_name
from runner.errors import ConfigError, WorkFailed
from runner.redact import redact_text, redact_url

log = logging.getLogger("runner")

DEFAULT_STORAGE = StudyConfig().storage
DEFAULT_BEST_DIR = TrackingConfig().best_model_dir
# Re-evaluated metrics may differ from the recorded ones by float rounding only.
TOLERANCE = {"eval_f1": 1e-4, "eval_accuracy": 1e-4, "eval_loss": 1e-3}


class ExportFailed(WorkFailed):
    """The export could not be completed or verified (exit 1)."""


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags."""
    p = argparse.ArgumentParser(
        prog="python -m runner.export",
        description="Export a study's best trial: model folder (safetensors, tokenizer, config, metrics, model card), "
        "verified by re-evaluation, logged to MLflow and registered with the alias 'champion'.",
        allow_abbrev=False,  # a shortened flag is an error, never a guess
    )
    p.add_argument("--study", required=True, help="study name (the MLflow experiment)")
    p.add_argument("--out", help="output folder (default mlruns/best/<study>, where the sweep keeps the best model)")
    p.add_argument("--register", metavar="MODEL_NAME", help="registered model name (default: the study name)")
    p.add_argument(
        "--eval-split",
        choices=["validation", "test"],
        default="validation",
        help="'test' also scores the labelled test split and logs test_accuracy/test_f1 on the trial's run",
    )
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default {DEFAULT_STORAGE})")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)"
    )
    p.add_argument("--data-dir", help="local MRPC folder (default: RUNNER_DATA_DIR, else the folder the sweep used)")
    p.add_argument(
        "--best-dir", default=DEFAULT_BEST_DIR, help="where the sweep kept best models (default %(default)s)"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    return p


def check_flags(args: argparse.Namespace) -> int:
    """0 when the names are valid, else a ConfigError (exit 2).

    ``--study`` names a folder under ``--best-dir`` (``../x`` would leave it) and ``--register``
    goes quoted into MLflow's filter strings (a ``'`` never matches its own versions, so every
    re-export would register a duplicate): both follow the config's ``study.name`` rule.
    """
    check_name("--study", args.study)
    if args.register is not None:
        check_name("--register", args.register)
    return 0


def load_study(storage_url: str, study_name: str):
    """The study, which must exist and have a complete trial (else a ConfigError)."""
    import optuna

    from runner.workers.storage import check_storage_url, open_storage

    check_storage_url(storage_url)
    db = storage_url.removeprefix("sqlite:///") if storage_url.startswith("sqlite:///") else None
    if db and not Path(db).is_file():
        raise ConfigError(f"no Optuna storage at {db}: run a sweep first, or pass --storage")
    storage = open_storage(storage_url)
    names = optuna.study.get_all_study_names(storage)
    if study_name not in names:
        known = f" (known: {', '.join(sorted(names))})" if names else ""
        raise ConfigError(f"unknown study {study_name!r} in {redact_url(storage_url)}{known}")
    study = optuna.load_study(study_name=study_name, storage=storage)
    states = [t.state.name.lower() for t in study.trials]
    if "complete" not in states:
        summary = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "no trials"
        raise ConfigError(f"study {study_name!r} has no complete trial ({summary}): nothing to export")
    return study


def saved_trial(source: Path, study):
    """The trial whose model the sweep kept in ``source`` (the best, or one tied with it) and its trial.json."""
    from runner.record.checkpoint import INFO_FILE

    try:
        info = json.loads((source / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"no saved model for this study in {source} (missing {INFO_FILE}): pass --best-dir") from None
    best = study.best_trial
    number = info.get("trial")
    if number != best.number and not (isinstance(number, int) and study.trials[number].value == best.value):
        raise ExportFailed(
            f"{source} holds trial {number} ({info.get('value')}) but the study's best is trial "
            f"{best.number} ({best.value}): the folder is stale"
        )
    return study.trials[number], info


def stage(source: Path, out: Path) -> Path:
    """Copy the best model next to ``out`` under a hidden, unpredictable name (removed if this fails)."""
    from runner.record.checkpoint import private_dir, staging_dir
    from runner.training.data import LABEL_NAMES

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
    from runner.record.checkpoint import INFO_FILE, read_info

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


def run_export(args: argparse.Namespace) -> int:
    """Export, verify, publish, register; raises ConfigError (exit 2) or ExportFailed (exit 1)."""
    from runner.config import load_config
    from runner.record import history, modelcard, store
    from runner.record.checkpoint import folder_lock, read_info, remove_leftovers, replace_dir
    from runner.training import evaluation
    from runner.training.data import resolve_data_dir

    tracking_uri = store.resolve_tracking_uri(args.tracking_uri)
    store.check_store_exists(tracking_uri)
    study = load_study(args.storage, args.study)
    source = Path(args.best_dir) / args.study
    out = Path(args.out) if args.out else source
    check_out(out, source, args.study)
    trial, info = saved_trial(source, study)
    run_id = history.find_trial_run(tracking_uri, args.study, trial.number)
    if run_id is None:
        raise ConfigError(
            f"the tracking store {redact_url(tracking_uri)} has no run for trial {trial.number} of {args.study!r}"
        )
    cfg = load_config(source / "runner_config.yaml")
    data_dir = resolve_data_dir(cfg.data, args.data_dir) or history.study_data_source(tracking_uri, args.study)
    log.info(
        "study %r: best trial %d (%s=%.4f), run %s", args.study, trial.number, cfg.study.metric, trial.value, run_id
    )

    data, sizes = evaluation.load_eval_data(cfg, data_dir, args.eval_split == "test")
    record = modelcard.ExportRecord(
        study=args.study,
        trial=trial.number,
        epoch=info.get("epoch"),
        run_id=run_id,
        metric=cfg.study.metric,
        value=float(trial.value),
        params=dict(trial.params),
        precision=trial.user_attrs.get("precision", "fp32"),
        recorded={k: float(v) for k, v in trial.user_attrs.get("best_metrics", {}).items()},
        data_source=data.source,
        data_sizes=sizes,
        data_dir=data_dir,
    )
    record.recorded.setdefault(cfg.study.metric, float(trial.value))
    # The sweep's lock on its best-model folder (BestCheckpoint.exclusive): copy a whole model,
    # never one halfway through a swap, and swap only if no newer best arrived meanwhile.
    with folder_lock(source.parent):
        remove_leftovers(out)
        staging = stage(source, out)
    try:
        scores = evaluation.evaluate_folder(staging, cfg, data, record.precision, args.eval_split == "test")
        record.validation = scores["validation"]
        record.test = scores.get("test") or previous_test_scores(out, record)
        modelcard.write_metrics(record, staging)
        modelcard.write_model_card(record, cfg, staging, out)
        mismatches = compare(record.recorded, record.validation)
        if mismatches:
            raise ExportFailed(
                f"re-evaluating the exported model on validation does not match the sweep: {'; '.join(mismatches)}"
            )
        with folder_lock(source.parent):
            if not read_info(source) == read_info(staging) == info:
                raise ExportFailed(f"a new best model was saved to {source} during the export: export again")
            check_out(out, source, args.study)
            replace_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported to %s", out)
    return publish(args, tracking_uri, record, out)


def publish(args: argparse.Namespace, tracking_uri: str, record, out: Path) -> int:
    """Log test metrics, log and register the model (once per trial), move the alias; print the summary."""
    from runner.record import registry

    name = args.register or args.study
    if args.eval_split == "test":
        registry.log_run_metrics(
            tracking_uri, record.run_id, {k: v for k, v in record.test.items() if k != "test_loss"}
        )
    version = registry.find_model_version(tracking_uri, name, record.run_id)
    created = version is None
    if created:
        log.info("logging the model under run %s and registering it as %r", record.run_id, name)
        tags = {"runner.study": record.study, "runner.trial": record.trial, f"runner.{record.metric}": record.value}
        version = registry.log_and_register(tracking_uri, record.run_id, out, name, tags)
    previous = registry.set_champion(tracking_uri, name, version)

    out_ = sys.stdout
    out_.write(
        f"exported trial {record.trial} of study {record.study!r} ({record.metric}={record.value:.4f}) to {out}\n"
    )
    val = record.validation
    out_.write(
        f"validation: f1 {val.get('eval_f1', float('nan')):.4f}, accuracy {val.get('eval_accuracy', float('nan')):.4f} "
        "(matches the sweep's record)\n"
    )
    if record.test:
        when = "" if args.eval_split == "test" else " (scored by an earlier export of this trial)"
        out_.write(f"test: f1 {record.test['test_f1']:.4f}, accuracy {record.test['test_accuracy']:.4f}{when}\n")
    moved = "unchanged" if previous == version else f"moved from version {previous}" if previous else "set"
    state = "new" if created else "existing, same trial"
    out_.write(f"registered model {name!r} version {version} ({state}); alias @{registry.CHAMPION_ALIAS} {moved}\n")
    out_.write(f'try it: python -m runner.predict --model "models:/{name}@{registry.CHAMPION_ALIAS}" "..." "..."\n')
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    # Names first, before MLflow is even imported: a bad one is one line and touches no store.
    code = run_command("runner.export", lambda: check_flags(args), args.debug, quiet=False)
    if code:
        return code
    from runner.record.store import RecordError

    return run_command("runner.export", lambda: run_export(args), args.debug, failures=(RecordError,))


if __name__ == "__main__":
    sys.exit(main())
