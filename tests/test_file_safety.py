"""Files the sweep leaves on disk: private folders, unguessable staging names, nothing lost to a stop mid-swap."""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import runner
from runner.files import private_dir
from runner.record import checkpoint as checkpoint_module
from runner.record.checkpoint import INFO_FILE, BestCheckpoint, folder_lock
from runner.training.model import load_tokenizer, new_model


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask():
    """The common 022: folders made without an explicit mode come out 0755, readable by everyone."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def model_and_tokenizer(tiny_model):
    return new_model(str(tiny_model), seed=0), load_tokenizer(str(tiny_model))


def test_a_fresh_sweep_keeps_its_stores_private(run_sweep, tmp_path, usual_umask):
    assert not (tmp_path / "mlruns").exists()
    assert run_sweep("--trials", "1").code == 0
    assert mode(tmp_path / "mlruns") == 0o700
    assert (tmp_path / "mlruns" / "best" / "tiny" / INFO_FILE).is_file()
    assert mode(tmp_path / "mlruns" / "best") == 0o700


def test_private_dir_makes_missing_parents_private_and_leaves_existing_ones(tmp_path, usual_umask):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    private_dir(shared / "a" / "b")
    assert [mode(p) for p in (shared, shared / "a", shared / "a" / "b")] == [0o755, 0o700, 0o700]
    private_dir(shared / "a" / "b")  # exists already: no error


def test_staging_folders_have_unguessable_names(tmp_path, model_and_tokenizer, monkeypatch):
    """A folder (or symlink) planted under the old pid-based name is neither used nor written through."""
    model, tokenizer = model_and_tokenizer
    checkpoint = BestCheckpoint(tmp_path / "best", "study", maximize=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / f".study.tmp-{os.getpid()}").symlink_to(victim)
    stagings = []
    real_replace = checkpoint_module.replace_dir

    def record(src, dst):
        stagings.append(src.name)
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module, "replace_dir", record)
    assert checkpoint.offer(model, tokenizer, 0.5, {"trial": 0}, "trial: 0\n")
    assert checkpoint.offer(model, tokenizer, 0.6, {"trial": 1}, "trial: 1\n")

    assert list(victim.iterdir()) == []
    assert len(set(stagings)) == 2
    assert all(name.startswith(f".study.tmp-{os.getpid()}-") for name in stagings)
    assert checkpoint.current() == {"trial": 1, "value": 0.6}


# The child renames the model aside (first rename of replace_dir) and gets SIGTERM before the second.
STOPPED_SWAP = """
import os, pathlib, signal, sys
from runner.record.checkpoint import replace_dir

real_rename = pathlib.Path.rename

def rename_then_stop(self, target):
    moved = real_rename(self, target)
    os.kill(os.getpid(), signal.SIGTERM)
    return moved

dst = pathlib.Path(sys.argv[1])
staging = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
staging.mkdir()
(staging / "trial.json").write_text('{"trial": 2, "value": 0.9}')
pathlib.Path.rename = rename_then_stop
replace_dir(staging, dst)
"""


@pytest.mark.e2e
def test_a_sigterm_between_the_two_renames_loses_nothing(tmp_path):
    best = BestCheckpoint(tmp_path, "study", maximize=True)
    best.path.mkdir()
    (best.path / INFO_FILE).write_text('{"trial": 1, "value": 0.8}', encoding="utf-8")
    (best.path / "model.safetensors").write_bytes(b"weights of trial 1")
    env = {**os.environ, "PYTHONPATH": str(Path(runner.__file__).parents[1])}

    child = subprocess.run([sys.executable, "-c", STOPPED_SWAP, str(best.path)], env=env, capture_output=True)

    assert child.returncode == -signal.SIGTERM, child.stderr.decode()
    assert not best.path.exists(), "precondition: stopped between the renames"
    best.remove_leftovers()  # what the next sweep does first
    assert best.current() == {"trial": 1, "value": 0.8}
    assert (best.path / "model.safetensors").read_bytes() == b"weights of trial 1"
    assert [p.name for p in tmp_path.iterdir()] == ["study"]


def test_the_lock_is_a_flock_on_the_best_model_folder(tmp_path):
    """runner.export and the sweep share it: a non-blocking attempt fails while it is held."""
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        with folder_lock(tmp_path):
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
