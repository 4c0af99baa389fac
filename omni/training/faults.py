"""Fault hook for the crash tests (tests/test_faults.py, scripts/chaos.py); a no-op unless OMNI_FAULT is set.

    OMNI_FAULT=<point>@<n>   the process SIGKILLs itself the n-th time (default 1st) it reaches <point>:
        step        inside an optimizer step: parameters updated, the step not yet counted
        eval        inside an evaluation: metrics computed, not yet recorded (RNG forked, model in eval mode)
        checkpoint  inside a checkpoint write: the temporary file written, not yet renamed over the target

SIGKILL can't be caught, so this is the same crash as a kill -9 (or the OOM killer) landing at that moment.
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
    want, _, nth = spec.partition("@")
    if want != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
