"""What every benchmark shares: the real data and model, interleaved timing, result files.

Benchmarks report ratios of variants timed side by side in one run: repeats are
interleaved (A B C, B C A, ...) and the median is taken, so a machine that slows
down half-way slows every variant alike. Absolute seconds are printed for
context only; on a shared machine they drift.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from runner.redact import redact_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# MRPC next to the clone; a clone elsewhere sets RUNNER_DATA_DIR.
DATA_CANDIDATES = (ROOT.parent / "shared" / "data" / "mrpc",)

log = logging.getLogger("bench")


def setup() -> None:
    """Offline, quiet libraries, one log line per step on stderr."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from runner.cli import quiet_libraries

    quiet_libraries()


def data_dir() -> str:
    """MRPC on disk: ``RUNNER_DATA_DIR`` or the workplace's shared copy (never the repo)."""
    found = os.environ.get("RUNNER_DATA_DIR") or next((str(p) for p in DATA_CANDIDATES if p.is_dir()), None)
    if not found:
        sys.exit("bench: MRPC not found: set RUNNER_DATA_DIR to the folder with train.tsv and validation.tsv")
    return found


def load_data(train_samples: int | None, eval_samples: int | None, seed: int = 42):
    """MRPC train/validation, optionally sliced (the same seeded slice runner.sweep takes)."""
    from runner.config import DataConfig
    from runner.training.data import load_mrpc

    cfg = DataConfig(max_train_samples=train_samples, max_eval_samples=eval_samples)
    return load_mrpc(cfg, data_dir(), seed=seed)


def model_source(name: str = "sentence-transformers/all-MiniLM-L6-v2") -> str:
    """The default model, resolved offline (the packaged copy here)."""
    from runner.training.model import resolve_model

    return resolve_model(name)


def interleaved(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each case, repeats interleaved with a rotating order."""
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - start)
            log.info("repeat %d/%d %s: %.1f s", r + 1, repeats, name, times[name][-1])
    return times


def median(values: list[float]) -> float:
    """The median (robust to one disturbed repeat)."""
    return statistics.median(values)


def table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table, for the terminal and for bench/README.md."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_fmt(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def machine() -> dict:
    """The CPU model and its matrix units: they decide the compute floor (AMX makes bf16 ~6x fp32)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    units = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return {"cpu": model or platform.machine(), "cores": os.cpu_count(), "units": units}


def save(name: str, payload: dict) -> Path:
    """Write the raw numbers (with the machine and command) to bench/results/NAME.json."""
    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        # The module that ran (python -m sets argv[0] to its file), not NAME: workers-quick is bench.workers.
        "command": " ".join(["python", "-m", f"bench.{Path(sys.argv[0]).stem}", *sys.argv[1:]]),
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        **payload,
    }
    path = RESULTS / f"{name}.json"
    # Committed to git: no password from a --storage URL or any other URL in the numbers, and no
    # folder of this machine.
    path.write_text(portable(redact_text(json.dumps(payload, indent=2, default=str))) + "\n")
    log.info("raw numbers in %s", path.relative_to(ROOT))
    return path


def portable(text: str) -> str:
    """``text`` with this machine's folders named as anyone's: the checkout and the working folder
    ``.``, MRPC ``$RUNNER_DATA_DIR``, the temporary folder ``$TMPDIR``, the home folder ``~``."""
    data = os.environ.get("RUNNER_DATA_DIR") or next((str(p) for p in DATA_CANDIDATES if p.is_dir()), "")
    names = {str(ROOT): ".", os.getcwd(): ".", data: "$RUNNER_DATA_DIR", tempfile.gettempdir(): "$TMPDIR"}
    names.setdefault(str(Path.home()), "~")
    for folder in sorted((f for f in names if f not in ("", "/")), key=len, reverse=True):  # the deepest first
        # A whole folder only: /tmp must not match /tmpfoo.
        text = re.sub(re.escape(folder.rstrip("/")) + r"(?=[/\"'\s]|$)", names[folder], text)
    return text


def timed(cmd: list[str], cwd: Path, log_path: Path) -> float:
    """Wall seconds of ``cmd`` run as a user runs it (offline, this checkout first), its output in ``log_path``."""
    log.info("running %s (log: %s)", " ".join(cmd[1:4]), log_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    with log_path.open("w") as out:
        done = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench: {cmd[2]} failed with exit {done.returncode}; see {log_path}")
    return seconds


def fixed_sweep_command(args, overrides: dict | None = None) -> list[str]:
    """``python -m runner.sweep`` as a user runs it, on one fixed configuration so every trial costs the same.

    The default sweep file, ``args.trials`` trials of ``args.epochs`` epochs on ``args.train_samples`` /
    ``args.eval_samples`` pairs, no pruning, no confirmation stage; ``overrides`` are more ``--set``s.
    """
    fixed = {
        "data.max_train_samples": args.train_samples,
        "data.max_eval_samples": args.eval_samples,
        "study.confirm.top_k": 0,
        "study.pruner": "none",
        "search_space.learning_rate": 1e-4,
        "search_space.per_device_train_batch_size": 32,
        "search_space.num_train_epochs": args.epochs,
        "search_space.fp16": "true",
        **(overrides or {}),
    }
    command = [sys.executable, "-m", "runner.sweep", "--config", str(ROOT / "sweeps" / "mrpc.yaml")]
    command += ["--data-dir", data_dir(), "--trials", str(args.trials), "--no-system-metrics"]
    return command + [item for key, value in fixed.items() for item in ("--set", f"{key}={value}")]


def sweep_arguments(parser, trials: int, epochs: int, quick: str) -> None:
    """Flags of a benchmark that times ``fixed_sweep_command``: ``--quick`` (``quick`` says what it runs), the slice."""
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--trials", type=int, default=trials)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--train-samples", type=int, help="default: 256 with --quick, else the whole train split")
    parser.add_argument("--eval-samples", type=int, help="default: 128 with --quick, else the whole validation split")


def parse_sweep_arguments(parser, argv: list[str] | None):
    """Parse, then fill the slice ``--quick`` implies (256/128 pairs; else full MRPC: 3668/408)."""
    args = parser.parse_args(argv)
    args.train_samples = args.train_samples or (256 if args.quick else 3668)
    args.eval_samples = args.eval_samples or (128 if args.quick else 408)
    return args
