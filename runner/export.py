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
import logging
import shutil
import sys
from pathlib import Path

from runner.cli import OneLineParser, log_level, run_checked, shared_flags, verbosity_flags
from runner.config import TrackingConfig, check_name
from runner.errors import ConfigError
from runner.redact import redact_url

log = logging.getLogger("runner")

DEFAULT_BEST_DIR = TrackingConfig().best_model_dir


PROG = "python -m runner.export"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """Command-line flags; ``prog`` is the command as typed (``runner export`` from the ``runner`` command)."""
    p = OneLineParser(
        prog=prog,
        description="Export a study's best trial: model folder (safetensors, tokenizer, config, metrics, model card), "
        "verified by re-evaluation, logged to MLflow and registered with the alias 'champion'.",
        parents=[shared_flags(storage="env"), verbosity_flags()],
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
    p.add_argument("--data-dir", help="local MRPC folder (default: RUNNER_DATA_DIR, else the folder the sweep used)")
    p.add_argument(
        "--best-dir", default=DEFAULT_BEST_DIR, help="where the sweep kept best models (default %(default)s)"
    )
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
    from runner.workers.storage import load_existing_study

    study = load_existing_study(storage_url, study_name)
    states = [t.state.name.lower() for t in study.trials]
    if "complete" not in states:
        summary = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "no trials"
        raise ConfigError(f"study {study_name!r} has no complete trial ({summary}): nothing to export")
    return study


def run_export(args: argparse.Namespace) -> int:
    """Export, verify, publish, register; raises ConfigError (exit 2) or ExportFailed (exit 1)."""
    from runner.config import load_config, resolve_data_dir
    from runner.record import history, modelcard, store
    from runner.record.checkpoint import folder_lock, read_info, remove_leftovers, replace_dir
    from runner.record.shipping import ExportFailed, check_out, compare, previous_test_scores, saved_trial, stage
    from runner.training import evaluation
    from runner.training.train import resolve_precision

    tracking_uri = store.resolve_tracking_uri(args.tracking_uri)
    store.check_store_exists(tracking_uri)
    study = load_study(args.storage, args.study)
    source = Path(args.best_dir) / args.study
    out = Path(args.out) if args.out else source
    check_out(out, source, args.study)
    outcome = confirmation(args.storage, study)
    trial, info = saved_trial(source, study, outcome.winner.trial if outcome else None)
    from_rerun = "confirm_trial" in info  # the kept model comes from a confirmation run, not the search run
    run_id = info.get("run_id") if from_rerun else history.trial_run_id(tracking_uri, args.study, trial)
    if run_id is None:
        raise ConfigError(
            f"the tracking store {redact_url(tracking_uri)} has no run for trial {trial.number} of {args.study!r}"
        )
    # --data-dir > $RUNNER_DATA_DIR > the folder the sweep used, as its saved config records it.
    cfg = resolve_data_dir(load_config(source / "runner_config.yaml"), args.data_dir)
    if cfg.data.data_dir is None:
        # A model saved before the config held the data folder: the folder its sweep logged as a dataset input.
        cfg = resolve_data_dir(cfg, history.study_data_source(tracking_uri, args.study))
    value = float(info["value"]) if from_rerun else float(trial.value)
    metric = cfg.study.metric
    log.info("study %r: trial %d's configuration (%s=%.4f), run %s", args.study, trial.number, metric, value, run_id)

    data, sizes = evaluation.load_eval_data(cfg, args.eval_split == "test")
    record = modelcard.ExportRecord(
        study=args.study,
        trial=trial.number,
        epoch=info.get("epoch"),
        run_id=run_id,
        metric=cfg.study.metric,
        value=value,
        params=dict(trial.params),
        precision=info.get("precision") or trial.user_attrs.get("precision", "fp32"),
        recorded=recorded_metrics(info if from_rerun else trial.user_attrs.get("best_metrics", {})),
        data_source=data.source,
        data_sizes=sizes,
        data_dir=cfg.data.data_dir,
        confirmed=info.get("confirmed"),
        seed=info.get("seed", cfg.train.seed),
    )
    record.recorded.setdefault(cfg.study.metric, value)
    # The sweep's lock on its best-model folder (BestCheckpoint.exclusive): copy a whole model,
    # never one halfway through a swap, and swap only if no newer best arrived meanwhile.
    with folder_lock(source.parent):
        remove_leftovers(out)
        staging = stage(source, out)
    try:
        precision = evaluation.runnable(record.precision, resolve_precision(True))
        scores = evaluation.evaluate_folder(staging, cfg, data, precision, args.eval_split == "test")
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


def confirmation(storage_url: str, study):
    """The confirmation stage's outcome when one completed for ``study``, else None (export the search's best)."""
    from runner.search.confirm import load_confirm_study, summarize
    from runner.workers.storage import open_storage

    outcome = summarize(study, load_confirm_study(open_storage(storage_url), study.study_name), "value")
    if outcome is not None and not outcome.complete:
        log.warning("the confirmation stage of %r is not finished: exporting the search's best trial", study.study_name)
        return None
    return outcome


def recorded_metrics(source: dict) -> dict[str, float]:
    """The validation metrics the sweep recorded at the model's best epoch (``best_metrics``, or trial.json's)."""
    found = source.get("metrics", source)
    return {k: float(v) for k, v in found.items() if k.startswith("eval_")}


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
    if record.confirmed:
        out_.write(
            f"confirmed: {record.metric} {record.confirmed_text()} "
            "(this configuration's runs; expect this on new data)\n"
            f"this model: {record.metric} {record.value:.4f} (the best of those runs, seed {record.seed})\n"
        )
    val = record.validation
    out_.write(f"validation: {scores_text(val, 'eval')} (matches the sweep's record)\n")
    if record.test:
        when = "" if args.eval_split == "test" else " (scored by an earlier export of this trial)"
        out_.write(f"test: {scores_text(record.test, 'test')}{when}\n")
    moved = "unchanged" if previous == version else f"moved from version {previous}" if previous else "set"
    state = "new" if created else "existing, same trial"
    out_.write(f"registered model {name!r} version {version} ({state}); alias @{registry.CHAMPION_ALIAS} {moved}\n")
    out_.write(f'try it: python -m runner.predict --model "models:/{name}@{registry.CHAMPION_ALIAS}" "..." "..."\n')
    return 0


def scores_text(scores: dict[str, float], prefix: str) -> str:
    """``f1 0.8740 (0.851-0.896), accuracy 0.8100 (0.772-0.846)``: each score with its 95% interval when known."""
    parts = []
    for name in ("f1", "accuracy"):
        key = f"{prefix}_{name}"
        low, high = scores.get(f"{key}_ci_low"), scores.get(f"{key}_ci_high")
        interval = f" ({low:.3f}-{high:.3f})" if low is not None and high is not None else ""
        parts.append(f"{name} {scores.get(key, float('nan')):.4f}{interval}")
    return ", ".join(parts)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """CLI entry point; returns the exit code. ``prog``: the command as typed, for help and errors."""
    args = build_parser(prog).parse_args(argv)

    def failures() -> tuple[type[BaseException], ...]:
        from runner.record.store import RecordError

        return (RecordError,)

    def check() -> int:
        check_flags(args)
        # The tracking store too, before the ML libraries load: an unreachable server fails in a second.
        from runner.record.store import check_store_exists, resolve_tracking_uri

        check_store_exists(resolve_tracking_uri(args.tracking_uri))
        return 0

    return run_checked(prog, check, lambda: run_export(args), args.debug, failures, level=log_level(args))


if __name__ == "__main__":
    sys.exit(main())
