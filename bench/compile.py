"""torch.compile with bounded shapes: does a whole trial get faster, compilation included?

Each variant runs the sweep as a user would (``python -m runner.sweep``) in a fresh folder: the
default model, one fixed configuration, ``--trials N`` trials of ``--epochs`` epochs each, no
pruning and no confirmation stage. Read back from the study's storage:

- the first epoch of the first trial (it pays for compilation),
- the steady-state epoch (the median of every later epoch),
- the first and the later trials whole (a later trial shows what one process reuses),
- and the whole command's wall time.

Variants: eager (today's trials); eager with batches padded to a multiple of 16 (what padding
alone costs); compiled on padded batches with torch's automatic dynamic shapes, with
``dynamic=True``; and compiled with Inductor's on-disk cache warm from an earlier, untimed
command (a second sweep process on the same machine). Each compiled variant without the warm
cache gets an empty cache folder (``TORCHINDUCTOR_CACHE_DIR``) every time. Repeats are interleaved
with a rotating order.

    python -m bench.compile --quick     # 2 trials x 2 epochs on 256/128 pairs, 2 repeats
    python -m bench.compile             # 2 trials x 2 epochs on full MRPC, 1 repeat
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
from pathlib import Path

from bench import common

log = logging.getLogger("bench.compile")

PADDED = {"train.pad_to_multiple_of": 16}
COMPILED = {**PADDED, "train.compile": "true"}
VARIANTS: dict[str, tuple[dict, str | None]] = {
    # name: (--set overrides, Inductor cache: None (unused), "cold" (empty each time) or "warm")
    "eager": ({}, None),
    "eager, pad 16": (PADDED, None),
    "compiled, pad 16": (COMPILED, "cold"),
    "compiled dynamic, pad 16": ({**COMPILED, "train.compile_dynamic": "true"}, "cold"),
    "compiled, pad 16, warm disk cache": (COMPILED, "warm"),
}


def trial_times(work: Path) -> list[dict]:
    """Each trial's epoch seconds, whole seconds and best value, from the study the command left."""
    import optuna

    study = optuna.load_study(study_name=None, storage=f"sqlite:///{work / 'mlruns' / 'optuna.db'}")
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    return [
        {
            "epochs": t.user_attrs.get("epoch_seconds", []),
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds(),
            "value": t.value,
        }
        for t in trials
    ]


def run_once(args, name: str, caches: Path) -> dict:
    """One whole command of variant ``name`` in a fresh folder: its wall seconds and its trials."""
    overrides, cache = VARIANTS[name]
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as folder:
        work = Path(folder)
        if cache is not None:
            target = caches / "warm" if cache == "warm" else Path(tempfile.mkdtemp(dir=caches, prefix="cold-"))
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(target)
        try:
            wall = common.timed(common.fixed_sweep_command(args, overrides), work, work / "sweep.log")
        finally:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        return {"wall": wall, "trials": trial_times(work)}


def summary(name: str, runs: list[dict], eager: dict | None) -> dict:
    """Medians over the repeats of one variant."""
    med = common.median
    first_epoch = med([r["trials"][0]["epochs"][0] for r in runs])
    later = [s for r in runs for t in r["trials"] for s in t["epochs"][1:]] or [float("nan")]
    first_trial = med([r["trials"][0]["seconds"] for r in runs])
    later_trials = [t["seconds"] for r in runs for t in r["trials"][1:]] or [float("nan")]
    wall = med([r["wall"] for r in runs])
    row = {
        "variant": name,
        "first epoch s": first_epoch,
        "steady epoch s": statistics.median(later),
        "first trial s": first_trial,
        "later trial s": statistics.median(later_trials),
        "command s": wall,
        "F1 (trial 0)": med([r["trials"][0]["value"] for r in runs]),
    }
    if eager:
        row["steady vs eager"] = row["steady epoch s"] / eager["steady epoch s"]
        row["command vs eager"] = wall / eager["command s"]
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.sweep_arguments(parser, trials=2, epochs=2, quick="2 trials x 2 epochs on 256/128 pairs, 2 repeats")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), metavar="VARIANT", help="run only these")
    args = common.parse_sweep_arguments(parser, argv)
    args.repeats = args.repeats or (2 if args.quick else 1)
    common.setup()
    names = [n for n in VARIANTS if not args.only or n in args.only or n == "eager"]
    with tempfile.TemporaryDirectory(prefix="bench-compile-caches-") as folder:
        caches = Path(folder)
        if any(VARIANTS[n][1] == "warm" for n in names):
            log.info("filling the warm Inductor cache (untimed)")
            run_once(args, next(n for n in names if VARIANTS[n][1] == "warm"), caches)
        results: dict[str, list[dict]] = {n: [] for n in names}

        def case(name: str):
            return lambda: results[name].append(run_once(args, name, caches))

        common.interleaved({n: case(n) for n in names}, args.repeats)
    eager = summary("eager", results["eager"], None)
    rows = [eager] + [summary(n, results[n], eager) for n in names if n != "eager"]
    print(text := common.table(rows, list(rows[-1])))
    common.save(
        "compile-quick" if args.quick else "compile",
        {
            "trials": args.trials,
            "epochs": args.epochs,
            "train_samples": args.train_samples,
            "eval_samples": args.eval_samples,
            "runs": results,
            "table": text,
        },
    )


if __name__ == "__main__":
    main()
