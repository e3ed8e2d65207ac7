"""Where a training step's time goes: torch.profiler over a few steps of a runner trial.

Operators are grouped into matrix multiplies, attention, element-wise/normalisation,
the optimizer and the rest, to compare with the compute floor (bench.epoch).

    python -m bench.profile_step               # bf16 (fp16: true), 20 steps of batch 32
    python -m bench.profile_step --fp32
"""

from __future__ import annotations

import argparse
import collections
import tempfile

from bench import common

# Operator-name prefixes (after "aten::"), checked in order.
GROUPS = {
    "matmul (linear layers)": ("addmm", "mm", "bmm", "matmul", "linear", "mkldnn_", "onednn"),
    "attention (sdpa)": ("_scaled_dot_product", "scaled_dot_product", "_softmax", "softmax"),
    "element-wise and norms": ("gelu", "native_layer_norm", "layer_norm", "dropout", "native_dropout", "add", "mul"),
    "dtype casts (autocast)": ("to", "_to_copy", "copy_"),
    "optimizer": ("_fused_adam", "_foreach", "adam"),
    # The random masks of dropout (issue 13 asks whether cheaper ones are worth it).
    "dropout masks (bernoulli_)": ("bernoulli",),
    "embedding": ("embedding",),
}


def group_of(name: str) -> str:
    """The group of a profiler event: by operator-name prefix, else "other"."""
    bare = name.removeprefix("aten::").lower()
    for group, prefixes in GROUPS.items():
        if any(bare == p or bare.startswith(p) for p in prefixes if len(p) > 2) or bare in prefixes:
            return group
    return "other"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="10 steps")
    args = parser.parse_args(argv)
    common.setup()
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    import runner.training.train
    from runner.config import Hyperparameters, TrainConfig
    from runner.training.data import tokenize
    from runner.training.model import load_tokenizer, new_model

    steps = 10 if args.quick else args.steps
    data = common.load_data(32 * (steps + 5), 64)
    source = common.model_source()
    tokenizer = load_tokenizer(source)
    tokens = tokenize(data, tokenizer, 128)
    hp = Hyperparameters(per_device_train_batch_size=32, num_train_epochs=1, fp16=not args.fp32)
    prof = profile(activities=[ProfilerActivity.CPU])

    class Window(TrainerCallback):
        """Profile steps 5..5+steps: after warm-up, before evaluation."""

        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == 5:
                prof.__enter__()

        def on_step_end(self, a, state, control, **kw):
            if state.global_step == 5 + steps:
                prof.__exit__(None, None, None)
                control.should_training_stop = True

    original = runner.training.train._Trainer.__init__

    def with_window(self, *a, **kw):
        kw["callbacks"] = [*kw.get("callbacks", []), Window()]
        original(self, *a, **kw)

    runner.training.train._Trainer.__init__ = with_window
    with tempfile.TemporaryDirectory():
        precision = runner.training.train.resolve_precision(hp.fp16)
        runner.training.train.train(
            new_model(source, 42), tokenizer, tokens["train"], tokens["validation"], hp, TrainConfig(), precision
        )
    totals: dict[str, float] = collections.defaultdict(float)
    for event in prof.key_averages():
        # Self time: each microsecond counted once, in the operator that spent it.
        totals[group_of(event.key)] += event.self_cpu_time_total / 1e6
    whole = sum(totals.values())
    rows = [
        {"group": g, "s per step": t / steps, "share": f"{100 * t / whole:.0f}%"}
        for g, t in sorted(totals.items(), key=lambda kv: -kv[1])
    ]
    print(text := common.table(rows, list(rows[0])))
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    print("\n" + "\n".join(f"{e.key:40s} {e.self_cpu_time_total / 1e6 / steps:.3f} s/step" for e in top))
    common.save(
        f"profile-{'fp32' if args.fp32 else 'bf16'}",
        {
            "steps": steps,
            "threads": torch.get_num_threads(),
            "groups": totals,
            "top": {e.key: e.self_cpu_time_total / 1e6 / steps for e in top},
            "table": text,
        },
    )


if __name__ == "__main__":
    main()
