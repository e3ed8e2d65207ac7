"""runner.predict: one pair, a file of pairs, a folder or a models:/ URI; bad input exits 2."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil

import pandas as pd
import pytest

import runner.predict
from runner.predict import main as predict_main

LABELS = ["not_equivalent", "equivalent"]


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

    from runner.record import registry, store

    monkeypatch.chdir(tmp_path)
    uri = store.resolve_tracking_uri(None)
    client = MlflowClient(uri)
    experiment = client.create_experiment("served", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    version = registry.log_and_register(uri, run_id, classifier_dir, "pairs", {"runner.trial": 0})
    registry.set_champion(uri, "pairs", version)

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
        (["--model", "{folder}", "--batch-size", "4097", "a", "b"], "--batch-size must be between 1 and 4096"),
        (["--model", "{folder}", "--batch-size", "0", "a", "b"], "--batch-size must be between 1 and 4096"),
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


def test_a_file_is_scored_and_written_chunk_by_chunk(
    classifier_dir, reference, tmp_path, monkeypatch, capsys, caplog, dev_pairs
):
    source = tmp_path / "pairs.csv"
    pd.DataFrame(dev_pairs, columns=["sentence1", "sentence2", "label"]).to_csv(source, index=False)
    monkeypatch.setattr(runner.predict, "CHUNK_ROWS", 3)
    score = runner.predict.predict
    printed: list[str] = []
    lines_out_before_each_chunk: list[int] = []
    chunk_sizes: list[int] = []

    def spy(classifier, pairs, batch_size):
        printed.append(capsys.readouterr().out)
        lines_out_before_each_chunk.append("".join(printed).count("\n"))
        chunk_sizes.append(len(pairs))
        return score(classifier, pairs, batch_size)

    monkeypatch.setattr(runner.predict, "predict", spy)
    caplog.set_level(logging.INFO, logger="runner")
    capsys.readouterr()
    code = predict_main(["--model", str(classifier_dir), "--input", str(source), "--batch-size", "2"])
    out, err = capsys.readouterr()

    assert code == 0, err
    assert chunk_sizes == [3, 3, 2]
    # Each chunk's rows are on stdout before the next chunk is scored: the header and 3 rows, then 3 more.
    assert lines_out_before_each_chunk == [0, 4, 7]
    preds = pd.read_csv(io.StringIO("".join(printed) + out), keep_default_na=False)
    assert list(preds["prediction"]) == [r["label"] for r in reference]
    assert preds["probability"].tolist() == pytest.approx([r["score"] for r in reference], abs=1e-5)
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scored")]
    assert progress == [f"scored {n} pairs" for n in (3, 6, 8)]


def test_chunked_output_file_is_byte_for_byte_the_whole_file_output(
    classifier_dir, tmp_path, monkeypatch, capsys, glue_tsv, dev_pairs
):
    source = glue_tsv(tmp_path / "pairs.tsv", dev_pairs)
    whole, chunked = tmp_path / "out" / "whole.csv", tmp_path / "out" / "chunked.csv"

    code, _, err = predict(capsys, "--model", str(classifier_dir), "--input", str(source), "--output", str(whole))
    assert code == 0, err
    monkeypatch.setattr(runner.predict, "CHUNK_ROWS", 3)
    args = ["--model", str(classifier_dir), "--input", str(source), "--output", str(chunked), "--batch-size", "1"]
    code, _, err = predict(capsys, *args)

    assert code == 0, err
    assert chunked.read_bytes() == whole.read_bytes()
    assert len(pd.read_csv(whole)) == len(dev_pairs)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["chunked.csv", "whole.csv"]


def test_a_failure_mid_file_leaves_the_previous_output_alone(classifier_dir, tmp_path, monkeypatch, capsys, dev_pairs):
    source = tmp_path / "pairs.csv"
    pd.DataFrame(dev_pairs, columns=["sentence1", "sentence2", "label"]).to_csv(source, index=False)
    target = tmp_path / "preds.csv"
    target.write_text("previous predictions\n", encoding="utf-8")
    monkeypatch.setattr(runner.predict, "CHUNK_ROWS", 3)
    score = runner.predict.predict
    calls: list[int] = []

    def fail_on_second_chunk(classifier, pairs, batch_size):
        calls.append(len(pairs))
        if len(calls) == 2:
            raise RuntimeError("scoring failed")
        return score(classifier, pairs, batch_size)

    monkeypatch.setattr(runner.predict, "predict", fail_on_second_chunk)
    args = ["--model", str(classifier_dir), "--input", str(source), "--output", str(target), "--batch-size", "1"]
    code, out, err = predict(capsys, *args)

    assert code == 1 and "scoring failed" in err
    assert target.read_text(encoding="utf-8") == "previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.csv", "preds.csv"]


def test_an_input_over_the_size_limit_is_refused_before_the_model_loads(
    classifier_dir, tmp_path, monkeypatch, capsys, glue_tsv, dev_pairs
):
    source = glue_tsv(tmp_path / "pairs.tsv", dev_pairs)
    monkeypatch.setattr(runner.predict, "MAX_INPUT_BYTES", source.stat().st_size - 1)

    def no_model(*args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(runner.predict, "load_classifier", no_model)
    code, out, err = predict(capsys, "--model", str(classifier_dir), "--input", str(source))

    assert code == 2
    assert err.count("\n") == 1 and "over the" in err and "limit" in err
    assert out == ""


HOSTILE_LABELS = {"0": "\x1b]0;owned\x07\x1b[2Jno", "1": "yes\tfake\nline"}


def test_labels_from_the_model_are_escaped_before_printing(classifier_dir, tmp_path, capsys, dev_pairs):
    folder = tmp_path / "hostile"
    shutil.copytree(classifier_dir, folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["id2label"] = HOSTILE_LABELS
    config["label2id"] = {label: int(i) for i, label in HOSTILE_LABELS.items()}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    source = tmp_path / "pairs.csv"
    pd.DataFrame(dev_pairs, columns=["sentence1", "sentence2", "label"]).to_csv(source, index=False)
    escaped = {"\\x1b]0;owned\\x07\\x1b[2Jno", "yes\\tfake\\nline"}

    code, one, err = predict(capsys, "--model", str(folder), *dev_pairs[0][:2])
    assert code == 0, err
    code, table, err = predict(capsys, "--model", str(folder), "--input", str(source))
    assert code == 0, err

    assert one.count("\n") == 1 and one.split("\t")[0] in escaped
    assert set(pd.read_csv(io.StringIO(table), keep_default_na=False)["prediction"]) <= escaped
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", one + table)


def test_a_glue_file_reads_the_same_in_predict_as_in_training(tmp_path, glue_tsv):
    """Unbalanced quotes, "NA" and a BOM: predict's input and the training data come out as the same pairs."""
    from runner.config import DataConfig
    from runner.training.data import load_mrpc

    rows = [('He said "yes.', "NA", 1), ("null", 'A "quoted" word.', 0), ("Plain one.", "Plain two.", 1)]
    glue_tsv(tmp_path / "train.tsv", rows)
    glue_tsv(tmp_path / "dev.tsv", rows)

    (chunk,) = list(runner.predict.open_pairs(tmp_path / "dev.tsv"))
    split = load_mrpc(DataConfig(), str(tmp_path), seed=0).splits["validation"]

    pairs = list(zip(chunk["sentence1"], chunk["sentence2"], strict=True))
    assert pairs == list(zip(split["sentence1"], split["sentence2"], strict=True)) == [(a, b) for a, b, _ in rows]
