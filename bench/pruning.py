"""Pruning, replayed: which pruner saves the most epochs without pruning the best trial?

Takes the per-epoch validation curves of a finished study (a real sweep of the
default model on full MRPC) and replays them, in the original order, through a
fresh study for each pruner setting. Each replayed trial reports its epochs as
runner does (step = epoch, never pruned after its last epoch). No training runs,
so settings can be compared on the same curves.

A trial that the original sweep stopped early (pruned or interrupted) has no
values past that epoch; if a more lenient pruner would have let it go on, its
cost counts the epochs it planned and its value stays the best one known (a
lower bound), flagged in the output.

The curves are saved with the results, so a later replay (new pruner settings)
needs no store: ``--curves bench/results/pruning.json``.

    python -m bench.pruning --storage sqlite:///mlruns/optuna.db --study mrpc-minilm
    python -m bench.pruning --curves bench/results/pruning.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bench import common
from runner.config.loading import load_config
from runner.config.schema import SweepConfig
from runner.search.study import make_pruner

log = logging.getLogger("bench.pruning")


class MarginMedianPruner(optuna.pruners.BasePruner):
    """Optuna's median rule with a margin: prune only a trial whose best so far is ``margin`` below the median.

    The median is over the completed trials' values at the same step, as in
    ``optuna.pruners.MedianPruner``. The margin lets pruning start at epoch 1, where
    most trials still sit near the majority-class F1: only a trial clearly behind goes.
    """

    def __init__(self, margin: float, n_startup_trials: int = 3, n_warmup_steps: int = 1) -> None:
        self.margin, self.n_startup_trials, self.n_warmup_steps = margin, n_startup_trials, n_warmup_steps

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if step is None or step < self.n_warmup_steps or len(completed) < max(1, self.n_startup_trials):
            return False
        at_step = [t.intermediate_values[step] for t in completed if step in t.intermediate_values]
        if not at_step:
            return False
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        values = [v for v in trial.intermediate_values.values() if not math.isnan(v)]
        if not values:
            return True  # only NaN so far: a diverged trial
        best = max(values) if maximize else min(values)
        median = statistics.median(at_step)
        return best < median - self.margin if maximize else best > median + self.margin


def pruners(max_epochs: int, default: SweepConfig) -> dict[str, optuna.pruners.BasePruner]:
    """Settings to compare, ``default`` (sweeps/mrpc.yaml) built by runner itself; runner's median uses
    n_warmup_steps = warmup epochs + 1. An alternative with the default's settings is its row alone."""
    study = default.study
    own = f"{study.pruner}, {study.pruner_startup_trials} startup, prune from epoch {study.pruner_warmup_epochs + 1}"
    others = {
        "median, 3 startup, prune from epoch 1": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        "median, 3 startup, prune from epoch 2": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
        "median, 5 startup, prune from epoch 2": optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
        "median - 0.01, 3 startup, prune from epoch 1": MarginMedianPruner(0.01, n_startup_trials=3, n_warmup_steps=1),
        "median - 0.02, 3 startup, prune from epoch 1": MarginMedianPruner(0.02, n_startup_trials=3, n_warmup_steps=1),
        # Optuna's percentile counts from the top when maximising: 25.0 keeps the top 25%.
        "percentile, keeps top 25%, 3 startup, from epoch 2": optuna.pruners.PercentilePruner(
            25.0, n_startup_trials=3, n_warmup_steps=2
        ),
        "percentile, keeps top 75%, 3 startup, from epoch 2": optuna.pruners.PercentilePruner(
            75.0, n_startup_trials=3, n_warmup_steps=2
        ),
        "hyperband (min 1 epoch, rf 3)": optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max_epochs, reduction_factor=3
        ),
    }
    others.pop(own, None)
    return {"none": optuna.pruners.NopPruner(), f"{own} (default)": make_pruner(default), **others}


def curves_of(study: optuna.Study) -> list[dict]:
    """The trials that reported epochs, in order: number, planned epochs, and F1 by epoch."""
    return [
        {
            "number": t.number,
            "planned": int(t.params.get("num_train_epochs", max(t.intermediate_values))),
            "state": t.state.name,
            "curve": {str(epoch): value for epoch, value in sorted(t.intermediate_values.items())},
        }
        for t in study.trials
        if t.intermediate_values
    ]


def replay(source: list[dict], pruner: optuna.pruners.BasePruner, metric_max: bool = True) -> dict:
    """Run the recorded curves through ``pruner``; epochs spent, best value kept, best trial's fate."""
    # A fixed name: Hyperband picks each trial's bracket from a hash of study name and trial number.
    study = optuna.create_study(study_name="replay", direction="maximize" if metric_max else "minimize", pruner=pruner)
    spent, values, unknown, pruned = 0, {}, 0, []
    for recorded in source:
        curve = {int(epoch): value for epoch, value in recorded["curve"].items()}
        planned = recorded["planned"]
        trial = study.ask()
        stopped = None
        for epoch in range(1, planned + 1):
            if epoch not in curve:  # the original sweep stopped here; this pruner would go on
                unknown += 1
                spent += planned - epoch + 1
                break
            spent += 1
            trial.report(curve[epoch], step=epoch)
            if epoch < planned and trial.should_prune():
                stopped = epoch
                break
        known = [v for e, v in curve.items() if stopped is None or e <= stopped]
        best = max(known) if metric_max else min(known)
        if stopped is None:
            study.tell(trial, best)
            values[recorded["number"]] = best
        else:
            study.tell(trial, state=TrialState.PRUNED)
            pruned.append(recorded["number"])
    return {"epochs": spent, "values": values, "pruned": pruned, "unknown": unknown}


def top(values: dict, k: int, metric_max: bool = True) -> list:
    """The ``k`` best trials of a replay, best first: the ones the confirmation stage would repeat."""
    return sorted(values, key=lambda number: values[number], reverse=metric_max)[:k]


def load_source(args) -> tuple[str, list[dict]]:
    """The curves to replay and where they came from: a saved results file, or a study's store."""
    if args.curves:
        saved = json.loads(Path(args.curves).read_text(encoding="utf-8"))
        return saved["study"], saved["curves"]
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    return args.study, curves_of(study)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite:///mlruns/optuna.db")
    parser.add_argument("--study", default="mrpc-minilm")
    parser.add_argument("--curves", help="replay the curves saved in an earlier results file instead of a store")
    parser.add_argument("--name", default="pruning", help="results file name (bench/results/NAME.json)")
    parser.add_argument("--top-k", type=int, help="finalists to keep (default: the confirmation's top_k in mrpc.yaml)")
    args = parser.parse_args(argv)
    default = load_config(common.ROOT / "sweeps" / "mrpc.yaml")
    args.top_k = args.top_k or default.study.confirm.top_k
    common.setup()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name, source = load_source(args)
    max_epochs = max(t["planned"] for t in source)
    oracle = max(max(t["curve"].values()) for t in source)
    best_number = next(t["number"] for t in source if max(t["curve"].values()) == oracle)
    rows, raw = [], {}
    unpruned = replay(source, optuna.pruners.NopPruner())
    full, finalists = unpruned["epochs"], top(unpruned["values"], args.top_k)
    for label, pruner in pruners(max_epochs, default).items():
        r = replay(source, pruner)
        raw[label] = r
        kept = max(r["values"].values())
        rows.append(
            {
                "pruner": label,
                "epochs run": r["epochs"],
                "epochs saved": f"{100 * (1 - r['epochs'] / full):.0f}%",
                "trials pruned": len(r["pruned"]),
                "best F1 kept": kept,
                "F1 lost": oracle - kept,
                f"best trial ({best_number}) pruned": best_number in r["pruned"],
                # The search's finalists without pruning: the confirmation stage decides among them.
                f"top {args.top_k} kept": f"{len(set(finalists) & set(top(r['values'], args.top_k)))}/{args.top_k}",
                "continuations unknown": r["unknown"],
            }
        )
    print(f"{len(source)} trials with curves from study {name!r}; best {oracle:.4f} (trial {best_number})\n")
    print(text := common.table(rows, list(rows[0])))
    origin = {"curves_from": args.curves} if args.curves else {"storage": args.storage}
    common.save(args.name, {"study": name, **origin, "curves": source, "replays": raw, "table": text})


if __name__ == "__main__":
    main()
