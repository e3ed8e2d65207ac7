"""Generated input for the config and data loaders: a valid result or the project's one error, nothing else.

Example counts stay small so the suite stays fast; hypothesis keeps failing examples in .hypothesis/.
"""

from __future__ import annotations

import collections
import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runner.config import SEARCHABLE, SweepConfig, load_config, parse_override
from runner.errors import ConfigError
from runner.training.data import COLUMNS, GLUE_TSV_COLUMNS, DataError, load_mrpc

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- config -----------------------------------------------------------------------

SECTIONS = {
    name: list(field.annotation.model_fields)
    for name, field in SweepConfig.model_fields.items()
    if hasattr(field.annotation, "model_fields")
}
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["1e-5", "on", "off", "tpe", "median", "maximize", "eval_f1", "float", "int", "categorical"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
keys = st.one_of(st.sampled_from([k for ks in SECTIONS.values() for k in ks]), st.text(max_size=8))
distribution = st.fixed_dictionaries(
    {"type": st.sampled_from(["float", "int", "categorical", "loguniform", 3])},
    optional={
        "low": scalars,
        "high": scalars,
        "log": scalars,
        "step": scalars,
        "choices": st.lists(scalars, max_size=3) | scalars,
    },
)
space = st.dictionaries(st.sampled_from([*SEARCHABLE, "lr", "seed"]), distribution | scalars, max_size=3)
section = st.dictionaries(keys, values, max_size=4)
documents = st.dictionaries(
    st.sampled_from([*SECTIONS, "search_space", "extra"]),
    section | values,
    max_size=4,
).flatmap(lambda doc: space.map(lambda s: {**doc, "search_space": s}) if "search_space" in doc else st.just(doc))


def _load_text(text: str | bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        try:
            cfg = load_config(path)
        except ConfigError as err:
            message = str(err)
            assert message and "\n" not in message.strip(), f"not one line: {message!r}"
            return None
    assert isinstance(cfg, SweepConfig)
    return cfg


@FUZZ
@given(documents)
@example({"study": {"\n": None}})  # found by this fuzz: a key with a newline made a two-line error
def test_generated_yaml_documents(doc):
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        return
    cfg = _load_text(text)
    if cfg is not None:
        assert all(math.isfinite(v) for v in _floats(cfg.model_dump()))
        for entry in cfg.searched().values():
            low, high = getattr(entry, "low", 0), getattr(entry, "high", 0)
            assert low <= high and not (getattr(entry, "log", False) and low <= 0)


def _floats(tree):
    if isinstance(tree, float):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _floats(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _floats(value)


@pytest.mark.parametrize(
    "text",
    [
        "search_space:\n  weight_decay: {type: float, low: 0.0, high: .inf}\n",
        "hyperparameters:\n  weight_decay: .inf\n",
        "train:\n  max_grad_norm: .nan\n",
        "search_space:\n  learning_rate: {type: categorical, choices: [.nan]}\n",
    ],
    ids=["range-to-inf", "inf-value", "nan-value", "nan-choice"],
)
def test_infinite_and_nan_values_are_config_errors(text):
    """Found by the fuzz below: .inf passed every bound check (low <= high, >= 0)."""
    assert _load_text(text) is None


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_text_and_bytes(text):
    _load_text(text)


DOTTED_KEYS = [f"{name}.{key}" for name, keys in SECTIONS.items() for key in keys]
VALUE_TEXTS = ["1", "0", "-3", "7", "1e-5", "0.5", "true", "null", "tpe", "median", "[1, 2]", ".inf", "x"]
VALUE_TEXTS += ["{type: float, low: 1.0e-5, high: 1.0e-3}", "{type: int, low: 1, high: 3}", "{a: 1}"]
override_items = st.text(max_size=40) | st.builds(
    "{}={}".format,
    st.sampled_from([*DOTTED_KEYS, "search_space.learning_rate", "study", "x.y.z"]) | st.text(max_size=10),
    st.sampled_from(VALUE_TEXTS) | st.text(max_size=10),
)


def _outcome(load) -> tuple[str, str]:
    """("ok", the config as JSON) or ("error", the message without its source prefix)."""
    try:
        return "ok", load().model_dump_json()
    except ConfigError as err:
        message = str(err)
        assert message and "\n" not in message.strip(), f"not one line: {message!r}"
        return "error", message.split(": ", 1)[-1]


class _QuotedKeys(yaml.SafeDumper):
    """Writes every mapping key double-quoted.

    A ``--set`` key is always a string; written bare, a key such as ``0E0`` would be read back by the
    sweep file's loader (which reads ``5e-5`` as a number, as users write it) as the float 0.0.
    """


def _quoted_keys(dumper: yaml.SafeDumper, data: dict) -> yaml.MappingNode:
    pairs = [
        (dumper.represent_scalar("tag:yaml.org,2002:str", str(k), style='"'), dumper.represent_data(v))
        for k, v in data.items()
    ]
    return yaml.MappingNode("tag:yaml.org,2002:map", pairs)


_QuotedKeys.add_representer(dict, _quoted_keys)


def _as_document(key: str, value) -> dict:
    """The YAML document that says what ``--set key=value`` says: ``a.b=v`` is ``{a: {b: v}}``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


@FUZZ
@given(override_items)
@example("fixed=1")  # found by this fuzz: a top-level key named like a union tag raised IndexError
@example("0E0=")  # found by this fuzz: a key that a bare YAML key would turn into a number
def test_set_overrides(item):
    """``--set key=value`` means exactly what the same key and value written in the sweep file mean."""
    try:
        key, value = parse_override(item)
    except ConfigError as err:
        assert str(err).startswith("--set "), err
        return
    assert key == item.partition("=")[0].strip() and key
    via_set = _outcome(lambda: load_config(None, {key: value}))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        # Non-ASCII escaped: written raw, a NEL (U+0085) in a key would be read back as a line break.
        text = yaml.dump(_as_document(key, value), Dumper=_QuotedKeys, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        via_file = _outcome(lambda: load_config(path))
    assert via_set == via_file


# --- data -------------------------------------------------------------------------

HEADERS = [*COLUMNS, *GLUE_TSV_COLUMNS, "#1 ID", "#2 ID", "idx", "Label", ""]
GLUE_HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
# Weighted towards valid values, so that most folders get past parsing to the row checks.
labels = st.sampled_from(["0", "1"] * 6 + ["2", "-1", "1.0", "True", "x", "", " ", "nan", "NA"])
sentences = st.one_of(
    st.sampled_from(["The cat sat.", "A dog ran.", "Prices rose 5%.", "It's \"quoted"] * 3),
    st.sampled_from(["", " ", '"', "a\tb", "a,b", "é", "NA", "null", "None"]),
    st.text(max_size=15),
)


# Text that pandas would turn into NaN or a number unless told not to: valid MRPC sentences all the same.
TRICKY_SENTENCES = ["NA", "null", "None", "nan", "1.5", "True", "#1 String"]


@st.composite
def tables(draw, clean: bool):
    """MRPC-shaped (clean: every row valid), or with any header, bad labels, ragged rows and odd text."""
    header = draw(st.sampled_from([GLUE_HEADER, COLUMNS] if clean else [GLUE_HEADER, COLUMNS, None]))
    if header is None:
        header = draw(st.lists(st.sampled_from(HEADERS), min_size=0, max_size=6))
    label = st.sampled_from(["0", "1"]) if clean else labels
    sentence = (
        st.sampled_from(["The cat sat.", "A dog ran.", "It's \"quoted", *TRICKY_SENTENCES]) if clean else sentences
    )
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        row = [draw(label) if name in ("Quality", "label") else draw(sentence) for name in header]
        if not clean and draw(st.integers(0, 9)) == 0:
            row = row[: draw(st.integers(0, len(row)))]  # a short row
        rows.append(row)
    return header, rows


SPLIT_OF = {"train": "train", "dev": "validation", "validation": "validation", "test": "test"}
PAIR_COLUMNS = {tuple(GLUE_HEADER): ("#1 String", "#2 String", "Quality"), tuple(COLUMNS): tuple(COLUMNS)}


def _expected_rows(header: list[str], rows: list[list[str]]) -> list[tuple[str, str, int]]:
    """(sentence1, sentence2, label) of each row of a clean table, as the loader must return them."""
    s1, s2, label = (header.index(name) for name in PAIR_COLUMNS[tuple(header)])
    return [(row[s1], row[s2], int(row[label])) for row in rows]


@st.composite
def data_folders(draw):
    """(files, expected): a folder's files, and for a clean folder the rows each split must load as, else None."""
    clean = draw(st.booleans())  # half the folders valid, so the checks on loaded data run too
    suffix = draw(st.sampled_from([".tsv", ".csv"]))
    sep = "\t" if suffix == ".tsv" else ","
    encodings = ["utf-8", "utf-8-sig"] if clean else ["utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"]
    encoding = draw(st.sampled_from(encodings))
    splits = [["train", "dev"], ["train", "validation"], ["train", "dev", "test"]]
    names = draw(st.sampled_from(splits if clean else [*splits, ["train"], ["dev"]]))
    files, expected = {}, {}
    for name in names:
        header, rows = draw(tables(clean))
        lines = [sep.join(header)] + [sep.join(row) for row in rows]
        if not clean and draw(st.booleans()):
            lines.insert(draw(st.integers(0, len(lines))), "")  # an empty line somewhere
        files[f"{name}{suffix}"] = "\n".join(lines).encode(encoding, "replace")
        if clean:
            expected[SPLIT_OF[name]] = _expected_rows(header, rows)
    return files, (expected if clean else None)


def _assert_labels_are_0_or_1(split) -> None:
    """Each label is the int 0 or 1: not 1.0 or True, which a set comparison with {0, 1} would let through."""
    labels = split["label"]
    assert all(type(label) is int and label in (0, 1) for label in labels), labels


def _check_folder(files: dict[str, bytes], expected: dict | None) -> str:
    """Load one generated folder and check the result; "loaded" or "rejected" (with one line)."""
    from runner.config import DataConfig

    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            (Path(tmp) / name).write_bytes(content)
        try:
            data = load_mrpc(DataConfig(), tmp, seed=0)
        except DataError as err:
            assert expected is None, f"a valid folder was rejected: {err}"
            assert str(err).strip() and "\n" not in str(err).strip()
            return "rejected"
    for split in data.splits.values():
        assert split.column_names == COLUMNS and len(split) > 0
        _assert_labels_are_0_or_1(split)
        assert all(isinstance(s, str) and s.strip() for s in [*split["sentence1"], *split["sentence2"]])
    if expected is not None:
        loaded = {name: list(zip(s["sentence1"], s["sentence2"], s["label"])) for name, s in data.splits.items()}
        assert loaded == expected
    return "loaded"


def test_generated_data_folders():
    """Every generated folder loads or is rejected in one line; a clean one loads, row for row.

    Afterwards, a guard against a vacuous fuzz: both outcomes occurred, so neither path went unchecked.
    """
    outcomes: collections.Counter[str] = collections.Counter()

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data_folders())
    def check(folder):
        outcomes[_check_folder(*folder)] += 1

    check()
    assert outcomes["loaded"] > 0 and outcomes["rejected"] > 0, outcomes


def test_sentences_that_look_like_numbers_or_bools():
    """Found by the fuzz above: a column whose every sentence looks like a number or a bool was read as
    one, and this valid folder rejected ("empty sentence2 value")."""
    files = {
        "train.csv": b"sentence1,sentence2,label\nThe cat sat.,1.5,0\n",
        "dev.csv": b"sentence1,sentence2,label\nA dog ran.,True,1\n",
    }
    expected = {"train": [("The cat sat.", "1.5", 0)], "validation": [("A dog ran.", "True", 1)]}
    assert _check_folder(files, expected) == "loaded"


@pytest.mark.parametrize("label", ["1.0", "True"])
def test_labels_that_only_look_like_0_or_1(tmp_path, label):
    """pandas reads 1.0 as a float and True as a bool; both equal 1 but are not MRPC labels.

    Either the folder is rejected, or each label comes back as the int it stands for.
    """
    from runner.config import DataConfig

    for name in ("train", "dev"):
        (tmp_path / f"{name}.csv").write_text(f"sentence1,sentence2,label\na b,c d,{label}\ne f,g h,0\n")
    try:
        data = load_mrpc(DataConfig(), str(tmp_path), seed=0)
    except DataError:
        return
    _assert_labels_are_0_or_1(data.splits["train"])
    assert data.splits["train"]["label"] == [1, 0]
