"""The arithmetic behind the benchmarks: FLOP counts from the model's shape, and pruning replays."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial
from transformers import BertConfig, BertForSequenceClassification

from bench.epoch import epoch_flops, forward_flops
from bench.pruning import MarginMedianPruner, curves_of, replay


@pytest.fixture
def bert():
    config = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=96, num_labels=2
    )
    return BertForSequenceClassification(config)


def test_forward_flops_count_every_encoder_weight_twice_per_token(bert):
    """Matmul FLOPs = 2 x (encoder linear weights) per token, plus attention's 4 s d per layer and token."""
    cfg = bert.config
    linear = sum(m.weight.numel() for m in bert.bert.encoder.modules() if isinstance(m, torch.nn.Linear))
    head = bert.bert.pooler.dense.weight.numel() + bert.classifier.weight.numel()
    for s in (1, 7, 64):
        attention = cfg.num_hidden_layers * 4 * s * s * cfg.hidden_size
        assert forward_flops(cfg, s) == 2 * s * linear + attention + 2 * head


def test_epoch_flops_is_three_forward_passes_of_training_plus_one_of_evaluation(bert):
    cfg = bert.config
    assert epoch_flops(cfg, [10, 20], [5]) == 3 * (forward_flops(cfg, 10) + forward_flops(cfg, 20)) + forward_flops(
        cfg, 5
    )
    # Padding is not work: the floor counts the real tokens only.
    assert epoch_flops(cfg, [10, 20], []) < 3 * 2 * forward_flops(cfg, 20)


def _trial(number: int, curve: dict[int, float], planned: int, state=TrialState.COMPLETE):
    trial = create_trial(
        params={"num_train_epochs": planned},
        distributions={"num_train_epochs": IntDistribution(1, 4)},
        value=max(curve.values()) if state == TrialState.COMPLETE else None,
        intermediate_values=curve,
        state=state,
    )
    trial.number = number
    return trial


def _curves(*trials):
    """The curves bench.pruning saves and replays, read from a study holding ``trials`` in order."""
    study = optuna.create_study(direction="maximize")
    study.add_trials(sorted(trials, key=lambda t: t.number))
    return json.loads(json.dumps(curves_of(study)))  # as saved in, and read back from, the results file


def test_replay_prunes_weak_trials_and_counts_epochs():
    curves = [_trial(i, {1: 0.80, 2: 0.80 + i / 100, 3: 0.85}, 3) for i in range(4)]
    weak = _trial(4, {1: 0.70, 2: 0.70, 3: 0.70}, 3)
    none = replay(_curves(*curves, weak), optuna.pruners.NopPruner())
    assert none["epochs"] == 15 and none["pruned"] == [] and none["values"][4] == 0.70
    median = replay(_curves(*curves, weak), optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    assert median["pruned"] == [4] and median["epochs"] == 14  # the weak trial stops after epoch 2


def test_replay_never_prunes_after_the_last_epoch_and_flags_unknown_continuations():
    curves = [_trial(i, {1: 0.85, 2: 0.86}, 2) for i in range(3)]
    last_epoch_low = _trial(3, {1: 0.80, 2: 0.70}, 2)
    cut_short = _trial(4, {1: 0.90}, 3, state=TrialState.PRUNED)  # the original sweep stopped it
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)  # epoch 2 is the earliest prune
    result = replay(_curves(*curves, last_epoch_low, cut_short), pruner)
    assert 3 not in result["pruned"] and result["values"][3] == 0.80
    assert result["unknown"] == 1 and result["values"][4] == 0.90
    assert result["epochs"] == 3 * 2 + 2 + 3  # the unknown epochs still cost what was planned


def test_a_margin_lets_epoch_1_prune_only_the_trials_clearly_behind_the_median():
    # Epoch 1 near the majority-class F1 for most trials: the plain median prunes a good late starter.
    curves = [_trial(i, {1: 0.81, 2: 0.84, 3: 0.86}, 3) for i in range(3)]
    late_starter = _trial(3, {1: 0.805, 2: 0.85, 3: 0.88}, 3)
    collapsed = _trial(4, {1: 0.70, 2: 0.70, 3: 0.70}, 3)
    source = _curves(*curves, late_starter, collapsed)
    plain = replay(source, optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    assert plain["pruned"] == [3, 4]
    margin = replay(source, MarginMedianPruner(0.01, n_startup_trials=3, n_warmup_steps=1))
    assert margin["pruned"] == [4] and margin["values"][3] == 0.88
    assert margin["epochs"] == 3 * 3 + 3 + 1  # the collapsed trial stops after epoch 1


def test_the_default_pruner_keeps_the_default_sweeps_finalists():
    """Replayed one worker at a time on the default sweep's recorded curves (bench/results/pruning-default.json),
    the pruner of sweeps/mrpc.yaml keeps the three trials the confirmation stage repeats, yet prunes some.

    With 3 startup trials instead of 5 it pruned the second best, a slow starter (0.850 after epoch 2, 0.873 after 3).
    """
    from bench.common import ROOT
    from bench.pruning import top
    from runner.config.loading import load_config
    from runner.search.study import make_pruner

    cfg = load_config(ROOT / "sweeps" / "mrpc.yaml")
    source = json.loads((ROOT / "bench" / "results" / "pruning-default.json").read_text(encoding="utf-8"))["curves"]
    unpruned = replay(source, optuna.pruners.NopPruner())
    pruned = replay(source, make_pruner(cfg))
    k = cfg.study.confirm.top_k
    assert top(pruned["values"], k) == top(unpruned["values"], k)
    assert pruned["pruned"] and pruned["epochs"] < unpruned["epochs"]


def test_the_replay_compares_each_pruner_setting_once():
    """The default row is built from sweeps/mrpc.yaml; an alternative with the same settings is not a second row."""
    from bench.common import ROOT
    from bench.pruning import pruners
    from runner.config.loading import load_config

    cfg = load_config(ROOT / "sweeps" / "mrpc.yaml")
    labels = [label.removesuffix(" (default)") for label in pruners(4, cfg)]
    assert len(labels) == len(set(labels)), labels
    assert sum(label.endswith("(default)") for label in pruners(4, cfg)) == 1


def test_compile_summary_splits_the_first_epoch_from_the_steady_ones():
    """bench.compile: compilation lands in the first trial's first epoch; steady epochs and later trials exclude it."""
    from bench.compile import summary

    def run(first: float, wall: float) -> dict:
        trial = {"epochs": [first, 10.0], "seconds": first + 12.0, "value": 0.8}
        return {"wall": wall, "trials": [trial, {"epochs": [11.0, 10.0], "seconds": 23.0, "value": 0.8}]}

    eager = summary("eager", [run(12.0, 60.0), run(12.0, 62.0)], None)
    compiled = summary("compiled", [run(200.0, 250.0), run(220.0, 270.0)], eager)
    assert compiled["first epoch s"] == 210.0 and compiled["first trial s"] == 222.0
    assert compiled["steady epoch s"] == 10.0 and compiled["later trial s"] == 23.0
    assert compiled["steady vs eager"] == pytest.approx(1.0)
    assert compiled["command vs eager"] == pytest.approx(260.0 / 61.0)


def test_result_files_name_no_folder_of_this_machine(tmp_path, monkeypatch):
    """bench/results is committed: the checkout, MRPC, the temporary and home folders get portable names."""
    from pathlib import Path

    from bench.common import ROOT, portable

    data = tmp_path / "mrpc"
    monkeypatch.setenv("RUNNER_DATA_DIR", str(data))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = f'"sqlite:///{ROOT}/mlruns/optuna.db" {data}/dev.tsv {tmp_path}/home/.cache {data}x/dev.tsv'
    portable_text = portable(text)
    assert portable_text.split()[:3] == ['"sqlite:///./mlruns/optuna.db"', "$RUNNER_DATA_DIR/dev.tsv", "~/.cache"]
    # A folder whose name only begins like MRPC's is not MRPC's (and the checkout may itself be under $TMPDIR).
    assert portable_text.split()[3].endswith("/mrpcx/dev.tsv") and "$RUNNER_DATA_DIRx" not in portable_text
    assert str(Path.home()) not in portable(str(Path.home()) + "/x")
