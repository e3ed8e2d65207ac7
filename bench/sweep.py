"""A whole sweep: runner versus ``Trainer.hyperparameter_search(backend="optuna")``.

Both get the same search space (that of sweeps/mrpc.yaml), number of trials,
data slice and TPE seed, each in a fresh process and a fresh working folder.
Reported: wall time (ratio runner / baseline), best validation F1, and bytes
and model checkpoints left on disk.

    python -m bench.sweep --quick                                   # 6 trials, 256 pairs
    python -m bench.sweep --trials 20 --train-samples 600 --eval-samples 408
    python -m bench.sweep --trials 20 --train-samples 600 --eval-samples 408 --sampler random

TPE's proposals depend on the results so far, so the two sweeps soon train
different parameters (more fp32 or more epochs on one side moves the wall time
by 20%); with ``--sampler random`` both train the same seeded parameter sets.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import optuna

from bench import common

log = logging.getLogger("bench.sweep")


def disk_usage(folder: Path) -> tuple[int, int]:
    """Bytes under ``folder``, and how many model weight files (checkpoints) it holds."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    weights = [p for p in files if p.name in ("model.safetensors", "pytorch_model.bin")]
    return sum(p.stat().st_size for p in files), len(weights)


def run_runner(work: Path, args) -> dict:
    """``python -m runner.sweep`` exactly as a user runs it, in its own folder."""
    cmd = [
        sys.executable,
        "-m",
        "runner.sweep",
        "--config",
        str(common.ROOT / "sweeps" / "mrpc.yaml"),
        "--data-dir",
        common.data_dir(),
        "--study",
        "bench",
        "--trials",
        str(args.trials),
        "--set",
        f"data.max_train_samples={args.train_samples}",
        "--set",
        f"data.max_eval_samples={args.eval_samples}",
        "--set",
        f"study.sampler={args.sampler}",
        *args.runner_args,
    ]
    seconds = common.timed(cmd, work, work / "runner.log")
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{work}/mlruns/optuna.db")
    states = [t.state.name for t in study.trials]
    return {"seconds": seconds, "best_f1": study.best_value, "states": {s: states.count(s) for s in set(states)}}


def run_baseline(work: Path, args) -> dict:
    """The rival in its own process (bench/baseline_hp_search.py)."""
    cmd = [
        sys.executable,
        "-m",
        "bench.baseline_hp_search",
        "--out",
        str(work),
        "--train-samples",
        str(args.train_samples),
        "--eval-samples",
        str(args.eval_samples),
        "--trials",
        str(args.trials),
        "--sampler",
        args.sampler,
    ]
    seconds = common.timed(cmd, work, work / "baseline.log")
    last = (work / "baseline.log").read_text().strip().splitlines()
    result = json.loads(next(line for line in reversed(last) if line.startswith('{"best_f1"')))
    return {"seconds": seconds, **result}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 trials on 256/128 pairs: a few minutes")
    parser.add_argument("--trials", type=int)
    parser.add_argument("--train-samples", type=int)
    parser.add_argument("--eval-samples", type=int)
    parser.add_argument(
        "--sampler",
        choices=("tpe", "random"),
        default="tpe",
        help="random: both sweeps train the very same 20 parameter sets (seeded), so only the machinery differs",
    )
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    parser.add_argument("--runner-args", nargs=argparse.REMAINDER, default=[], help="extra runner.sweep flags")
    args = parser.parse_args(argv)
    args.trials = args.trials or (6 if args.quick else 20)
    args.train_samples = args.train_samples or (256 if args.quick else 600)
    args.eval_samples = args.eval_samples or (128 if args.quick else 408)
    common.setup()

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        root = Path(args.keep or tmp)
        results = {}
        for name, run in (("runner", run_runner), ("hyperparameter_search", run_baseline)):
            work = root / name
            work.mkdir(parents=True, exist_ok=True)
            results[name] = run(work, args)
            results[name]["bytes"], results[name]["checkpoints"] = disk_usage(work)
            log.info("%s: %s", name, results[name])
    base = results["hyperparameter_search"]
    rows = [
        {
            "sweep": name,
            "wall s": r["seconds"],
            "vs baseline": r["seconds"] / base["seconds"],
            "best val F1": r["best_f1"],
            "MB on disk": r["bytes"] / 1e6,
            "model checkpoints": r["checkpoints"],
        }
        for name, r in results.items()
    ]
    print(text := common.table(rows, list(rows[0])))
    common.save(
        "sweep" if args.sampler == "tpe" else f"sweep-{args.sampler}",
        {
            "trials": args.trials,
            "train_samples": args.train_samples,
            "eval_samples": args.eval_samples,
            "results": results,
            "table": text,
        },
    )


if __name__ == "__main__":
    main()
