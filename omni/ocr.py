"""OCR: an image of one text line -> per-frame character log-probabilities, trained with CTC.

Design choices
- CRNN-style (Shi et al. 2016) with attention instead of the LSTM: three 3x3 conv layers halve the height each
  time and the width in the first two (width stride 4, so a frame covers 4 pixels, about a third of a character at
  height 32); the remaining height rows are flattened with the channels and projected to D (equivalent to a conv
  whose kernel spans the whole remaining height), giving one token per frame.
- Variable widths: every conv layer zeroes the columns beyond its valid width, so the valid frames do not depend on
  how much right padding a batch adds (padding invariance, tested); the blocks get a key-padding mask from
  `output_lengths`. No batch / group norm in the conv stack for the same reason (their statistics would see the
  padding); the RMSNorm after the projection is per frame.
- Blocks are the shared `omni.layers.Transformer` trunk, non-causal, with rotary positions: the order of
  characters is local, so relative positions suit it, and the line length varies. Its init
  (`Transformer.init_weights`) covers the blocks only; the conv frontend, its projection and the CTC head keep
  PyTorch's defaults (as the OCR models trained so far were made).
- `output_lengths(widths)` is exact: each stride-2 conv (kernel 3, padding 1) maps w -> ceil(w / 2).
- The CTC head is linear over `vocab_size` = len(CharVocab) ids with blank 0; the loss is `omni.ctc.ctc_loss`
  (float32, mean over the batch of per-line losses divided by label length, `zero_infinity` so an unalignable
  line, which the data source already rejects, cannot turn the loss into inf).

References: Shi et al. 2016 (CRNN); Graves et al. 2006 (CTC).

Shape legend: B batch, C channels, H image height, W image width, T frames = ceil(W / 4), D model width, V ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.ctc import ctc_loss
from omni.layers import RMSNorm, Transformer, check_rotary_heads, lengths_mask

_STRIDES = ((2, 2), (2, 2), (2, 1))  # (height, width) stride of each conv layer


@dataclass
class OcrConfig:
    vocab_size: int = 0  # len(CharVocab) incl. blank 0; 0 = not set yet (the stage script fills it)
    height: int = 32  # input line height H in pixels
    conv_channels: int = 64  # channels of each conv layer
    d_model: int = 128  # frame width D
    n_layers: int = 2  # non-causal transformer blocks
    n_heads: int = 2  # attention heads
    n_kv_heads: int = 2  # key/value heads (GQA); must divide n_heads
    d_ff: int = 512  # SwiGLU hidden width
    max_frames: int = 1024  # longest line in frames (ceil(W / 4)); sizes the rotary table
    rope_theta: float = 10_000.0  # rotary base
    dropout: float = 0.0  # attention and residual dropout
    norm_eps: float = 1e-6  # RMSNorm epsilon

    def __post_init__(self):
        for name in ("height", "conv_channels", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"OcrConfig.{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.height < 8:
            raise ValueError(f"height={self.height} is too small: the conv stack halves it three times")
        check_rotary_heads(self.d_model, self.n_heads, self.n_kv_heads)


class ConvFrontend(nn.Module):
    """(B, 1, H, W) line image -> (B, T, D) frames, padding columns kept at zero after every layer."""

    def __init__(self, *, height: int, channels: int, d_model: int, norm_eps: float):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(1 if i == 0 else channels, channels, kernel_size=3, stride=s, padding=1)
            for i, s in enumerate(_STRIDES)
        )
        for sh, _ in _STRIDES:
            height = math.ceil(height / sh)
        self.proj = nn.Linear(channels * height, d_model)
        self.norm = RMSNorm(d_model, norm_eps)

    def forward(self, images: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        """images (B, 1, H, W) zero-padded right of `widths` (B,) -> (B, T, D)."""
        x = images * lengths_mask(widths, images.shape[-1])[:, None, None, :]
        for conv, (_, sw) in zip(self.convs, _STRIDES):
            widths = _ceil_div(widths, sw)
            x = F.gelu(conv(x))
            x = x * lengths_mask(widths, x.shape[-1])[:, None, None, :]
        x = x.flatten(1, 2).transpose(1, 2)  # (B, C * H', T)
        return self.norm(self.proj(x))


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return torch.div(a + b - 1, b, rounding_mode="floor")


class OcrModel(Transformer):
    """Conv frontend -> non-causal rotary blocks -> RMSNorm -> linear CTC head."""

    width_stride = math.prod(sw for _, sw in _STRIDES)  # pixels per output frame

    def __init__(self, cfg: OcrConfig):
        super().__init__()
        if cfg.vocab_size < 2:
            raise ValueError(f"OcrConfig.vocab_size must be len(CharVocab) >= 2, got vocab_size={cfg.vocab_size}")
        self.cfg = cfg
        self.frontend = ConvFrontend(height=cfg.height, channels=cfg.conv_channels, d_model=cfg.d_model,
                                     norm_eps=cfg.norm_eps)
        self.build_trunk(n_layers=cfg.n_layers, d_model=cfg.d_model, norm_eps=cfg.norm_eps, rotary_len=cfg.max_frames,
                         rope_theta=cfg.rope_theta, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, d_ff=cfg.d_ff,
                         causal=False, dropout=cfg.dropout)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.init_weights(self.layers)  # the blocks only: see the module docstring

    def output_lengths(self, widths: torch.Tensor) -> torch.Tensor:
        """widths (B,) in pixels -> valid frames (B,): ceil(ceil(W / 2) / 2) = ceil(W / 4)."""
        for _, sw in _STRIDES:
            widths = _ceil_div(widths, sw)
        return widths

    def forward(self, images: torch.Tensor, widths: torch.Tensor, labels: torch.Tensor | None = None,
                label_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """images (B, 1, H, W) ink = 1, zero-padded; widths (B,) valid pixels; labels (B, L) char ids (0-padded),
        label_lengths (B,) -> (log_probs (B, T, V) float32, CTC loss or None without labels)."""
        if images.dim() != 4 or images.shape[1] != 1 or images.shape[2] != self.cfg.height:
            raise ValueError(f"OcrModel expects images (B, 1, {self.cfg.height}, W), got {tuple(images.shape)}")
        x = self.frontend(images, widths)
        frames = self.output_lengths(widths)
        if x.shape[1] > self.cfg.max_frames:
            raise ValueError(f"{x.shape[1]} frames (width {images.shape[-1]}) exceed max_frames={self.cfg.max_frames}")
        x = self.run_blocks(x, key_padding_mask=lengths_mask(frames, x.shape[1]))[0]
        log_probs = self.head(x).float().log_softmax(dim=-1)
        if labels is None:
            return log_probs, None
        if label_lengths is None:
            raise ValueError("labels given without label_lengths")
        return log_probs, ctc_loss(log_probs, frames, labels, label_lengths)
