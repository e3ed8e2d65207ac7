"""The rival, as its documentation shows it: ``Trainer.hyperparameter_search(backend="optuna")``.

Same model, data slice, search space, number of trials and TPE seed as the runner
sweep it is compared with; evaluation and a checkpoint every epoch (so the best
model can be recovered afterwards) and the Trainer's own MLflow callback.
Run by ``bench/sweep.py`` in its own process; prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="working folder (checkpoints, MLflow store)")
    parser.add_argument("--train-samples", type=int, required=True)
    parser.add_argument("--eval-samples", type=int, required=True)
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{out}/mlflow.db"
    os.environ["MLFLOW_EXPERIMENT_NAME"] = "hp-search"

    import optuna
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from bench import common
    from runner.config import load_config
    from runner.search.space import suggest
    from runner.training.metrics import compute_metrics

    common.setup()
    data = common.load_data(args.train_samples, args.eval_samples, seed=args.seed)
    source = common.model_source()
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokens = data.splits.map(lambda ex: tokenizer(ex["sentence1"], ex["sentence2"], truncation=True), batched=True)

    def model_init(trial=None):
        return AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)

    cfg = load_config(common.ROOT / "sweeps" / "mrpc.yaml")

    def hp_space(trial):
        # The search space of sweeps/mrpc.yaml, proposed exactly as runner proposes it.
        hp = suggest(trial, cfg)
        return {name: getattr(hp, name) for name in cfg.searched()}

    trainer = Trainer(
        model_init=model_init,
        args=TrainingArguments(
            str(out / "trainer"),
            eval_strategy="epoch",
            save_strategy="epoch",
            report_to="mlflow",
            seed=args.seed,
        ),
        train_dataset=tokens["train"],
        eval_dataset=tokens["validation"],
        data_collator=DataCollatorWithPadding(tokenizer=tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    best = trainer.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=lambda metrics: metrics["eval_f1"],
        n_trials=args.trials,
        direction="maximize",
        backend="optuna",
        sampler=(
            optuna.samplers.TPESampler(seed=args.seed)
            if args.sampler == "tpe"
            else optuna.samplers.RandomSampler(seed=args.seed)
        ),
    )
    print(json.dumps({"best_f1": best.objective, "best_trial": best.run_id, "best_params": best.hyperparameters}))


if __name__ == "__main__":
    main()
