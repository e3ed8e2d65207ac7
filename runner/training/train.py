"""One training run with the Trainer. Knows nothing of Optuna or MLflow.

The caller gets a callback per epoch (and may stop the run there), and at the end
the best epoch's weights, metrics and validation predictions. No checkpoint is
ever written: the best weights are kept in memory until the caller decides.
"""

from __future__ import annotations

import functools
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from runner.config import Hyperparameters, TrainConfig
from runner.training.data import SWAPPED
from runner.training.metrics import compute_metrics, is_better, probabilities

log = logging.getLogger(__name__)

# Called after each epoch's evaluation with (epoch, metrics); returning True stops training.
EpochHook = Callable[[int, dict[str, float]], bool]
STEP_HOOK_SECONDS = 0.5  # the progress hook is called at most this often


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


@functools.cache
def resolve_precision(mixed: bool) -> str:
    """What ``fp16: true`` means here: fp16 on CUDA, bf16 on a CPU that computes it fast, else fp32."""
    if not mixed:
        return "fp32"
    if torch.cuda.is_available():
        return "fp16"
    return "bf16" if cpu_bf16_is_fast() else "fp32"


def resolve_compile(setting: bool | str) -> bool:
    """Whether ``train.compile`` compiles here: true and false say so; "auto" follows what was measured.

    On CPU a compiled trial was slower as a whole than an eager one, compilation included
    (bench/README.md, "torch.compile"), so "auto" stays eager there. On CUDA it is not measured
    yet, and a trial's meaning must not change on a guess: eager too, until bench.compile says otherwise.
    """
    return setting is True


@functools.cache
def cpu_bf16_is_fast() -> bool:
    """Does a bf16 matrix multiply beat fp32 on this CPU? Measured once per process.

    Every CPU torch runs on accepts bf16, but only some compute it natively (AMX, AVX-512
    BF16: 2-6x fp32). Others emulate it: on an AVX2-only AMD EPYC, a 1024^2 bf16 matmul
    took 70x as long as fp32, and a bf16 trial ran for hours. Asking the CPU by flags
    needs torch's private API, so this times one small multiply of each kind instead
    (tens of milliseconds); an emulating CPU loses by an order of magnitude, not a margin.
    """
    try:
        times = {}
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.ones(256, 256, dtype=dtype)
            (x @ x).sum().item()  # warm-up: first-call dispatch and allocation
            start = time.perf_counter()
            for _ in range(3):
                (x @ x).sum().item()
            times[dtype] = time.perf_counter() - start
    except RuntimeError:
        return False
    fast = times[torch.bfloat16] < times[torch.float32]
    log.debug("bf16 matmul %.1f ms, fp32 %.1f ms", 1e3 * times[torch.bfloat16], 1e3 * times[torch.float32])
    return fast


@dataclass
class TrainResult:
    """What a finished (or stopped) training run hands back."""

    precision: str
    epochs: list[dict[str, float]] = field(default_factory=list)  # one row per epoch, with "epoch"
    best_epoch: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = None
    stopped_at_epoch: int | None = None  # set when the epoch hook stopped training
    train_runtime: float = 0.0
    train_samples_per_second: float = 0.0
    log_history: list[dict[str, Any]] = field(default_factory=list)
    probabilities: np.ndarray | None = None  # validation, best epoch, shape (n, 2)


def training_arguments(hp: Hyperparameters, settings: TrainConfig, output_dir: str, precision: str):
    """TrainingArguments for one run: evaluate and log once per epoch, never save."""
    return TrainingArguments(
        output_dir=output_dir,
        learning_rate=hp.learning_rate,
        per_device_train_batch_size=hp.per_device_train_batch_size,
        num_train_epochs=hp.num_train_epochs,
        weight_decay=hp.weight_decay,
        # transformers 5: a float in [0, 1) is a fraction of the total steps.
        warmup_steps=hp.warmup_ratio,
        lr_scheduler_type=settings.lr_scheduler_type,
        max_grad_norm=settings.max_grad_norm,
        per_device_eval_batch_size=settings.per_device_eval_batch_size,
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
        seed=settings.seed,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="no",
        report_to="none",
        # The default filter hides NaN losses by averaging over them; we want to see them.
        logging_nan_inf_filter=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        # The swap-order collator needs the swapped_* columns the Trainer would drop; it drops them itself.
        remove_unused_columns=settings.swap_order == 0,
    )


class SwapOrderCollator:
    """Pads a batch after showing each pair in its other order with probability ``probability``.

    The other order comes pre-tokenized in the ``swapped_*`` columns (runner.training.data.tokenize
    with ``both_orders``); the draw is seeded, so a run with the same seed sees the same orders.
    Columns the model does not take (those, and any other) are dropped here: the Trainer keeps
    them (``remove_unused_columns=False``) so that this collator can see them.
    """

    KEEP = ("input_ids", "token_type_ids", "attention_mask", "label", "labels")

    def __init__(self, tokenizer, probability: float, seed: int, pad_to_multiple_of: int | None = None):
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
        self.probability = probability
        self.rng = np.random.default_rng(seed)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = []
        for feature in features:
            swap = SWAPPED + "input_ids" in feature and self.rng.random() < self.probability
            source = {k.removeprefix(SWAPPED): v for k, v in feature.items() if k.startswith(SWAPPED)} if swap else {}
            batch.append({k: source.get(k, v) for k, v in feature.items() if k in self.KEEP})
        return self.pad(batch)


def collator(tokenizer, train_dataset, settings: TrainConfig):
    """Padding alone, or the swap-order collator when ``train.swap_order`` is on (it needs both orders' tokens).

    Either pads a batch to its longest pair, rounded up to ``train.pad_to_multiple_of``.
    """
    multiple = settings.pad_to_multiple_of if settings.pad_to_multiple_of > 1 else None
    if settings.swap_order == 0:
        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)
    if SWAPPED + "input_ids" not in train_dataset.column_names:
        raise ValueError("train.swap_order needs the pairs tokenized in both orders: tokenize(..., both_orders=True)")
    return SwapOrderCollator(tokenizer, settings.swap_order, settings.seed, multiple)


def longest_first(dataset) -> np.ndarray:
    """Row indices of a tokenized split, longest ``input_ids`` first (ties in row order)."""
    lengths = np.fromiter((len(ids) for ids in dataset["input_ids"]), dtype=np.int64, count=len(dataset))
    return np.argsort(-lengths, kind="stable")


class _Trainer(Trainer):
    """The Trainer, stopping the moment the loss stops being finite (not at the epoch's end).

    Evaluation runs in ``eval_order`` (longest pair first, so each batch pads only to
    lengths close to its own). The Trainer's own choice with length grouping is a
    shuffled order, which would leave the kept predictions out of step with the
    validation rows; a fixed order lets them be put back.
    """

    def __init__(self, *args, eval_order: np.ndarray, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_order = eval_order

    def _get_eval_sampler(self, eval_dataset):
        return self.eval_order.tolist()

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        # One device sync per step: the same cost as the Trainer's default NaN filter, which we turn off.
        if not torch.isfinite(loss).all():
            epoch = math.ceil(self.state.epoch or 0) or 1
            raise TrainingDiverged(
                f"training loss became {loss.item()} at step {self.state.global_step + 1} (epoch {epoch})"
            )
        return loss


class _EpochCallback(TrainerCallback):
    """Collects per-epoch metrics, keeps the best weights in memory, asks the hook to go on."""

    def __init__(self, result: TrainResult, metric: str, maximize: bool, hook: EpochHook | None, progress):
        self.result, self.metric, self.maximize, self.hook, self.progress = result, metric, maximize, hook, progress
        self.last_logits: np.ndarray | None = None  # the evaluation that on_evaluate is about to see
        self.eval_order: np.ndarray | None = None  # the row order evaluation runs in
        self.train_loss: float | None = None
        self.model = None
        self._last_progress = time.monotonic()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model

    def on_step_end(self, args, state, control, **kwargs):
        # Often enough for a live step bar, seldom enough to cost nothing; the log's own 30 s
        # throttle is the caller's (runner.search.progress).
        if self.progress and time.monotonic() - self._last_progress > STEP_HOOK_SECONDS:
            self._last_progress = time.monotonic()
            self.progress(state.epoch or 0.0, state.global_step, state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in (logs or {}):
            self.train_loss = float(logs["loss"])

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        """Metrics as usual, keeping the logits (in row order): the best epoch's predictions need no second pass."""
        logits = eval_pred.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        if self.eval_order is not None:
            restored = np.empty_like(logits)
            restored[self.eval_order] = logits
            logits = restored
        self.last_logits = logits
        return compute_metrics(eval_pred)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        epoch = round(state.epoch or 0)
        row = {"epoch": epoch, **{k: float(v) for k, v in (metrics or {}).items() if k.startswith("eval_")}}
        if self.train_loss is not None:
            row["train_loss"] = self.train_loss
        if not math.isfinite(row.get("eval_loss", 0.0)):
            raise TrainingDiverged(f"validation loss became {row['eval_loss']} at epoch {epoch}")
        self.result.epochs.append(row)
        value = row[self.metric]
        best = self.result.best_metrics.get(self.metric)
        if is_better(value, best, self.maximize):
            self.result.best_epoch, self.result.best_metrics = epoch, row
            # A CPU copy: the live weights keep changing in later epochs.
            self.result.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.result.probabilities = probabilities(self.last_logits)
        if self.hook is not None and self.hook(epoch, row):
            self.result.stopped_at_epoch = epoch
            control.should_training_stop = True


def train(
    model,
    tokenizer,
    train_dataset,
    eval_dataset,
    hp: Hyperparameters,
    settings: TrainConfig,
    precision: str,
    metric: str = "eval_f1",
    maximize: bool = True,
    on_epoch: EpochHook | None = None,
    progress: Callable[[float, int, int], None] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` in ``precision``, evaluating each epoch; return the best epoch and its predictions.

    ``precision`` is what ``resolve_precision(hp.fp16)`` gave the caller, which records it: training
    does not resolve it again. ``on_epoch`` sees every epoch's metrics and may stop training
    (pruning). Raises TrainingDiverged when the loss stops being finite.
    """
    result = TrainResult(precision=precision)
    callback = _EpochCallback(result, metric, maximize, on_epoch, progress)
    # Computed once per trial: every epoch's evaluation runs in this order.
    callback.eval_order = longest_first(eval_dataset)
    if resolve_compile(settings.compile):
        # In place: the state dict keeps its keys, so the best weights load and save as they would eagerly.
        model.compile(dynamic=settings.compile_dynamic)
    with tempfile.TemporaryDirectory(prefix="runner-trial-") as output_dir:
        trainer = _Trainer(
            model=model,
            args=training_arguments(hp, settings, output_dir, precision),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            data_collator=collator(tokenizer, train_dataset, settings),
            compute_metrics=callback.compute_metrics,
            callbacks=[callback],
            eval_order=callback.eval_order,
        )
        # With tqdm off the Trainer prints every log dict to stdout; our callback reports instead.
        trainer.remove_callback(PrinterCallback)
        output = trainer.train()
        result.train_runtime = float(output.metrics.get("train_runtime", 0.0))
        result.train_samples_per_second = float(output.metrics.get("train_samples_per_second", 0.0))
        result.log_history = list(trainer.state.log_history)
        if result.best_state is not None and result.stopped_at_epoch is None:
            model.load_state_dict(result.best_state)  # the caller saves the best epoch, not the last
    return result
