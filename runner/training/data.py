"""Load GLUE MRPC (Hub or local folder) into a DatasetDict, and tokenize it once.

Everything goes through ``datasets.load_dataset`` so that both the parsed files
and the tokenized splits live in the ``datasets`` cache: later trials and later
runs of the same study reuse them instead of tokenizing again. ``datasets`` is
imported where data is loaded: it takes seconds, and ``runner.predict`` reads its
input files with this module's ``table_options`` alone.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.config import DataConfig
from runner.errors import ConfigError, first_line
from runner.training.hub import hub_available

if TYPE_CHECKING:
    import datasets
    import numpy as np
    from datasets import DatasetDict

LABEL_NAMES = ["not_equivalent", "equivalent"]
COLUMNS = ["sentence1", "sentence2", "label"]
# The header of GLUE's own MRPC TSVs (Quality, #1 ID, #2 ID, #1 String, #2 String) -> the Hub dataset's columns.
GLUE_TSV_COLUMNS = {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"}
SPLIT_FILES = {"train": ["train"], "validation": ["validation", "dev"], "test": ["test"]}
FORMATS = {".tsv": "csv", ".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DataError(ConfigError):
    """The data cannot be found or is not MRPC-shaped."""


@dataclass(frozen=True)
class MrpcData:
    """MRPC splits with columns sentence1, sentence2, label, and where they came from."""

    splits: DatasetDict
    source: str

    def sizes(self) -> dict[str, int]:
        """Rows per split, for logs and tracking."""
        return {name: len(split) for name, split in self.splits.items()}

    @cached_property
    def validation_labels(self) -> np.ndarray:
        """The labels of the validation pairs every run is scored on, in row order (read once)."""
        import numpy as np

        return np.asarray(self.splits["validation"]["label"])


def load_mrpc(cfg: DataConfig, data_dir: str | None, seed: int) -> MrpcData:
    """Load MRPC from ``data_dir`` when given, else from the Hub (or its cache).

    Train and validation are sliced to ``max_train_samples`` / ``max_eval_samples``
    (a seeded shuffle first, so a slice keeps both labels).
    """
    from datasets import DatasetDict

    if data_dir:
        splits, source = _load_local(Path(data_dir).expanduser()), str(Path(data_dir).expanduser().resolve())
    else:
        splits, source = _load_hub(cfg), f"{cfg.hub_id}/{cfg.hub_config}"
    test = splits.get("test")
    if test is not None and "label" in test.column_names and set(test.unique("label")) == {-1}:
        # GLUE hides its test labels (-1): nothing to score there.
        del splits["test"]
    for name in ("train", "validation"):
        if name not in splits:
            raise DataError(f"{source}: no {name} split (expected {' or '.join(SPLIT_FILES[name])} files)")
    splits = DatasetDict({name: _normalise(split, f"{source} [{name}]") for name, split in splits.items()})
    splits["train"] = _take(splits["train"], cfg.max_train_samples, seed)
    splits["validation"] = _take(splits["validation"], cfg.max_eval_samples, seed)
    return MrpcData(splits=splits, source=source)


def _load_hub(cfg: DataConfig) -> DatasetDict:
    import datasets
    from datasets import DatasetDict

    online = hub_available()
    try:
        loaded = datasets.load_dataset(cfg.hub_id, cfg.hub_config)
    except Exception as err:  # noqa: BLE001 - any failure here means "no data"; say what to do
        if not online:
            raise DataError(
                f"{cfg.hub_id}/{cfg.hub_config} is not in the local cache and the Hugging Face Hub "
                "cannot be reached: point at a local copy with --data-dir DIR or RUNNER_DATA_DIR=DIR "
                "(GLUE MRPC TSVs: train.tsv, dev.tsv)"
            ) from None
        raise DataError(f"cannot load {cfg.hub_id}/{cfg.hub_config} from the Hub: {first_line(err)}") from None
    return DatasetDict({k: v for k, v in loaded.items() if k in SPLIT_FILES})


def _load_local(folder: Path) -> DatasetDict:
    from datasets import DatasetDict

    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}")
    found: dict[str, datasets.Dataset] = {}
    for split, stems in SPLIT_FILES.items():
        files = [folder / f"{stem}{ext}" for stem in stems for ext in FORMATS if (folder / f"{stem}{ext}").is_file()]
        if files:
            found[split] = _read_file(files[0])
    if not found:
        raise DataError(f"{folder}: no data files (expected train and dev/validation as .tsv, .csv, .json or .parquet)")
    return DatasetDict(found)


# The sentence columns of a file of pairs, under GLUE's own header names and the Hub's.
SENTENCE_COLUMNS = ("sentence1", "sentence2", "#1 String", "#2 String")


def table_options(path: Path) -> dict[str, Any]:
    """``pandas.read_csv`` options for a file of pairs: a GLUE TSV (or any ``.tsv``/``.txt``) or a CSV.

    UTF-8 with or without a byte-order mark; "NA" or "null" stay text (they are words in a
    sentence). The training data (``datasets``' csv builder passes them on to pandas) and
    ``runner.predict``'s input files are read alike.
    """
    # Sentences stay text even when every one in a column reads as a number or a bool ("1.5",
    # "True"): pandas would turn such a column into numbers, and a valid file would be rejected.
    text = {"converters": dict.fromkeys(SENTENCE_COLUMNS, str)}
    if path.suffix.lower() in (".tsv", ".txt"):
        # GLUE TSVs hold unbalanced quotes: quoting must be off or rows merge.
        return {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "encoding": "utf-8-sig", "keep_default_na": False, **text}
    return {"encoding": "utf-8-sig", "keep_default_na": False, **text}


def _read_file(path: Path) -> datasets.Dataset:
    import datasets

    builder = FORMATS[path.suffix]
    kwargs = table_options(path) if builder == "csv" else {}
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as err:  # noqa: BLE001 - report the file and the first line of the cause
        cause = err.__cause__ or err
        if "corresponds to no data" in str(err):  # datasets' words for a file with a header and no rows
            raise DataError(f"{path}: no rows") from None
        if isinstance(cause, UnicodeDecodeError) or "codec can't decode" in str(err):
            raise DataError(f"{path}: not valid UTF-8") from None
        raise DataError(f"{path}: cannot parse: {first_line(cause)}") from None


def _normalise(split: datasets.Dataset, where: str) -> datasets.Dataset:
    """Rename GLUE TSV columns, keep sentence1/sentence2/label, and check every row."""
    renames = {old: new for old, new in GLUE_TSV_COLUMNS.items() if old in split.column_names}
    if renames:
        split = split.rename_columns(renames)
    missing = [c for c in COLUMNS if c not in split.column_names]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)} (have {', '.join(split.column_names)})")
    split = split.select_columns(COLUMNS)
    if len(split) == 0:
        raise DataError(f"{where}: no rows")
    labels = set(split.unique("label"))
    if not labels <= {0, 1}:
        bad = sorted(map(str, labels - {0, 1}))[:3]
        raise DataError(f"{where}: labels must be 0 or 1, found {', '.join(bad)}")
    for column in ("sentence1", "sentence2"):
        empty = [i for i, text in enumerate(split[column]) if not isinstance(text, str) or not text.strip()]
        if empty:
            raise DataError(f"{where}: {len(empty)} empty {column} value(s), first at row {empty[0] + 1}")
    from datasets import ClassLabel

    return split.cast_column("label", ClassLabel(names=LABEL_NAMES))


def _take(split: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    if limit is None or limit >= len(split):
        return split
    return split.shuffle(seed=seed).select(range(limit)).flatten_indices()


SWAPPED = "swapped_"  # prefix of the training split's columns holding each pair in the other order


def tokenize(data: MrpcData, tokenizer, max_length: int, both_orders: bool = False) -> DatasetDict:
    """Tokenize sentence pairs (truncated, unpadded: batches pad themselves).

    ``both_orders``: the training split also gets each pair as (sentence2, sentence1), in
    ``swapped_*`` columns, for ``train.swap_order`` (runner.training.train.SwapOrderCollator).
    ``datasets`` fingerprints the function, tokenizer and inputs, so a second
    call with the same inputs loads the cached result instead of recomputing.
    """
    from datasets import concatenate_datasets

    def encode(batch):
        return tokenizer(batch["sentence1"], batch["sentence2"], truncation=True, max_length=max_length)

    def encode_swapped(batch):
        encoded = tokenizer(batch["sentence2"], batch["sentence1"], truncation=True, max_length=max_length)
        return {SWAPPED + key: value for key, value in encoded.items()}

    tokenized = data.splits.map(encode, batched=True, remove_columns=["sentence1", "sentence2"], desc="Tokenizing")
    if both_orders:
        train = data.splits["train"]
        swapped = train.map(encode_swapped, batched=True, remove_columns=train.column_names, desc="Tokenizing")
        tokenized["train"] = concatenate_datasets([tokenized["train"], swapped], axis=1)
    return tokenized
