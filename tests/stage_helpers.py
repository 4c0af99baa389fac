"""Helpers shared by the stage-script tests: SIGKILL a training run and rerun it until done."""

import os
import random
import signal
import subprocess
import time

from tests.conftest import REPO

# Where the certain kills land (omni/faults.py): inside an optimizer step of the first launch, then inside
# the 2nd checkpoint write of the second. Every stage test runs >= 8 steps with a checkpoint every <= 3.
FAULTS = ("step@3", "checkpoint@2")


def run_ok(cmd) -> subprocess.CompletedProcess:
    """Run a stage command from the repo root; it must exit 0 (the end of its stderr is the failure message)."""
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def newest_step(save_dir) -> int:
    """Step of the newest `<name>_step_<N>.pt` in save_dir (-1 when there is none)."""
    steps = [int(p.stem.rsplit("_", 1)[1]) for p in save_dir.glob("*_step_*.pt")]
    return max(steps, default=-1)


def kill_and_rerun_until_done(cmd, save_dir, seed, faults=FAULTS, random_kills=2):
    """Crash `cmd` again and again, rerunning it until it completes; returns the number of kills.

    The first launches SIGKILL themselves at the `faults` points (OMNI_FAULT), so those kills happen on any machine,
    however fast: each is asserted. Then up to `random_kills` launches are SIGKILLed after a random delay once they
    have written a new checkpoint, landing anywhere (mid-step, mid-evaluation, mid-write) — or nowhere, when the run
    finishes first, which is fine: those only add coverage. The last launch runs to completion.
    """
    kills = 0
    for fault in faults:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMNI_FAULT": fault})
        if proc.returncode != -signal.SIGKILL:
            raise AssertionError(f"OMNI_FAULT={fault} did not kill the run (exit {proc.returncode}): the run is too "
                                 f"short to reach it\n{proc.stderr[-2000:]}")
        kills += 1
    rng = random.Random(seed)
    for _ in range(random_kills):
        before = newest_step(save_dir)
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while proc.poll() is None and newest_step(save_dir) == before:
            time.sleep(0.02)
        try:
            proc.wait(timeout=rng.uniform(0.0, 1.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            proc.stderr.close()
            kills += 1
            continue
        if proc.returncode != 0:
            raise AssertionError(proc.stderr.read().decode()[-2000:])
        proc.stderr.close()
        return kills
    last = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert last.returncode == 0, last.stderr[-2000:]
    return kills
