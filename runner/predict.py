"""``python -m runner.predict``: is a sentence pair a paraphrase? Uses an exported model.

The model is an exported folder or an MLflow model URI (``models:/NAME@champion``,
``models:/NAME/3``, ``runs:/...``). One pair on the command line prints the label
and its probability; ``--input`` scores a file of pairs (GLUE TSV, or CSV/TSV with
sentence1/sentence2 or text/text_pair columns) into ``--output`` (CSV; stdout without it).

A model loads only if it cannot run code of its own: its classes must be standard
transformers classes, no ``config.json`` (or tokenizer config) may point at custom
code (``auto_map``), no Python file may ship with it, and ``trust_remote_code`` stays
off. Anyone who can write to a registry can point ``champion`` at any model, so a
registry model is downloaded and checked before anything in it is loaded.

Exit codes: 0 done, 1 prediction failed, 2 bad input (missing model or file, wrong
columns, a file over the size limit, a model refused because it carries code).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from runner.cli import OneLineParser, command_name, log_level, run_command, shared_flags, verbosity_flags
from runner.errors import ConfigError, first_line
from runner.redact import printable
from runner.training.data import table_options
from runner.training.trusted import load_folder

log = logging.getLogger("runner")

BATCH_SIZE = 32
# Activation memory grows with the batch; past a few thousand pairs a forward pass is no faster per pair.
MAX_BATCH_SIZE = 4096
# Pairs read, scored and written at a time: memory stays flat however long the file, and each chunk's
# predictions reach the output (and a progress line the log) as soon as it is scored.
CHUNK_ROWS = 1024
# MRPC's test file is 0.4 MB; a GiB holds about five million pairs, days of CPU scoring. A bigger
# file is far more likely a wrong path than a job for this command: refused before any scoring.
MAX_INPUT_BYTES = 1 << 30
# Column pairs we accept for the two sentences, first match wins.
SENTENCE_COLUMNS = [("sentence1", "sentence2"), ("text", "text_pair"), ("#1 String", "#2 String")]


PROG = "python -m runner.predict"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """Command-line flags; ``prog`` is the command as typed (``runner predict`` from the ``runner`` command)."""
    p = OneLineParser(
        prog=prog,
        description="Predict whether two sentences are paraphrases (MRPC) with an exported model.",
        parents=[shared_flags(), verbosity_flags()],
    )
    p.add_argument("--model", required=True, help="exported model folder, or models:/NAME@champion")
    p.add_argument("sentences", nargs="*", metavar="SENTENCE", help="two sentences to compare")
    p.add_argument("--input", type=Path, help="file of pairs: .tsv or .csv with sentence1/sentence2 (or GLUE) columns")
    p.add_argument("--output", type=Path, help="CSV of predictions (default: stdout)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="pairs per forward pass (default %(default)s)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Exactly one of: two sentences, or --input."""
    if args.input is None and len(args.sentences) != 2:
        raise ConfigError(f"give two sentences or --input FILE (got {len(args.sentences)} sentence(s))")
    if args.input is not None and args.sentences:
        raise ConfigError("give either two sentences or --input FILE, not both")
    if args.output is not None and args.input is None:
        raise ConfigError("--output needs --input")
    if not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        raise ConfigError(f"--batch-size must be between 1 and {MAX_BATCH_SIZE} (got {args.batch_size})")


def load_classifier(model: str, tracking_uri: str | None):
    """A text-classification pipeline from a folder or an MLflow model URI; a model carrying code is refused."""
    if "://" in model or model.startswith("models:/"):
        from runner.record import registry, store

        uri = store.resolve_tracking_uri(tracking_uri)
        store.check_store_exists(uri)
        return registry.load_pipeline(model, uri)
    folder = Path(model).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model folder not found (or no config.json in it): {printable(model)}")
    return load_folder(folder, name=model)


def open_pairs(path: Path, chunk_rows: int = CHUNK_ROWS) -> Iterator:
    """The pairs of ``path``, as DataFrames of up to ``chunk_rows`` rows: sentence1, sentence2 and the other columns.

    Size and columns are checked here, before a model is loaded; the rest of the file is read as it is scored.
    """
    import pandas as pd

    if not path.is_file():
        raise ConfigError(f"input file not found: {path}")
    size = path.stat().st_size
    if size > MAX_INPUT_BYTES:
        raise ConfigError(f"{path}: {size} bytes, over the {MAX_INPUT_BYTES}-byte limit: split the file")
    try:
        # Read as the training data is (runner.training.data), in chunks.
        reader = pd.read_csv(path, **table_options(path), dtype=str, chunksize=chunk_rows)
        first = next(reader)  # a file with only a header gives one empty chunk
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise ConfigError(f"{path}: cannot parse: {first_line(err)}") from None
    for one, two in SENTENCE_COLUMNS:
        if one in first.columns and two in first.columns:
            columns = {one: "sentence1", two: "sentence2"}
            return _renamed(itertools.chain([first], reader), reader, columns, path)
    reader.close()
    have = printable(", ".join(map(str, first.columns)))
    raise ConfigError(f"{path}: needs sentence1 and sentence2 columns (have {have})")


def _renamed(chunks, reader, columns: dict[str, str], path: Path) -> Iterator:
    import pandas as pd

    try:
        for chunk in chunks:
            yield chunk.rename(columns=columns)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise ConfigError(f"{path}: cannot parse: {first_line(err)}") from None
    finally:
        reader.close()


def predict(classifier, pairs: list[tuple[str, str]], batch_size: int) -> list[dict]:
    """Label and probability of the label for each pair, in order."""
    results: list[dict] = []
    for start in range(0, len(pairs), batch_size):
        batch = [{"text": a, "text_pair": b} for a, b in pairs[start : start + batch_size]]
        results.extend(classifier(batch, batch_size=batch_size, truncation=True))
    return results


def printable_label(label: object) -> str:
    """A label safe to print: it comes from the model's config, which whoever published the model wrote.

    No escape sequence reaches the terminal, and no tab or newline breaks the ``label<TAB>probability`` line.
    """
    return printable(label).replace("\t", "\\t").replace("\n", "\\n")


def score_chunks(classifier, chunks: Iterator, batch_size: int, write: Callable) -> int:
    """Score each chunk of pairs and hand it to ``write(frame, first)`` at once; returns the number of pairs."""
    total = 0
    for index, chunk in enumerate(chunks):
        results = predict(classifier, list(zip(chunk["sentence1"], chunk["sentence2"], strict=True)), batch_size)
        chunk["prediction"] = [printable_label(r["label"]) for r in results]
        chunk["probability"] = [round(float(r["score"]), 6) for r in results]
        write(chunk, index == 0)
        total += len(chunk)
        log.info("scored %d pairs", total)
    return total


def write_to_stdout(classifier, chunks: Iterator, batch_size: int) -> int:
    """CSV on stdout, chunk by chunk as each is scored."""

    def write(frame, first: bool) -> None:
        frame.to_csv(sys.stdout, index=False, header=first)
        sys.stdout.flush()

    return score_chunks(classifier, chunks, batch_size, write)


def write_to_file(classifier, chunks: Iterator, batch_size: int, output: Path) -> int:
    """CSV in ``output``, written chunk by chunk into a new file that replaces ``output`` once all is scored.

    The new file is created apart (random name, exclusive create): a failure leaves ``output`` as
    it was, and ``--output`` may name the input file, which is still being read.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.{secrets.token_hex(6)}.part")
    try:
        with partial.open("x", encoding="utf-8", newline="") as handle:
            total = score_chunks(
                classifier, chunks, batch_size, lambda f, first: f.to_csv(handle, index=False, header=first)
            )
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return total


def run(args: argparse.Namespace) -> int:
    """Score one pair or a file."""
    chunks = open_pairs(args.input, max(CHUNK_ROWS, args.batch_size)) if args.input is not None else None
    classifier = load_classifier(args.model, args.tracking_uri)
    if chunks is None:
        (result,) = predict(classifier, [tuple(args.sentences)], args.batch_size)
        sys.stdout.write(f"{printable_label(result['label'])}\t{result['score']:.4f}\n")
        return 0
    if args.output is None:
        write_to_stdout(classifier, chunks, args.batch_size)
    else:
        total = write_to_file(classifier, chunks, args.batch_size, args.output)
        log.info("wrote %d predictions to %s", total, args.output)
    return 0


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """CLI entry point; returns the exit code. ``prog``: the command as typed, for help and errors."""
    args = build_parser(prog).parse_args(argv)

    def work() -> int:
        check_args(args)
        return run(args)

    failures = (RuntimeError, ValueError)
    return run_command(command_name(prog), work, args.debug, failures=failures, level=log_level(args))


if __name__ == "__main__":
    sys.exit(main())
