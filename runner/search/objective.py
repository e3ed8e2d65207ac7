"""Optuna trial -> one training run -> the trial's value.

Reports to Optuna once per epoch with step = epoch number, so the pruner compares
trials at the same point whatever their batch size, and returns the best epoch's
metric, not the last one's. Each run logs a bootstrap interval on its best epoch's
scores. A confirmation run (``Objective.confirm``) trains a search trial's
configuration again with a new seed, is never pruned, and offers its model to that
configuration's candidate folder instead of the study's best-model folder.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from runner.config import Hyperparameters, SweepConfig, to_yaml
from runner.record import artifacts
from runner.record.checkpoint import BestCheckpoint
from runner.record.history import TRIAL_RUN_ATTR
from runner.record.runs import STOPPED_TAG, RunStopped, Tracker
from runner.redact import redact_text
from runner.search.budget import STOPPED_BY, Budget
from runner.search.confirm import JOB_ATTR, candidate_checkpoint
from runner.search.estimate import EpochClock, record_epoch
from runner.search.progress import SweepProgress
from runner.search.space import suggest
from runner.training import bootstrap
from runner.training.data import MrpcData
from runner.training.model import attention_dropout, new_model, resolve_attention
from runner.training.train import resolve_compile, resolve_precision, train
from runner.workers import worker
from runner.workers.launch import local_workers

log = logging.getLogger(__name__)

PER_EPOCH_METRICS = ("eval_accuracy", "eval_f1", "eval_loss", "train_loss")


@dataclass(frozen=True)
class Role:
    """What a run is for: a search ``trial`` or a ``confirm`` run of search trial ``config_trial``."""

    kind: str
    run_name: str | None
    config_trial: int  # the search trial whose configuration this is (itself, for a search trial)


@dataclass
class Objective:
    """Callable for ``study.optimize``; everything shared across trials is built once."""

    cfg: SweepConfig
    model_source: str
    tokenizer: Any
    data: MrpcData
    tokenized: Any  # DatasetDict
    tracker: Tracker
    checkpoint: BestCheckpoint
    progress: SweepProgress
    budget: Budget | None = None  # the time budget: a run stops at the epoch boundary it cannot pass in time

    def __call__(self, trial: optuna.Trial, run_tags: dict[str, str] | None = None) -> float:
        """Train one search trial and return its value; ``run_tags`` go on its MLflow run (a retry's links)."""
        hp = suggest(trial, self.cfg)
        shown = {k: getattr(hp, k) for k in self.cfg.searched()}
        return self._attempt(trial, hp, self.cfg.train.seed, run_tags or {}, shown, Role("trial", None, trial.number))

    def confirm(self, trial: optuna.Trial) -> float:
        """Re-train the configuration of the job ``trial`` claimed, with the job's seed; never pruned."""
        job = trial.user_attrs[JOB_ATTR]
        confirms, seed = int(job["confirms"]), int(job["seed"])
        hp = Hyperparameters(**{**self.cfg.fixed_hyperparameters(), **job["params"]})
        role = Role("confirm", f"confirm-{confirms:03d}-seed-{seed}", confirms)
        shown = {"repeats trial": confirms, "seed": seed}
        return self._attempt(trial, hp, seed, {"runner.confirms": str(confirms)}, shown, role)

    def _attempt(self, trial: optuna.Trial, hp: Hyperparameters, seed: int, tags, shown, role: Role) -> float:
        # Resolved once per trial: the run's param, the trial's attr and the training all use this one.
        precision = resolve_precision(hp.fp16)
        trial.set_user_attr("precision", precision)
        trial.set_user_attr("worker", worker.current())
        params = {**hp.model_dump(), **self.fixed_params(seed), "precision": precision}
        self.progress.trial_started(trial.number, shown)
        try:
            with self.tracker.trial_run(
                self.cfg.study.name, trial.number, params, tags, role=role.kind, run_name=role.run_name
            ) as run:
                trial.set_user_attr(TRIAL_RUN_ATTR, run.run_id)
                value = self._run(trial, hp, precision, run, seed, role)
        except optuna.TrialPruned:
            self.progress.trial_finished(
                trial.number, "PRUNED", None, f" at epoch {trial.user_attrs.get('epochs_run')}"
            )
            raise
        except RunStopped:  # by the time budget: no error, so a confirmation job stays free for the next command
            self.progress.trial_finished(trial.number, "FAIL", None, f" ({STOPPED_BY})")
            raise
        except Exception as err:
            _free_accelerator_memory()  # an out-of-memory trial must not starve the next one
            # Stored in the Optuna study: an error quoting a URL must not carry its password there.
            trial.set_user_attr("error", redact_text(f"{type(err).__name__}: {err}")[:500])
            log.error("%s %d failed: %s: %s", self.progress.kind, trial.number, type(err).__name__, err)
            self.progress.trial_finished(trial.number, "FAIL", None)
            raise
        self.progress.trial_finished(trial.number, "COMPLETE", value)
        return value

    def fixed_params(self, seed: int | None = None) -> dict[str, Any]:
        """Settings shared by every trial, logged with each so a run stands on its own.

        ``seed`` is the run's training seed: ``train.seed`` for search trials, a new one per confirmation run.
        """
        return {
            "model": self.cfg.model.name,
            "max_length": self.cfg.model.max_length,
            "attn_implementation": resolve_attention(self.cfg.model.attn_implementation),
            "attention_dropout": attention_dropout(self.model_source, self.cfg.model)[1],
            "seed": self.cfg.train.seed if seed is None else seed,
            "per_device_eval_batch_size": self.cfg.train.per_device_eval_batch_size,
            "group_by_length": self.cfg.train.group_by_length,
            "swap_order": self.cfg.train.swap_order,
            "compile": resolve_compile(self.cfg.train.compile),
            "pad_to_multiple_of": self.cfg.train.pad_to_multiple_of,
            "lr_scheduler_type": self.cfg.train.lr_scheduler_type,
            "max_grad_norm": self.cfg.train.max_grad_norm,
            "train_samples": len(self.tokenized["train"]),
            # What ran, for comparing speed across runs: torch's threads and this machine's worker processes.
            "torch_threads": _torch_threads(),
            "local_workers": local_workers(),
            "eval_samples": len(self.tokenized["validation"]),
            # torch's dynamic-shape setting means something only for a compiled model.
            **({"compile_dynamic": self.cfg.train.compile_dynamic} if resolve_compile(self.cfg.train.compile) else {}),
        }

    def _run(self, trial: optuna.Trial, hp, precision: str, run, seed: int, role: Role) -> float:
        metric = self.cfg.study.metric
        maximize = self.cfg.study.direction == "maximize"
        prunable = role.kind == "trial"
        clock = EpochClock()
        out_of_time: list[str] = []  # why the time budget stopped this run, once it did

        def on_epoch(epoch: int, row: dict[str, float]) -> bool:
            record_epoch(trial, clock.lap())  # what the ETA and the time budget estimate from
            run.log_metrics({k: row[k] for k in PER_EPOCH_METRICS if k in row}, step=epoch)
            self.progress.epoch(trial.number, epoch, hp.num_train_epochs, row)
            trial.set_user_attr("epochs_run", epoch)
            if prunable:
                trial.report(row[metric], step=epoch)  # first: a trial the budget stops is pruned with this score
            why = self.budget.stops_run(trial, epoch, hp.num_train_epochs) if self.budget is not None else None
            if why is not None:
                out_of_time.append(why)
                return True
            if not prunable:  # a confirmation run measures the configuration: it always runs to the end
                return False
            # Pruning after the last epoch would only throw away a finished result.
            return epoch < hp.num_train_epochs and trial.should_prune()

        settings = self.cfg.train.model_copy(update={"seed": seed})  # the seed orders the data, too
        model = new_model(self.model_source, seed, self.cfg.model)
        result = train(
            model,
            self.tokenizer,
            self.tokenized["train"],
            self.tokenized["validation"],
            hp,
            settings,
            precision=precision,
            metric=metric,
            maximize=maximize,
            on_epoch=on_epoch,
            progress=lambda epoch, step, steps: self.progress.step(trial.number, epoch, step, steps),
        )
        best = result.best_metrics
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("best_metrics", {k: v for k, v in best.items() if k in PER_EPOCH_METRICS})
        summary = {f"best_{metric}": best[metric], "best_epoch": result.best_epoch}
        summary |= {f"best_{k}": best[k] for k in ("eval_accuracy", "eval_f1") if k in best and k != metric}
        summary |= {"train_runtime": result.train_runtime, "train_samples_per_second": result.train_samples_per_second}
        summary |= self._intervals(trial, result.probabilities)
        run.log_metrics(summary)
        with tempfile.TemporaryDirectory() as tmp:
            files = [artifacts.write_json(result.log_history, Path(tmp) / "log_history.json")]
            if result.probabilities is not None:
                files += self._prediction_files(trial.number, result.probabilities, Path(tmp))
            run.log_files(files)
        if out_of_time:
            _stop_for_time(trial, run, role, out_of_time[0])
        if result.stopped_at_epoch is not None:
            raise optuna.TrialPruned(f"pruned after epoch {result.stopped_at_epoch}")
        self._flag_collapse(result.probabilities, run)
        info = {
            "study": self.cfg.study.name,
            "trial": role.config_trial,
            "epoch": result.best_epoch,
            "run_id": run.run_id,
            "params": hp.model_dump(),
            "metrics": best,
            "precision": precision,
        }
        if role.kind == "confirm":
            info |= {"confirm_trial": trial.number, "seed": seed}
        checkpoint = self.checkpoint if role.kind == "trial" else candidate_checkpoint(self.cfg, role.config_trial)
        checkpoint.offer(model, self.tokenizer, best[metric], info, to_yaml(self.cfg))
        return best[metric]

    def _intervals(self, trial: optuna.Trial, probs) -> dict[str, float]:
        """95% bootstrap intervals of the best epoch's accuracy and F1, from its validation predictions.

        The predictions are kept on the trial (a compact string): the end of the sweep compares
        trials pair by pair on them (``runner.search.ties``).
        """
        if probs is None:
            return {}
        predictions = probs.argmax(axis=-1)
        found = bootstrap.intervals(self.data.validation_labels, predictions)
        trial.set_user_attr("predictions", bootstrap.encode(predictions))
        trial.set_user_attr("intervals", {k: [low, high] for k, (_, low, high) in found.items()})
        return {
            f"best_{k}_ci_{side}": bound
            for k, (_, low, high) in found.items()
            for side, bound in (("low", low), ("high", high))
        }

    def _prediction_files(self, number: int, probs, tmp: Path) -> list[Path]:
        eval_split = self.data.splits["validation"]
        return [
            artifacts.write_predictions(eval_split, probs, tmp / "validation_predictions.csv"),
            artifacts.write_confusion_matrix(
                eval_split["label"], probs, tmp / "confusion_matrix.png", f"trial {number}, validation"
            ),
        ]

    def _flag_collapse(self, probs, run) -> None:
        """A model that predicts one class for every pair has learned nothing: say so on its run."""
        if probs is None:
            return
        predicted = set(probs.argmax(axis=-1).tolist())
        if len(predicted) == 1:
            only = predicted.pop()
            run.set_tags({"runner.collapsed": f"predicts only class {only} (majority-class baseline)"})
            log.warning("trial's model predicts only class %d: it has collapsed to the baseline", only)


def _stop_for_time(trial: optuna.Trial, run, role: Role, why: str) -> None:
    """End a run the time budget stopped: a search trial is pruned (it has scored epochs), a confirmation
    run raises RunStopped (failed with no error: its job stays free). Both say why on the trial and the run."""
    trial.set_user_attr(STOPPED_TAG, STOPPED_BY)
    log.info("%s %d: %s", "confirmation" if role.kind == "confirm" else "trial", trial.number, why)
    if role.kind == "confirm":
        raise RunStopped(why)
    run.set_tags({STOPPED_TAG: why})
    raise optuna.TrialPruned(why)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
