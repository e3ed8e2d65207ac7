"""runner.predict never runs a model publisher's code (issue 14, item 1).

Anyone who can write to the registry can register a model and point ``champion``
at it. These tests publish tampered copies of a real export, each carrying a
Python file that leaves a sentinel file behind when imported, and check that
predict refuses them (exit 2, one line) without ever importing that file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from runner.predict import main as predict_main

# Written into each tampered model: importing it creates the sentinel file.
EVIL_MODULE = """\
from pathlib import Path

Path({sentinel!r}).write_text("the publisher's code ran", encoding="utf-8")
"""


@dataclass
class Registry:
    """A local MLflow store holding the real export as ``pairs``, and a way to publish tampered copies."""

    uri: str
    run_id: str
    root: Path
    sentinel: Path

    def publish(self, name: str, tamper: Callable[[Path, Path], None]) -> str:
        """Register a copy of ``pairs`` changed by ``tamper(model_root, sentinel)`` as ``name@champion``."""
        import mlflow
        from mlflow.artifacts import download_artifacts
        from mlflow.tracking import MlflowClient

        copy = self.root / "published" / name
        download_artifacts(artifact_uri="models:/pairs/1", dst_path=str(copy), tracking_uri=self.uri)
        tamper(copy, self.sentinel)
        client = MlflowClient(self.uri)
        client.log_artifacts(self.run_id, str(copy), artifact_path=name)
        mlflow.set_registry_uri(self.uri)
        version = mlflow.register_model(f"runs:/{self.run_id}/{name}", name)
        client.set_registered_model_alias(name, "champion", str(version.version))
        return f"models:/{name}@champion"


@pytest.fixture
def registry(classifier_dir, tmp_path, monkeypatch, premade_mlflow_db) -> Registry:
    from mlflow.tracking import MlflowClient

    from runner.record import registry, store

    monkeypatch.chdir(tmp_path)
    uri = store.resolve_tracking_uri(None)
    client = MlflowClient(uri)
    experiment = client.create_experiment("served", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    registry.set_champion(uri, "pairs", registry.log_and_register(uri, run_id, classifier_dir, "pairs", {}))
    return Registry(uri, run_id, tmp_path, tmp_path / "SENTINEL")


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


def _edit_flavor(root: Path, **changes) -> None:
    mlmodel = root / "MLmodel"
    data = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
    data["flavors"]["transformers"].update(changes)
    mlmodel.write_text(yaml.safe_dump(data), encoding="utf-8")


def _evil_model(folder: Path, sentinel: Path) -> None:
    """``folder``'s config maps the auto classes to evil.py, as a Hub model with custom code does."""
    (folder / "evil.py").write_text(EVIL_MODULE.format(sentinel=str(sentinel)), encoding="utf-8")
    _edit_json(
        folder / "config.json",
        architectures=["EvilForSequenceClassification"],
        auto_map={
            "AutoConfig": "evil.EvilConfig",
            "AutoModelForSequenceClassification": "evil.EvilForSequenceClassification",
        },
    )


def unknown_model_class(root: Path, sentinel: Path) -> None:
    # The attack of the issue: MLflow falls back to trust_remote_code=True for a class transformers lacks.
    _evil_model(root / "model", sentinel)
    _edit_flavor(root, pipeline_model_type="EvilForSequenceClassification")


def unknown_class_alone(root: Path, sentinel: Path) -> None:
    _edit_flavor(root, pipeline_model_type="EvilForSequenceClassification")


def auto_map_in_config(root: Path, sentinel: Path) -> None:
    (root / "model" / "evil.py").write_text(EVIL_MODULE.format(sentinel=str(sentinel)), encoding="utf-8")
    _edit_json(root / "model" / "config.json", auto_map={"AutoConfig": "evil.EvilConfig"})


def custom_tokenizer(root: Path, sentinel: Path) -> None:
    folder = root / "components" / "tokenizer"
    (folder / "evil.py").write_text(EVIL_MODULE.format(sentinel=str(sentinel)), encoding="utf-8")
    _edit_json(
        folder / "tokenizer_config.json",
        tokenizer_class="EvilTokenizer",
        auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]},
    )
    _edit_flavor(root, tokenizer_type="EvilTokenizer")


def python_file_alongside(root: Path, sentinel: Path) -> None:
    (root / "code").mkdir()
    (root / "code" / "evil.py").write_text(EVIL_MODULE.format(sentinel=str(sentinel)), encoding="utf-8")


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (unknown_model_class, "EvilForSequenceClassification"),
        (unknown_class_alone, "EvilForSequenceClassification"),
        (auto_map_in_config, "auto_map"),
        (custom_tokenizer, "EvilTokenizer"),
        (python_file_alongside, "evil.py"),
    ],
)
def test_a_registry_model_with_custom_code_is_refused_and_its_code_never_runs(registry, capsys, tamper, message):
    model_uri = registry.publish("tampered", tamper)

    capsys.readouterr()
    code = predict_main(["--model", model_uri, "one sentence", "another sentence"])
    out, err = capsys.readouterr()

    assert not registry.sentinel.exists(), "the publisher's code ran"
    assert code == 2, err
    assert err.count("\n") == 1 and "refused" in err and message in err and "Traceback" not in err
    assert out == ""


def test_a_local_folder_with_custom_code_is_refused(classifier_dir, tmp_path, capsys):
    folder = tmp_path / "downloaded"
    shutil.copytree(classifier_dir, folder)
    _evil_model(folder, tmp_path / "SENTINEL")

    capsys.readouterr()
    code = predict_main(["--model", str(folder), "one sentence", "another sentence"])
    out, err = capsys.readouterr()

    assert not (tmp_path / "SENTINEL").exists(), "the folder's code ran"
    assert code == 2, err
    assert err.count("\n") == 1 and "refused" in err and "auto_map" in err
    assert out == ""


def test_the_untampered_registry_model_still_predicts(registry, capsys):
    capsys.readouterr()
    code = predict_main(["--model", "models:/pairs@champion", "The cat sat on the mat.", "A cat sat on the mat."])
    out, err = capsys.readouterr()

    assert code == 0, err
    label, probability = out.strip().split("\t")
    assert label in ("not_equivalent", "equivalent") and 0.5 <= float(probability) <= 1.0
