"""runner.checkpoint: one model folder per study, replaced only by a better trial, never half-written."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import transformers

from runner.record.checkpoint import INFO_FILE, BestCheckpoint
from runner.training.model import load_tokenizer, new_model


@pytest.fixture
def model_and_tokenizer(tiny_model):
    return new_model(str(tiny_model), seed=0), load_tokenizer(str(tiny_model))


def offer(checkpoint, model_and_tokenizer, value, trial):
    model, tokenizer = model_and_tokenizer
    return checkpoint.offer(model, tokenizer, value, {"trial": trial}, config_yaml=f"trial: {trial}\n")


def digest(folder) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("maximize", "values", "saved", "kept"),
    [
        (True, [0.5, 0.4, 0.5, 0.6, 0.55], [True, False, False, True, False], (3, 0.6)),
        (False, [0.5, 0.6, 0.5, 0.4, 0.45], [True, False, False, True, False], (3, 0.4)),
    ],
    ids=["maximize", "minimize"],
)
def test_saves_only_when_better(tmp_path, model_and_tokenizer, maximize, values, saved, kept):
    checkpoint = BestCheckpoint(tmp_path / "best", "study", maximize=maximize)
    assert checkpoint.current() is None
    outcomes = [offer(checkpoint, model_and_tokenizer, value, trial) for trial, value in enumerate(values)]
    assert outcomes == saved
    held = checkpoint.current()
    assert (held["trial"], held["value"]) == kept
    assert (checkpoint.path / "runner_config.yaml").read_text(encoding="utf-8") == f"trial: {kept[0]}\n"
    # Exactly one model folder: no staging or old copies left next to it.
    assert [p.name for p in (tmp_path / "best").iterdir()] == ["study"]


def test_folder_loads_as_a_pipeline(tmp_path, model_and_tokenizer):
    checkpoint = BestCheckpoint(tmp_path, "study", maximize=True)
    offer(checkpoint, model_and_tokenizer, 0.7, trial=4)
    assert json.loads((checkpoint.path / INFO_FILE).read_text(encoding="utf-8")) == {"trial": 4, "value": 0.7}
    classify = transformers.pipeline("text-classification", model=str(checkpoint.path))
    (scored,) = classify([{"text": "The cat sat on the mat.", "text_pair": "A cat sat on the mat."}])
    assert scored["label"] in {"equivalent", "not_equivalent"}
    assert 0.0 <= scored["score"] <= 1.0


def test_failed_save_keeps_the_previous_model(tmp_path, tiny_model, model_and_tokenizer, monkeypatch):
    """A save that dies midway (disk full, crash) must leave the last good model where it was."""
    model, tokenizer = model_and_tokenizer
    checkpoint = BestCheckpoint(tmp_path, "study", maximize=True)
    offer(checkpoint, model_and_tokenizer, 0.5, trial=0)
    before = digest(checkpoint.path)

    better = new_model(str(tiny_model), seed=1)  # another head: different weights
    original_save = better.save_pretrained

    def save_then_fail(folder, *args, **kwargs):
        original_save(folder, *args, **kwargs)
        (folder / "model.safetensors").write_bytes(b"truncated")
        raise OSError("No space left on device")

    monkeypatch.setattr(better, "save_pretrained", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.offer(better, tokenizer, 0.9, {"trial": 1}, "trial: 1\n")

    assert checkpoint.current() == {"trial": 0, "value": 0.5}
    assert digest(checkpoint.path) == before
    transformers.pipeline("text-classification", model=str(checkpoint.path))

    # The next good save still goes through and replaces it.
    monkeypatch.undo()
    assert checkpoint.offer(better, tokenizer, 0.9, {"trial": 1}, "trial: 1\n")
    assert checkpoint.current() == {"trial": 1, "value": 0.9}
    assert digest(checkpoint.path) != before


def test_unreadable_info_counts_as_empty(tmp_path):
    checkpoint = BestCheckpoint(tmp_path, "study", maximize=True)
    checkpoint.path.mkdir()
    (checkpoint.path / INFO_FILE).write_text("{not json", encoding="utf-8")
    assert checkpoint.current() is None
    assert checkpoint.is_better(0.0)


def test_leftovers_of_dead_processes_are_removed(tmp_path):
    """Staging folders of a killed save are cleaned up; one belonging to a live process is left alone."""
    checkpoint = BestCheckpoint(tmp_path, "study", maximize=True)
    dead, live = tmp_path / ".study.tmp-4194999", tmp_path / f".study.tmp-{os.getpid()}"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    assert checkpoint.remove_leftovers() == [dead]
    assert not dead.exists() and live.exists()


DEAD_PID = 4194999  # above Linux's largest pid_max (2**22): never a live process


def fill(folder, trial: int) -> None:
    folder.mkdir()
    (folder / INFO_FILE).write_text(json.dumps({"trial": trial, "value": 0.5}), encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"weights of trial %d" % trial)


def test_a_stop_between_the_two_renames_is_repaired(tmp_path):
    """replace_dir renamed the model aside, then died before renaming the new one in: the old one comes back."""
    checkpoint = BestCheckpoint(tmp_path, "study", maximize=True)
    fill(tmp_path / f".study.old-{DEAD_PID}-k3j2x9_a", trial=3)
    fill(tmp_path / f".study.tmp-{DEAD_PID}-q8w7e6r5", trial=4)  # the new model, maybe half-written

    removed = checkpoint.remove_leftovers()

    assert checkpoint.current() == {"trial": 3, "value": 0.5}
    assert (checkpoint.path / "model.safetensors").read_bytes() == b"weights of trial 3"
    assert removed == [tmp_path / f".study.tmp-{DEAD_PID}-q8w7e6r5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study"]


def test_the_newest_old_copy_is_restored_and_old_copies_go_only_when_the_folder_exists(tmp_path):
    checkpoint = BestCheckpoint(tmp_path, "study", maximize=True)
    older, newer = tmp_path / f".study.old-{DEAD_PID}", tmp_path / f".study.old-{DEAD_PID}-abc123de"
    fill(older, trial=1)
    fill(newer, trial=2)
    os.utime(older, (1_000_000, 1_000_000))
    live_old = tmp_path / f".study.old-{os.getpid()}-zzzzzzzz"  # a swap in progress in a live process
    fill(live_old, trial=9)

    assert checkpoint.remove_leftovers() == [older]
    assert checkpoint.current()["trial"] == 2
    assert live_old.exists()

    # The folder exists now: a dead process's old copy is just garbage.
    fill(older, trial=1)
    assert checkpoint.remove_leftovers() == [older]
    assert checkpoint.current()["trial"] == 2 and not older.exists()


def test_leftovers_of_other_folders_are_not_touched(tmp_path):
    """Study 'study.old-1' is not a leftover of study 'study', nor is the export 'study-v2'."""
    checkpoint = BestCheckpoint(tmp_path, "study", maximize=True)
    for name in ("study.old-4194999", ".study-v2.tmp-4194999", ".study.old-4194999.x"):
        fill(tmp_path / name, trial=1)
    assert checkpoint.remove_leftovers() == []
    assert not checkpoint.path.exists()
    assert len(list(tmp_path.iterdir())) == 3


@pytest.mark.parametrize(
    ("value", "held", "maximize", "expected"),
    [(0.8, 0.7, True, True), (0.7, 0.8, True, False), (0.7, 0.8, False, True), (0.8, 0.7, False, False)]
    + [(0.7, 0.7, True, False), (0.7, 0.7, False, False)],  # a tie keeps what is there
)
def test_one_rule_for_better_in_the_saved_model_and_the_progress_line(tmp_path, value, held, maximize, expected):
    """The model kept on disk and the best shown while the sweep runs follow ``is_better``, ties included."""
    from runner.search.progress import Best, SweepProgress
    from runner.training.metrics import is_better

    checkpoint = BestCheckpoint(tmp_path, "study", maximize=maximize)
    checkpoint.path.mkdir()
    (checkpoint.path / INFO_FILE).write_text(json.dumps({"trial": 0, "value": held}), encoding="utf-8")
    progress = SweepProgress(total=3, done=1, metric="eval_f1", maximize=maximize)
    progress.best = Best(held, 0)
    progress.trial_finished(1, "COMPLETE", value)

    assert is_better(value, held, maximize) is expected
    assert is_better(value, None, maximize)
    assert checkpoint.is_better(value) is expected
    assert progress.best == (Best(value, 1) if expected else Best(held, 0))
