"""runner.data: local MRPC in GLUE TSV or csv/json/parquet, strict checks, slicing, cached tokenization."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from runner.config import DataConfig
from runner.errors import ConfigError
from runner.training.data import LABEL_NAMES, DataError, load_mrpc, tokenize


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["sentence1", "sentence2", "label"])


def test_glue_tsv_keeps_every_row(mrpc_dir, train_pairs, dev_pairs):
    """An unbalanced quote must not merge rows: quoting is off, so rows == lines - 1 (header)."""
    data = load_mrpc(DataConfig(), str(mrpc_dir), seed=0)
    lines = (mrpc_dir / "train.tsv").read_text(encoding="utf-8-sig").splitlines()
    assert data.sizes() == {"train": len(lines) - 1, "validation": len(dev_pairs)}
    train = data.splits["train"]
    assert train.column_names == ["sentence1", "sentence2", "label"]
    assert list(zip(train["sentence1"], train["sentence2"], train["label"])) == train_pairs
    assert train.features["label"].names == LABEL_NAMES
    assert data.source == str(mrpc_dir.resolve())


def test_dev_tsv_is_the_validation_split(mrpc_dir, dev_pairs):
    data = load_mrpc(DataConfig(), str(mrpc_dir), seed=0)
    assert data.splits["validation"]["sentence1"] == [s1 for s1, _, _ in dev_pairs]


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "parquet"])
def test_other_formats(tmp_path, fmt, train_pairs, dev_pairs):
    writers = {
        "csv": lambda df, p: df.to_csv(p, index=False),
        "json": lambda df, p: df.to_json(p, orient="records"),
        "jsonl": lambda df, p: df.to_json(p, orient="records", lines=True),
        "parquet": lambda df, p: df.to_parquet(p),
    }
    writers[fmt](frame(train_pairs), tmp_path / f"train.{fmt}")
    writers[fmt](frame(dev_pairs), tmp_path / f"validation.{fmt}")
    data = load_mrpc(DataConfig(), str(tmp_path), seed=0)
    assert data.sizes() == {"train": len(train_pairs), "validation": len(dev_pairs)}
    assert data.splits["validation"]["label"] == [label for _, _, label in dev_pairs]


def test_test_split_is_loaded_when_present(mrpc_dir, tmp_path, glue_tsv, dev_pairs):
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).write_bytes((mrpc_dir / name).read_bytes())
    glue_tsv(tmp_path / "test.tsv", dev_pairs[:5])
    assert load_mrpc(DataConfig(), str(tmp_path), seed=0).sizes()["test"] == 5


def test_unlabelled_test_split_is_dropped(tmp_path, train_pairs, dev_pairs):
    """GLUE's own test split hides its labels as -1: it is dropped, not rejected as bad labels."""
    frame(train_pairs).to_json(tmp_path / "train.json", orient="records")
    frame(dev_pairs).to_json(tmp_path / "validation.json", orient="records")
    frame([(s1, s2, -1) for s1, s2, _ in dev_pairs]).to_json(tmp_path / "test.json", orient="records")
    assert "test" not in load_mrpc(DataConfig(), str(tmp_path), seed=0).sizes()


# (folder, train rows, dev rows): None writes no file; extra rows are added to our pairs.
BAD_DATA = {
    "missing-folder": ("missing", [], []),
    "empty-folder": (".", None, None),
    "no-validation": (".", [], None),
    "bad-label": (".", [("A b.", "C d.", 2)], []),
    "blank-sentence": (".", [], [("A b.", "  ", 1)]),
    "empty-sentence": (".", [("", "C d.", 1)], []),
}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing-folder", "data folder not found"),
        ("empty-folder", "no data files"),
        ("no-validation", "no validation split"),
        ("bad-label", "[train]: labels must be 0 or 1, found 2"),
        ("blank-sentence", "[validation]: 1 empty sentence2 value(s), first at row 1"),
        ("empty-sentence", "[train]: 1 empty sentence1 value(s), first at row 1"),
    ],
)
def test_bad_data_is_a_clear_error(tmp_path, glue_tsv, train_pairs, dev_pairs, case, expected):
    folder, train_extra, dev_extra = BAD_DATA[case]
    if train_extra is not None:
        glue_tsv(tmp_path / "train.tsv", [*train_extra, *train_pairs])
    if dev_extra is not None:
        glue_tsv(tmp_path / "dev.tsv", [*dev_extra, *dev_pairs])
    with pytest.raises(DataError) as err:
        load_mrpc(DataConfig(), str(tmp_path / folder), seed=0)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ConfigError)  # the CLI turns it into exit 2


def test_missing_column(tmp_path, train_pairs, dev_pairs):
    frame(train_pairs).drop(columns="sentence2").to_csv(tmp_path / "train.csv", index=False)
    frame(dev_pairs).to_csv(tmp_path / "dev.csv", index=False)
    with pytest.raises(DataError, match=r"\[train\]: missing column\(s\) sentence2"):
        load_mrpc(DataConfig(), str(tmp_path), seed=0)


@pytest.mark.parametrize(("content", "expected"), [("", "empty file"), (None, "no rows")])
def test_a_train_file_without_rows(tmp_path, mrpc_dir, content, expected):
    """A header with no rows (or nothing at all) says so, not the parser's internals."""
    header = (mrpc_dir / "train.tsv").read_text(encoding="utf-8-sig").splitlines()[0] + "\n"
    (tmp_path / "train.tsv").write_text(header if content is None else content, encoding="utf-8")
    (tmp_path / "dev.tsv").write_bytes((mrpc_dir / "dev.tsv").read_bytes())
    with pytest.raises(DataError, match=f"train.tsv: {expected}$"):
        load_mrpc(DataConfig(), str(tmp_path), seed=0)


@pytest.mark.parametrize("suffix", ["tsv", "csv"])
def test_non_utf8_bytes(tmp_path, mrpc_dir, train_pairs, suffix):
    source = (mrpc_dir / "train.tsv").read_bytes()
    if suffix == "csv":
        frame(train_pairs).to_csv(tmp_path / "train.csv", index=False)
        source = (tmp_path / "train.csv").read_bytes()
    (tmp_path / f"train.{suffix}").write_bytes(source.replace(b"warm mat", b"warm m\xe4t"))
    (tmp_path / "dev.tsv").write_bytes((mrpc_dir / "dev.tsv").read_bytes())
    with pytest.raises(DataError, match=f"train.{suffix}: not valid UTF-8"):
        load_mrpc(DataConfig(), str(tmp_path), seed=0)


def test_hub_offline_says_what_to_do():
    """Without a local folder and with the Hub unreachable: fail at once and point at --data-dir."""
    with pytest.raises(DataError, match="--data-dir"):
        load_mrpc(DataConfig(hub_id="nobody/not-a-dataset"), None, seed=0)


def test_max_samples_slice_keeps_the_count_and_is_seeded(mrpc_dir, train_pairs):
    cfg = DataConfig(max_train_samples=10, max_eval_samples=5)
    first = load_mrpc(cfg, str(mrpc_dir), seed=3)
    assert first.sizes() == {"train": 10, "validation": 5}
    assert set(first.splits["train"]["sentence1"]) <= {s1 for s1, _, _ in train_pairs}
    assert first.splits["train"]["sentence1"] == load_mrpc(cfg, str(mrpc_dir), seed=3).splits["train"]["sentence1"]
    # A limit above the size keeps everything.
    assert load_mrpc(DataConfig(max_train_samples=1000), str(mrpc_dir), seed=3).sizes()["train"] == len(train_pairs)


def test_tokenize_is_unpadded_and_cached(mrpc_dir, tiny_model):
    """Dynamic padding needs unpadded ids; a second load + tokenize (fresh tokenizer) reuses the cache files."""
    from runner.training.model import load_tokenizer

    def load_and_tokenize():
        data = load_mrpc(DataConfig(), str(mrpc_dir), seed=0)
        return tokenize(data, load_tokenizer(str(tiny_model)), max_length=64)

    first = load_and_tokenize()
    train = first["train"]
    assert {"input_ids", "attention_mask", "label"} <= set(train.column_names)
    assert "sentence1" not in train.column_names
    lengths = {len(ids) for ids in train["input_ids"]}
    assert len(lengths) > 1, "pairs must not be padded to one length"
    files = {split: [f["filename"] for f in ds.cache_files] for split, ds in first.items()}
    stamps = {f: os.stat(f).st_mtime_ns for names in files.values() for f in names}
    assert all(files.values())

    second = load_and_tokenize()
    assert {split: [f["filename"] for f in ds.cache_files] for split, ds in second.items()} == files
    assert {f: os.stat(f).st_mtime_ns for f in stamps} == stamps, "cache files were rewritten"
    assert second["train"]["input_ids"] == train["input_ids"]


def test_tokenize_truncates_to_max_length(mrpc_dir, tiny_tokenizer):
    data = load_mrpc(DataConfig(), str(mrpc_dir), seed=0)
    tokenized = tokenize(data, tiny_tokenizer, max_length=12)
    assert max(len(ids) for ids in tokenized["train"]["input_ids"]) == 12
