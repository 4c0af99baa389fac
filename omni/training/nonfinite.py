"""The non-finite guard: a step whose gradients are NaN/Inf is not applied, one whose update made the weights
NaN/Inf is undone, and too many in a row stop the run with a UserError (a config problem, not bad luck).

Undoing reloads the last good state instead of keeping a copy of the weights and optimizer state at every step,
which would double the optimizer's memory and time for a rare case: the newest step checkpoint the run wrote or
resumed from (every saved one is finite, see Run.save_checkpoint), else a host copy of the weights it started with.
"""

from __future__ import annotations

from pathlib import Path

import torch

from omni.errors import UserError
from omni.training import checkpoint as ckpt


class NonFiniteGuard:
    def __init__(self, max_in_a_row: int, log):
        self.max_in_a_row, self.log = max_in_a_row, log
        self.in_a_row = 0
        self.good_checkpoint: Path | None = None  # where a rewind goes back to, once there is one
        self.start_weights: dict | None = None  # ... else these (a host copy), freed at the first checkpoint

    def started(self, weights: dict) -> None:
        """The run starts from `weights` (fresh or init_from) rather than from a checkpoint."""
        self.start_weights = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}

    def checkpointed(self, path: Path) -> None:
        """A step checkpoint of finite weights now exists at `path` (written or resumed from)."""
        self.good_checkpoint, self.start_weights = path, None

    def finite_step(self) -> None:
        self.in_a_row = 0

    def nonfinite_step(self, what: str, *, step: int, counters: dict) -> None:
        """Count a step whose update was not applied (or undone); too many in a row is a config problem: stop."""
        counters["nonfinite_steps"] += 1
        self.in_a_row += 1
        self.log(f"step {step}: {what} ({self.in_a_row} in a row)")
        if self.in_a_row >= self.max_in_a_row:
            kept = (f"the last good checkpoint {self.good_checkpoint.name} is intact" if self.good_checkpoint
                    else "no checkpoint was written")
            raise UserError(f"{self.in_a_row} consecutive non-finite steps (train.max_nonfinite_steps="
                            f"{self.max_in_a_row}): stopping at step {step}; {kept}. Lower "
                            f"train.lr or train.weight_decay, or use fp32/bf16")

    def rewind(self, model: torch.nn.Module, optimizers: dict, param_names: dict[int, str]) -> str:
        """Put the weights and all optimizer states back to the last good state (fresh optimizer state when that is
        the start of the run). The position in the data, the schedule and the RNG go on, so the steps since are
        lost, not replayed. Returns what it did, for the log."""
        if self.good_checkpoint is not None:
            state = ckpt.load(self.good_checkpoint)
            weights, optimizer_states, source = state[ckpt.MODEL], state[ckpt.OPTIMIZERS], self.good_checkpoint.name
        else:
            weights, optimizer_states, source = self.start_weights, {}, "the start of the run"
        model.load_state_dict(weights, strict=False)  # fits: this run wrote it, or the resume checked it
        for n, opt in optimizers.items():
            saved = optimizer_states.get(n, {"state": {}})
            groups = ckpt.optimizer_state_by_name(opt, param_names)["param_groups"]  # keep the current lr
            ckpt.load_optimizer_state_by_name(opt, {"state": saved["state"], "param_groups": groups}, param_names)
        return f"weights and optimizer state restored from {source}"


def step_left_finite_weights(optimizer_step, params) -> bool:
    """Run `optimizer_step()`; False when it left NaN/Inf in `params`, or overflowed: AdamW raises "value cannot be
    converted to type float without overflow" for a step size beyond float range (an absurd but finite lr), after
    it may have updated some tensors. Either way the caller undoes the step."""
    try:
        optimizer_step()
    except RuntimeError as e:
        if "overflow" not in str(e):
            raise
        return False
    return ckpt.all_finite(params)
