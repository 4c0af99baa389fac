"""Helpers shared by the stage-script tests: SIGKILL a training run at random moments and rerun it until done."""

import random
import subprocess
import time

from tests.conftest import REPO


def newest_step(save_dir) -> int:
    """Step of the newest `<name>_step_<N>.pt` in save_dir (-1 when there is none)."""
    steps = [int(p.stem.rsplit("_", 1)[1]) for p in save_dir.glob("*_step_*.pt")]
    return max(steps, default=-1)


def kill_and_rerun_until_done(cmd, save_dir, seed, max_launches=8):
    """Start `cmd`; once it has written a new checkpoint, SIGKILL it after a random delay (landing mid-step,
    mid-evaluation or mid-checkpoint-write); rerun. Returns the number of kills; the last launch completes."""
    rng = random.Random(seed)
    kills = 0
    for _ in range(max_launches - 1):
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
        return kills
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    return kills
