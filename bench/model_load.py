"""Trial set-up: read the pretrained weights from disk per trial, or once per sweep and copy them.

"Once per sweep" is the experiment: a template loaded once, deep-copied per
trial, its new head re-drawn from the trial's seed. runner does the former
(``runner.model.new_model``), because the copy measured slower: transformers 5
memory-maps safetensors, so a warm ``from_pretrained`` costs about as much as
copying the weights in memory.

    python -m bench.model_load               # the default model, 10 interleaved repeats
    python -m bench.model_load --model PATH  # another model folder
"""

from __future__ import annotations

import argparse
import copy

import torch
import transformers

from bench import common


class CopiedModels:
    """The alternative: weights read once, each trial a copy with a freshly seeded head."""

    def __init__(self, source: str):
        from transformers import AutoModelForSequenceClassification

        self.template, info = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=2, output_loading_info=True
        )
        self.new_layers = sorted({key.rsplit(".", 1)[0] for key in info["missing_keys"]})

    def new(self, seed: int):
        model = copy.deepcopy(self.template)
        transformers.set_seed(seed)
        with torch.no_grad():
            for name in self.new_layers:
                layer = model.get_submodule(name)
                layer.weight.normal_(0.0, model.config.initializer_range)
                layer.bias.zero_()
        return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    args = parser.parse_args(argv)
    common.setup()
    from runner.training.model import new_model, resolve_model

    source = resolve_model(args.model)
    copies = CopiedModels(source)  # once per sweep: not part of a trial's cost

    def first_step(model):
        # Memory-mapped weights are read on first use: include one forward pass in both.
        model(input_ids=torch.ones(1, 8, dtype=torch.long))

    cases = {
        "from_pretrained per trial": lambda: first_step(new_model(source, 42)),
        "copy of weights read once": lambda: first_step(copies.new(42)),
    }
    times = common.interleaved(cases, 3 if args.quick else args.repeats)
    base = common.median(times["from_pretrained per trial"])
    rows = [
        {"trial set-up": name, "s (median)": common.median(t), "ratio": common.median(t) / base}
        for name, t in times.items()
    ]
    print(text := common.table(rows, list(rows[0])))
    common.save("model_load", {"model": args.model, "seconds": times, "table": text})


if __name__ == "__main__":
    main()
