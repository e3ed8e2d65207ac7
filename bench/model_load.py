"""Trial set-up: read the pretrained weights from disk per trial, or once per sweep and copy.

python -m bench.model_load               # the default model, 10 interleaved repeats
python -m bench.model_load --model bert-base-uncased
"""

from __future__ import annotations

import argparse

from bench import common


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    args = parser.parse_args(argv)
    common.setup()
    from runner.model import PretrainedModels, new_model, resolve_model

    source = resolve_model(args.model)
    models = PretrainedModels(source)  # once per sweep: not part of a trial's cost
    cases = {
        "from_pretrained per trial": lambda: new_model(source, 42),
        "copy of weights read once": lambda: models.new(42),
    }
    times = common.interleaved(cases, 3 if args.quick else args.repeats)
    base = common.median(times["from_pretrained per trial"])
    rows = [
        {"trial set-up": n, "s (median)": common.median(t), "ratio": common.median(t) / base} for n, t in times.items()
    ]
    print(text := common.table(rows, list(rows[0])))
    common.save("model_load", {"model": args.model, "seconds": times, "table": text})


if __name__ == "__main__":
    main()
