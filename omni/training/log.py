"""Run logging: a human-readable `training.log`, machine-readable `metrics.jsonl`, a tqdm bar, optional TensorBoard.

Only rank 0 logs. On resume, metrics.jsonl entries from steps after the resumed checkpoint (written before the
interruption, and about to be recomputed) are dropped so every step appears once.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm


def fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class MetricWindow:
    """Per-step training metrics summed on the device since the last log line: no host sync until `average`."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, values: dict) -> None:
        for k, v in values.items():
            v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))
            self.sums[k] = self.sums.get(k, 0) + v

    def state_dict(self) -> dict:
        """The open window, for checkpoints: a resume between two log lines then logs the same averages as an
        uninterrupted run (float32 sums round-trip exactly through Python floats)."""
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.sums = {k: torch.tensor(v, dtype=torch.float32) for k, v in state["sums"].items()}
        self.steps = state["steps"]

    def average(self) -> dict[str, float]:
        """The mean over the `steps` counted since the last call (one host sync per metric), then start again."""
        values = {k: (v / self.steps).item() for k, v in self.sums.items()}
        self.sums, self.steps = {}, 0
        return values


class RunLogger:
    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool = False):
        self.enabled = enabled
        self.log_path = run_dir / "training.log"
        self.metrics_path = run_dir / "metrics.jsonl"
        self.bar = None
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("train.tensorboard=true needs the tensorboard package (pip install tensorboard)") \
                    from e
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def metrics(self, step: int, values: dict, kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, "time": round(time.time(), 3), **values}
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def drop_metrics_after(self, step: int) -> None:
        if not self.enabled or not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        self.metrics_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def start_bar(self, total: int, initial: int, desc: str) -> None:
        if self.enabled:
            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr,
                            disable=None)  # None: no bar when stderr is not a terminal (CI logs stay readable)

    def advance_bar(self, postfix: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tb is not None:
            self.tb.close()
