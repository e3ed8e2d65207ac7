"""``runner.sweep --workers K``: K local worker processes on one study, sharing the machine fairly.

Each worker is the same ``runner.sweep`` command without ``--workers``; they meet in
the study's storage, which keeps their total exact (see runner.workers.scheduler). With GPUs,
worker i sees one GPU (``CUDA_VISIBLE_DEVICES``); on CPU the cores are split, because
torch processes that each spin one thread per core slow each other down many times over.

Safety: a worker is marked (``RUNNER_WORKER_INDEX``) and may not launch workers of its own, so
a ``--workers`` flag that reaches it anyway cannot multiply processes. The storage URL and
tracking URI reach the workers through their environment, not their command line, where ``ps``
would show any password in them to every user. Starting, watching and stopping the worker
processes is runner.workers.processes's job.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from runner.config import STORAGE_ENV
from runner.workers.processes import Launcher, Watch

log = logging.getLogger("runner")

THREADS_ENV = "RUNNER_TORCH_THREADS"  # set by the launcher; the worker applies it to torch
WORKER_ENV = "RUNNER_WORKER_INDEX"  # set by the launcher: this process is a worker, it may not launch workers
WORKERS_ENV = "RUNNER_LOCAL_WORKERS"  # set by the launcher: how many workers share this machine


def local_workers() -> int:
    """How many sweep processes this launcher started on this machine (1 without ``--workers``)."""
    given = os.environ.get(WORKERS_ENV, "")
    return int(given) if given.isdigit() and int(given) > 0 else 1


# Set by ``--workers auto``: what it chose and why, for the sweep's summary (in the launcher's workers too).
AUTO_CHOICE_ENV = "RUNNER_WORKERS_AUTO"
# ``--workers auto`` on a CPU runs two workers for a model up to this size, each with half the cores.
# Measured (bench/README.md, section 6, "fill the cores"): all-MiniLM-L6-v2 (22.7M parameters) on full
# MRPC on 2 cores, 2 workers x 1 thread finished 1.17x the trials per hour of 1 worker x 2 threads: a
# small model's matrices are too small to keep two threads busy. Larger models are not measured: one worker.
AUTO_MAX_PARAMS = 30_000_000


def auto_workers(cores: int, gpus: Sequence[str], params: int, trials: int) -> tuple[int, str]:
    """What ``--workers auto`` runs on this machine for this model, and why in words (for the log and summary).

    One worker per GPU; on a CPU, two for a small model when there are two cores or more; otherwise one.
    Never more workers than trials.
    """
    size = f"{params / 1e6:.1f}M-parameter model"
    if gpus:
        workers, why = len(gpus), f"one per GPU ({len(gpus)})"
    elif cores >= 2 and params <= AUTO_MAX_PARAMS:
        workers, why = 2, f"{cores} CPU cores and a {size}: {cores // 2} torch thread(s) each"
    elif cores < 2:
        workers, why = 1, "1 CPU core"
    else:
        workers, why = 1, f"a {size} (over {AUTO_MAX_PARAMS / 1e6:.0f}M): every core to one worker"
    if workers > trials:
        workers, why = trials, f"{why}; only {trials} trial(s)"
    return workers, f"{workers} worker(s) ({why}; --workers auto)"


# Set by the launcher of a sweep with a time budget: the unix time the command started, so that its
# workers, which start seconds later, count the budget from the same moment (runner.search.budget).
BUDGET_START_ENV = "RUNNER_BUDGET_START"
# Flags whose value may hold a password: the workers get it in this environment variable instead.
FLAGS_TO_ENV = {"--storage": STORAGE_ENV, "--tracking-uri": "MLFLOW_TRACKING_URI"}


def cpu_count() -> int:
    """Cores this process may use (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """GPU ids the workers may use: ``CUDA_VISIBLE_DEVICES`` when set, else every CUDA device."""
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [d.strip() for d in declared.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def worker_env(index: int, workers: int, cores: int, gpus: Sequence[str]) -> dict[str, str]:
    """Environment additions for worker ``index`` of ``workers``: its GPU, or its share of the cores."""
    threads = max(1, cores // workers)
    env = {
        WORKER_ENV: str(index),
        WORKERS_ENV: str(workers),
        THREADS_ENV: str(threads),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def apply_thread_limit() -> None:
    """In a worker: use the launcher's share of the cores for torch's intra-op threads."""
    threads = os.environ.get(THREADS_ENV)
    if threads and threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))
        log.info("this worker uses %d torch thread(s)", torch.get_num_threads())


def split_flags(argv: Sequence[str], flags: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """``argv`` without each of ``flags`` (``--flag V`` or ``--flag=V``), and the value given for each.

    ``argv`` is one that argparse accepted with abbreviations off, so a token spelled as one of
    ``flags`` is that flag, never another flag's value; a repeated flag keeps its last value, as in argparse.
    """
    out: list[str] = []
    values: dict[str, str] = {}
    pending = None
    for arg in argv:
        if pending is not None:
            values[pending], pending = arg, None
            continue
        name, equals, value = arg.partition("=")
        if name in flags:
            if equals:
                values[name] = value
            else:
                pending = name
            continue
        out.append(arg)
    return out, values


def worker_commands(
    argv: Sequence[str], workers: int, cores: int, gpus: Sequence[str]
) -> tuple[list[list[str]], list[dict[str, str]]]:
    """The command and environment additions of each of ``workers`` copies of ``runner.sweep ARGV``.

    The command has no ``--workers`` and no secret-bearing flag: their values go in the environment.
    """
    rest, values = split_flags(argv, ["--workers", *FLAGS_TO_ENV])
    passed = {FLAGS_TO_ENV[flag]: value for flag, value in values.items() if flag in FLAGS_TO_ENV}
    command = [sys.executable, "-m", "runner.sweep", *rest]
    return [command] * workers, [{**worker_env(i, workers, cores, gpus), **passed} for i in range(workers)]


def launch_workers(
    argv: Sequence[str],
    workers: int,
    watch: Watch | None = None,
    budget_start: float | None = None,
    note: str | None = None,
) -> int:
    """Start ``workers`` copies of ``python -m runner.sweep ARGV`` and wait for them all.

    ``budget_start``: the command's start (unix time) when it has a time budget, handed to every worker.
    ``note``: what ``--workers auto`` chose and why, handed to every worker for its summary.
    ``watch``: a live view of the study to show instead of the workers' interleaved lines (in a
    terminal); their lines then go to one log file per worker, in a private temporary folder named
    at the start.
    """
    gpus = visible_gpus()
    cores = cpu_count()
    commands, envs = worker_commands(argv, workers, cores, gpus)
    if budget_start is not None:  # one deadline for all: the budget runs from the launcher's start
        envs = [{**env, BUDGET_START_ENV: repr(budget_start)} for env in envs]
    if note is not None:
        envs = [{**env, AUTO_CHOICE_ENV: note} for env in envs]
    if gpus:
        log.info("%d workers on GPU(s) %s", workers, ", ".join(gpus))
        if workers > len(gpus):
            log.warning("%d workers share %d GPU(s): they compete for its memory", workers, len(gpus))
    else:
        log.info("%d workers on %d CPU core(s): %s torch thread(s) each", workers, cores, envs[0][THREADS_ENV])
    log_dir = None
    if watch is not None:
        log_dir = Path(tempfile.mkdtemp(prefix="runner-workers-"))  # 0700: the lines may name hosts and paths
        log.info("each worker's lines: %s/worker-N.log", log_dir)
    return Launcher(commands, envs, watch=watch, log_dir=log_dir).run()
