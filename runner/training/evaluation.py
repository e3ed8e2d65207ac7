"""Score a saved model folder on MRPC splits, exactly as the sweep scored it during training.

Same data slice (the resolved config's seed and sizes), same tokenization, same
evaluation batch size and precision, same metric module: a folder that holds the
weights a trial recorded reproduces that trial's numbers.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from datasets import DatasetDict

from runner.config import SweepConfig
from runner.training import bootstrap
from runner.training.data import DataError, MrpcData, load_mrpc, tokenize
from runner.training.train import training_arguments

log = logging.getLogger("runner")


def load_eval_data(cfg: SweepConfig, with_test: bool) -> tuple[MrpcData, dict[str, int]]:
    """Validation (sliced as in the sweep) and, when asked, the labelled test split; and every split's size.

    The data comes from ``cfg.data.data_dir`` (resolved by the caller), else the Hub.
    """
    data = load_mrpc(cfg.data, cfg.data.data_dir, seed=cfg.train.seed)
    keep = ["validation", "test"] if with_test else ["validation"]
    if with_test and "test" not in data.splits:
        raise DataError(f"{data.source}: no labelled test split (expected a test file) for --eval-split test")
    return MrpcData(splits=DatasetDict({name: data.splits[name] for name in keep}), source=data.source), data.sizes()


def runnable(recorded: str, mixed: str) -> str:
    """The precision to evaluate in: the ``recorded`` one if this machine runs it, else fp32 (with a warning).

    ``mixed`` is what mixed precision is on this machine (``resolve_precision(True)``, resolved by the caller).
    """
    if recorded in ("fp32", mixed):
        return recorded
    log.warning("the trial ran in %s, which this machine cannot run: evaluating in fp32 (numbers may differ)", recorded)
    return "fp32"


def evaluate_folder(folder: Path, cfg: SweepConfig, data: MrpcData, precision: str, with_test: bool) -> dict:
    """``{"validation": {eval_f1, eval_accuracy, eval_loss}, "test": {test_f1, ...}}`` for the model in ``folder``.

    Each split's F1 and accuracy come with their 95% bootstrap interval (``eval_f1_ci_low`` ...).

    Evaluates in ``precision`` as given (see ``runnable``).
    """
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, PrinterCallback, Trainer

    from runner.training.metrics import compute_metrics
    from runner.training.model import load_tokenizer

    tokenizer = load_tokenizer(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenized = tokenize(data, tokenizer, cfg.model.max_length)
    scores: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="runner-eval-") as tmp:
        trainer = Trainer(
            model=model,
            args=training_arguments(cfg.hyperparameters, cfg.train, tmp, precision),
            eval_dataset=tokenized["validation"],
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=compute_metrics,
        )
        trainer.remove_callback(PrinterCallback)
        for split, prefix in (("validation", "eval"), ("test", "test")):
            if split == "test" and not with_test:
                continue
            log.info("evaluating %s on %s (%d pairs, %s)", folder.name, split, len(tokenized[split]), precision)
            output = trainer.predict(tokenized[split], metric_key_prefix=prefix)
            keep = (f"{prefix}_f1", f"{prefix}_accuracy", f"{prefix}_loss")
            scores[split] = {k: float(output.metrics[k]) for k in keep if k in output.metrics}
            scores[split] |= _intervals(output, prefix)
    return scores


def _intervals(output, prefix: str) -> dict[str, float]:
    """95% bootstrap intervals of accuracy and F1 on the split just scored (``<prefix>_f1_ci_low`` ...)."""
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    found = bootstrap.intervals(output.label_ids, logits.argmax(axis=-1))
    return {
        f"{prefix}_{name.removeprefix('eval_')}_ci_{side}": bound
        for name, (_, low, high) in found.items()
        for side, bound in (("low", low), ("high", high))
    }
