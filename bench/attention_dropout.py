"""Does attention dropout earn its cost? Full trials with the checkpoint's 0.1 and with 0, over seeds.

With dropout on the attention probabilities, every attention score draws a random
number and PyTorch's CPU attention cannot use its fused kernel; at 0 it does
neither. Speed alone is measured by ``bench.epoch --attention``; this benchmark
checks what it costs in validation F1, which varies more between seeds than
between most settings, so each setting runs on the same seeds.

    python -m bench.attention_dropout                      # 3 seeds x 2 settings, full MRPC (~15 min)
    python -m bench.attention_dropout --quick              # 1 seed, 512 pairs, 1 epoch
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench import common


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 512 training pairs, 1 epoch")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 1234])
    parser.add_argument("--learning-rate", type=float, default=6.3e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--fp32", action="store_true", help="fp32 instead of fp16: true (bf16 here)")
    args = parser.parse_args(argv)
    common.setup()

    from runner.config import Hyperparameters, ModelConfig, TrainConfig
    from runner.training.data import tokenize
    from runner.training.model import load_tokenizer, new_model
    from runner.training.train import resolve_precision, train

    seeds = args.seeds[:1] if args.quick else args.seeds
    source = common.model_source()
    tokenizer = load_tokenizer(source)
    tokens = tokenize(common.load_data(512 if args.quick else None, None), tokenizer, 128)
    hp = Hyperparameters(
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1 if args.quick else args.epochs,
        fp16=not args.fp32,
    )
    runs = []
    for seed in seeds:  # the two settings alternate, so a machine that slows down slows both
        for dropout in (None, 0.0):
            model = new_model(source, seed, ModelConfig(attention_dropout=dropout))
            start = time.perf_counter()
            settings, precision = TrainConfig(seed=seed), resolve_precision(hp.fp16)
            result = train(model, tokenizer, tokens["train"], tokens["validation"], hp, settings, precision)
            runs.append(
                {
                    "seed": seed,
                    "attention dropout": "0.1 (checkpoint)" if dropout is None else dropout,
                    "s": time.perf_counter() - start,
                    "F1 by epoch": [round(e["eval_f1"], 4) for e in result.epochs],
                    "best F1": result.best_metrics["eval_f1"],
                }
            )
            common.log.info("%s", runs[-1])
    rows = []
    for setting in ("0.1 (checkpoint)", 0.0):
        mine = [r for r in runs if r["attention dropout"] == setting]
        rows.append(
            {
                "attention dropout": setting,
                "best F1 per seed": ", ".join(f"{r['best F1']:.4f}" for r in mine),
                "mean best F1": statistics.mean(r["best F1"] for r in mine),
                "median s/trial": common.median([r["s"] for r in mine]),
            }
        )
    rows[1]["time vs 0.1"] = rows[1]["median s/trial"] / rows[0]["median s/trial"]
    print(text := common.table(rows, [*rows[0], "time vs 0.1"]))
    common.save("attention_dropout", {"hyperparameters": hp.model_dump(), "runs": runs, "table": text})


if __name__ == "__main__":
    main()
