import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from omni.training import checkpoint as ckpt


def test_atomic_save_crash_midway_keeps_previous(tmp_path, monkeypatch):
    target = tmp_path / "run_step_1.pt"
    ckpt.atomic_save({"model": {"w": torch.ones(3)}, "step": 1}, target)

    def crash(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_save({"model": {"w": torch.zeros(3)}, "step": 2}, target)
    monkeypatch.undo()
    assert torch.equal(ckpt.load(target)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["run_step_1.pt"]  # no temp file left behind


def test_sigkill_during_save_leaves_previous_loadable(tmp_path):
    """A process killed while writing a big checkpoint never leaves a half-written file under the real name."""
    target = tmp_path / "run_step_5.pt"
    ckpt.atomic_save({"model": {"w": torch.full((4,), 5.0)}, "step": 5}, target)
    code = textwrap.dedent(f"""
        import torch, sys
        from omni.training.checkpoint import atomic_save
        print("ready", flush=True)
        while True:
            atomic_save({{"model": {{"w": torch.randn(4_000_000)}}, "step": 6}}, {str(target)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=os.getcwd())
    proc.stdout.readline()
    import time
    time.sleep(0.7)
    proc.kill()
    proc.wait()
    state = ckpt.load(target)  # either the old or a complete new one, never a torn file
    assert state["step"] in (5, 6) and state["model"]["w"].numel() in (4, 4_000_000)


def test_a_write_the_kernel_refuses_inside_torch_save_is_an_os_error(tmp_path):
    """A file size limit (ulimit -f) makes the kernel refuse writes (EFBIG) as a full disk does (ENOSPC): torch's zip
    writer turns that into a RuntimeError; atomic_save raises the OSError behind it, and the old file stays."""
    target = tmp_path / "run_step_1.pt"
    ckpt.atomic_save({"model": {"w": torch.ones(3)}, "step": 1}, target)
    code = textwrap.dedent(f"""
        import resource, signal, torch
        from omni.training import checkpoint as ckpt
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        try:
            ckpt.atomic_save({{"model": {{"w": torch.zeros(100_000)}}, "step": 2}}, {str(target)!r})
        except OSError as e:
            print(ckpt.write_error({str(target)!r}, e))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd(), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == (f"could not write {target}: the file exceeds the file size limit of the file "
                                     "system or of this process (ulimit -f)")
    assert torch.equal(ckpt.load(target)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["run_step_1.pt"]


def test_newest_valid_falls_back_past_corrupt_files(tmp_path):
    for step in (2, 4):
        ckpt.atomic_save({"model": {}, "step": step}, tmp_path / f"run_step_{step}.pt")
    (tmp_path / "run_step_6.pt").write_bytes(b"\x00garbage")  # garbage
    good = (tmp_path / "run_step_4.pt").read_bytes()
    (tmp_path / "run_step_8.pt").write_bytes(good[: len(good) // 2])  # truncated
    messages = []
    state, path = ckpt.load_newest_valid(tmp_path, "run", log=messages.append)
    assert state["step"] == 4 and path.name == "run_step_4.pt"
    assert len(messages) == 2 and "run_step_8.pt" in messages[0] and "run_step_6.pt" in messages[1]
    assert ckpt.load_newest_valid(tmp_path / "none", "run") is None


def test_prune_keeps_last_k(tmp_path):
    for step in range(1, 6):
        ckpt.atomic_save({"step": step}, tmp_path / f"run_step_{step}.pt")
    ckpt.atomic_save({"step": 0}, tmp_path / "run_best.pt")
    ckpt.prune(tmp_path, "run", 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_best.pt", "run_step_4.pt", "run_step_5.pt"]


def test_rng_roundtrip_through_weights_only_load(tmp_path):
    state = ckpt.capture_rng()
    ckpt.atomic_save({"rng": state}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2))
    ckpt.restore_rng(ckpt.load(tmp_path / "r.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert expected[:2] == got[:2] and torch.equal(expected[2], got[2])


def test_optimizer_state_by_name_survives_a_changed_trainable_set():
    a, b, c = (torch.nn.Parameter(torch.randn(3)) for _ in range(3))
    names = {id(a): "a", id(b): "b", id(c): "c"}
    opt = torch.optim.AdamW([a, b], lr=0.1)
    (a.sum() + b.sum()).backward()
    opt.step()
    saved = ckpt.optimizer_state_by_name(opt, names)
    assert set(saved["state"]) == {"a", "b"}
    opt2 = torch.optim.AdamW([b, c], lr=0.1)  # a frozen, c unfrozen
    fresh = ckpt.load_optimizer_state_by_name(opt2, saved, names)
    assert fresh == ["c"]
    assert torch.equal(opt2.state[b]["exp_avg"], opt.state[b]["exp_avg"])
    assert c not in opt2.state
