"""Fault hook for the crash tests (tests/test_faults.py, scripts/chaos.py); a no-op unless OMNI_FAULT is set.
Standard library only, so the data code (the Talker's code cache) can reach a point without importing the training
machinery.

    OMNI_FAULT=<point>@<n>   the process SIGKILLs itself the n-th time (default 1st) it reaches <point>:
        step        inside an optimizer step: parameters updated, the step not yet counted
        eval        inside an evaluation: metrics computed, not yet recorded (RNG forked, model in eval mode)
        checkpoint  inside a checkpoint write: the temporary file written, not yet renamed over the target
        cache       inside omni.data.tts.build_code_cache: after each encoded and aligned batch, and between
                    writing the cache and recording its inputs (Stage D only, so not in POINTS, the points
                    scripts/chaos.py expects every stage to reach)
    OMNI_FAULT=<point>@<n>:term   sends SIGTERM instead (a polite stop: finish the step, checkpoint, exit 0), to the
        whole process group when the process leads one (started with setsid / start_new_session, so its DataLoader
        workers get it too, as with Ctrl-C or Slurm), else to the process alone.

SIGKILL can't be caught, so this is the same crash as a kill -9 (or the OOM killer) landing at that moment. Tests
trigger both by progress rather than by time, so every kill lands on any machine, however fast.
"""

from __future__ import annotations

import os
import signal

POINTS = ("step", "eval", "checkpoint")
_reached: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get("OMNI_FAULT")
    if not spec:
        return
    spec, _, how = spec.partition(":")
    want, _, nth = spec.partition("@")
    if want != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] != int(nth or 1):
        return
    if how == "term":
        pid = os.getpid()
        if os.getpgrp() == pid:
            os.killpg(pid, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    else:
        os.kill(os.getpid(), signal.SIGKILL)
