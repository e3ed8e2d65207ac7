"""``python -m runner.predict``: is a sentence pair a paraphrase? Uses an exported model.

The model is an exported folder or an MLflow model URI (``models:/NAME@champion``,
``models:/NAME/3``, ``runs:/...``). One pair on the command line prints the label
and its probability; ``--input`` scores a file of pairs (GLUE TSV, or CSV/TSV with
sentence1/sentence2 or text/text_pair columns) into ``--output`` (CSV; stdout without it).

Exit codes: 0 done, 1 prediction failed, 2 bad input (missing model or file, wrong columns).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from runner.cli import run_command
from runner.config import ConfigError

log = logging.getLogger("runner")

BATCH_SIZE = 32
# Column pairs we accept for the two sentences, first match wins.
SENTENCE_COLUMNS = [("sentence1", "sentence2"), ("text", "text_pair"), ("#1 String", "#2 String")]


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags."""
    p = argparse.ArgumentParser(
        prog="python -m runner.predict",
        description="Predict whether two sentences are paraphrases (MRPC) with an exported model.",
    )
    p.add_argument("--model", required=True, help="exported model folder, or models:/NAME@champion")
    p.add_argument("sentences", nargs="*", metavar="SENTENCE", help="two sentences to compare")
    p.add_argument("--input", type=Path, help="file of pairs: .tsv or .csv with sentence1/sentence2 (or GLUE) columns")
    p.add_argument("--output", type=Path, help="CSV of predictions (default: stdout)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="pairs per forward pass (default %(default)s)")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI for models:/ URIs (default MLFLOW_TRACKING_URI or the project's)"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Exactly one of: two sentences, or --input."""
    if args.input is None and len(args.sentences) != 2:
        raise ConfigError(f"give two sentences or --input FILE (got {len(args.sentences)} sentence(s))")
    if args.input is not None and args.sentences:
        raise ConfigError("give either two sentences or --input FILE, not both")
    if args.output is not None and args.input is None:
        raise ConfigError("--output needs --input")
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")


def load_classifier(model: str, tracking_uri: str | None):
    """A text-classification pipeline from a folder or an MLflow model URI."""
    if "://" in model or model.startswith("models:/"):
        from runner import tracking

        uri = tracking.resolve_tracking_uri(tracking_uri)
        tracking.check_store_exists(uri)
        return tracking.load_pipeline(model, uri)
    folder = Path(model).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model folder not found (or no config.json in it): {model}")
    from transformers import pipeline

    return pipeline("text-classification", model=str(folder))


def read_pairs(path: Path):
    """A DataFrame of pairs with columns sentence1, sentence2 (and the file's other columns)."""
    import pandas as pd

    if not path.is_file():
        raise ConfigError(f"input file not found: {path}")
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    # GLUE TSVs hold unbalanced quotes: quoting off for tab-separated files.
    quoting = 3 if sep == "\t" else 0
    try:
        frame = pd.read_csv(path, sep=sep, quoting=quoting, encoding="utf-8-sig", keep_default_na=False, dtype=str)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise ConfigError(f"{path}: cannot parse: {str(err).strip().splitlines()[0]}") from None
    for first, second in SENTENCE_COLUMNS:
        if first in frame.columns and second in frame.columns:
            return frame.rename(columns={first: "sentence1", second: "sentence2"})
    raise ConfigError(f"{path}: needs sentence1 and sentence2 columns (have {', '.join(frame.columns)})")


def predict(classifier, pairs: list[tuple[str, str]], batch_size: int) -> list[dict]:
    """Label and probability of the label for each pair, in order, with progress on long inputs."""
    results: list[dict] = []
    for start in range(0, len(pairs), batch_size):
        batch = [{"text": a, "text_pair": b} for a, b in pairs[start : start + batch_size]]
        results.extend(classifier(batch, batch_size=batch_size, truncation=True))
        if len(pairs) > batch_size:
            log.info("scored %d/%d pairs", len(results), len(pairs))
    return results


def run(args: argparse.Namespace) -> int:
    """Score one pair or a file."""
    frame = read_pairs(args.input) if args.input is not None else None
    classifier = load_classifier(args.model, args.tracking_uri)
    if frame is None:
        (result,) = predict(classifier, [tuple(args.sentences)], args.batch_size)
        sys.stdout.write(f"{result['label']}\t{result['score']:.4f}\n")
        return 0
    results = predict(classifier, list(zip(frame["sentence1"], frame["sentence2"], strict=True)), args.batch_size)
    frame["prediction"] = [r["label"] for r in results]
    frame["probability"] = [round(float(r["score"]), 6) for r in results]
    if args.output is None:
        frame.to_csv(sys.stdout, index=False)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.output, index=False)
        log.info("wrote %d predictions to %s", len(frame), args.output)
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = build_parser().parse_args(argv)

    def work() -> int:
        check_args(args)
        return run(args)

    return run_command("runner.predict", work, args.debug, failures=(RuntimeError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
