"""Shared fixtures: a tiny BERT, our own sentence pairs in GLUE format, and a CLI runner.

Offline and hermetic: the Hub is switched off before any Hugging Face library is
imported, and the Hugging Face caches live in a per-session folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

# Before anything imports huggingface_hub / datasets / transformers: they read these at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
# Under pytest-xdist (`-n K`), K test processes share the cores: each one, and every runner process
# it starts, gets its share of threads. Left at one thread per core each, OpenMP's spinning threads
# would fight over the cores and slow every test down.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    _share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["OMP_NUM_THREADS"] = str(max(1, _share))
# Every Hugging Face cache (hub, datasets, evaluate modules and metrics) in a per-session folder:
# tests neither depend on nor add to the user's caches.
_HF_HOME = tempfile.mkdtemp(prefix="runner-tests-hf-")
os.environ["HF_HOME"] = _HF_HOME
for _var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "HF_MODULES_CACHE", "HF_METRICS_CACHE"):
    os.environ.pop(_var, None)

import re  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI runs the fuzz tests with `--hypothesis-profile=ci`: the same examples every run, so a red CI
# is a change's doing, not the draw's. Locally each run draws new ones (the default profile).
settings.register_profile("ci", derandomize=True)

REPO = Path(__file__).resolve().parents[1]
GLUE_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"

# Written for these tests (MRPC's own text may not be copied into the repo).
# Pair 9 holds an unbalanced quote: with CSV quoting on, it would swallow the rows after it.
PAIRS = [
    ("The cat sat on the warm mat.", "A cat was sitting on the warm mat.", 1),
    ("The train leaves the station at noon.", "At noon the train departs from the station.", 1),
    ("The company reported higher profits this year.", "Profits at the company rose this year.", 1),
    ("She planted tomatoes in the garden.", "He painted the fence in the garden.", 0),
    ("The river flooded the small village.", "The small village was flooded by the river.", 1),
    ("The museum opens on Monday.", "The museum is closed on Monday.", 0),
    ("Prices of bread went up in March.", "Bread became more expensive in March.", 1),
    ("The team won the final match.", "The team lost the first match.", 0),
    ('He said " the shop opens at nine.', "The shop opens at nine, he said.", 1),
    ("The doctor visited the patient at home.", "The patient visited the doctor at the clinic.", 0),
    ("Our neighbor bought a new red car.", "Our neighbor purchased a new red car.", 1),
    ("The storm closed the airport for two days.", "The airport stayed open during the storm.", 0),
    ("The children read books in the library.", "In the library the children were reading books.", 1),
    ("The bank raised interest rates again.", "The bank cut interest rates again.", 0),
    ("A dog chased the ball across the park.", "The ball was chased across the park by a dog.", 1),
    ("The bridge will be repaired next summer.", "The old bridge collapsed last winter.", 0),
    ("The singer cancelled the evening concert.", "The evening concert was cancelled by the singer.", 1),
    ("Farmers expect a large harvest this autumn.", "Farmers fear a poor harvest this autumn.", 0),
    ("The school hired ten new teachers.", "Ten new teachers were hired by the school.", 1),
    ("The phone battery lasts one day.", "The laptop battery lasts three days.", 0),
    ("The council approved the new park plan.", "The plan for a new park was approved by the council.", 1),
    ("The baker sells fresh bread every morning.", "The butcher sells fresh meat every evening.", 0),
    ("Heavy snow delayed the morning buses.", "The morning buses were delayed by heavy snow.", 1),
    ("The author finished her second novel.", "The author started her first poem.", 0),
    ("The hospital opened a new children ward.", "A new ward for children opened at the hospital.", 1),
    ("The factory will close in December.", "The factory will hire more workers in December.", 0),
    ("Tourists crowded the old market square.", "The old market square was crowded with tourists.", 1),
    ("The minister denied the report.", "The minister confirmed the report.", 0),
    ("The price of coffee fell sharply.", "Coffee prices dropped sharply.", 1),
    ("The cat slept all afternoon.", "The dog barked all night.", 0),
    ("The library extended its opening hours.", "The library now stays open longer.", 1),
    ("The pilot landed the plane safely.", "The plane crashed near the runway.", 0),
]
TRAIN_PAIRS, DEV_PAIRS = PAIRS[:24], PAIRS[24:]

# Small and fast: 1-2 epochs, batch 8, random sampler, no pruning unless a test asks.
SWEEP_YAML = """\
study:
  name: tiny
  n_trials: 2
  sampler: random
  n_startup_trials: 0
  pruner: none
model:
  max_length: 64
train:
  seed: 7
  per_device_eval_batch_size: 16
  group_by_length: false
tracking:
  study_plots: false  # seconds per sweep; test_sweep_records_everything turns them on and checks them
search_space:
  learning_rate: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}
  per_device_train_batch_size: 8
  num_train_epochs: {type: int, low: 1, high: 2}
  warmup_ratio: 0.0
"""


def pytest_unconfigure(config):
    shutil.rmtree(_HF_HOME, ignore_errors=True)


# The heaviest files first: with `-n K` (make test), a test process that picks one up late would
# otherwise run it alone at the end while the others sit idle. The rank of a file is its heaviest mark.
_HEAVY_FIRST = ("slow", "e2e", "postgres", "ui")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        return min(
            (i for i, mark in enumerate(_HEAVY_FIRST) if item.get_closest_marker(mark)), default=len(_HEAVY_FIRST)
        )

    file_rank: dict[str, int] = {}
    for item in items:
        file_rank[item.path] = min(file_rank.get(item.path, len(_HEAVY_FIRST)), rank(item))
    # Stable: within a rank the files, and within a file the tests, keep their order.
    items.sort(key=lambda item: file_rank[item.path])


def write_glue_tsv(path: Path, rows, header: str = GLUE_HEADER) -> Path:
    """GLUE MRPC layout: label, two ids, two sentences; UTF-8 with BOM, no quoting."""
    lines = [header] + [
        f"{label}\t{1000 + 2 * i}\t{1001 + 2 * i}\t{s1}\t{s2}" for i, (s1, s2, label) in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    return path


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    """No outside tracking server or data folder leaks in; MLflow's per-URI caches start empty.

    MLflow caches a store and a SQLAlchemy engine per URI string. The sweep's default
    ``sqlite:///mlruns/mlflow.db`` is relative, so without this a test in a new working
    directory would keep talking to the previous test's database.
    """
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RUNNER_DATA_DIR", raising=False)
    monkeypatch.delenv("RUNNER_STORAGE", raising=False)  # the sweep, export and report read it
    _reset_mlflow_stores()
    yield
    _reset_mlflow_stores()


def _reset_mlflow_stores() -> None:
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking import fluent

    # Export and report point MLflow's fluent API (URIs, experiment) at a test's store.
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    fluent._active_experiment_id = None
    for name in ("MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
        os.environ.pop(name, None)
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    for engine in SqlAlchemyStore._engine_map.values():
        engine.dispose()
    SqlAlchemyStore._engine_map.clear()
    TrackingStoreRegistry._get_store_with_resolved_uri.cache_clear()


@pytest.fixture(scope="session")
def train_pairs():
    return list(TRAIN_PAIRS)


@pytest.fixture(scope="session")
def dev_pairs():
    return list(DEV_PAIRS)


@pytest.fixture(scope="session")
def glue_tsv():
    """``glue_tsv(path, rows)`` writes (sentence1, sentence2, label) rows as a GLUE MRPC TSV."""
    return write_glue_tsv


@pytest.fixture(scope="session")
def mrpc_dir(tmp_path_factory) -> Path:
    """A data folder as GLUE ships MRPC: train.tsv and dev.tsv."""
    folder = tmp_path_factory.mktemp("mrpc")
    write_glue_tsv(folder / "train.tsv", TRAIN_PAIRS)
    write_glue_tsv(folder / "dev.tsv", DEV_PAIRS)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) and a WordPiece tokenizer over our words."""
    import transformers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w for s1, s2, _ in PAIRS for w in re.findall(r"\w+|[^\w\s]", f"{s1} {s2}".lower())})
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    transformers.set_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    assert tokenizer.unk_token_id not in tokenizer(*PAIRS[0][:2])["input_ids"], "vocab.txt was not read"
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def classifier_dir(tiny_model, tmp_path_factory) -> Path:
    """The tiny BERT with a seeded 2-class head and MRPC label names, as an export would hold it."""
    from runner.training.model import load_tokenizer, new_model

    folder = tmp_path_factory.mktemp("classifier")
    new_model(str(tiny_model), seed=3).save_pretrained(folder)
    load_tokenizer(str(tiny_model)).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_tokenizer(tiny_model):
    from runner.training.model import load_tokenizer

    return load_tokenizer(str(tiny_model))


@dataclass
class SweepResult:
    code: int
    out: str
    err: str


@pytest.fixture
def sweep_yaml(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(SWEEP_YAML, encoding="utf-8")
    return path


class NoLauncher:
    """Stands in for runner.workers.launch.Launcher: records what would be started, starts nothing."""

    started: list[tuple[list[list[str]], list[dict[str, str]]]] = []

    def __init__(self, commands, envs, watch=None, log_dir=None):
        NoLauncher.started.append(([list(c) for c in commands], [dict(e) for e in envs]))

    def run(self) -> int:
        return 0


@pytest.fixture
def no_launcher(monkeypatch):
    """What ``--workers K`` would start (each launch's commands and environments), starting nothing."""
    import runner.workers.launch as launch

    NoLauncher.started = []
    monkeypatch.setattr(launch, "Launcher", NoLauncher)
    return NoLauncher.started


@pytest.fixture
def run_sweep(tmp_path, monkeypatch, capsys, sweep_yaml, tiny_model, mrpc_dir):
    """Call ``runner.sweep.main`` in-process from ``tmp_path`` (so the default stores land there).

    ``run_sweep("--trials", "3")`` adds flags to the test's config, data, tiny model and
    ``--no-system-metrics``; later flags win.
    """
    from runner.sweep import main

    monkeypatch.chdir(tmp_path)

    def run(*extra: str) -> SweepResult:
        args = ["--config", str(sweep_yaml), "--data-dir", str(mrpc_dir), "--model", str(tiny_model)]
        args += ["--no-system-metrics", *extra]
        capsys.readouterr()
        code = main(args)
        out, err = capsys.readouterr()
        return SweepResult(code, out, err)

    sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own handler
    yield run
    signal.signal(signal.SIGTERM, sigterm)


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory) -> Path:
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    _reset_mlflow_stores()  # close the connections before the file is copied
    return path


@pytest.fixture
def premade_mlflow_db(tmp_path, _empty_mlflow_db):
    """Start from an empty MLflow database (schema only), as the first sweep would create it.

    Creating MLflow's schema takes seconds on a busy machine; tests that are not about a
    fresh store use a copy. test_sweep_records_everything covers creating it from nothing.
    """
    (tmp_path / "mlruns").mkdir(exist_ok=True)
    shutil.copyfile(_empty_mlflow_db, tmp_path / "mlruns" / "mlflow.db")


@pytest.fixture
def store(tmp_path):
    """Read back what a sweep run from ``tmp_path`` recorded (MLflow and Optuna)."""
    return Stores(tmp_path)


class Stores:
    """MLflow runs (sorted by trial number) and Optuna studies under ``<root>/mlruns``."""

    def __init__(self, root: Path):
        self.root = root

    @property
    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(f"sqlite:///{self.root / 'mlruns' / 'mlflow.db'}")

    def runs(self, study: str = "tiny", role: str | None = None):
        experiment = self.client.get_experiment_by_name(study)
        if experiment is None:
            return []
        query = f"tags.`runner.role` = '{role}'" if role else ""
        runs = self.client.search_runs([experiment.experiment_id], filter_string=query, max_results=1000)
        return sorted(runs, key=lambda r: int(r.data.tags.get("optuna.trial_number", -1)))

    def parent(self, study: str = "tiny"):
        (run,) = self.runs(study, "study")
        return run

    def children(self, study: str = "tiny"):
        return self.runs(study, "trial")

    def study(self, name: str = "tiny"):
        import optuna

        return optuna.load_study(study_name=name, storage=f"sqlite:///{self.root / 'mlruns' / 'optuna.db'}")

    def artifacts(self, run) -> set[str]:
        return {f.path for f in self.client.list_artifacts(run.info.run_id)}


def skip_unless_required(reason: str, switch: str) -> None:
    """Skip the test for want of an input, or fail it when the environment sets ``switch`` to 1.

    ``.ci/run`` sets the switches (RUNNER_REQUIRE_POSTGRES, RUNNER_REQUIRE_DATA, RUNNER_REQUIRE_BROWSER) where
    it provides the input, so CI cannot pass with the test silently skipped.
    """
    if os.environ.get(switch) == "1":
        pytest.fail(f"{reason}; {switch}=1 forbids skipping")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A superuser URL of a real PostgreSQL server (``.ci/run`` starts one and sets RUNNER_TEST_POSTGRES_URL).

    Without it the test skips, unless ``RUNNER_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) makes that a failure.
    """
    url = os.environ.get("RUNNER_TEST_POSTGRES_URL")
    if not url:
        reason = "no PostgreSQL: set RUNNER_TEST_POSTGRES_URL to a superuser URL (.ci/run starts a server)"
        skip_unless_required(reason, "RUNNER_REQUIRE_POSTGRES")
    return url


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_mlflow_server(backend_store_uri: str, root: Path):
    """``mlflow server`` on loopback serving an artifact root under ``root``; yields its URI, then stops it."""
    import subprocess
    import sys
    import time

    import requests

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        *(sys.executable, "-m", "mlflow", "server"),
        *("--artifacts-destination", str(root / "artifacts")),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    log = (root / "server.log").open("w")
    # The store travels in the environment: a URI on the command line is visible to `ps`.
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_BACKEND_STORE_URI": backend_store_uri}
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{uri}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A tracking server with its own SQLite store: yields (URI, folder holding its database and artifacts)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with start_mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root) as uri:
        yield uri, root


def run_threads(*targets, timeout: float = 120) -> None:
    """Run each target in a thread of its own; an exception in any of them fails the test.

    A bare ``threading.Thread`` would only turn it into a warning, and the other threads could still
    reach the expected total.
    """
    pool = ThreadPoolExecutor(max_workers=len(targets))
    try:
        futures = [pool.submit(target) for target in targets]
        done, running = wait(futures, timeout=timeout, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future in done:
                future.result()  # raises what the thread raised
        assert not running, f"{len(running)} thread(s) still running after {timeout} s"
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def scripted_f1(monkeypatch):
    """``scripted_f1([...])``: each validation pass, in order across runs, scores the next F1 in the list."""

    def script(values: list[float]) -> list[float]:
        queue = list(values)

        def fake_metrics(eval_pred) -> dict[str, float]:
            return {"accuracy": 0.5, "f1": queue.pop(0)}

        import runner.training.train

        monkeypatch.setattr(runner.training.train, "compute_metrics", fake_metrics)
        return queue

    return script


@pytest.fixture
def fake_train(monkeypatch):
    """Replace training, as the objective calls it, with scripted epochs: for bookkeeping tests, not training ones.

    ``fake_train()`` or ``fake_train([[0.6, 0.9], [0.8]])``: each training run, in order across runs,
    scores the next list's F1 per epoch (and runs as many epochs as the trial asks for, repeating the
    list's last value). Without a script, or once it is used up, an epoch's scores are those of
    seeded random predictions, as ``runner.training.train.compute_metrics`` scores them (so
    ``scripted_f1`` still scripts them). Every epoch goes through the objective's ``on_epoch`` hook
    (MLflow's per-epoch metrics, Optuna's report and pruning, the progress lines), and a run hands
    back a TrainResult with validation probabilities, so everything after training runs for real.
    The model keeps its initial weights. Returns the list of runs' F1 scripts still unused.
    """
    import runner.search.objective

    scripts: list[list[float]] = []

    def fake(
        model,
        tokenizer,
        train_dataset,
        eval_dataset,
        hp,
        settings,
        precision,
        metric="eval_f1",
        maximize=True,
        on_epoch=None,
        progress=None,
    ):
        return _scripted_training(
            scripts.pop(0) if scripts else None,
            eval_dataset,
            hp,
            settings,
            precision,
            metric,
            maximize,
            on_epoch,
            progress,
        )

    monkeypatch.setattr(runner.search.objective, "train", fake)

    def script(values: list[list[float]] | None = None) -> list[list[float]]:
        scripts.extend(list(run) for run in values or [])
        return scripts

    return script


def _scripted_training(f1s, eval_dataset, hp, settings, precision, metric, maximize, on_epoch, progress):
    """One fake training run: per epoch, seeded logits, their metrics (F1 from ``f1s`` when given), the hook."""
    import numpy as np
    from transformers import EvalPrediction

    import runner.training.train as training

    labels = np.asarray(eval_dataset["label"])
    rng = np.random.default_rng([settings.seed, int(hp.learning_rate * 1e9), hp.per_device_train_batch_size])
    result = training.TrainResult(precision=precision, train_runtime=0.01, train_samples_per_second=1000.0)
    for epoch in range(1, hp.num_train_epochs + 1):
        logits = rng.normal(size=(len(labels), 2))
        logits[:2] = np.eye(2)  # the first two pairs get different classes: the model never collapses
        scores = training.compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))
        if f1s:
            scores["f1"] = f1s[min(epoch, len(f1s)) - 1]
        # Its own softmax: a test that patches ``probabilities`` sees it called as training calls it.
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = float(-log_probs[np.arange(len(labels)), labels].mean())
        row = {"epoch": epoch, **{f"eval_{k}": float(v) for k, v in scores.items()}, "eval_loss": loss}
        row["train_loss"] = 0.7 / epoch
        result.epochs.append(row)
        result.log_history += [{"loss": row["train_loss"], "epoch": float(epoch)}, dict(row)]
        if training.is_better(row[metric], result.best_metrics.get(metric), maximize):
            result.best_epoch, result.best_metrics = epoch, row
            result.probabilities = training.probabilities(logits)
        if progress is not None:
            progress(float(epoch), epoch, hp.num_train_epochs)
        if on_epoch is not None and on_epoch(epoch, row):
            result.stopped_at_epoch = epoch
            break
    return result


def staged_confirmation(values: list[float], confirmed: list[float]):
    """(search, confirmation) in-memory studies: a search with one trial per value (distinct learning
    rates), and its confirmation stage (top 2 x 2 seeds) with ``confirmed`` as its first runs' values,
    in plan order."""
    import optuna
    from optuna.distributions import FloatDistribution

    from runner.config import SweepConfig
    from runner.search import confirm as confirm_mod

    stage = {"top_k": 2, "seeds": 2}
    cfg = SweepConfig.model_validate({"study": {"name": "s", "n_trials": len(values), "confirm": stage}})
    search = optuna.create_study(direction="maximize")
    for i, value in enumerate(values):
        search.add_trial(
            optuna.trial.create_trial(
                params={"learning_rate": 1e-5 * (i + 1)},
                distributions={"learning_rate": FloatDistribution(1e-6, 1e-3)},
                value=value,
            )
        )
    confirm = optuna.create_study(direction="maximize")
    plan = confirm_mod.make_plan(search, confirm, cfg)
    for job, value in zip(plan, confirmed, strict=False):
        trial = confirm.ask()
        trial.set_user_attr(confirm_mod.JOB_ATTR, job.to_attr())
        confirm.tell(trial, value)
    return search, confirm
