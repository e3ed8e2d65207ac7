"""Fill the cores: one sweep process with every thread, or ``--workers K`` with ``cores // K`` threads each.

Both run the same sweep as a user would (``python -m runner.sweep``), each in a fresh folder: the
default model, one fixed configuration (so every trial costs the same), ``--trials N``, no
confirmation stage. Measured: wall seconds of the whole command, and trials per hour. Repeats
are interleaved with a rotating order (A B, B A, ...), since runs of one variant drift on a
shared machine.

    python -m bench.workers --quick     # 4 trials of 1 epoch on 256/128 pairs, 2 repeats
    python -m bench.workers --trials 4 --train-samples 3668 --eval-samples 408 --repeats 1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from bench import common

log = logging.getLogger("bench.workers")


def sweep_command(args, workers: int) -> list[str]:
    """The runner command of one variant: the default sweep file, one configuration, no confirmation."""
    fixed = {
        "data.max_train_samples": args.train_samples,
        "data.max_eval_samples": args.eval_samples,
        "study.confirm.top_k": 0,
        "study.pruner": "none",
        "search_space.learning_rate": 1e-4,
        "search_space.per_device_train_batch_size": 32,
        "search_space.num_train_epochs": args.epochs,
        "search_space.fp16": "true",
    }
    command = [sys.executable, "-m", "runner.sweep", "--config", str(common.ROOT / "sweeps" / "mrpc.yaml")]
    command += ["--data-dir", common.data_dir(), "--trials", str(args.trials), "--no-system-metrics"]
    command += [item for key, value in fixed.items() for item in ("--set", f"{key}={value}")]
    return command + (["--workers", str(workers)] if workers > 1 else [])


def run_once(args, workers: int) -> float:
    """Wall seconds of one whole command in a fresh folder (a new study every time)."""
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as work:
        return common.timed(sweep_command(args, workers), Path(work), Path(work) / "sweep.log")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 one-epoch trials on 256/128 pairs, 2 repeats")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-samples", type=int)
    parser.add_argument("--eval-samples", type=int)
    parser.add_argument("--workers", type=int, default=2, help="K of the second variant (default 2)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    args.train_samples = args.train_samples or (256 if args.quick else 3668)
    args.eval_samples = args.eval_samples or (128 if args.quick else 408)
    common.setup()
    cores = os.cpu_count() or 1
    k = args.workers
    names = {1: f"1 worker x {cores} threads", k: f"{k} workers x {max(1, cores // k)} threads"}
    times = common.interleaved({name: (lambda n=n: run_once(args, n)) for n, name in names.items()}, args.repeats)
    one = common.median(times[names[1]])
    rows = [
        {
            "variant": name,
            "wall s (median)": common.median(seconds),
            "vs 1 worker": common.median(seconds) / one,
            "trials per hour": args.trials * 3600 / common.median(seconds),
            "runs": ", ".join(f"{s:.0f}" for s in seconds),
        }
        for name, seconds in times.items()
    ]
    print(text := common.table(rows, list(rows[0])))
    common.save(
        "workers-quick" if args.quick else "workers",
        {
            "trials": args.trials,
            "epochs": args.epochs,
            "train_samples": args.train_samples,
            "eval_samples": args.eval_samples,
            "times": times,
            "table": text,
        },
    )


if __name__ == "__main__":
    main()
