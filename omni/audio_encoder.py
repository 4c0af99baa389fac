"""AuT audio encoder (log-mel -> 12.5 Hz features) and its CTC character head for Stage B.

Design choices
- Input: log-mel frames (B, T, n_mels) at 100 Hz from `omni.audio.LogMel`. Each utterance is first normalised to
  zero mean and unit variance over its valid frames (one scalar pair per utterance, not per mel bin: short clips
  give noisy per-bin statistics, and a scalar keeps the spectral shape). This makes the model indifferent to
  recording level and to the log floor, without dataset statistics to compute and store.
- Subsampling x8 with three Conv2d layers (kernel 3, stride 2, padding 1, GELU) over (B, 1, T, F), as in the
  Conformer/Whisper family of frontends; the flattened (channels x remaining mel bins) goes through a linear layer
  to D. Kernel, stride and padding come from `omni.audio`, whose `encoder_frames` is therefore exact.
- Padding never leaks into real frames: before every conv the frames past each utterance's length are zeroed, so a
  padded batch sees exactly the zeros an unpadded clip sees from the conv's own zero padding; the transformer
  then masks padded keys. Real outputs are identical (up to float rounding) however much a row is padded.
- Transformer: the shared `omni.layers.Transformer` trunk (pre-norm blocks with RMSNorm, QK-norm, SwiGLU, no
  biases) with causal=False, rotary positions over encoder frames, final RMSNorm. Qwen3-Omni's AuT (Qwen3-Omni
  technical report, 2025) uses the same 12.5 Hz rate, so Stage E can hand one token per 80 ms to the Thinker.
- Init: PyTorch's defaults. Unlike the other transformers it does not call `Transformer.init_weights`; the trained
  Stage B encoders (and the demo) were made this way, and adopting the shared init would change them.
- CTC head: 12.5 frames/s is fewer than the ~12-16 characters/s of ordinary English speech, and CTC needs at
  least one frame per character (plus one per repeated pair). The head therefore predicts `ctc_upsample`
  character slots per encoder frame (one linear layer to upsample x V, reshaped to upsample x T frames), which
  keeps the encoder at 12.5 Hz for the Thinker while CTC runs at 25 Hz (upsample 2) or 50 Hz (4).
- Loss: `omni.ctc.ctc_loss` (shared with OCR): each utterance's negative log-likelihood divided by its label
  length, averaged over the batch, so the loss reads as nats per character and does not grow with utterance
  length; an impossible alignment contributes zero instead of inf.

References: Graves et al. 2006 (CTC); Gulati et al. 2020 (Conformer conv subsampling); Radford et al. 2022
(Whisper); Su et al. 2021 (RoFormer).

Shape legend: B batch, T mel frames (100 Hz), T' encoder frames (12.5 Hz), F mel bins, C channels, D width,
V vocabulary (characters + blank).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.audio import (
    SUBSAMPLE_KERNEL,
    SUBSAMPLE_LAYERS,
    SUBSAMPLE_PADDING,
    SUBSAMPLE_STRIDE,
    conv_output_frames,
    encoder_frames,
)
from omni.ctc import ctc_loss
from omni.layers import Transformer, check_rotary_heads, lengths_mask


@dataclass
class AudioEncoderConfig:
    n_mels: int = 128  # log-mel bins of the input (omni.audio.N_MELS)
    d_model: int = 192  # transformer width D
    n_layers: int = 4  # transformer blocks
    n_heads: int = 3  # attention heads; head_dim = d_model / n_heads must be even (rotary)
    n_kv_heads: int = 3  # key/value heads (GQA when < n_heads)
    d_ff: int = 768  # SwiGLU hidden width
    conv_channels: int = 64  # channels of each of the three stride-2 Conv2d subsampling layers
    dropout: float = 0.1  # dropout after the conv projection, in attention and on residual branches
    max_frames: int = 1500  # longest input in encoder frames (rotary table size): 120 s at 12.5 Hz
    rope_theta: float = 10_000.0  # rotary base; sequences are short, so the classic value suffices
    qk_norm: bool = True  # per-head RMSNorm of queries and keys (stabilises attention logits)
    norm_eps: float = 1e-6  # RMSNorm epsilon
    normalize_input: bool = True  # per-utterance mean/variance normalisation of the log-mel over valid frames

    def __post_init__(self):
        sizes = {
            k: getattr(self, k)
            for k in ("n_mels", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "conv_channels", "max_frames")
        }
        bad = {k: v for k, v in sizes.items() if v <= 0}
        if bad:
            raise ValueError(f"AudioEncoderConfig sizes must be positive, got {bad}")
        check_rotary_heads(self.d_model, self.n_heads, self.n_kv_heads, self.dropout)


def normalize_utterances(mel: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit variance per utterance over its valid frames; mel (B, T, F) -> (B, T, F), padding -> 0."""
    valid = lengths_mask(lengths, mel.shape[1])[:, :, None].to(mel.dtype)
    count = (lengths.clamp(min=1) * mel.shape[2]).to(mel.dtype)[:, None, None]
    mean = (mel * valid).sum(dim=(1, 2), keepdim=True) / count
    var = (((mel - mean) * valid) ** 2).sum(dim=(1, 2), keepdim=True) / count
    return (mel - mean) * torch.rsqrt(var + eps) * valid


class ConvSubsampling(nn.Module):
    """Three stride-2 Conv2d + GELU over (time, mel), then a linear map of (C x remaining bins) to D."""

    def __init__(self, *, n_mels: int, channels: int, d_model: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(1 if i == 0 else channels, channels, SUBSAMPLE_KERNEL, SUBSAMPLE_STRIDE, SUBSAMPLE_PADDING)
            for i in range(SUBSAMPLE_LAYERS)
        )
        self.proj = nn.Linear(channels * encoder_frames(n_mels), d_model)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, T, F), lengths (B,) -> (x (B, T', D), lengths (B,) with T' = encoder_frames(T))."""
        x = mel.unsqueeze(1)  # (B, 1, T, F)
        for conv in self.convs:
            # Zero the padding so it matches the zeros the conv pads an unpadded clip with.
            x = x * lengths_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
            x = F.gelu(conv(x))
            lengths = conv_output_frames(lengths)
        x = x.transpose(1, 2).flatten(2)  # (B, T', C * F')
        return self.proj(x), lengths


class AudioEncoder(Transformer):
    """AuT encoder: log-mel (B, T, F) at 100 Hz -> features (B, T', D) at 12.5 Hz."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.subsample = ConvSubsampling(n_mels=cfg.n_mels, channels=cfg.conv_channels, d_model=cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.build_trunk(n_layers=cfg.n_layers, d_model=cfg.d_model, norm_eps=cfg.norm_eps, rotary_len=cfg.max_frames,
                         rope_theta=cfg.rope_theta, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, d_ff=cfg.d_ff,
                         causal=False, qk_norm=cfg.qk_norm, dropout=cfg.dropout)
        # No init_weights() here: see "Init" in the module docstring.

    @staticmethod
    def output_lengths(mel_lengths: torch.Tensor) -> torch.Tensor:
        """(B,) mel frames -> (B,) encoder frames; the same arithmetic as `omni.audio.encoder_frames`."""
        return encoder_frames(mel_lengths)

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, T, F) log-mel, mel_lengths (B,) valid frames (None: all T) -> (features (B, T', D),
        output_lengths (B,)), T' = encoder_frames(T). Features past a row's output length are meaningless."""
        B, T, n_mels = mel.shape
        if n_mels != self.cfg.n_mels:
            raise ValueError(f"mel has {n_mels} bins but the encoder expects n_mels={self.cfg.n_mels}")
        if mel_lengths is None:
            mel_lengths = torch.full((B,), T, dtype=torch.long, device=mel.device)
        mel_lengths = mel_lengths.to(mel.device)
        if self.cfg.normalize_input:
            mel = normalize_utterances(mel, mel_lengths)
        x, lengths = self.subsample(mel, mel_lengths)
        if x.shape[1] > self.cfg.max_frames:
            raise ValueError(
                f"input gives {x.shape[1]} encoder frames ({T} mel frames) but max_frames={self.cfg.max_frames}"
            )
        x = self.dropout(x)
        return self.run_blocks(x, key_padding_mask=lengths_mask(lengths, x.shape[1]))[0], lengths


class CTCHead(nn.Module):
    """Linear character classifier predicting `upsample` CTC frames per encoder frame."""

    def __init__(self, *, d_model: int, vocab_size: int, upsample: int = 1):
        super().__init__()
        if vocab_size < 2 or upsample < 1:
            raise ValueError(f"CTCHead needs vocab_size >= 2 and upsample >= 1, got {vocab_size=}, {upsample=}")
        self.vocab_size, self.upsample = vocab_size, upsample
        self.proj = nn.Linear(d_model, upsample * vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T', D) -> logits (B, T' * upsample, V); slot j of frame t becomes CTC frame t * upsample + j."""
        B, T, _ = x.shape
        return self.proj(x).view(B, T * self.upsample, self.vocab_size)


class AsrModel(nn.Module):
    """Audio encoder + CTC head: log-mel -> per-frame character log-probabilities (+ CTC loss)."""

    def __init__(self, encoder: AudioEncoder, *, vocab_size: int, ctc_upsample: int = 2):
        super().__init__()
        self.encoder = encoder
        self.ctc_upsample = ctc_upsample
        self.head = CTCHead(d_model=encoder.cfg.d_model, vocab_size=vocab_size, upsample=ctc_upsample)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """The encoder's (`Transformer.set_gradient_checkpointing`); the head has nothing to recompute."""
        self.encoder.set_gradient_checkpointing(enabled)

    def output_lengths(self, mel_lengths: torch.Tensor) -> torch.Tensor:
        """(B,) mel frames -> (B,) CTC frames = encoder frames x ctc_upsample (for decoding the log-probs)."""
        return encoder_frames(mel_lengths) * self.ctc_upsample

    def forward(
        self,
        mel: torch.Tensor,
        mel_lengths: torch.Tensor,
        labels: torch.Tensor | None = None,
        label_lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """mel (B, T, F), mel_lengths (B,), optional labels (B, L) and label_lengths (B,) ->
        (log_probs (B, T' * ctc_upsample, V) float32, loss scalar or None without labels)."""
        features, lengths = self.encoder(mel, mel_lengths)
        log_probs = self.head(features).float().log_softmax(dim=-1)
        loss = None
        if labels is not None:
            if label_lengths is None:
                raise ValueError("labels given without label_lengths")
            loss = ctc_loss(log_probs, lengths * self.ctc_upsample, labels, label_lengths.to(lengths.device))
        return log_probs, loss
