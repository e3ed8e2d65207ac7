"""Cheaper dropout masks: do masks from 16-bit random lanes make a step faster than PyTorch's ``bernoulli_``?

``bench.profile_step --fp32`` puts ``aten::bernoulli_`` (the masks of the hidden-state
dropout, p = 0.1) at 12% of a step on an AVX2 CPU: on CPU it draws one random number per
element. ``RandomBitsDropout`` draws one 64-bit word per three elements and keeps an
element when its 16-bit lane is above ``p * 2**16``, so ``p`` is exact to 1/65536.

Two levels, each variant interleaved with the other: the dropout op alone (forward and
backward, a hidden-state-shaped tensor), and whole training epochs of the default model
with every ``nn.Dropout`` swapped (same seed, same data). F1 is printed too, but a
1-epoch run on a slice says nothing of quality: that needs seeds on full MRPC.

    python -m bench.dropout_masks --quick      # 512 pairs, 1 epoch, 3 repeats (~4 min on an AVX2 CPU)
    python -m bench.dropout_masks --train-samples 3668 --epochs 3 --seeds 42 7 1234
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from bench import common

LANES = 3  # 16-bit lanes used per 64-bit word: torch's int64 random_() leaves the top bit 0


class RandomBitsDropout(nn.Module):
    """``nn.Dropout(p)`` with masks cut from 64-bit random words, 16 bits per element."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        # int16 lanes are signed, uniform over [-2**15, 2**15): drop the lowest p of them.
        self.threshold = round(p * 2**16) - 2**15
        self.scale = 1.0 / (1.0 - p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        words = torch.empty((n + LANES - 1) // LANES, dtype=torch.int64, device=x.device).random_()
        lanes = words.view(torch.int16).view(-1, 4)[:, :LANES].reshape(-1)[:n].view(x.shape)
        return torch.where(lanes >= self.threshold, x * self.scale, 0.0)


def swap_dropout(model: nn.Module) -> int:
    """Replace every ``nn.Dropout`` with p > 0 by ``RandomBitsDropout``; returns how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout and child.p > 0:  # exactly nn.Dropout: not a subclass with other rules
                setattr(parent, name, RandomBitsDropout(child.p))
                swapped += 1
    return swapped


def op_seconds(dropout: nn.Module, x: torch.Tensor, steps: int = 40) -> float:
    """Seconds of one forward and backward of ``dropout`` on ``x`` (after one warm-up)."""
    x = x.clone().requires_grad_()
    dropout(x).sum().backward()
    start = time.perf_counter()
    for _ in range(steps):
        x.grad = None
        dropout(x).sum().backward()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 pairs, 1 epoch, 3 repeats")
    parser.add_argument("--train-samples", type=int, default=None, help="default: 512 with --quick, else all")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="one run per seed and variant")
    parser.add_argument("--repeats", type=int, default=None, help="runs per seed (default 3 with --quick, else 1)")
    args = parser.parse_args(argv)
    common.setup()

    from runner.config import Hyperparameters, ModelConfig, TrainConfig
    from runner.training.data import tokenize
    from runner.training.model import load_tokenizer, new_model
    from runner.training.train import resolve_precision, train

    # As the default sweep runs it: no attention dropout (sweeps/mrpc.yaml), so the masks are the hidden states'.
    default_sweep_model = ModelConfig(attention_dropout=0.0)
    repeats = args.repeats or (3 if args.quick else 1)
    samples = args.train_samples or (512 if args.quick else None)
    source = common.model_source()
    tokenizer = load_tokenizer(source)
    tokens = tokenize(common.load_data(samples, None), tokenizer, 128)
    hidden = new_model(source, 0).config.hidden_size
    x = torch.randn(32, 56, hidden)  # a batch of 32 pairs of MRPC's mean length, one hidden state
    variants = {"torch (bernoulli_)": nn.Dropout(0.1), "16-bit random lanes": RandomBitsDropout(0.1)}
    op = {name: [] for name in variants}
    for _ in range(5):
        for name, module in variants.items():
            op[name].append(op_seconds(module.train(), x))
    hp = Hyperparameters(learning_rate=6.3e-5, per_device_train_batch_size=16, num_train_epochs=args.epochs, fp16=True)
    runs = []
    for seed in args.seeds:
        for repeat in range(repeats):
            order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
            for name in order:
                model = new_model(source, seed, default_sweep_model)
                swapped = swap_dropout(model) if name != "torch (bernoulli_)" else 0
                start = time.perf_counter()
                settings, precision = TrainConfig(seed=seed), resolve_precision(hp.fp16)
                result = train(model, tokenizer, tokens["train"], tokens["validation"], hp, settings, precision)
                runs.append(
                    {
                        "variant": name,
                        "seed": seed,
                        "modules swapped": swapped,
                        "s": time.perf_counter() - start,
                        "F1 by epoch": [round(e["eval_f1"], 4) for e in result.epochs],
                        "best F1": result.best_metrics["eval_f1"],
                    }
                )
                common.log.info("%s", runs[-1])
    base_op, base_run = common.median(op["torch (bernoulli_)"]), None
    rows = []
    for name in variants:
        mine = [r for r in runs if r["variant"] == name]
        seconds = common.median([r["s"] for r in mine])
        base_run = base_run or seconds
        rows.append(
            {
                "dropout": name,
                "op ms (fwd+bwd)": 1e3 * common.median(op[name]),
                "op vs torch": common.median(op[name]) / base_op,
                "run s (median)": seconds,
                "run vs torch": seconds / base_run,
                "best F1 per run": ", ".join(f"{r['best F1']:.4f}" for r in mine),
                "mean best F1": statistics.mean(r["best F1"] for r in mine),
            }
        )
    print(text := common.table(rows, list(rows[0])))
    common.save(
        "dropout_masks-quick" if args.quick else "dropout_masks",
        {"hyperparameters": hp.model_dump(), "train_samples": samples, "op": op, "runs": runs, "table": text},
    )


if __name__ == "__main__":
    main()
