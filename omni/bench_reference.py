"""A GPT-2-shaped reference language model and training step, the yardstick of `scripts/bench.py --compare`.

It is the architecture and loop of Karpathy's nanoGPT `model.py` / `train.py`, written here from the GPT-2 paper's
description (not copied): learned absolute positions, pre-norm LayerNorm with bias, one fused qkv Linear, causal
`F.scaled_dot_product_attention`, a 4x GELU MLP, a final LayerNorm and an lm_head tied to the token embedding;
AdamW with decay on >= 2-D tensors only, `fused=True` when the parameters live on CUDA (else torch's default
foreach path), gradient clipping at 1.0 and `zero_grad(set_to_none=True)`; batches are random windows of a token
memmap stacked per step (nanoGPT's `get_batch`).

Only the comparison needs it, so it stays minimal: no generation, no dropout module (the comparison runs at
dropout 0), no checkpoints.

References: Radford et al. 2019 (GPT-2); Karpathy, nanoGPT (github.com/karpathy/nanoGPT), for the loop's choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ReferenceConfig:
    vocab_size: int = 4000
    seq_len: int = 256  # context (learned positions up to here)
    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 256
    bias: bool = True  # nanoGPT's default: biases in Linears and LayerNorms


class _Block(nn.Module):
    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.ln_1 = nn.LayerNorm(d, bias=cfg.bias)
        self.qkv = nn.Linear(d, 3 * d, bias=cfg.bias)
        self.proj = nn.Linear(d, d, bias=cfg.bias)
        self.ln_2 = nn.LayerNorm(d, bias=cfg.bias)
        self.fc = nn.Linear(d, 4 * d, bias=cfg.bias)
        self.fc_out = nn.Linear(4 * d, d, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(B, T, D))
        return x + self.fc_out(F.gelu(self.fc(self.ln_2(x))))


class ReferenceGPT(nn.Module):
    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT-2
        for name, p in self.named_parameters():  # GPT-2 init: N(0, 0.02), residual projections / sqrt(2 L)
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layers) if name.endswith(("proj.weight", "fc_out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """idx, targets (B, T) -> (logits (B, T, V), mean cross-entropy)."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def reference_optimizer(model: nn.Module, *, lr: float = 6e-4, weight_decay: float = 0.1,
                        betas=(0.9, 0.95)) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    on_cuda = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas,
                             fused=True if on_cuda else None)


class ReferenceTrainer:
    """nanoGPT's inner loop on a token memmap: random windows, forward, backward, clip 1.0, step, zero grads."""

    def __init__(self, model: nn.Module, tokens: np.ndarray, *, batch_size: int, seq_len: int, seed: int = 0,
                 device: torch.device | str = "cpu", compile: bool = False, grad_clip: float = 1.0):
        self.raw_model = model.to(device)
        self.model = torch.compile(model) if compile else model
        self.optimizer = reference_optimizer(model)
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.device, self.grad_clip = torch.device(device), grad_clip
        self.rng = np.random.default_rng(seed)
        model.train()

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.rng.integers(0, len(self.tokens) - self.seq_len - 1, self.batch_size)
        x = torch.stack([torch.from_numpy(self.tokens[i:i + self.seq_len].astype(np.int64)) for i in starts])
        y = torch.stack([torch.from_numpy(self.tokens[i + 1:i + 1 + self.seq_len].astype(np.int64)) for i in starts])
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x, y

    def step(self) -> torch.Tensor:
        x, y = self.get_batch()
        _, loss = self.model(x, y)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()
