"""runner.train: one Trainer run with per-epoch rows, best epoch in memory, a stop hook, no checkpoints."""

from __future__ import annotations

import contextlib
import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from runner.config import DataConfig, Hyperparameters, TrainConfig
from runner.training.data import load_mrpc, tokenize
from runner.training.model import load_tokenizer, new_model
from runner.training.train import (
    TrainingDiverged,
    collator,
    resolve_compile,
    resolve_precision,
    train,
    training_arguments,
)

SETTINGS = TrainConfig(seed=7, per_device_eval_batch_size=16, group_by_length=False)
PER_EPOCH = {"epoch", "eval_f1", "eval_accuracy", "eval_loss", "train_loss"}


def hp(**changes) -> Hyperparameters:
    return Hyperparameters(**{"learning_rate": 1e-3, "per_device_train_batch_size": 8, "warmup_ratio": 0.0, **changes})


@pytest.fixture(scope="module")
def setup(mrpc_dir, tiny_model):
    data = load_mrpc(DataConfig(), str(mrpc_dir), seed=0)
    tokenizer = load_tokenizer(str(tiny_model))
    return str(tiny_model), tokenizer, tokenize(data, tokenizer, max_length=64)


def run(setup, hyper, **kwargs):
    source, tokenizer, tokenized = setup
    model = new_model(source, SETTINGS.seed)
    precision = resolve_precision(hyper.fp16)  # as the objective resolves it, once per trial
    result = train(model, tokenizer, tokenized["train"], tokenized["validation"], hyper, SETTINGS, precision, **kwargs)
    return model, result


@pytest.fixture(scope="module")
def full_run(setup, tmp_path_factory):
    """Three epochs on eval_f1, with the Trainer's output_dir kept so the test can look inside."""
    output_dir = tmp_path_factory.mktemp("trainer-output")
    seen = []

    @contextlib.contextmanager
    def kept_dir(prefix=None):
        yield str(output_dir)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("runner.training.train.tempfile.TemporaryDirectory", kept_dir)
        model, result = run(
            setup, hp(num_train_epochs=3), on_epoch=lambda epoch, row: seen.append((epoch, row)) or False
        )
    return model, result, output_dir, seen


def test_one_row_per_epoch(full_run):
    _, result, _, seen = full_run
    assert [row["epoch"] for row in result.epochs] == [1, 2, 3]
    for row in result.epochs:
        assert set(row) >= PER_EPOCH
        assert all(math.isfinite(row[k]) for k in PER_EPOCH)
        assert 0.0 <= row["eval_accuracy"] <= 1.0
    assert [(epoch, row) for epoch, row in seen] == [(row["epoch"], row) for row in result.epochs]
    assert result.stopped_at_epoch is None
    assert result.precision == "fp32"
    assert any("train_runtime" in entry for entry in result.log_history)


def test_best_epoch_is_the_first_argmax(full_run):
    _, result, _, _ = full_run
    f1 = [row["eval_f1"] for row in result.epochs]
    assert result.best_epoch == int(np.argmax(f1)) + 1
    assert result.best_metrics == result.epochs[result.best_epoch - 1]


def test_best_weights_and_predictions(full_run):
    """The model ends holding the best epoch's weights, and the predictions are that epoch's."""
    model, result, _, _ = full_run
    assert result.best_state is not None
    state = model.state_dict()
    assert set(result.best_state) == set(state)
    assert all(torch.equal(state[k].cpu(), v) for k, v in result.best_state.items())
    probs = result.probabilities
    assert probs.shape == (8, 2)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0])  # dev pairs, in file order
    assert (probs.argmax(axis=-1) == labels).mean() == pytest.approx(result.best_metrics["eval_accuracy"])


def test_no_checkpoint_is_written(full_run):
    _, _, output_dir, _ = full_run
    assert list(Path(output_dir).rglob("*")) == []


def test_minimize_picks_the_lowest_loss(setup):
    model, result = run(setup, hp(num_train_epochs=2), metric="eval_loss", maximize=False)
    losses = [row["eval_loss"] for row in result.epochs]
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert result.best_metrics["eval_loss"] == min(losses)


def test_hook_returning_true_stops_after_that_epoch(setup):
    calls = []

    def stop_at_first(epoch, row):
        calls.append(epoch)
        return True

    _, result = run(setup, hp(num_train_epochs=3), on_epoch=stop_at_first)
    assert calls == [1]
    assert [row["epoch"] for row in result.epochs] == [1]
    assert result.stopped_at_epoch == 1
    # A stopped (pruned) run keeps the predictions of its best epoch so far, from that epoch's own evaluation.
    assert result.best_epoch == 1 and result.probabilities.shape[1] == 2


def test_nan_loss_raises_training_diverged(setup, monkeypatch):
    source, tokenizer, tokenized = setup
    model = new_model(source, SETTINGS.seed)
    forward = model.forward

    @functools.wraps(forward)  # the Trainer keeps only the columns named in forward's signature
    def nan_loss(*args, **kwargs):
        output = forward(*args, **kwargs)
        output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(model, "forward", nan_loss)
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        train(model, tokenizer, tokenized["train"], tokenized["validation"], hp(num_train_epochs=2), SETTINGS, "fp32")


def test_mixed_precision_run(setup):
    """fp16: true trains in what resolve_precision picks for this machine, and still yields float probabilities."""
    _, result = run(setup, hp(num_train_epochs=1, fp16=True))
    assert result.precision == resolve_precision(True)
    assert result.probabilities.dtype.kind == "f"
    np.testing.assert_allclose(result.probabilities.sum(axis=-1), 1.0, rtol=1e-3)


def test_length_grouping_and_cosine_schedule(setup):
    """The defaults the real sweeps use (batches grouped by length, another scheduler) train as well."""
    source, tokenizer, tokenized = setup
    settings = SETTINGS.model_copy(update={"group_by_length": True, "lr_scheduler_type": "cosine"})
    model = new_model(source, 7)
    result = train(model, tokenizer, tokenized["train"], tokenized["validation"], hp(), settings, "fp32")
    assert [row["epoch"] for row in result.epochs] == [1, 2, 3]
    assert result.probabilities.shape == (8, 2)


def test_resolve_precision():
    assert resolve_precision(False) == "fp32"
    assert resolve_precision(True) in {"bf16", "fp32", "fp16"}
    if not torch.cuda.is_available():
        assert resolve_precision(True) != "fp16", "fp16 on a CPU is no faster than fp32"


def test_training_arguments_never_save(tmp_path):
    args = training_arguments(hp(warmup_ratio=0.1), SETTINGS, str(tmp_path), "bf16")
    assert args.save_strategy == "no"
    assert args.eval_strategy == "epoch" and args.logging_strategy == "epoch"
    assert args.bf16 and not args.fp16
    assert args.warmup_steps == pytest.approx(0.1)
    assert args.report_to in ([], "none", ["none"])
    assert not args.logging_nan_inf_filter


def test_kept_predictions_follow_the_validation_rows(setup):
    """Evaluation runs longest pair first; the kept predictions must still line up with the rows in file order."""
    source, tokenizer, tokenized = setup
    settings = SETTINGS.model_copy(update={"group_by_length": True, "per_device_eval_batch_size": 3})
    model = new_model(source, 7)
    result = train(
        model, tokenizer, tokenized["train"], tokenized["validation"], hp(num_train_epochs=1), settings, "fp32"
    )
    validation = tokenized["validation"]
    lengths = [len(ids) for ids in validation["input_ids"]]
    assert lengths != sorted(lengths, reverse=True), "the fixture's rows must not already be in evaluation order"
    model.eval()
    with torch.no_grad():
        direct = np.stack(
            [
                torch.softmax(model(**{k: torch.tensor([row[k]]) for k in tokenizer.model_input_names}).logits, -1)[0]
                for row in validation
            ]
        )
    # Rows differ by more than the tolerance, so a shuffled order could not pass.
    assert np.abs(direct[:, None, 0] - direct[None, :, 0]).max() > 10 * 2e-6
    np.testing.assert_allclose(result.probabilities, direct, atol=2e-6)


@pytest.mark.parametrize(("fast", "expected"), [(True, "bf16"), (False, "fp32")])
def test_mixed_precision_on_cpu_is_bf16_only_where_bf16_is_fast(monkeypatch, fast, expected):
    """Every CPU accepts bf16, but one that emulates it trains many times slower than fp32 (seen: 70x)."""
    import runner.training.train

    monkeypatch.setattr(runner.training.train.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runner.training.train, "cpu_bf16_is_fast", lambda: fast)
    resolve_precision.cache_clear()
    try:
        assert resolve_precision(True) == expected
        assert resolve_precision(False) == "fp32"
    finally:
        resolve_precision.cache_clear()


def test_the_bf16_speed_check_gives_one_answer_per_process():
    from runner.training.train import cpu_bf16_is_fast

    assert isinstance(cpu_bf16_is_fast(), bool)
    assert cpu_bf16_is_fast.cache_info().currsize == 1


def _features(tokenized, n: int) -> list[dict]:
    rows = tokenized["validation"].select_columns(["input_ids", "token_type_ids", "attention_mask"])
    return [rows[i] for i in range(n)]


def _logits(model, batch) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(**batch).logits.numpy()


def test_batches_pad_to_a_multiple_and_score_as_before(setup):
    """train.pad_to_multiple_of rounds every batch's length up; the padding is masked, so the scores stay."""
    source, tokenizer, tokenized = setup
    features = _features(tokenized, 4)
    longest = max(len(f["input_ids"]) for f in features)
    assert longest % 16, "the pairs must need padding for this test to say anything"
    settings = SETTINGS.model_copy(update={"pad_to_multiple_of": 16})
    plain, padded = (collator(tokenizer, tokenized["train"], s)(features) for s in (SETTINGS, settings))
    assert plain["input_ids"].shape[1] == longest
    assert padded["input_ids"].shape[1] == 16 * math.ceil(longest / 16)
    model = new_model(source, 7)
    np.testing.assert_allclose(_logits(model, padded), _logits(model, plain), atol=1e-5)


def test_compile_on_trains_a_compiled_model_that_computes_what_eager_does(setup, monkeypatch):
    """train.compile: true trains compiled, in place: the state dict keeps its keys and the function is the same.

    Dynamo traces forward and backward as it would for Inductor; the test's backend runs the traced graphs
    as they are (``aot_eager``), since Inductor's C++ build takes minutes on CPU (bench.compile times it).
    Dropout draws its masks differently compiled, so the runs themselves are not compared. "auto" stays eager here.
    """
    assert resolve_compile(True) and not resolve_compile(False) and not resolve_compile("auto")
    source, tokenizer, tokenized = setup
    settings = SETTINGS.model_copy(update={"compile": True, "pad_to_multiple_of": 16})
    calls, real_compile = [], torch.nn.Module.compile

    def compile_cheaply(self, *args, **kwargs):
        calls.append(kwargs)
        return real_compile(self, *args, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", compile_cheaply)
    torch._dynamo.reset()
    model = new_model(source, settings.seed)
    result = train(
        model, tokenizer, tokenized["train"], tokenized["validation"], hp(num_train_epochs=1), settings, "fp32"
    )
    assert calls == [{"dynamic": None}] and model._compiled_call_impl is not None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    eager = new_model(source, settings.seed)
    eager.load_state_dict(result.best_state)  # the same keys: a compiled model's weights load as they are
    batch = collator(tokenizer, tokenized["train"], settings)(_features(tokenized, 8))
    np.testing.assert_allclose(_logits(model, batch), _logits(eager, batch), atol=1e-4)
