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

    python -m bench.pruning --storage sqlite:///mlruns/optuna.db --study mrpc-minilm
"""

from __future__ import annotations

import argparse
import logging

import optuna
from optuna.trial import TrialState

from bench import common

log = logging.getLogger("bench.pruning")


def pruners(max_epochs: int) -> dict[str, optuna.pruners.BasePruner]:
    """Settings to compare; runner's median uses n_warmup_steps = warmup epochs + 1."""
    return {
        "none": optuna.pruners.NopPruner(),
        "median, 3 startup, prune from epoch 1": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        "median, 3 startup, prune from epoch 2 (default)": optuna.pruners.MedianPruner(
            n_startup_trials=3, n_warmup_steps=2
        ),
        "median, 5 startup, prune from epoch 2": optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
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


def replay(source: list[optuna.trial.FrozenTrial], pruner: optuna.pruners.BasePruner, metric_max: bool = True) -> dict:
    """Run the recorded curves through ``pruner``; epochs spent, best value kept, best trial's fate."""
    # A fixed name: Hyperband picks each trial's bracket from a hash of study name and trial number.
    study = optuna.create_study(study_name="replay", direction="maximize" if metric_max else "minimize", pruner=pruner)
    spent, values, unknown, pruned = 0, {}, 0, []
    for frozen in source:
        curve = dict(sorted(frozen.intermediate_values.items()))
        planned = int(frozen.params.get("num_train_epochs", max(curve)))
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
            values[frozen.number] = best
        else:
            study.tell(trial, state=TrialState.PRUNED)
            pruned.append(frozen.number)
    return {"epochs": spent, "values": values, "pruned": pruned, "unknown": unknown}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite:///mlruns/optuna.db")
    parser.add_argument("--study", default="mrpc-minilm")
    args = parser.parse_args(argv)
    common.setup()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    source = [t for t in study.trials if t.intermediate_values]
    max_epochs = max(int(t.params.get("num_train_epochs", 1)) for t in source)
    oracle = max(max(t.intermediate_values.values()) for t in source)
    best_number = next(t.number for t in source if max(t.intermediate_values.values()) == oracle)
    rows, raw = [], {}
    full = replay(source, optuna.pruners.NopPruner())["epochs"]
    for name, pruner in pruners(max_epochs).items():
        r = replay(source, pruner)
        raw[name] = r
        kept = max(r["values"].values())
        rows.append(
            {
                "pruner": name,
                "epochs run": r["epochs"],
                "epochs saved": f"{100 * (1 - r['epochs'] / full):.0f}%",
                "trials pruned": len(r["pruned"]),
                "best F1 kept": kept,
                "F1 lost": oracle - kept,
                f"best trial ({best_number}) pruned": best_number in r["pruned"],
                "continuations unknown": r["unknown"],
            }
        )
    print(f"{len(source)} trials with curves from study {args.study!r}; best {oracle:.4f} (trial {best_number})\n")
    print(text := common.table(rows, list(rows[0])))
    common.save("pruning", {"study": args.study, "storage": args.storage, "replays": raw, "table": text})


if __name__ == "__main__":
    main()
