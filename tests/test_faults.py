"""Fault injection, the fast subset (the full one is `make chaos`, scripts/chaos.py): a full disk and a read-only run
dir while saving, truncated / garbage / empty newest checkpoints, and a real stage script (Stage A) killed inside a
step, an evaluation and a checkpoint write, then SIGTERMed, each rerun ending bitwise identical to a straight run."""

import errno
import os
import re

import pytest

import omni.atomic
from omni.errors import UserError
from omni.training import Run
from omni.training import checkpoint as ckpt
from tests.test_run import Crash, assert_same, train, weights


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 12-step toy run: what every interrupted run must reproduce."""
    save = tmp_path_factory.mktemp("straight")
    train(save)
    return weights(save)


def _rerun_past_a_failing_save(save, straight, monkeypatch, failure):
    """Train to step 4 and crash, then rerun to 12 with `failure` raised inside the next checkpoint write: the error
    is clear, the step-4 checkpoint is intact and loadable, and a rerun without the failure ends identical to a
    straight run."""
    with pytest.raises(Crash):
        train(save, crash_at=4)
    before = (save / "toy_step_4.pt").read_bytes()
    failure()
    with pytest.raises(UserError) as e:
        train(save)
    monkeypatch.undo()
    message = str(e.value)
    assert re.search(r"could not write \S+/toy_(step_6|best)\.pt", message), message  # names the file
    assert "the previous checkpoint toy_step_4.pt is intact" in message
    assert (save / "toy_step_4.pt").read_bytes() == before
    state, path = ckpt.load_newest_valid(save, "toy")
    assert path.name == "toy_step_4.pt" and state["step"] == 4
    assert not list(save.glob(".*.tmp"))  # the half-written temporary file was removed
    assert train(save).step == 12
    assert_same(straight, weights(save))
    return e.value


def test_disk_full_while_saving(tmp_path, straight, monkeypatch):
    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    message = _rerun_past_a_failing_save(tmp_path, straight, monkeypatch,
                                         lambda: monkeypatch.setattr(omni.atomic.os, "fsync", disk_full))
    assert "the disk is full (no space left on device)" in str(message)


class FillsUp:
    """A file on a disk with 4 KiB left: a write past that raises ENOSPC, as the OS does."""

    def __init__(self, f):
        self.f, self.room = f, 4096

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_full_inside_torch_save(tmp_path, straight, monkeypatch):
    """A disk that fills up while torch.save writes fails inside torch's zip writer, which raises
    `RuntimeError: [enforce fail at inline_container.cc...]`, not OSError: still the full-disk message."""
    fdopen = omni.atomic.os.fdopen

    def fill_up():
        monkeypatch.setattr(omni.atomic.os, "fdopen", lambda fd, mode="r", **kw: FillsUp(fdopen(fd, mode, **kw)))
    error = _rerun_past_a_failing_save(tmp_path, straight, monkeypatch, fill_up)
    assert "the disk is full (no space left on device)" in str(error)
    assert "inline_container.cc" in str(error.__cause__.__cause__)  # it did fail inside torch's writer


def test_a_failed_summary_write_is_a_user_error_too(tmp_path):
    """The last of the final files: its failure names it, like a failed weights or checkpoint write."""
    (tmp_path / "summary.json").mkdir()  # the rename over it fails, as a full disk or a read-only file would
    with pytest.raises(UserError, match=r"could not write \S+/summary\.json .*the training checkpoints are intact"):
        train(tmp_path)
    assert (tmp_path / "toy.pt").is_file() and not list(tmp_path.glob(".*.tmp"))


def test_permission_denied_on_the_save_dir(tmp_path, straight, monkeypatch):
    def read_only():
        tmp_path.chmod(0o500)
        try:
            (tmp_path / "probe").touch()
        except PermissionError:
            return  # the real thing
        (tmp_path / "probe").unlink()  # root ignores the mode bits: make the write fail as it would for a user

        def denied(*args, dir=None, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        monkeypatch.setattr(omni.atomic.tempfile, "mkstemp", denied)
    try:
        message = str(_rerun_past_a_failing_save(tmp_path, straight, monkeypatch, read_only))
    finally:
        tmp_path.chmod(0o700)
    assert f"permission denied, {tmp_path} is not writable" in message


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_newest_checkpoint_is_skipped_and_named(tmp_path, straight, damage):
    with pytest.raises(Crash):
        train(tmp_path, crash_at=6)  # checkpoints at steps 4 and 6 are kept
    newest = tmp_path / "toy_step_6.pt"
    good = newest.read_bytes()
    newest.write_bytes({"truncated": good[: len(good) // 3], "garbage": os.urandom(len(good)),
                        "empty": b""}[damage])
    run = train(tmp_path)
    log = (tmp_path / "training.log").read_text()
    assert f"WARNING: checkpoint {newest} is unreadable" in log and "falling back to the next older" in log
    assert "resumed at step 4" in log
    assert run.step == 12
    assert_same(straight, weights(tmp_path))


def test_crash_between_the_last_step_checkpoint_and_the_end_of_epoch_checkpoint(tmp_path, monkeypatch):
    """Step 10 ends epoch 0 (10 steps per epoch): its step checkpoint is written, then the end-of-epoch one replaces
    it. A crash in between must not leave the resumed run with a different final state (found by make chaos)."""
    train(tmp_path / "straight", max_steps=10)

    def crash(self):
        raise Crash
    monkeypatch.setattr(Run, "_end_epoch", crash)
    with pytest.raises(Crash):
        train(tmp_path / "crashed", max_steps=10)
    monkeypatch.undo()
    assert ckpt.load(tmp_path / "crashed" / "toy_step_10.pt")["samples_in_epoch"] == 40  # the epoch is not ended
    train(tmp_path / "crashed", max_steps=10)
    a, b = (ckpt.load(tmp_path / d / "toy_step_10.pt") for d in ("straight", "crashed"))
    assert (b["epoch"], b["samples_in_epoch"], b["counters"]) == (a["epoch"], a["samples_in_epoch"], a["counters"])
    assert a["epoch"] == 1
    assert_same(a["model"], b["model"])
    assert "epoch 0 done at step 10" in (tmp_path / "crashed" / "training.log").read_text()


def test_stage_a_killed_in_step_eval_and_checkpoint_write_then_sigterm(tmp_path):
    """The CI slice of `make chaos`: train_text.py, SIGKILLed inside a step, an evaluation and a checkpoint write,
    rerun; and SIGTERMed (exit 0, checkpoint, resumed): both end bitwise identical to the uninterrupted run."""
    from scripts import chaos

    [result] = chaos.run_stage("text", tmp_path, kills=0, seed=0, log=lambda _: None)
    assert result.landed == {"step": True, "eval": True, "checkpoint": True}, result.notes
    assert result.torn_write, "the checkpoint kill should leave a half-done temporary file behind"
    assert result.sigterm, result.notes
    assert result.identical_kill and result.identical_term, result.notes
    log = (tmp_path / "killed" / "training.log").read_text()
    assert "temporary file(s) left by a write that was interrupted" in log


def test_an_unreadable_checkpoint_ahead_of_the_run_does_not_push_out_good_ones(tmp_path, straight):
    """Pruning keeps the newest keep_last checkpoints up to the current step: a skipped unreadable file of a later
    step is neither counted (it would have evicted step 6 here) nor deleted (the run overwrites it at step 10)."""
    with pytest.raises(Crash):
        train(tmp_path, crash_at=6)
    (tmp_path / "toy_step_10.pt").write_bytes(os.urandom(256))
    with pytest.raises(Crash):
        train(tmp_path, crash_at=9)
    assert sorted(s for s, _ in ckpt.step_checkpoints(tmp_path, "toy")) == [6, 8, 10]
    assert train(tmp_path).step == 12
    assert_same(straight, weights(tmp_path))


def test_every_checkpoint_unreadable_stops_instead_of_starting_over(tmp_path, straight):
    with pytest.raises(Crash):
        train(tmp_path, crash_at=6)
    for step in (4, 6):
        (tmp_path / f"toy_step_{step}.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError) as e:
        train(tmp_path)
    assert "every checkpoint in" in str(e.value) and "toy_step_6.pt" in str(e.value) and "--force" in str(e.value)
    assert (tmp_path / "toy_step_4.pt").read_bytes() == b"not a checkpoint"  # nothing deleted
    assert train(tmp_path, force=True).step == 12  # --force starts over, beside them
    assert_same(straight, weights(tmp_path))
