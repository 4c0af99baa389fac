"""A polite stop: SIGTERM (Slurm, `kill`) or Ctrl-C during training finishes the current optimizer step, checkpoints
and ends the loop (`run.batches()` stops yielding, `run.stopped` is set); the script then ends with status 0 and
rerunning the same command resumes. A second Ctrl-C stops at once (KeyboardInterrupt)."""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """`with StopSignals(log) as stop:` ... `stop.requested` turns True at the first SIGTERM/SIGINT; the previous
    handlers are back after the block."""

    def __init__(self, log):
        self.log = log
        self.requested = False
        self._previous: dict = {}

    def _request(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
        self.log(f"{signal.Signals(signum).name} received: finishing this step, then checkpointing")

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._request) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
