"""The run machinery on a toy model: exact resume, accumulation, NaN guard, freezing, init_from, config checks."""

import json
import os
import signal
from dataclasses import dataclass, field

import pytest
import torch

from omni.config import TrainConfig
from omni.data.resumable import BadSample, ResumableDataset
from omni.errors import UserError
from omni.training import Run, adamw


@dataclass
class ToyModelConfig:
    width: int = 8


@dataclass
class ToyData:
    n: int = 40


@dataclass
class ToyStage:
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    data: ToyData = field(default_factory=ToyData)
    train: TrainConfig = field(default_factory=TrainConfig)
    init_from: str | None = None


class Regression:
    bad = frozenset()  # indices that raise BadSample

    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if i in self.bad:
            raise BadSample(f"sample{i}.wav: unreadable")
        return {"x": self.x[i], "y": self.y[i], "i": i}

    def collate(self, samples):
        return {"x": torch.stack([s["x"] for s in samples]), "y": torch.stack([s["y"] for s in samples]),
                "i": [s["i"] for s in samples]}


class Toy(torch.nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Dropout(0.2), torch.nn.Tanh())
        self.head = torch.nn.Linear(width, 1)

    def forward(self, x, y):
        pred = self.head(self.body(x)).squeeze(-1)
        return pred, ((pred - y) ** 2).mean()


class Crash(Exception):
    pass


def train(save_dir, *, max_steps=12, crash_at=None, freeze=(), trainable_only=False, poison_at=(), force=False,
          init_from=None, seen=None, batch_size=4, **train_overrides):
    settings = {"checkpoint_freq": 2, "val_freq": 3, "log_freq": 2, "warmup_steps": 2, "lr": 0.05, "min_lr": 0.005,
                "keep_last": 2, **train_overrides}
    cfg = ToyStage(init_from=init_from, train=TrainConfig(save_dir=str(save_dir), max_steps=max_steps,
                                                          batch_size=batch_size, **settings))
    run = Run(cfg, name="toy", metric="val_mse", mode="min", trainable_only=trainable_only, force=force)
    model = Toy(cfg.model.width)
    for name, p in model.named_parameters():
        p.requires_grad = not name.startswith(tuple(freeze))
    train_set = ResumableDataset(Regression(cfg.data.n), batch_size=batch_size, seed=cfg.train.seed)
    val = Regression(12)
    model = run.setup(model, adamw(model, lr=cfg.train.lr, weight_decay=0.01), train_set)

    def evaluate():
        err = sum(((run.raw_model(b["x"], b["y"])[0] - b["y"]) ** 2).sum().item() for b in run.eval_batches(val, 5))
        return {"val_mse": err / len(val)}

    for batch in run.batches(train_set):
        if seen is not None:
            seen.append(batch["i"])
        with run.micro_step():
            _, loss = model(batch["x"], batch["y"])
            if run.step in poison_at:
                loss = loss * float("nan")
            run.backward(loss)
        if run.optimizer_step():
            run.log(loss=loss)
            run.maybe_evaluate(evaluate)
            run.maybe_checkpoint()
            if run.step == crash_at:
                raise Crash
    if run.stopped:  # SIGTERM / Ctrl-C: checkpointed, the script ends here (as the stage scripts do)
        return run
    run.finish(evaluate, final_weights={"toy.pt": {"model": run.raw_model.state_dict()}})
    return run


def weights(save_dir):
    return torch.load(save_dir / "toy.pt", weights_only=True)["model"]


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("crash_at", [3, 7, 10])
def test_crash_and_rerun_is_bitwise_identical(tmp_path, crash_at):
    seen_straight, seen_resumed = [], []
    train(tmp_path / "straight", seen=seen_straight)
    with pytest.raises(Crash):
        train(tmp_path / "resumed", crash_at=crash_at, seen=seen_resumed)
    resumed_from = (crash_at // 2) * 2  # checkpoints every 2 steps
    del seen_resumed[resumed_from:]  # batches of the lost steps are replayed
    train(tmp_path / "resumed", seen=seen_resumed)
    assert seen_resumed == seen_straight
    assert_same(weights(tmp_path / "straight"), weights(tmp_path / "resumed"))
    log = (tmp_path / "resumed" / "training.log").read_text()
    assert f"resumed at step {resumed_from}" in log
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "train"]
    assert steps == sorted(set(steps))  # the replayed steps are logged once


def test_resume_between_two_log_lines_logs_the_same_averages(tmp_path):
    """log_freq 3, checkpoints every 2: the step-4 checkpoint holds step 4's metrics, not yet logged; the resumed run
    must average steps 4-6 like the straight run, not step 5-6 alone."""
    def train_records(run_dir):
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "time"} for r in lines if r["kind"] == "train"]

    train(tmp_path / "straight", max_steps=9, log_freq=3)
    with pytest.raises(Crash):
        train(tmp_path / "resumed", max_steps=9, log_freq=3, crash_at=5)
    train(tmp_path / "resumed", max_steps=9, log_freq=3)
    assert train_records(tmp_path / "resumed") == train_records(tmp_path / "straight")


def test_epochs_keep_last_best_and_finished_rerun(tmp_path):
    run = train(tmp_path, max_steps=None, max_epochs=2)  # 40 samples / 4 = 10 steps per epoch
    assert run.step == 20 and run.epoch == 2
    files = sorted(p.name for p in tmp_path.glob("toy_*.pt"))
    assert files == ["toy_best.pt", "toy_step_18.pt", "toy_step_20.pt"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == 20 and summary["best"] <= summary["metrics"]["val_mse"]
    before = weights(tmp_path)
    again = train(tmp_path, max_steps=None, max_epochs=2)  # finished: nothing to do but rewrite outputs
    assert again.step == 20
    assert_same(before, weights(tmp_path))


def test_grad_accumulation_matches_a_bigger_batch(tmp_path):
    accumulated = train(tmp_path / "acc", max_steps=5, effective_batch=8)
    assert accumulated.accum == 2 and accumulated.step == 5
    assert "effective batch 8 = 4 x 2 accumulation" in (tmp_path / "acc" / "training.log").read_text()
    train(tmp_path / "big", max_steps=5, batch_size=8)
    a, b = weights(tmp_path / "acc"), weights(tmp_path / "big")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_nan_steps_are_skipped_and_counted_then_stop(tmp_path):
    run = train(tmp_path / "a", max_steps=6, poison_at={2, 3})
    assert run.counters["nonfinite_steps"] == 2
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "a").values())
    with pytest.raises(UserError, match="consecutive non-finite"):
        train(tmp_path / "b", max_steps=8, poison_at=set(range(8)), max_nonfinite_steps=3)


def test_freeze_change_across_resume(tmp_path):
    with pytest.raises(Crash):
        train(tmp_path, freeze=("body",), trainable_only=True, crash_at=4)
    saved = torch.load(tmp_path / "toy_step_4.pt", weights_only=True)
    assert set(saved["model"]) == {"head.weight", "head.bias"}  # trainable-only checkpoint
    assert set(saved["optimizers"]["main"]["state"]) == {"head.weight", "head.bias"}
    run = train(tmp_path, freeze=(), trainable_only=True)  # unfreeze the body on resume
    log = (tmp_path / "training.log").read_text()
    assert "now trainable" in log and "body.0.weight" in log
    assert "fresh state for 2 newly trainable tensors" in log
    assert run.step == 12


def test_init_from_then_resume_wins(tmp_path):
    train(tmp_path / "a")
    run = train(tmp_path / "b", max_steps=2, init_from=str(tmp_path / "a"))
    assert "initialised from" in (tmp_path / "b" / "training.log").read_text()
    assert run.step == 2
    train(tmp_path / "b", max_steps=4, init_from=str(tmp_path / "a"), force=True)
    assert "resuming from" in (tmp_path / "b" / "training.log").read_text()


def test_resume_with_changed_batch_size_stops_unless_forced(tmp_path):
    with pytest.raises(Crash):
        train(tmp_path, crash_at=2)
    with pytest.raises(UserError, match="train.batch_size"):
        train(tmp_path, batch_size=8)
    assert train(tmp_path, batch_size=8, force=True).step == 12


@pytest.mark.parametrize("settings, message", [({"batch_size": 64}, "smaller than one global batch"),
                                               ({"effective_batch": 6}, "effective_batch=6 is not a multiple")])
def test_a_batch_that_does_not_fit_the_data_or_the_processes_is_a_user_error(tmp_path, settings, message):
    """Found only once the run knows its data and world size, past the config checks: still one clear line."""
    with pytest.raises(UserError, match=message):
        train(tmp_path, **settings)


def test_bf16_autocast_trains(tmp_path):
    run = train(tmp_path, max_steps=6, precision="bf16")
    assert run.step == 6 and run.last_eval["step"] == 6
    assert all(torch.isfinite(v).all() for v in weights(tmp_path).values())


def test_fp16_on_the_cpu_is_refused_before_anything_is_written(tmp_path):
    from omni.errors import UserError

    with pytest.raises(UserError, match="train.precision=fp16 needs a CUDA device.*bf16 or fp32"):
        train(tmp_path / "run", precision="fp16")
    assert not (tmp_path / "run").exists()


def test_fp16_grad_scaler_bookkeeping_without_cpu_fp16_kernels(tmp_path, monkeypatch):
    """The GradScaler path (scale, unscale before clipping, skip a non-finite step, scaler state in checkpoints and
    restored on resume) with autocast off: it does not depend on fp16 kernels, which the CPU refuses (slow)."""
    from omni.training import run as run_module

    monkeypatch.setitem(run_module.AMP_DTYPES, "fp16", None)
    straight = train(tmp_path / "a", max_steps=8, precision="fp16", poison_at={3})
    assert straight.counters["nonfinite_steps"] == 1  # the scaler saw the inf and skipped that update
    scale = straight.scalers["main"].get_scale()
    assert 0 < scale < 2.0**16  # backed off from the initial 65536 at the skipped step
    assert torch.load(tmp_path / "a" / "toy_step_8.pt", weights_only=True)["scalers"]["main"]["scale"] == scale
    with pytest.raises(Crash):
        train(tmp_path / "b", max_steps=8, precision="fp16", poison_at={3}, crash_at=4)
    resumed = train(tmp_path / "b", max_steps=8, precision="fp16", poison_at={3})
    assert resumed.scalers["main"].get_scale() == scale
    assert_same(weights(tmp_path / "a"), weights(tmp_path / "b"))


class SigtermAfter(list):
    """Records batches like a list and sends this process SIGTERM when the n-th batch arrives."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def append(self, item):
        super().append(item)
        if len(self) == self.n:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_finishes_the_step_checkpoints_and_stops_the_loop(tmp_path):
    """The loop ends normally (no SystemExit from the library: the stage script ends with status 0, see
    test_train_text.py and test_loop_faults.py); finish() refuses to run on a stopped run."""
    stopped = train(tmp_path, seen=SigtermAfter(5))
    assert stopped.stopped and stopped.step == 5
    assert (tmp_path / "toy_step_5.pt").exists()
    assert not (tmp_path / "toy.pt").exists() and not (tmp_path / "summary.json").exists()
    with pytest.raises(RuntimeError, match="run.stopped"):
        stopped.finish(lambda: {"val_mse": 0.0}, final_weights={})
    assert "SIGTERM received" in (tmp_path / "training.log").read_text()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert train(tmp_path).step == 12


def test_plot_metrics_draws_the_run(tmp_path):

    from PIL import Image

    from tests.conftest import load_script

    train(tmp_path, max_steps=6)
    plot = load_script("plot_metrics")
    plot.main([str(tmp_path / "metrics.jsonl"), "--out", str(tmp_path / "curves.png")])
    image = Image.open(tmp_path / "curves.png")
    assert image.size[0] > 0 and len(set(image.get_flattened_data())) > 2  # something besides white and black was drawn


def test_second_process_on_the_same_run_dir_is_refused(tmp_path):
    import subprocess
    import sys
    import textwrap

    from tests.conftest import REPO

    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from omni.training.run_dir import lock
        from pathlib import Path
        held = lock(Path({str(tmp_path)!r}))
        print("locked", flush=True)
        time.sleep(600)  # killed by the test; long, so that no machine is slow enough to outlive it
    """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    try:
        with pytest.raises(UserError, match=f"in use by another running process \\(pid {holder.pid}\\)"):
            train(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert train(tmp_path, max_steps=2).step == 2  # the lock died with its process


def test_schedule_continues_with_new_groups_after_unfreezing(tmp_path):
    with pytest.raises(Crash):
        train(tmp_path, freeze=("body",), crash_at=4)  # 2 param groups (head: decay + no decay)
    run = train(tmp_path, freeze=(), max_steps=6)  # body unfrozen: same groups, more params
    assert run.step == 6
    lrs = [s.get_last_lr() for s in run.schedulers.values()][0]
    assert len(lrs) == len(run.optimizers["main"].param_groups)


def test_bad_samples_are_named_counted_and_limited(tmp_path, monkeypatch):
    monkeypatch.setattr(Regression, "bad", frozenset({3, 17}))
    run = train(tmp_path / "a", max_steps=7, max_bad_fraction=0.2)
    log = (tmp_path / "a" / "training.log").read_text()
    named = [line for line in log.splitlines() if "skipped bad sample: sample" in line]
    assert run.counters["bad_samples"] == len(named) >= 1  # the run stopped mid-epoch and still reported
    assert "evaluation skipped 1 bad samples (not scored):\n  sample3.wav: unreadable" in log  # val set has #3
    monkeypatch.setattr(Regression, "bad", frozenset(range(0, 40, 3)))  # a third of the data
    with pytest.raises(UserError, match="max_bad_fraction"):
        train(tmp_path / "b", max_steps=20)
