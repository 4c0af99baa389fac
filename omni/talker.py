"""Talker: text units -> K-codebook speech codes, non-autoregressive and duration-guided (Stage D; speech out).

Design choices
- Input: the units of `omni.text_frontend.text_units` (<bos>, the characters, <eos>), each the sum of a character
  embedding and the embedding of the Thinker-tokenizer token that covers it, so the Talker reads the Thinker's
  text representation (as Qwen3-Omni's Talker reads the Thinker's) and still sees every letter.
- Text encoder: a non-causal transformer over the units (the shared `omni.layers.Transformer` trunk, rotary
  positions, padded units masked as keys).
- Duration predictor (FastSpeech 2): two Conv1d(kernel 3) + ReLU + LayerNorm layers and a linear map to
  log(1 + frames) per unit; MSE against the forced-alignment durations (omni.alignment), weighted by
  duration_loss_weight. At synthesis, frames = round(exp(prediction) - 1), at least 0.
- Length regulator: each unit's encoder state is repeated for its duration (the aligned one in training, the
  predicted one at synthesis), plus a learned embedding of the frame's index inside its unit (capped at
  max_unit_frames - 1), so the frames of one long unit are told apart.
- Frame decoder: a second non-causal transformer over the frames. Codebook 0 is predicted from its output;
  codebook k from the output plus the embeddings of the codes of codebooks < k of the same frame (the true ones
  in training, the predicted ones at synthesis), as in residual VQ each codebook refines the ones before it.
- Why not autoregressive: the previous Talker (a decoder-only codec LM over [text ; frames], stopping on an END
  class) started sentences right and lost its place in the text later (TTS->ASR CER 45 % on held-out sentences);
  with explicit durations every unit is spoken exactly once, in order (FastSpeech's finding; RALL-E's for codec
  LMs). See the README, "Speech out".
- Loss: cross entropy over every valid (frame, codebook) plus the duration loss; padding carries none.

References: Ren et al. 2019/2021 (FastSpeech, FastSpeech 2); Łańcucki 2021 (FastPitch); Xin et al. 2024 (RALL-E);
Borsos et al. 2023 (SoundStorm: parallel codec decoding); Qwen2.5-Omni / Qwen3-Omni technical reports.

Shape legend: B batch, U text units, F speech frames (the codec's frame_rate_hz), K codebooks, V codebook_size,
D model width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.layers import Transformer, check_rotary_heads, lengths_mask, sample_next_token
from omni.text_frontend import N_CHAR_IDS


@dataclass
class TalkerConfig:
    text_vocab_size: int  # shared tokenizer vocabulary (Tokenizer.vocab_size)
    n_codebooks: int = 2  # K codebooks per frame (CodecConfig.n_codebooks)
    codebook_size: int = 1024  # V codes per codebook (CodecConfig.codebook_size)
    d_model: int = 192  # residual stream width D
    n_layers: int = 4  # text encoder blocks
    n_decoder_layers: int = 4  # frame decoder blocks
    n_heads: int = 3  # query heads; d_model / n_heads must be even (rotary)
    n_kv_heads: int = 3  # key/value heads (GQA when < n_heads)
    d_ff: int = 768  # SwiGLU hidden width
    max_text_len: int = 512  # longest text in units (characters + 2)
    max_frames: int = 500  # longest speech in code frames (40 s at 12.5 Hz, 20 s at 25 Hz)
    max_unit_frames: int = 32  # frame-in-unit embeddings; later frames of a longer unit share the last one
    duration_loss_weight: float = 1.0
    rope_theta: float = 10_000.0  # rotary base
    qk_norm: bool = True  # per-head RMSNorm on queries and keys
    norm_eps: float = 1e-6  # RMSNorm epsilon
    dropout: float = 0.0  # attention, residual and duration-predictor dropout

    def __post_init__(self):
        names = ("text_vocab_size", "n_codebooks", "codebook_size", "d_model", "n_layers", "n_decoder_layers",
                 "n_heads", "n_kv_heads", "d_ff", "max_text_len", "max_frames", "max_unit_frames")
        bad = {k: getattr(self, k) for k in names if getattr(self, k) < 1}
        if bad:
            raise ValueError(f"TalkerConfig sizes must be >= 1, got {bad}")
        check_rotary_heads(self.d_model, self.n_heads, self.n_kv_heads, self.dropout)
        if self.duration_loss_weight < 0:
            raise ValueError(f"need duration_loss_weight >= 0, got {self.duration_loss_weight}")


@dataclass
class TalkerOutput:
    logits: torch.Tensor  # (B, F, K, V)
    loss: torch.Tensor  # code CE + duration_loss_weight * duration MSE
    code_loss: torch.Tensor
    duration_loss: torch.Tensor
    log_durations: torch.Tensor  # (B, U) predicted log(1 + frames)


def code_accuracy(logits: torch.Tensor, codes: torch.Tensor, code_lengths: torch.Tensor):
    """(correct (K,), counted) codes as tensors, summed over the batch's valid frames; sum over steps, divide late."""
    valid = lengths_mask(code_lengths.to(codes.device), codes.shape[1])  # (B, F)
    correct = ((logits.argmax(-1) == codes) & valid[..., None]).sum(dim=(0, 1))
    return correct, valid.sum()


class _FrameDecoder(Transformer):
    """The frame decoder's trunk (a module of its own so its blocks sit under `decoder.` in the state dict)."""

    def __init__(self, cfg: TalkerConfig):
        super().__init__()
        self.build_trunk(n_layers=cfg.n_decoder_layers, d_model=cfg.d_model, norm_eps=cfg.norm_eps,
                         rotary_len=cfg.max_frames, rope_theta=cfg.rope_theta, n_heads=cfg.n_heads,
                         n_kv_heads=cfg.n_kv_heads, d_ff=cfg.d_ff, causal=False, qk_norm=cfg.qk_norm,
                         dropout=cfg.dropout)


class DurationPredictor(nn.Module):
    """Unit states (B, U, D) -> predicted log(1 + frames) (B, U); padded units are zeroed before each conv."""

    def __init__(self, d_model: int, dropout: float):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(d_model, d_model, 3, padding=1) for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(2))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask[..., None].to(h.dtype)
        for conv, norm in zip(self.convs, self.norms):
            h = conv((h * keep).transpose(1, 2)).transpose(1, 2)
            h = self.dropout(norm(F.relu(h)))
        return self.out(h).squeeze(-1).float()


def regulate_lengths(durations: torch.Tensor, n_frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """durations (B, U) -> (unit index of each frame (B, n_frames), index of the frame inside its unit, valid-frame
    mask (B, n_frames)): the length regulator's gather plan. Frames past a row's total are invalid."""
    ends = durations.cumsum(dim=1)  # (B, U)
    frame = torch.arange(n_frames, device=durations.device).expand(durations.shape[0], n_frames).contiguous()
    unit = torch.searchsorted(ends, frame, right=True).clamp(max=durations.shape[1] - 1)
    start = (ends - durations).gather(1, unit)
    return unit, frame - start, frame < ends[:, -1:]


class Talker(Transformer):
    """Text units -> (durations, K-codebook codes); the text encoder is this module's trunk."""

    def __init__(self, cfg: TalkerConfig):
        super().__init__()
        self.cfg = cfg
        V, K, D = cfg.codebook_size, cfg.n_codebooks, cfg.d_model
        self.char_embed = nn.Embedding(N_CHAR_IDS, D)
        self.text_embed = nn.Embedding(cfg.text_vocab_size, D)
        self.build_trunk(n_layers=cfg.n_layers, d_model=D, norm_eps=cfg.norm_eps, rotary_len=cfg.max_text_len,
                         rope_theta=cfg.rope_theta, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, d_ff=cfg.d_ff,
                         causal=False, qk_norm=cfg.qk_norm, dropout=cfg.dropout)
        self.duration = DurationPredictor(D, cfg.dropout)
        self.unit_frame_embed = nn.Embedding(cfg.max_unit_frames, D)
        self.decoder = _FrameDecoder(cfg)
        # Codebook k's head reads the decoder output plus the embeddings of the frame's codes k' < k.
        self.code_embed = nn.Embedding(max(1, K - 1) * V, D)
        self.register_buffer("code_offsets", torch.arange(max(1, K - 1)) * V, persistent=False)
        self.heads = nn.Linear(D, K * V, bias=False)
        self.init_weights()

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """The text encoder's and the frame decoder's (the longer sequence, where the memory goes)."""
        super().set_gradient_checkpointing(enabled)
        self.decoder.set_gradient_checkpointing(enabled)

    def _check(self, n_units: int, n_frames: int) -> None:
        if n_units > self.cfg.max_text_len or n_frames > self.cfg.max_frames:
            raise ValueError(f"{n_units} text units > max_text_len={self.cfg.max_text_len} or {n_frames} frames > "
                             f"max_frames={self.cfg.max_frames}")

    def encode_text(self, chars: torch.Tensor, tokens: torch.Tensor, unit_lengths: torch.Tensor | None):
        """chars, tokens (B, U) -> (unit states (B, U, D), unit mask (B, U), predicted log(1 + frames) (B, U))."""
        B, U = chars.shape
        if unit_lengths is None:
            unit_lengths = torch.full((B,), U, dtype=torch.long, device=chars.device)
        mask = lengths_mask(unit_lengths.to(chars.device), U)
        h, _ = self.run_blocks(self.char_embed(chars) + self.text_embed(tokens), key_padding_mask=mask)
        return h, mask, self.duration(h, mask)

    def decode_frames(self, h: torch.Tensor, durations: torch.Tensor,
                      n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit states (B, U, D), durations (B, U) -> (decoder output (B, n_frames, D), valid-frame mask)."""
        unit, in_unit, valid = regulate_lengths(durations, n_frames)
        x = h.gather(1, unit[..., None].expand(-1, -1, h.shape[2]))
        x = x + self.unit_frame_embed(in_unit.clamp(max=self.cfg.max_unit_frames - 1))
        y, _ = self.decoder.run_blocks(x, key_padding_mask=valid)
        return y, valid

    def _codebook_logits(self, y: torch.Tensor, k: int, codes: torch.Tensor) -> torch.Tensor:
        """Codebook k's logits (B, F, V) from the decoder output and the frame's codes of codebooks < k (B, F, >= k)."""
        V = self.cfg.codebook_size
        if k > 0:
            y = y + self.code_embed(codes[..., :k] + self.code_offsets[:k]).sum(dim=2)
        return F.linear(y, self.heads.weight[k * V:(k + 1) * V])

    def forward(self, chars: torch.Tensor, tokens: torch.Tensor, unit_lengths: torch.Tensor | None,
                durations: torch.Tensor, codes: torch.Tensor, code_lengths: torch.Tensor | None = None) -> TalkerOutput:
        """chars, tokens (B, U) right-padded, unit_lengths (B,) (None = U), durations (B, U) aligned frames per unit
        (zero on padding; each row sums to its code length), codes (B, F, K) in [0, V), code_lengths (B,)."""
        B, n_frames, K = codes.shape
        self._check(chars.shape[1], n_frames)
        h, unit_mask, log_dur = self.encode_text(chars, tokens, unit_lengths)
        y, valid = self.decode_frames(h, durations, n_frames)
        if code_lengths is not None:
            valid = valid & lengths_mask(code_lengths.to(codes.device), n_frames)
        logits = torch.stack([self._codebook_logits(y, k, codes) for k in range(K)], dim=2)  # (B, F, K, V)
        code_loss = F.cross_entropy(logits.float()[valid].flatten(0, 1), codes[valid].flatten())
        target = torch.log1p(durations.float())
        duration_loss = ((log_dur - target) ** 2)[unit_mask].mean()
        loss = code_loss + self.cfg.duration_loss_weight * duration_loss
        return TalkerOutput(logits, loss, code_loss.detach(), duration_loss.detach(), log_dur)

    def predict_durations(self, log_durations: torch.Tensor, unit_mask: torch.Tensor,
                          pace: float = 1.0) -> torch.Tensor:
        """Predicted log(1 + frames) (B, U) -> frames per unit (B, U) (long, 0 on padding), the rows cut to
        max_frames in total. pace > 1 speaks slower."""
        log_durations = log_durations.clamp(max=math.log1p(self.cfg.max_frames))  # an untrained head may say 1e30
        frames = (torch.expm1(log_durations) * pace).round().clamp(min=0).long() * unit_mask
        room = (self.cfg.max_frames - (frames.cumsum(1) - frames)).clamp(min=0)
        return torch.minimum(frames, room)

    @torch.no_grad()
    def generate(self, chars: torch.Tensor, tokens: torch.Tensor, *, unit_lengths: torch.Tensor | None = None,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, pace: float = 1.0, return_probs: bool = False):
        """chars, tokens (B, U) (right-padded when unit_lengths is given) -> (codes (B, F, K) in [0, V), lengths
        (B,)), F <= max_frames; rows past their length are code 0. temperature 0 = greedy. return_probs: also the
        code probabilities (B, F, K, V) (codebook k's given the chosen codes of codebooks < k). Runs in the
        module's current mode: call eval() first when dropout > 0."""
        self._check(chars.shape[1], 0)
        h, unit_mask, log_dur = self.encode_text(chars, tokens, unit_lengths)
        durations = self.predict_durations(log_dur, unit_mask, pace)
        lengths = durations.sum(dim=1)
        n_frames = int(lengths.max()) if lengths.numel() else 0
        B, K = chars.shape[0], self.cfg.n_codebooks
        V = self.cfg.codebook_size
        if n_frames == 0:
            empty = chars.new_zeros(B, 0, K), lengths
            return (*empty, h.new_zeros(B, 0, K, V)) if return_probs else empty
        y, valid = self.decode_frames(h, durations, n_frames)
        codes = chars.new_zeros(B, n_frames, K)
        probs = []
        for k in range(K):
            logits = self._codebook_logits(y, k, codes)
            codes[..., k] = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                              generator=generator)
            if return_probs:
                probs.append(logits.float().softmax(-1))
        codes = codes.masked_fill(~valid[..., None], 0)
        return (codes, lengths, torch.stack(probs, dim=2)) if return_probs else (codes, lengths)
