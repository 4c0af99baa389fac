"""Learning-rate schedule: linear warmup, then cosine decay to min_lr at max_steps, flat afterwards."""

from __future__ import annotations

import math

import torch

from omni.errors import InvalidInput


def warmup_cosine_factor(step: int, *, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based), clamped at max_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, *, warmup_steps: int, max_steps: int, lr: float, min_lr: float):
    """LambdaLR over every param group; per-group peak LRs keep their ratio to `lr` throughout."""
    if min_lr > lr:
        raise ValueError(f"min_lr ({min_lr}) must not exceed lr ({lr})")
    ratio = min_lr / lr if lr > 0 else 0.0
    def factor(step: int) -> float:
        return warmup_cosine_factor(step, warmup_steps=warmup_steps, max_steps=max_steps, min_ratio=ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def accumulation_steps(train, world_size: int) -> int:
    """Micro-batches per optimizer step: train.grad_accum_steps, or what train.effective_batch needs."""
    if train.effective_batch is None:
        return train.grad_accum_steps
    per_step = train.batch_size * world_size
    if train.effective_batch % per_step:
        raise InvalidInput(f"train.effective_batch={train.effective_batch} is not a multiple of batch_size x "
                           f"world_size = {train.batch_size} x {world_size}")
    return train.effective_batch // per_step


def adamw(params_or_model, *, lr: float, weight_decay: float, betas=(0.9, 0.95), fused: bool | None = None):
    """AdamW with decay on matrices only: norms, biases and 1-D parameters are not decayed.

    Accepts a module (all trainable parameters, one LR) or a list of param-group dicts (per-group LRs; a group's
    own "weight_decay" overrides the default for its matrices).
    """
    if isinstance(params_or_model, torch.nn.Module):
        groups = [{"params": [p for p in params_or_model.parameters() if p.requires_grad]}]
    else:
        groups = list(params_or_model)
    split = []
    for g in groups:
        params = [p for p in g["params"] if p.requires_grad]
        extra = {k: v for k, v in g.items() if k not in ("params", "weight_decay")}
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        split.append({**extra, "params": decay, "weight_decay": g.get("weight_decay", weight_decay)})
        split.append({**extra, "params": no_decay, "weight_decay": 0.0})
    if not any(g["params"] for g in split):
        raise ValueError("no trainable parameters: everything is frozen")
    if fused is None:
        fused = all(p.is_cuda for g in split for p in g["params"])
    return torch.optim.AdamW(split, lr=lr, betas=betas, fused=fused or None)


def restore_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, saved: dict) -> None:
    """Continue a schedule at the saved step, with the *current* peak LRs and param groups.

    Only the position is restored: the saved per-group base LRs would be wrong after a change of learning rate or
    of the parameter groups (e.g. a component unfrozen on resume, which adds groups).
    """
    scheduler.last_epoch = saved["last_epoch"]
    scheduler._step_count = saved.get("_step_count", saved["last_epoch"] + 1)
    lrs = [base * f(scheduler.last_epoch) for base, f in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs
