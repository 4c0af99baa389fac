"""ViT vision encoder: an image becomes a CLS token plus one token per patch.

Design choices
- Patch embedding is a Conv2d with kernel = stride = patch_size (the standard ViT "linear projection of flattened
  patches"), with a bias because nothing normalises its input.
- A learned CLS token and learned absolute position embeddings (one per patch + CLS), as in ViT/CLIP: the grid is
  fixed by image_size, so the image size is part of the model and a different size is an error, not an
  interpolation. No rotary embeddings inside the blocks (rope=None).
- The blocks are the shared `omni.layers.Transformer` trunk with causal=False (every patch sees every patch),
  QK-norm and SwiGLU; its final RMSNorm normalises both outputs. The CLS output is the image summary (contrastive /
  classification); the patch tokens are what Stage E projects into the Thinker.
- Init: the trunk's (`Transformer.init_weights`: normal(0, 0.02) for linear weights, output projections scaled by
  1/sqrt(2 n_layers)), then normal(0, 0.02) for CLS and positions (ViT/CLIP); the patch conv keeps its default.

References: Dosovitskiy et al. 2021 (ViT); Radford et al. 2021 (CLIP).

Shape legend: B batch, C channels, S image side, P patch side, N patches = (S/P)^2, D model width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from omni.layers import Transformer


@dataclass
class VisionConfig:
    image_size: int = 224  # input side S in pixels (square images); fixes the patch grid
    patch_size: int = 16  # patch side P; must divide image_size
    in_channels: int = 3  # RGB
    d_model: int = 128  # token width D
    n_layers: int = 4  # transformer blocks
    n_heads: int = 2  # attention heads
    n_kv_heads: int = 2  # key/value heads (GQA); must divide n_heads
    d_ff: int = 512  # SwiGLU hidden width
    dropout: float = 0.0  # attention and residual dropout
    norm_eps: float = 1e-6  # RMSNorm epsilon
    qk_norm: bool = True  # per-head RMSNorm on queries and keys

    def __post_init__(self):
        for name in ("image_size", "patch_size", "in_channels", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
            if getattr(self, name) < 1:
                raise ValueError(f"VisionConfig.{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}"
            )
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got dropout={self.dropout}")

    @property
    def n_patches(self) -> int:
        """N = (S / P)^2."""
        return (self.image_size // self.patch_size) ** 2


class PatchEmbedding(nn.Module):
    """Non-overlapping P x P patches -> D-wide tokens."""

    def __init__(self, *, in_channels: int, patch_size: int, d_model: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, d_model, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, S, S) -> tokens (B, N, D), patches in row-major order."""
        return self.proj(images).flatten(2).transpose(1, 2)


class VisionEncoder(Transformer):
    """ViT: patch embedding + CLS + learned positions -> non-causal blocks -> RMSNorm."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbedding(in_channels=cfg.in_channels, patch_size=cfg.patch_size, d_model=cfg.d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.n_patches + 1, cfg.d_model))
        self.dropout = nn.Dropout(cfg.dropout)
        # Learned positions, so no rotary table (rotary_len=None).
        self.build_trunk(n_layers=cfg.n_layers, d_model=cfg.d_model, norm_eps=cfg.norm_eps, n_heads=cfg.n_heads,
                         n_kv_heads=cfg.n_kv_heads, d_ff=cfg.d_ff, causal=False, qk_norm=cfg.qk_norm,
                         dropout=cfg.dropout)
        self.init_weights()
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, S, S), normalised as by `omni.data.images.image_to_tensor`
        -> (cls (B, D), patches (B, N, D)), both after the final RMSNorm."""
        c, s = self.cfg.in_channels, self.cfg.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f"VisionEncoder expects images of shape (B, {c}, {s}, {s}), got {tuple(images.shape)}")
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1) + self.pos_embed
        x = self.run_blocks(self.dropout(x))[0]
        return x[:, 0], x[:, 1:]
