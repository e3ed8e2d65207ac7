"""What an exported model folder says about itself: metrics.json, the model card, the reproduce command.

Pure text and file writers: no MLflow, no Optuna, no torch.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from runner.config import SweepConfig
from runner.training.bootstrap import with_interval
from runner.training.data import LABEL_NAMES

# Keys of the recorded and re-evaluated metrics, in the order a reader wants them.
SHOWN_METRICS = ("f1", "accuracy", "loss")


@dataclass
class ExportRecord:
    """Everything known about one exported trial, for metrics.json and the card."""

    study: str
    trial: int
    epoch: int | None
    run_id: str
    metric: str
    value: float
    params: dict[str, Any]
    precision: str
    recorded: dict[str, float]  # validation metrics the sweep recorded at the best epoch
    data_source: str
    data_sizes: dict[str, int]
    data_dir: str | None
    validation: dict[str, float] = field(default_factory=dict)  # re-evaluated after export
    test: dict[str, float] = field(default_factory=dict)
    # The confirmation stage's result for this configuration (mean, sd, runs, search_best,
    # optimism_gap), when one ran; ``value`` is then this model's own validation score.
    confirmed: dict[str, Any] | None = None
    seed: int | None = None  # the training seed of the run this model comes from

    def to_json(self) -> dict[str, Any]:
        """The content of metrics.json."""
        return {
            "study": self.study,
            "trial": self.trial,
            "epoch": self.epoch,
            "run_id": self.run_id,
            "metric": self.metric,
            "value": self.value,
            "params": self.params,
            "precision": self.precision,
            "validation_recorded": self.recorded,
            "validation": self.validation,
            **({"test": self.test} if self.test else {}),
            **({"confirmed": self.confirmed} if self.confirmed else {}),
            **({"seed": self.seed} if self.seed is not None else {}),
            "data": {"source": self.data_source, "sizes": self.data_sizes},
        }

    def confirmed_text(self) -> str:
        """``0.8812 ± 0.0061 over 3 runs``, or "" when no confirmation stage ran."""
        c = self.confirmed
        return f"{c['mean']:.4f} ± {c['sd']:.4f} over {c['runs']} runs" if c else ""


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def reproduce_command(record: ExportRecord, config_path: str) -> str:
    """A sweep command that retrains exactly this trial: its searched values pinned, one trial."""
    args = ["python", "-m", "runner.sweep", "--config", config_path]
    args += ["--study", f"{record.study}-trial{record.trial}", "--trials", "1"]
    if record.data_dir:
        args += ["--data-dir", record.data_dir]
    for name, value in sorted(record.params.items()):
        args += ["--set", f"search_space.{name}={_yaml_value(value)}"]
    return shlex.join(args)


def write_metrics(record: ExportRecord, folder: Path) -> Path:
    """metrics.json: recorded and re-evaluated metrics, params and provenance."""
    path = folder / "metrics.json"
    path.write_text(json.dumps(record.to_json(), indent=2) + "\n", encoding="utf-8")
    return path


def _metric_row(name: str, values: dict[str, float], prefix: str) -> str:
    cells = [_with_interval(values, f"{prefix}_{k}") for k in SHOWN_METRICS]
    return f"| {name} | " + " | ".join(cells) + " |"


def _with_interval(values: dict[str, float], key: str) -> str:
    return with_interval(values.get(key), values.get(f"{key}_ci_low"), values.get(f"{key}_ci_high"))


def card_data(record: ExportRecord, cfg: SweepConfig) -> ModelCardData:
    """The card's YAML metadata, as the Hub and MLflow read it: library, task, base model, scores.

    The scores are the exported model's own (re-evaluated validation, and test when scored);
    a base model given as a local folder is not named (the path means nothing elsewhere).
    """
    base = cfg.model.name
    results = [
        EvalResult(
            task_type="text-classification",
            dataset_type=cfg.data.hub_id,
            dataset_name="GLUE MRPC",
            dataset_config=cfg.data.hub_config,
            dataset_split=split,
            metric_type=name,
            metric_value=float(scores[f"{prefix}_{name}"]),
        )
        for split, prefix, scores in (("validation", "eval", record.validation), ("test", "test", record.test))
        for name in ("f1", "accuracy")
        if f"{prefix}_{name}" in scores
    ]
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["runner", "glue", "mrpc"],
        base_model=None if Path(base).is_absolute() or base.startswith(".") else base,
        model_name=record.study if results else None,
        eval_results=results or None,
    )


def write_model_card(record: ExportRecord, cfg: SweepConfig, folder: Path, final_path: Path) -> Path:
    """README.md in the Hugging Face model-card layout: model, data, params, metrics, reproduce.

    ``folder`` is where it is written now (staging), ``final_path`` where the folder will live.
    """
    base = cfg.model.name
    params = "\n".join(f"| `{k}` | {_yaml_value(v)} |" for k, v in sorted(record.params.items()))
    sizes = ", ".join(f"{name} {n}" for name, n in record.data_sizes.items())
    rows = [_metric_row("validation (recorded by the sweep)", record.recorded, "eval")]
    rows.append(_metric_row("validation (re-evaluated export)", record.validation, "eval"))
    if record.test:
        rows.append(_metric_row("test", record.test, "test"))
    if record.confirmed:
        c = record.confirmed
        gap = c.get("optimism_gap")
        curse = (
            f" The search's single best run scored {c['search_best']:.4f}, {gap:+.4f} above its own"
            " configuration's mean: the selection's optimism."
            if gap is not None
            else ""
        )
        selection = f"""Configuration of trial {record.trial} of the Optuna study `{record.study}`, the winner of
its confirmation stage: validation `{record.metric}` {record.confirmed_text()} (the search run
and re-runs with new seeds). This model is the best of those runs (seed {record.seed}, epoch
{record.epoch}): its own validation `{record.metric}` is {record.value:.4f}. Expect the
confirmed mean on new data, not this model's own score.{curse}"""
    else:
        selection = f"""Best epoch ({record.epoch}) of the best trial ({record.trial}) of the Optuna study
`{record.study}`, selected on validation `{record.metric}` = {record.value:.4f} (a single run: the
best of many, so expect less on new data)."""
    body = f"""
# {record.study}: trial {record.trial}

Fine-tuned `{base}` for GLUE MRPC paraphrase detection: given two sentences,
`equivalent` or `not_equivalent` (labels {dict(enumerate(LABEL_NAMES))}).
{selection}
Trained in {record.precision}; MLflow run `{record.run_id}`.

## Data
GLUE MRPC from `{record.data_source}` ({sizes} pairs after the sweep's slicing).
MRPC is licensed by Microsoft Research for non-commercial use.

## Best trial's hyperparameters
| param | value |
|---|---|
{params}

Everything else is in `runner_config.yaml` (the resolved sweep config).

## Metrics
Scores with their 95% bootstrap interval over the evaluated pairs, where measured.

| split | F1 | accuracy | loss |
|---|---|---|---|
{chr(10).join(rows)}

## Use
```python
from transformers import pipeline
clf = pipeline("text-classification", model="{final_path}")
clf({{"text": "The cat sat on the mat.", "text_pair": "A cat was sitting on the mat."}})
```
or `python -m runner.predict --model {final_path} "sentence one" "sentence two"`.

## Reproduce
From the project root (the study `{record.study}-trial{record.trial}` retrains this trial alone):
```bash
{reproduce_command(record, str(final_path / "runner_config.yaml"))}
```
"""
    path = folder / "README.md"
    path.write_text(f"---\n{card_data(record, cfg).to_yaml()}\n---\n{body}", encoding="utf-8")
    return path
