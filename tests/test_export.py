"""runner.export: folder, verification, registry and alias, checked through the clients users use."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from runner.export import main as export_main

LOSS_STUDY = ["--set", "study.metric=eval_loss", "--set", "study.direction=minimize"]


@pytest.fixture(scope="module")
def mrpc_dir(tmp_path_factory, glue_tsv, train_pairs, dev_pairs) -> Path:
    """Overrides conftest's: the same train and dev, plus a labelled test split."""
    folder = tmp_path_factory.mktemp("mrpc-export")
    glue_tsv(folder / "train.tsv", train_pairs)
    glue_tsv(folder / "dev.tsv", dev_pairs)
    glue_tsv(folder / "test.tsv", dev_pairs[::-1] + train_pairs[:4])
    return folder


@pytest.fixture(scope="module")
def paraphrases_only(tmp_path_factory, glue_tsv, train_pairs, dev_pairs) -> Path:
    """Train = validation = paraphrase pairs only: any real training lowers the validation loss."""
    folder = tmp_path_factory.mktemp("mrpc-paraphrases")
    ones = [pair for pair in train_pairs + dev_pairs if pair[2] == 1]
    glue_tsv(folder / "train.tsv", ones)
    glue_tsv(folder / "dev.tsv", ones)
    return folder


@pytest.fixture(scope="module")
def _one_trial_template(tmp_path_factory, mrpc_dir, tiny_model, _empty_mlflow_db) -> Path:
    """A 1-trial sweep (real training: export re-evaluates its model), run once for the module."""
    import shutil
    import signal

    from conftest import SWEEP_YAML, _reset_mlflow_stores

    from runner.sweep import main

    root = tmp_path_factory.mktemp("one-trial-sweep")
    (root / "mlruns").mkdir()
    shutil.copyfile(_empty_mlflow_db, root / "mlruns" / "mlflow.db")
    (root / "tiny.yaml").write_text(SWEEP_YAML, encoding="utf-8")
    args = ["--config", "tiny.yaml", "--data-dir", str(mrpc_dir), "--model", str(tiny_model), "--no-system-metrics"]
    sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own handler
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "RUNNER_DATA_DIR", "RUNNER_STORAGE"):
            patch.delenv(name, raising=False)
        patch.chdir(root)
        try:
            assert main([*args, "--trials", "1"]) == 0
        finally:
            signal.signal(signal.SIGTERM, sigterm)
            _reset_mlflow_stores()  # closes MLflow's connections before the files are copied
    return root


@pytest.fixture
def one_trial_sweep(_one_trial_template, tmp_path, monkeypatch) -> None:
    """``tmp_path`` (the working directory) as a 1-trial sweep there left it, for tests that export its result.

    A copy of the module's sweep, with the absolute paths MLflow recorded (artifact locations) moved
    to the copy: each test changes its own stores, and none pays for a sweep of its own.
    """
    import shutil
    import sqlite3

    shutil.copytree(_one_trial_template / "mlruns", tmp_path / "mlruns")
    old, new = str(_one_trial_template), str(tmp_path)
    with sqlite3.connect(tmp_path / "mlruns" / "mlflow.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in conn.execute(f'PRAGMA table_info("{table}")').fetchall():
                name = column[1]
                conn.execute(
                    f'UPDATE "{table}" SET "{name}" = REPLACE("{name}", ?, ?) WHERE typeof("{name}") = \'text\'',
                    (old, new),
                )
    conn.close()
    for path in (tmp_path / "mlruns").rglob("*"):
        if path.is_file() and path.suffix != ".db" and old.encode() in path.read_bytes():
            raise AssertionError(f"{path} names the template folder: move it like the database's paths")
    monkeypatch.chdir(tmp_path)


def export(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = export_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def registry(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri), uri


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def leftovers(tmp_path: Path) -> list[str]:
    return [p.name for p in (tmp_path / "mlruns" / "best").iterdir() if p.name.startswith(".")]


def test_export_writes_a_verified_folder_and_registers_the_champion(
    run_sweep, store, tmp_path, capsys, premade_mlflow_db
):
    assert run_sweep("--trials", "2").code == 0
    best = store.study().best_trial

    code, out, err = export(capsys, "--study", "tiny", "--eval-split", "test")

    assert code == 0, err
    folder = tmp_path / "mlruns" / "best" / "tiny"
    for name in (
        "model.safetensors",
        "tokenizer.json",
        "config.json",
        "runner_config.yaml",
        "metrics.json",
        "README.md",
    ):
        assert (folder / name).is_file(), name
    assert not leftovers(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "not_equivalent", "1": "equivalent"}
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["trial"] == best.number and metrics["params"] == best.params
    for key in ("eval_f1", "eval_accuracy", "eval_loss"):
        assert metrics["validation"][key] == pytest.approx(metrics["validation_recorded"][key], abs=1e-4)
    assert set(metrics["test"]) >= {"test_f1", "test_accuracy"}
    card = (folder / "README.md").read_text()
    assert "python -m runner.sweep" in card and f"{best.value:.4f}" in card
    assert all(f"search_space.{name}=" in card for name in best.params)

    client, _ = registry(tmp_path)
    (version,) = client.search_model_versions("name = 'tiny'")
    run_id = metrics["run_id"]
    assert version.run_id == run_id
    assert client.get_run(run_id).data.tags["optuna.trial_number"] == str(best.number)
    assert client.get_model_version_by_alias("tiny", "champion").version == version.version
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_f1"] == pytest.approx(metrics["test"]["test_f1"])
    assert "test_accuracy" in run.data.metrics
    assert "matches" in out and "version 1 (new)" in out
    # One line of export's own says what was registered; MLflow's own lines are for --debug.
    assert "Created version" not in err and "Successfully registered" not in err

    # Same trial again: same version, alias unchanged, no second logged model.
    code, out, err = export(capsys, "--study", "tiny")
    assert code == 0, err
    assert len(client.search_model_versions("name = 'tiny'")) == 1
    assert client.get_model_version_by_alias("tiny", "champion").version == version.version
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert len(models) == 1
    assert "existing" in out
    assert json.loads((folder / "metrics.json").read_text())["test"] == metrics["test"]  # kept from the first


def test_exported_model_gives_the_same_answers_in_pipeline_mlflow_and_pyfunc(
    one_trial_sweep, tmp_path, capsys, dev_pairs
):
    import mlflow
    import mlflow.pyfunc
    import mlflow.transformers
    import pandas as pd
    from transformers import pipeline

    assert export(capsys, "--study", "tiny")[0] == 0
    _, uri = registry(tmp_path)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    pairs = [(s1, s2) for s1, s2, _ in dev_pairs[:5]]
    inputs = [{"text": s1, "text_pair": s2} for s1, s2 in pairs]

    expected = pipeline("text-classification", model=str(tmp_path / "mlruns" / "best" / "tiny"))(inputs)
    from_mlflow = mlflow.transformers.load_model("models:/tiny@champion")(inputs)
    served = mlflow.pyfunc.load_model("models:/tiny@champion").predict(
        pd.DataFrame({"text": [a for a, _ in pairs], "text_pair": [b for _, b in pairs]})
    )

    assert [r["label"] for r in expected] == [r["label"] for r in from_mlflow] == list(served["label"])
    for want, got_mlflow, got_served in zip(expected, from_mlflow, served["score"], strict=True):
        assert got_mlflow["score"] == pytest.approx(want["score"], abs=1e-6)
        assert got_served == pytest.approx(want["score"], abs=1e-6)
    assert {r["label"] for r in expected} <= {"equivalent", "not_equivalent"}
    # The second sentence matters: scoring the first sentence alone gives other scores.
    alone = pipeline("text-classification", model=str(tmp_path / "mlruns" / "best" / "tiny"))([a for a, _ in pairs])
    assert any(abs(a["score"] - b["score"]) > 1e-6 for a, b in zip(alone, expected, strict=True))


def test_alias_moves_when_a_better_trial_is_exported(
    run_sweep, store, tmp_path, capsys, paraphrases_only, premade_mlflow_db
):
    # Selection on validation loss. Trial 0 barely moves from its initial weights (loss about 0.69);
    # trial 1 learns that every pair is a paraphrase (loss about 0.5 or lower).
    data = ["--data-dir", str(paraphrases_only), *LOSS_STUDY]
    # Both runs pin the same things: a resumed study must keep its search space.
    pinned = ["--set", "search_space.num_train_epochs=2", "--set", "search_space.learning_rate=1.0e-8"]
    assert run_sweep("--trials", "1", *data, *pinned).code == 0
    assert export(capsys, "--study", "tiny")[0] == 0
    client, _ = registry(tmp_path)
    assert str(client.get_model_version_by_alias("tiny", "champion").version) == "1"

    lr = ["--set", "search_space.learning_rate=3.0e-3", "--set", "search_space.num_train_epochs=2"]
    assert run_sweep("--trials", "2", *data, *lr).code == 0
    assert store.study().best_trial.number == 1, "precondition: the second trial must be the better one"

    code, out, err = export(capsys, "--study", "tiny")
    assert code == 0, err
    assert len(client.search_model_versions("name = 'tiny'")) == 2
    champion = client.get_model_version_by_alias("tiny", "champion")
    assert str(champion.version) == "2"
    assert client.get_run(champion.run_id).data.tags["optuna.trial_number"] == "1"
    assert "moved from version 1" in out


def test_mismatch_on_re_evaluation_exits_1_and_leaves_the_folder_alone(one_trial_sweep, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "mlruns" / "best" / "tiny"
    weights = load_file(folder / "model.safetensors")
    bias = next(k for k in weights if k.endswith("classifier.bias"))
    weights[bias] = weights[bias].new_tensor([6.0, -6.0])  # a different model than the one the trial scored
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    before = snapshot(folder)

    code, out, err = export(capsys, "--study", "tiny")

    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "does not match" in err
    assert snapshot(folder) == before
    assert not leftovers(tmp_path)
    client, _ = registry(tmp_path)
    assert client.search_registered_models() == []


def test_a_crash_mid_export_keeps_the_previous_folder(one_trial_sweep, tmp_path, capsys, monkeypatch):
    assert export(capsys, "--study", "tiny")[0] == 0
    folder = tmp_path / "mlruns" / "best" / "tiny"
    before = snapshot(folder)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("runner.record.modelcard.write_model_card", crash)
    with pytest.raises(OSError, match="disk full"):
        export_main(["--study", "tiny"])

    assert snapshot(folder) == before
    assert not leftovers(tmp_path)


def _stores_without_a_complete_trial(tmp_path: Path) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    (tmp_path / "mlruns").mkdir()
    MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}").search_experiments()
    study = optuna.create_study(study_name="failing", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)


@pytest.mark.parametrize(
    ("study", "message"),
    [("failing", "no complete trial (1 fail)"), ("nope", "unknown study 'nope'")],
)
def test_nothing_to_export_is_a_one_line_error(tmp_path, monkeypatch, capsys, study, message):
    monkeypatch.chdir(tmp_path)
    _stores_without_a_complete_trial(tmp_path)

    code, out, err = export(capsys, "--study", study)

    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_no_stores_at_all_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = export(capsys, "--study", "tiny")
    assert code == 2 and err.count("\n") == 1 and "run a sweep first" in err
    assert not (tmp_path / "mlruns").exists()


def test_out_on_a_foreign_folder_is_refused_and_left_alone(one_trial_sweep, tmp_path, capsys):
    mine = tmp_path / "models"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own work\n")
    (mine / "metrics.json").write_text('{"study": "another"}')  # another study's export is foreign too
    before = snapshot(mine)

    code, _, err = export(capsys, "--study", "tiny", "--out", str(mine))

    assert code == 2
    assert err.count("\n") == 1 and "not an export of study 'tiny'" in err and "Traceback" not in err
    assert snapshot(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    client, _ = registry(tmp_path)
    assert client.search_registered_models() == []

    # A new folder, then the same one again: an export replaces its own previous export.
    exported = mine / "tiny"
    assert export(capsys, "--study", "tiny", "--out", str(exported))[0] == 0
    code, _, err = export(capsys, "--study", "tiny", "--out", str(exported))
    assert code == 0, err
    assert json.loads((exported / "metrics.json").read_text())["study"] == "tiny"
    assert (mine / "notes.txt").read_text() == "my own work\n"


def test_export_swaps_under_the_sweeps_lock(one_trial_sweep, tmp_path, capsys, monkeypatch):
    """While export replaces the folder, a sweep worker's lock attempt (non-blocking here) must fail."""
    import fcntl
    import os

    import runner.record.checkpoint

    best = tmp_path / "mlruns" / "best"
    real_replace = runner.record.checkpoint.replace_dir
    attempts = []

    def replace_while_probing(src, dst):
        fd = os.open(best, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            attempts.append("got the lock")
        except BlockingIOError:
            attempts.append("held by export")
        finally:
            os.close(fd)
        real_replace(src, dst)

    monkeypatch.setattr(runner.record.checkpoint, "replace_dir", replace_while_probing)
    code, _, err = export(capsys, "--study", "tiny")
    assert code == 0, err
    assert attempts == ["held by export"]


def test_a_newer_best_saved_during_export_is_not_overwritten(one_trial_sweep, tmp_path, capsys, monkeypatch):
    """A sweep worker saves a better model while export re-evaluates: export stops instead of swapping it out."""
    import shutil

    from runner.record.checkpoint import INFO_FILE, BestCheckpoint, replace_dir
    from runner.training import evaluation

    checkpoint = BestCheckpoint(tmp_path / "mlruns" / "best", "tiny", maximize=True)
    real_evaluate = evaluation.evaluate_folder

    def evaluate_while_the_sweep_saves(*args, **kwargs):
        scores = real_evaluate(*args, **kwargs)
        with checkpoint.exclusive():  # what BestCheckpoint.offer does
            newer = tmp_path / "mlruns" / "best" / "newer"
            shutil.copytree(checkpoint.path, newer)
            (newer / INFO_FILE).write_text(json.dumps({"study": "tiny", "trial": 7, "value": 0.99}))
            replace_dir(newer, checkpoint.path)
        return scores

    monkeypatch.setattr(evaluation, "evaluate_folder", evaluate_while_the_sweep_saves)
    code, _, err = export(capsys, "--study", "tiny")

    assert code == 1 and err.count("\n") == 1 and "new best model" in err
    assert checkpoint.current()["trial"] == 7
    assert not (checkpoint.path / "metrics.json").exists()
    assert not leftovers(tmp_path)


def test_a_password_left_in_an_old_saved_config_is_not_shipped(one_trial_sweep, tmp_path, capsys):
    """A best model saved by an older runner kept the storage password in runner_config.yaml: export drops it."""
    saved = tmp_path / "mlruns" / "best" / "tiny" / "runner_config.yaml"
    secret = "OldSentinel-51ab"
    text = saved.read_text(encoding="utf-8")
    saved.write_text(text + f"# storage was postgresql://runner:{secret}@db/optuna\n", encoding="utf-8")
    code, _, err = export(capsys, "--study", "tiny")
    assert code == 0, err
    shipped = (tmp_path / "mlruns" / "best" / "tiny" / "runner_config.yaml").read_text(encoding="utf-8")
    assert secret not in shipped
    assert "postgresql://runner@db/optuna" in shipped


def test_export_needs_neither_the_runs_tags_nor_mlflows_dataset_inputs(
    run_sweep, store, tmp_path, capsys, monkeypatch, mrpc_dir, premade_mlflow_db
):
    """The run id comes from the Optuna trial and the data folder from the saved config, from any folder."""
    import shutil

    shutil.copytree(mrpc_dir, tmp_path / "data")
    assert run_sweep("--trials", "1", "--data-dir", "data").code == 0  # relative to the sweep's folder
    (run,) = store.children()
    # Neither a search by trial number nor the study run's dataset inputs may be needed.
    store.client.delete_tag(run.info.run_id, "optuna.trial_number")
    monkeypatch.setattr("runner.record.history.study_data_source", lambda *args: None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    mlruns = tmp_path / "mlruns"
    stores = ["--storage", f"sqlite:///{mlruns / 'optuna.db'}", "--tracking-uri", f"sqlite:///{mlruns / 'mlflow.db'}"]

    code, _, err = export(capsys, "--study", "tiny", *stores, "--best-dir", str(mlruns / "best"))

    assert code == 0, err
    metrics = json.loads((mlruns / "best" / "tiny" / "metrics.json").read_text())
    assert metrics["run_id"] == run.info.run_id
    assert metrics["data"]["source"] == str((tmp_path / "data").resolve())


def _record(**changes):
    from runner.record.modelcard import ExportRecord

    fields = {
        "study": "tiny",
        "trial": 3,
        "epoch": 2,
        "run_id": "abc123",
        "metric": "eval_f1",
        "value": 0.8123,
        "params": {"learning_rate": 1e-4},
        "precision": "fp32",
        "recorded": {"eval_f1": 0.8123, "eval_accuracy": 0.7},
        "data_source": "nyu-mll/glue/mrpc",
        "data_sizes": {"train": 8, "validation": 4},
        "data_dir": None,
        "validation": {"eval_f1": 0.8123, "eval_accuracy": 0.7, "eval_loss": 0.6},
        "test": {"test_f1": 0.79, "test_accuracy": 0.68},
    }
    return ExportRecord(**{**fields, **changes})


def test_model_card_metadata_reads_back_through_huggingface_hub(tmp_path):
    """The card's front matter is Hub metadata: base model, task, and the exported model's scores."""
    from huggingface_hub import ModelCard

    from runner.config import SweepConfig
    from runner.record.modelcard import write_model_card

    cfg = SweepConfig.model_validate({"model": {"name": "org/base-model"}})
    card = ModelCard.load(write_model_card(_record(), cfg, tmp_path, tmp_path / "final"))

    assert card.data.base_model == "org/base-model"
    assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "text-classification")
    assert card.data.tags == ["runner", "glue", "mrpc"]
    scores = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert scores == {
        ("validation", "f1"): 0.8123,
        ("validation", "accuracy"): 0.7,
        ("test", "f1"): 0.79,
        ("test", "accuracy"): 0.68,
    }
    assert {(r.dataset_type, r.dataset_config) for r in card.data.eval_results} == {("nyu-mll/glue", "mrpc")}
    assert card.text.startswith("\n# tiny: trial 3\n") and "| test | 0.7900 | 0.6800 |  |" in card.text


def test_model_card_names_no_local_base_model_and_no_scores_before_evaluation(tmp_path):
    from huggingface_hub import ModelCard

    from runner.config import SweepConfig
    from runner.record.modelcard import write_model_card

    cfg = SweepConfig.model_validate({"model": {"name": str(tmp_path / "local-model")}})
    card = ModelCard.load(write_model_card(_record(validation={}, test={}), cfg, tmp_path, tmp_path / "final"))

    assert card.data.base_model is None and card.data.eval_results is None
    assert card.data.library_name == "transformers"


@pytest.mark.usefixtures("fake_train")  # export stops before it re-evaluates: the sweeps' training may be scripted
def test_export_on_a_machine_that_did_not_train_the_best_trial_exits_1(run_sweep, tmp_path, capsys, monkeypatch):
    """Two machines share one study; each keeps its own best folder. Export where the best is not kept: exit 1."""
    import runner.training.train

    scores = iter([0.6, 0.9])  # machine A's trial scores 0.6, machine B's (the study's best) 0.9
    monkeypatch.setattr(runner.training.train, "compute_metrics", lambda _: {"accuracy": 0.5, "f1": next(scores)})
    shared = tmp_path / "shared"
    shared.mkdir()
    stores = ["--storage", f"sqlite:///{shared / 'optuna.db'}", "--tracking-uri", f"sqlite:///{shared / 'mlflow.db'}"]
    one_epoch = ("--set", "search_space.num_train_epochs=1")
    for machine, total in (("a", "1"), ("b", "2")):
        (tmp_path / machine).mkdir()
        monkeypatch.chdir(tmp_path / machine)
        assert run_sweep("--trials", total, *one_epoch, *stores).code == 0
    monkeypatch.chdir(tmp_path / "a")
    before = snapshot(tmp_path / "a" / "mlruns" / "best" / "tiny")
    code, _, err = export(capsys, "--study", "tiny", *stores)
    assert code == 1
    assert "holds trial 0" in err and "best is trial 1" in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(tmp_path / "a" / "mlruns" / "best" / "tiny") == before, "the folder is left as it was"


def test_a_bf16_trial_is_re_evaluated_in_bf16_where_bf16_runs(run_sweep, tmp_path, capsys, monkeypatch):
    """A machine with fast bf16 trains the trial in bf16; export re-evaluates it in bf16 and it matches."""
    import runner.training.evaluation
    import runner.training.train as train

    monkeypatch.setattr(train, "cpu_bf16_is_fast", lambda: True)
    train.resolve_precision.cache_clear()
    try:
        pinned = ("--set", "search_space.num_train_epochs=1", "--set", "search_space.fp16=true")
        result = run_sweep("--trials", "1", *pinned)
        assert result.code == 0, result.err
        seen = []
        evaluate = runner.training.evaluation.evaluate_folder

        def spy(folder, cfg, data, precision, with_test):
            seen.append(precision)
            return evaluate(folder, cfg, data, precision, with_test)

        monkeypatch.setattr(runner.training.evaluation, "evaluate_folder", spy)
        code, out, err = export(capsys, "--study", "tiny")
    finally:
        train.resolve_precision.cache_clear()
    assert code == 0, err
    assert seen == ["bf16"]
    shipped = json.loads((tmp_path / "mlruns" / "best" / "tiny" / "metrics.json").read_text())
    assert shipped["precision"] == "bf16"
    assert "matches the sweep's record" in out
