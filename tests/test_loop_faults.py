"""Failures inside the shared training loop: an error in a DataLoader worker, non-finite config values and updates,
checkpoints that load but do not fit the model. (Disk full and torn checkpoints: tests/test_faults.py.)"""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from omni.config import ConfigError, load_config_file
from omni.errors import UserError
from omni.stages import TextStage
from omni.training import checkpoint as ckpt
from tests.conftest import REPO
from tests.test_run import Crash, assert_same, train, weights

# A stage script in miniature (module-level loop, as in train_*.py), with DataLoader workers.
STAGE = textwrap.dedent("""
    import os, signal, sys
    import omni  # the error policy's excepthook, as in every stage script
    from omni.config import TrainConfig
    from omni.data.resumable import ResumableDataset
    from omni.training import Run, adamw
    from tests.test_run import Regression, Toy, ToyStage

    save_dir, mode = sys.argv[1], sys.argv[2]

    class Source(Regression):
        def __getitem__(self, i):
            if mode == "worker_error" and i == 9:
                raise ValueError("sample 9: the reader broke")
            return super().__getitem__(i)

    cfg = ToyStage(train=TrainConfig(save_dir=save_dir, max_steps=12, batch_size=4, num_workers=2, warmup_steps=2,
                                     lr=0.05, checkpoint_freq=100, val_freq=100, threads=1))
    run = Run(cfg, name="toy")
    model = Toy()
    train_set = ResumableDataset(Source(40), batch_size=4, seed=0)
    model = run.setup(model, adamw(model, lr=0.05, weight_decay=0.01), train_set)
    for batch in run.batches(train_set):
        with run.micro_step():
            _, loss = model(batch["x"], batch["y"])
            run.backward(loss)
        if run.optimizer_step() and mode == "sigterm_group" and run.step == 3:
            os.killpg(os.getpgrp(), signal.SIGTERM)  # as Ctrl-C or Slurm do: the workers get it too
    print("finished")
""")


def _run_stage(tmp_path, mode):
    """Run STAGE in its own process group; a hang (the bug this guards against) fails instead of blocking."""
    proc = subprocess.Popen([sys.executable, "-c", STAGE, str(tmp_path), mode], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{mode}: the run hung (killed after 120 s)")
    return proc.returncode, out, err


def test_an_error_in_a_dataloader_worker_ends_the_run_with_the_error(tmp_path):
    """Workers ignore SIGTERM (so that a group Ctrl-C leaves them to the main process), and at exit multiprocessing
    stops them with SIGTERM: the run used to hang forever after printing the worker's error."""
    code, out, err = _run_stage(tmp_path, "worker_error")
    assert code != 0 and "finished" not in out
    assert "ValueError" in err and "sample 9: the reader broke" in err, err[-2000:]


def test_sigterm_to_the_process_group_still_checkpoints_with_workers(tmp_path):
    code, out, err = _run_stage(tmp_path, "sigterm_group")
    assert code == 0, err[-2000:]
    assert (tmp_path / "toy_step_3.pt").exists()
    log = (tmp_path / "training.log").read_text()
    assert "SIGTERM received" in log and "stopped at step 3" in log


# ---------------------------------------------------------------- non-finite values


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_a_non_finite_float_in_a_config_is_refused(tmp_path, value):
    with pytest.raises(ConfigError, match="weight_decay: expected a finite number"):
        load_config_file(TextStage, REPO / "configs" / "thinker_tiny.json", [f"train.weight_decay={value}"])
    data = json.loads((REPO / "configs" / "thinker_tiny.json").read_text())
    data["train"]["lr"] = float(value)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))  # Python's json writes Infinity / NaN, and reads them back
    with pytest.raises(ConfigError, match=r"train: lr: expected a finite number"):
        load_config_file(TextStage, path)


def corrupt_updates(monkeypatch, calls):
    """Make the n-th AdamW update (0-based; gradients finite) put an Inf into the weights, as an overflow would."""
    original, count = torch.optim.AdamW.step, [0]

    def step(opt, *args, **kwargs):
        result = original(opt, *args, **kwargs)
        if count[0] in calls:
            with torch.no_grad():
                opt.param_groups[0]["params"][0].view(-1)[0] = math.inf
        count[0] += 1
        return result
    monkeypatch.setattr(torch.optim.AdamW, "step", step)


def _all_finite(save_dir):
    return all(ckpt.nonfinite_tensors(ckpt.load(p)["model"]) == [] for p in save_dir.glob("toy_*.pt"))


def test_a_step_that_makes_weights_non_finite_is_undone_and_counted(tmp_path, monkeypatch):
    corrupt_updates(monkeypatch, {1, 5})  # one update per step: steps 1 and 5
    run = train(tmp_path, max_steps=8)
    assert run.step == 8 and run.counters["nonfinite_steps"] == 2
    log = (tmp_path / "training.log").read_text()
    assert "step 1: the update of main made weights non-finite; weights and optimizer state restored from the " \
           "start of the run (1 in a row)" in log
    assert "step 5: the update of main made weights non-finite; weights and optimizer state restored from " \
           "toy_step_4.pt (1 in a row)" in log
    assert all(torch.isfinite(v).all() for v in weights(tmp_path).values())
    assert _all_finite(tmp_path)


def test_too_large_a_learning_rate_stops_with_a_clear_error_and_no_nan_checkpoint(tmp_path):
    """lr 1e30 is finite (the config accepts it); the weights blow up, every later step is non-finite."""
    with pytest.raises(UserError, match=r"^3 consecutive non-finite steps \(train.max_nonfinite_steps=3\): stopping at "
                                        r"step 3; the last good checkpoint toy_step_2.pt is intact. Lower train.lr"):
        train(tmp_path, lr=1e30, min_lr=1e29, max_nonfinite_steps=3)
    assert _all_finite(tmp_path)


def test_a_learning_rate_beyond_float_range_is_undone_like_a_non_finite_step(tmp_path):
    """lr 1e38 is finite, but AdamW's step size lr / (1 - beta1) overflows float32 and torch raises mid-update: that
    step is undone and counted like any non-finite one, never a traceback."""
    with pytest.raises(UserError, match=r"^3 consecutive non-finite steps"):
        train(tmp_path, lr=1e38, min_lr=1e37, warmup_steps=0, max_nonfinite_steps=3)
    assert _all_finite(tmp_path)
    assert "made weights non-finite" in (tmp_path / "training.log").read_text()


def test_save_checkpoint_never_writes_non_finite_weights(tmp_path):
    run = train(tmp_path, max_steps=4)
    before = (tmp_path / "toy_step_4.pt").read_bytes()
    with torch.no_grad():
        run.raw_model.head.bias.fill_(math.nan)
    with pytest.raises(UserError, match=r"not writing \S+toy_step_4.pt: the weights hold NaN/Inf at step 4 "
                                        r"\(head.bias\); the previous checkpoint toy_step_4.pt is intact"):
        run.save_checkpoint()
    assert (tmp_path / "toy_step_4.pt").read_bytes() == before


# ---------------------------------------------------------------- checkpoints that load but do not fit


def _damage(model: dict, how: str) -> dict:
    if how == "ddp_prefix":
        return {f"module.{k}": v for k, v in model.items()}
    if how == "compile_prefix":
        return {f"_orig_mod.{k}": v for k, v in model.items()}
    if how == "missing_key":
        return {k: v for k, v in model.items() if k != "head.bias"}
    assert how == "wrong_shape"
    return {**model, "head.weight": torch.zeros(1, 16)}


MISFITS = {"ddp_prefix": r"'module\.' prefix: saved from a DDP or torch\.compile wrapper",
           "compile_prefix": r"'_orig_mod\.' prefix",
           "missing_key": r"1 tensor\(s\) of the model missing: head\.bias",
           "wrong_shape": r"head\.weight \(1, 16\) in the file, \(1, 8\) in the model"}


@pytest.mark.parametrize("how", list(MISFITS))
def test_a_newest_checkpoint_that_does_not_fit_is_skipped_on_auto_resume(tmp_path, how):
    train(tmp_path / "straight")
    save = tmp_path / "run"
    with pytest.raises(Crash):
        train(save, crash_at=6)  # checkpoints at steps 4 and 6 are kept
    newest = save / "toy_step_6.pt"
    state = ckpt.load(newest)
    state["model"] = _damage(state["model"], how)
    ckpt.atomic_save(state, newest)
    run = train(save)
    log = (save / "training.log").read_text()
    assert f"WARNING: checkpoint {newest} does not fit this model" in log
    assert "resumed at step 4" in log
    assert run.step == 12
    assert_same(weights(tmp_path / "straight"), weights(save))


@pytest.mark.parametrize("how", ["ddp_prefix", "wrong_shape"])
def test_an_explicit_checkpoint_that_does_not_fit_is_one_clear_error(tmp_path, how):
    train(tmp_path / "a", max_steps=4)
    bad = tmp_path / "bad.pt"
    state = ckpt.load(tmp_path / "a" / "toy_step_4.pt")
    state["model"] = _damage(state["model"], how)
    ckpt.atomic_save(state, bad)
    with pytest.raises(UserError, match=rf"train.resume={bad}: checkpoint {bad} does not fit this model: .*"
                                        rf"{MISFITS[how]}"):
        train(tmp_path / "b", resume=str(bad))
    with pytest.raises(UserError, match=rf"init_from={bad}: checkpoint {bad} does not fit this model: .*"
                                        rf"{MISFITS[how]}"):
        train(tmp_path / "c", init_from=str(bad))
    with pytest.raises(UserError, match=f"train.resume={tmp_path}/nothing.pt|checkpoint not found"):
        train(tmp_path / "d", resume=str(tmp_path / "nothing.pt"))
