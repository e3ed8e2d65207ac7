"""Epoch cost: a runner trial versus the Hugging Face course's plain Trainer, and the compute floor.

Four variants train the default model for one epoch on the same data with the
same batch size and learning rate (so the same number of steps), each including
its model load and end-of-epoch evaluation:

- course fp32 / course fp16: chapter 3 of the course: tokenize with ``map``,
  ``DataCollatorWithPadding``, a default ``Trainer`` with ``eval_strategy="epoch"``.
- runner fp32 / runner fp16: ``runner.model.new_model`` + ``runner.train.train``, the
  path every trial takes (``fp16: true`` is bf16 autocast on this CPU).

The floor is the epoch's training FLOPs (from the model's shape and the real,
unpadded token count of every pair) divided by this machine's matrix-multiply
rate in the same precision, measured in the same run.

    python -m bench.epoch            # full MRPC train, 3 interleaved repeats
    python -m bench.epoch --quick    # 512 pairs, 2 repeats: a few minutes
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch

from bench import common

log = logging.getLogger("bench.epoch")


def forward_flops(config, seq_len: int) -> float:
    """Multiply-add FLOPs of one forward pass of a BERT encoder + classifier on one sequence.

    Per layer: Q, K, V and output projections (4 d^2 per token), the feed-forward
    pair (2 d d_ff per token), and attention scores and mixing (2 s d per token).
    Embedding lookups, layer norms and softmax are memory-bound and left out.
    """
    d, ff, layers, s = config.hidden_size, config.intermediate_size, config.num_hidden_layers, seq_len
    per_layer = 2 * s * (4 * d * d + 2 * d * ff) + 2 * 2 * s * s * d
    head = 2 * d * d + 2 * d * config.num_labels  # pooler + classifier, once per sequence
    return layers * per_layer + head


def epoch_flops(config, train_lengths: list[int], eval_lengths: list[int]) -> float:
    """Training (forward + backward = 3x forward) over train, plus one forward pass over validation."""
    return 3 * sum(forward_flops(config, n) for n in train_lengths) + sum(
        forward_flops(config, n) for n in eval_lengths
    )


def matmul_rate(dtype: torch.dtype, m: int, k: int, n: int, seconds: float = 2.0) -> float:
    """FLOP/s of ``(m x k) @ (k x n)`` in ``dtype`` on this machine's CPU threads (median of runs)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 5:
        start = time.perf_counter()
        a @ b
        rates.append(2 * m * k * n / (time.perf_counter() - start))
    return common.median(rates)


def padded_tokens(trainer) -> int:
    """Tokens the model really processes in one epoch, padding included."""
    return sum(batch["input_ids"].numel() for batch in trainer.get_train_dataloader())


class Variants:
    """Builds and runs the four variants on data tokenized once, outside the timing."""

    def __init__(self, data, source: str, batch_size: int, lr: float):
        from transformers import AutoTokenizer

        from runner.config import load_config
        from runner.training.data import tokenize

        self.data, self.source, self.batch_size, self.lr = data, source, batch_size, lr
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        # The course's tokenize_function: truncation only, padding left to the collator.
        self.course_tokens = data.splits.map(
            lambda ex: self.tokenizer(ex["sentence1"], ex["sentence2"], truncation=True), batched=True
        )
        self.runner_tokens = tokenize(data, self.tokenizer, max_length=128)
        # What the default sweep's trials run with (attention implementation and dropout).
        self.model_settings = load_config(common.ROOT / "sweeps" / "mrpc.yaml").model

    def course_trainer(self, fp16: bool, output_dir: str):
        from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

        from runner.training.metrics import compute_metrics

        model = AutoModelForSequenceClassification.from_pretrained(self.source, num_labels=2)
        args = TrainingArguments(
            output_dir,
            eval_strategy="epoch",
            num_train_epochs=1,
            per_device_train_batch_size=self.batch_size,
            learning_rate=self.lr,
            fp16=fp16,
            report_to="none",
        )
        return Trainer(
            model,
            args,
            train_dataset=self.course_tokens["train"],
            eval_dataset=self.course_tokens["validation"],
            data_collator=DataCollatorWithPadding(tokenizer=self.tokenizer),
            processing_class=self.tokenizer,
            compute_metrics=compute_metrics,
        )

    def course(self, fp16: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self.course_trainer(fp16, tmp).train()

    def hyperparameters(self, fp16: bool):
        from runner.config import Hyperparameters

        return Hyperparameters(
            learning_rate=self.lr, per_device_train_batch_size=self.batch_size, num_train_epochs=1, fp16=fp16
        )

    def runner(self, fp16: bool, compile_model: bool = False, grouped: bool = True, **model_settings) -> None:
        """A runner trial's epoch with the default sweep's model settings, or ``model_settings`` over them."""
        import dataclasses
        from unittest import mock

        import runner.training.train
        from runner.config import TrainConfig
        from runner.training.model import new_model

        model = new_model(self.source, seed=42, settings=self.model_settings.model_copy(update=model_settings))
        hp = self.hyperparameters(fp16)
        build = runner.training.train.training_arguments

        def compiled(*args, **kwargs):  # the experiment: the same run with torch.compile on
            return dataclasses.replace(build(*args, **kwargs), torch_compile=True)

        with mock.patch.object(runner.training.train, "training_arguments", compiled if compile_model else build):
            settings = TrainConfig(group_by_length=grouped)
            precision = runner.training.train.resolve_precision(fp16)
            runner.training.train.train(
                model,
                self.tokenizer,
                self.runner_tokens["train"],
                self.runner_tokens["validation"],
                hp,
                settings,
                precision,
            )

    def runner_padded_tokens(self) -> int:
        from transformers import DataCollatorWithPadding, Trainer

        from runner.config import TrainConfig
        from runner.training.model import new_model
        from runner.training.train import training_arguments

        with tempfile.TemporaryDirectory() as tmp:
            args = training_arguments(self.hyperparameters(False), TrainConfig(), tmp, "fp32")
            trainer = Trainer(
                new_model(self.source, 42),
                args,
                train_dataset=self.runner_tokens["train"],
                eval_dataset=self.runner_tokens["validation"],
                data_collator=DataCollatorWithPadding(self.tokenizer),
            )
            return padded_tokens(trainer)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 training pairs, 2 repeats")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 3, quick 2)")
    parser.add_argument("--train-samples", type=int, help="slice of MRPC train (default all 3668)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--compile", action="store_true", help="add a runner fp16 variant with torch.compile")
    parser.add_argument("--ablate", action="store_true", help="add runner variants with random (ungrouped) batches")
    parser.add_argument(
        "--attention",
        action="store_true",
        help="add runner variants with PyTorch's SDPA attention and with the checkpoint's attention dropout",
    )
    parser.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants (e.g. 'runner fp16')")
    args = parser.parse_args(argv)
    common.setup()
    train_samples = args.train_samples or (512 if args.quick else None)
    repeats = args.repeats or (2 if args.quick else 3)

    from transformers import AutoConfig

    from runner.training.train import resolve_precision

    data = common.load_data(train_samples, None)
    source = common.model_source()
    v = Variants(data, source, args.batch_size, args.learning_rate)
    train_lengths = [len(ids) for ids in v.runner_tokens["train"]["input_ids"]]
    eval_lengths = [len(ids) for ids in v.runner_tokens["validation"]["input_ids"]]
    with tempfile.TemporaryDirectory() as tmp:
        course_padded = padded_tokens(v.course_trainer(False, tmp))
    runner_padded = v.runner_padded_tokens()
    flops = epoch_flops(AutoConfig.from_pretrained(source, num_labels=2), train_lengths, eval_lengths)
    log.info(
        "%d pairs, %d real tokens; padded: course %.3fx, runner %.3fx; %.2f TFLOP per epoch",
        len(train_lengths),
        sum(train_lengths),
        course_padded / sum(train_lengths),
        runner_padded / sum(train_lengths),
        flops / 1e12,
    )

    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    # A typical model-shaped GEMM: a batch of 32 pairs x ~56 tokens through the feed-forward layer.
    model_shape = (32 * 56, 384, 1536)
    shaped: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def measure_rates():
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            rates[name].append(matmul_rate(dtype, 2048, 2048, 2048))
            shaped[name].append(matmul_rate(dtype, *model_shape))

    cases = {
        "course fp32": lambda: v.course(False),
        "course fp16": lambda: v.course(True),
        "runner fp32": lambda: v.runner(False),
        "runner fp16": lambda: v.runner(True),
        "matmul rates": measure_rates,
    }
    failed: dict[str, str] = {}
    if args.compile:

        def compiled():
            try:
                v.runner(True, compile_model=True)
            except Exception as err:  # noqa: BLE001 - an experiment: report it, keep the other variants
                failed["runner fp16 compiled"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                log.warning("torch.compile variant failed: %s", failed["runner fp16 compiled"])

        cases["runner fp16 compiled"] = compiled
    if args.ablate:
        cases["runner fp32 random batches"] = lambda: v.runner(False, grouped=False)
        cases["runner fp16 random batches"] = lambda: v.runner(True, grouped=False)
    if args.attention:
        for precision, fp16 in (("fp32", False), ("fp16", True)):
            cases[f"runner {precision} sdpa"] = lambda fp16=fp16: v.runner(fp16, attn_implementation="sdpa")
            cases[f"runner {precision} attention dropout 0.1"] = lambda fp16=fp16: v.runner(
                fp16, attention_dropout=None
            )
            cases[f"runner {precision} sdpa, attention dropout 0.1"] = lambda fp16=fp16: v.runner(
                fp16, attn_implementation="sdpa", attention_dropout=None
            )
    if args.only:
        cases = {name: case for name, case in cases.items() if name in (*args.only, "course fp32", "matmul rates")}
    times = common.interleaved(cases, repeats)
    seconds = {name: common.median(t) for name, t in times.items() if name not in ("matmul rates", *failed)}
    rate = {name: common.median(r) for name, r in rates.items()}
    rate_shaped = {name: common.median(r) for name, r in shaped.items()}
    base = seconds["course fp32"]
    rows = []
    for name, s in seconds.items():
        precision = resolve_precision(True) if name.startswith("runner fp16") else "fp32"
        floor = flops / rate[precision]
        rows.append(
            {
                "variant": name,
                "s/epoch (median)": s,
                "vs course fp32": s / base,
                "floor precision": precision,
                "floor s": floor,
                "x floor": s / floor,
                "x floor (model-shaped GEMM rate)": s / (flops / rate_shaped[precision]),
            }
        )
    print(table_text := common.table(rows, list(rows[0])))
    print(
        f"\nmatmul 2048^3: fp32 {rate['fp32'] / 1e9:.0f} GFLOP/s, bf16 {rate['bf16'] / 1e9:.0f} GFLOP/s; "
        f"model-shaped {model_shape}: fp32 {rate_shaped['fp32'] / 1e9:.0f}, bf16 {rate_shaped['bf16'] / 1e9:.0f}"
    )
    # Variants and quick runs get their own file, so they never overwrite the full benchmark's numbers.
    extras = [flag for flag in ("quick", "ablate", "attention", "compile", "only") if getattr(args, flag)]
    common.save(
        "-".join(["epoch", *extras]),
        {
            "train_pairs": len(train_lengths),
            "real_tokens": sum(train_lengths),
            "padded_tokens": {"course": course_padded, "runner": runner_padded},
            "epoch_tflop": flops / 1e12,
            "matmul_gflops": {k: v / 1e9 for k, v in rate.items()},
            "matmul_gflops_model_shaped": {k: v / 1e9 for k, v in rate_shaped.items()},
            "seconds": times,
            "failed": failed,
            "table": table_text,
        },
    )


if __name__ == "__main__":
    main()
