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
import tempfile
from pathlib import Path

from bench import common

log = logging.getLogger("bench.workers")


def sweep_command(args, workers: int) -> list[str]:
    """The runner command of one variant: one fixed configuration, no confirmation, ``--workers`` when K > 1."""
    return common.fixed_sweep_command(args) + (["--workers", str(workers)] if workers > 1 else [])


def run_once(args, workers: int) -> float:
    """Wall seconds of one whole command in a fresh folder (a new study every time)."""
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as work:
        return common.timed(sweep_command(args, workers), Path(work), Path(work) / "sweep.log")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.sweep_arguments(parser, trials=4, epochs=1, quick="4 one-epoch trials on 256/128 pairs, 2 repeats")
    parser.add_argument("--workers", type=int, default=2, help="K of the second variant (default 2)")
    parser.add_argument("--repeats", type=int, default=2)
    args = common.parse_sweep_arguments(parser, argv)
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
