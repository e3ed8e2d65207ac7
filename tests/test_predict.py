"""runner.predict: one pair, a file of pairs, a folder or a models:/ URI; bad input exits 2."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from runner.predict import main as predict_main

LABELS = ["not_equivalent", "equivalent"]


@pytest.fixture(scope="module")
def classifier_dir(tiny_model, tmp_path_factory) -> Path:
    """The tiny BERT with a seeded 2-class head and MRPC label names, as an export would hold it."""
    from runner.model import load_tokenizer, new_model

    folder = tmp_path_factory.mktemp("classifier")
    new_model(str(tiny_model), seed=3).save_pretrained(folder)
    load_tokenizer(str(tiny_model)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(classifier_dir, dev_pairs):
    """What transformers' own pipeline says about each dev pair."""
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(classifier_dir))
    return clf([{"text": s1, "text_pair": s2} for s1, s2, _ in dev_pairs])


def predict(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = predict_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_one_pair_prints_label_and_probability(classifier_dir, reference, capsys, dev_pairs):
    s1, s2, _ = dev_pairs[0]
    code, out, err = predict(capsys, "--model", str(classifier_dir), s1, s2)
    assert code == 0, err
    label, probability = out.strip().split("\t")
    assert label == reference[0]["label"] and label in LABELS
    assert float(probability) == pytest.approx(reference[0]["score"], abs=1e-4)
    assert 0.5 <= float(probability) <= 1.0


@pytest.mark.parametrize("kind", ["glue-tsv", "csv"])
def test_a_file_of_pairs_is_scored_in_order(classifier_dir, reference, tmp_path, capsys, kind, glue_tsv, dev_pairs):
    if kind == "glue-tsv":
        source = glue_tsv(tmp_path / "pairs.tsv", dev_pairs)
    else:
        source = tmp_path / "pairs.csv"
        pd.DataFrame(dev_pairs, columns=["sentence1", "sentence2", "label"]).to_csv(source, index=False)
    target = tmp_path / "out" / "preds.csv"

    code, _, err = predict(capsys, "--model", str(classifier_dir), "--input", str(source), "--output", str(target))

    assert code == 0, err
    preds = pd.read_csv(target, keep_default_na=False)
    assert len(preds) == len(dev_pairs)
    assert list(preds["sentence1"]) == [s1 for s1, _, _ in dev_pairs]
    assert list(preds["prediction"]) == [r["label"] for r in reference]
    assert preds["probability"].tolist() == pytest.approx([r["score"] for r in reference], abs=1e-5)


def test_models_uri_gives_the_same_answer_as_the_folder(
    classifier_dir, reference, tmp_path, monkeypatch, capsys, dev_pairs, premade_mlflow_db
):
    from mlflow.tracking import MlflowClient

    from runner import tracking

    monkeypatch.chdir(tmp_path)
    uri = tracking.resolve_tracking_uri(None)
    client = MlflowClient(uri)
    experiment = client.create_experiment("served", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    version = tracking.log_and_register(uri, run_id, classifier_dir, "pairs", {"runner.trial": 0})
    tracking.set_champion(uri, "pairs", version)

    s1, s2, _ = dev_pairs[0]
    code, out, err = predict(capsys, "--model", "models:/pairs@champion", s1, s2)

    assert code == 0, err
    label, probability = out.strip().split("\t")
    assert label == reference[0]["label"]
    assert float(probability) == pytest.approx(reference[0]["score"], abs=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no-such-folder", "a", "b"], "model folder not found"),
        (["--model", "{folder}", "only one"], "give two sentences"),
        (["--model", "{folder}", "--input", "{pairs}", "a", "b"], "not both"),
        (["--model", "{folder}", "--input", "missing.tsv"], "input file not found"),
        (["--model", "{folder}", "--input", "{bad}"], "needs sentence1 and sentence2"),
        (["--model", "models:/nothing@champion", "a", "b"], "run a sweep first"),
    ],
)
def test_bad_input_is_a_one_line_error(
    classifier_dir, tmp_path, monkeypatch, capsys, args, message, glue_tsv, dev_pairs
):
    monkeypatch.chdir(tmp_path)
    pairs = glue_tsv(tmp_path / "pairs.tsv", dev_pairs)
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nwhy,because\n", encoding="utf-8")
    filled = [a.format(folder=classifier_dir, pairs=pairs, bad=bad) for a in args]

    code, out, err = predict(capsys, *filled)

    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert out == ""
