"""train.swap_order: each training pair shown in its other order with a seeded probability (issue 11's recipe)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from runner.config import DataConfig, Hyperparameters, TrainConfig
from runner.training.data import SWAPPED, load_mrpc, tokenize
from runner.training.model import load_tokenizer, new_model
from runner.training.train import SwapOrderCollator, resolve_precision, train


@pytest.fixture(scope="module")
def both(mrpc_dir, tiny_model):
    data = load_mrpc(DataConfig(), str(mrpc_dir), seed=0)
    tokenizer = load_tokenizer(str(tiny_model))
    return data, tokenizer, tokenize(data, tokenizer, max_length=64, both_orders=True)


def test_the_training_split_carries_each_pair_in_the_other_order_too(both):
    data, tokenizer, tokenized = both
    train_rows, first = tokenized["train"], data.splits["train"][0]
    assert train_rows[0][SWAPPED + "input_ids"] == tokenizer(first["sentence2"], first["sentence1"])["input_ids"]
    assert train_rows[0]["input_ids"] == tokenizer(first["sentence1"], first["sentence2"])["input_ids"]
    assert train_rows[0]["input_ids"] != train_rows[0][SWAPPED + "input_ids"], "the fixture's pairs differ by side"
    assert not any(c.startswith(SWAPPED) for c in tokenized["validation"].column_names), "scored as given"


def swapped_rows(collator: SwapOrderCollator, rows: list[dict]) -> list[bool]:
    """Which rows of one collated batch came out in the other order (compared token for token)."""
    batch = collator(rows)
    out = []
    for i, row in enumerate(rows):
        ids = [t for t, m in zip(batch["input_ids"][i].tolist(), batch["attention_mask"][i].tolist(), strict=True) if m]
        assert ids in (row["input_ids"], row[SWAPPED + "input_ids"])
        out.append(ids == row[SWAPPED + "input_ids"])
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}, "no swapped_* reaches the model"
    return out


def test_the_collator_swaps_with_its_probability_and_its_seed(both):
    _, tokenizer, tokenized = both
    rows = [tokenized["train"][i] for i in range(len(tokenized["train"]))]
    assert swapped_rows(SwapOrderCollator(tokenizer, 1.0, seed=0), rows) == [True] * len(rows)
    assert swapped_rows(SwapOrderCollator(tokenizer, 0.0, seed=0), rows) == [False] * len(rows)
    half = swapped_rows(SwapOrderCollator(tokenizer, 0.5, seed=3), rows * 4)
    assert 0 < sum(half) < len(half), "a mix of both orders"
    assert half == swapped_rows(SwapOrderCollator(tokenizer, 0.5, seed=3), rows * 4), "the seed fixes the draws"
    assert half != swapped_rows(SwapOrderCollator(tokenizer, 0.5, seed=4), rows * 4), "another seed, other draws"


def test_training_with_swapped_orders_runs_and_needs_both_orders_tokenized(both, tiny_model, monkeypatch):
    data, tokenizer, tokenized = both
    settings = TrainConfig(seed=1, swap_order=0.5, group_by_length=False)
    hp = Hyperparameters(learning_rate=1e-3, per_device_train_batch_size=8, num_train_epochs=1, warmup_ratio=0.0)
    args = (tokenized["validation"], hp, settings, resolve_precision(False))
    seen = []  # whether each training batch reached the collator with both orders (the Trainer drops unused columns)
    collate = SwapOrderCollator.__call__

    def spy(self, features):
        seen.append(all(SWAPPED + "input_ids" in f for f in features))
        return collate(self, features)

    monkeypatch.setattr(SwapOrderCollator, "__call__", spy)
    result = train(new_model(str(tiny_model), 1), tokenizer, tokenized["train"], *args)
    assert [row["epoch"] for row in result.epochs] == [1] and result.probabilities is not None
    assert any(seen), "no training batch carried the other order: nothing could be swapped"
    one_order = tokenize(data, tokenizer, max_length=64)
    with pytest.raises(ValueError, match="both orders"):
        train(new_model(str(tiny_model), 1), tokenizer, one_order["train"], *args)


def test_a_sweep_records_swap_order_and_what_ran_on_every_trial(run_sweep, tmp_path, monkeypatch):
    import torch

    from runner.workers.launch import WORKERS_ENV

    monkeypatch.setenv(WORKERS_ENV, "3")  # as the launcher sets it in each of its workers
    result = run_sweep("--trials", "1", "--set", "train.swap_order=0.5")
    assert result.code == 0, result.err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.`runner.role` = 'trial'")
    assert [r.data.params["swap_order"] for r in runs] == ["0.5"]
    # Issue 13: every run says what ran, so speed can be compared across runs.
    assert [(r.data.params["torch_threads"], r.data.params["local_workers"]) for r in runs] == [
        (str(torch.get_num_threads()), "3")
    ]
    # An eager run records that it was not compiled, and no dynamic-shape setting that meant nothing.
    assert [(r.data.params["compile"], "compile_dynamic" in r.data.params) for r in runs] == [("False", False)]
