"""RVQ speech codec: 100 Hz log-mel <-> K discrete codes per frame at `frame_rate_hz` (Stage D, used by the Talker).

Design choices
- Input and output are `omni.audio.LogMel` frames (B, T, n_mels) at 100 Hz. They are normalised with two fixed
  scalars (`mel_mean`, `mel_std`) rather than per utterance: `decode` must give back absolute log-mels from codes
  alone, and a per-utterance statistic would be lost in the codes. The loss is L1 on this normalised log-mel.
- Encoder: Conv1d stem, then log2(downsample) stages of [residual unit, stride-2 Conv1d (kernel 4, padding 1)],
  each halving T exactly; decoder mirrors it with stride-2 ConvTranspose1d (kernel 4, padding 1), each doubling T
  exactly (SoundStream/EnCodec-style, without the LSTM). downsample = 100 Hz / frame_rate_hz mel frames per code
  frame: 8 at the default 12.5 Hz, 4 at the demo's 25 Hz. T not divisible by it is zero-padded on the right to the
  next multiple (in normalised units) and the reconstruction is cropped back to T, so `encode` gives
  ceil(T / downsample) code frames and `forward` returns exactly T frames.
- Padding never leaks: before every convolution the positions past each row's length (at that resolution:
  ceil(length / 2^level)) are zeroed, so a row gives the same codes and reconstruction whether it is padded in a
  batch or alone (where the conv's own zero padding plays the same role). Losses, EMA statistics and usage counts
  only count valid frames.
- Residual VQ (Zeghidour et al. 2021): stage k quantizes what stages < k left over; the residual passed on is
  detached, so a later stage's commitment loss never pulls the encoder (only the first stage commits the encoder
  output) and each stage sees a fixed target. The decoder gets z + (sum_k q_k - z).detach() (straight-through
  estimator, van den Oord et al. 2017): reconstruction gradients reach the encoder as if quantization were the
  identity.
- Codebooks are buffers updated by exponential moving averages of cluster sizes and member sums with Laplace
  smoothing (van den Oord et al. 2017, appendix; Razavi et al. 2019), only in training mode and never by the
  optimizer. Distances, EMA statistics and losses run in float32 with autocast off.
- Initialisation and dead-code restart are one mechanism: a code that was unused for `dead_code_steps`
  consecutive updates, and every code before the first update, is replaced by a random valid latent of the
  current batch (distinct latents while the batch has enough; EMA statistics reset to count 1). Everything is
  expressed with torch.where and top-k over random keys on device, so a training step never waits for the host.
  Under DDP the counts and sums are all-reduced, so every rank applies the same EMA update; restarts draw
  per-rank latents and DDP's buffer broadcast (rank 0's buffers at each forward) makes them agree.
- Codebook usage is returned as counts (K, codebook_size) so callers sum them over steps and compute the
  perplexity (`usage_perplexity`) at log time only.

References: van den Oord et al. 2017 (VQ-VAE, EMA codebooks); Razavi et al. 2019 (VQ-VAE-2); Zeghidour et al.
2021 (SoundStream, residual VQ, codebook restarts); Defossez et al. 2022 (EnCodec).

Shape legend: B batch, T mel frames (100 Hz), T' code frames (T' = ceil(T / downsample)), C channels, D latent
width, K codebooks, N codebook size, M flattened latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from omni.audio import MEL_FRAME_RATE, N_MELS
from omni.layers import lengths_mask


@dataclass
class CodecConfig:
    n_mels: int = N_MELS  # log-mel bins in and out (omni.audio.N_MELS)
    frame_rate_hz: float = 12.5  # code frame rate; 100 Hz / frame_rate_hz must be a power of two (8 at 12.5 Hz)
    channels: int = 256  # conv width C of encoder and decoder
    latent_dim: int = 64  # width D of the latent that is quantized
    n_codebooks: int = 2  # K residual VQ stages
    codebook_size: int = 1024  # N codes per codebook
    commitment_weight: float = 0.25  # beta: weight of the commitment loss in the total loss
    ema_decay: float = 0.99  # gamma of the EMA codebook updates
    laplace_eps: float = 1e-5  # Laplace smoothing of the EMA cluster sizes (keeps rare codes finite)
    dead_code_steps: int = 50  # a code unused for this many consecutive updates is restarted; 0 = never restart
    mel_mean: float = -5.0  # fixed normalisation of the log-mel: (mel - mel_mean) / mel_std
    mel_std: float = 4.0  # (rough statistics of LogMel on speech; floor log(1e-5) ~ -11.5)

    def __post_init__(self):
        sizes = {k: getattr(self, k) for k in ("n_mels", "channels", "latent_dim", "n_codebooks", "codebook_size")}
        bad = {k: v for k, v in sizes.items() if v < 1}
        if bad:
            raise ValueError(f"CodecConfig sizes must be >= 1, got {bad}")
        ratio = MEL_FRAME_RATE / self.frame_rate_hz if self.frame_rate_hz > 0 else 0.0
        if ratio < 1 or ratio != round(ratio) or round(ratio) & (round(ratio) - 1):
            raise ValueError(
                f"frame_rate_hz={self.frame_rate_hz} must divide {MEL_FRAME_RATE} Hz by a power of two (e.g. 12.5)"
            )
        if not 0 <= self.ema_decay < 1 or self.laplace_eps <= 0 or self.dead_code_steps < 0:
            raise ValueError(
                f"need 0 <= ema_decay < 1, laplace_eps > 0, dead_code_steps >= 0, got ema_decay={self.ema_decay}, "
                f"laplace_eps={self.laplace_eps}, dead_code_steps={self.dead_code_steps}"
            )
        if self.mel_std <= 0 or self.commitment_weight < 0:
            raise ValueError(
                f"need mel_std > 0 and commitment_weight >= 0, got mel_std={self.mel_std}, "
                f"commitment_weight={self.commitment_weight}"
            )

    @property
    def downsample(self) -> int:
        """Mel frames per code frame (8 at 12.5 Hz)."""
        return round(MEL_FRAME_RATE / self.frame_rate_hz)


def usage_perplexity(usage: torch.Tensor) -> torch.Tensor:
    """Code counts (..., N) -> exp(entropy of usage) (...): N for uniform use, 1 for a single code. No host sync."""
    p = usage.float() / usage.float().sum(-1, keepdim=True).clamp(min=1e-12)
    return torch.exp(-(p * p.clamp(min=1e-12).log()).sum(-1))


def _sample_rows(mask: torch.Tensor, n: int) -> torch.Tensor:
    """n random row indices (n,) of a mask (M,): distinct valid rows while there are enough, then valid rows
    again, invalid rows only when no valid one is left. Random keys ranked by topk, so nothing waits for the host."""
    copies = -(-n // mask.shape[0])  # tile the rows so that n indices always exist
    copy = torch.arange(copies, device=mask.device).repeat_interleave(mask.shape[0])
    # Valid rows of copy c score in [copies - c, copies - c + 1) >= 1, invalid rows in [0, 1).
    keys = mask.repeat(copies) * (copies - copy) + torch.rand(copy.shape, device=mask.device)
    return keys.topk(n).indices % mask.shape[0]


class ResUnit(nn.Module):
    """x + Conv1x1(GELU(Conv_k3_dilated(GELU(x)))), padding zeroed before each conv."""

    def __init__(self, *, channels: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, C, T), mask (B, 1, T) -> (B, C, T)."""
        h = self.conv(F.gelu(x) * mask)
        return x + self.proj(F.gelu(h))


class Encoder(nn.Module):
    """Normalised mel (B, C=n_mels, T) -> latent (B, D, T / 2^levels)."""

    def __init__(self, *, n_mels: int, channels: int, latent_dim: int, levels: int):
        super().__init__()
        self.stem = nn.Conv1d(n_mels, channels, 7, padding=3)
        self.res = nn.ModuleList(ResUnit(channels=channels, dilation=3**i) for i in range(levels))
        self.down = nn.ModuleList(nn.Conv1d(channels, channels, 4, stride=2, padding=1) for _ in range(levels))
        self.out = nn.Conv1d(channels, latent_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (B, n_mels, T) with T a multiple of 2^levels, lengths (B,) -> (B, D, T / 2^levels)."""
        x = self.stem(x * lengths_mask(lengths, x.shape[2])[:, None].to(x.dtype))
        for res, down in zip(self.res, self.down):
            mask = lengths_mask(lengths, x.shape[2])[:, None].to(x.dtype)
            x = down(F.gelu(res(x * mask, mask)) * mask)
            lengths = (lengths + 1) // 2  # ceil: a half-covered output frame is still real
        return self.out(F.gelu(x) * lengths_mask(lengths, x.shape[2])[:, None].to(x.dtype))


class Decoder(nn.Module):
    """Latent (B, D, T') -> normalised mel (B, n_mels, T' * 2^levels)."""

    def __init__(self, *, n_mels: int, channels: int, latent_dim: int, levels: int):
        super().__init__()
        self.stem = nn.Conv1d(latent_dim, channels, 3, padding=1)
        self.up = nn.ModuleList(nn.ConvTranspose1d(channels, channels, 4, stride=2, padding=1) for _ in range(levels))
        self.res = nn.ModuleList(ResUnit(channels=channels, dilation=3 ** (levels - 1 - i)) for i in range(levels))
        self.out = nn.Conv1d(channels, n_mels, 7, padding=3)

    def forward(self, z: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """z (B, D, T'), lengths (B,) code frames -> (B, n_mels, T' * 2^levels)."""
        x = self.stem(z * lengths_mask(lengths, z.shape[2])[:, None].to(z.dtype))
        for up, res in zip(self.up, self.res):
            x = up(F.gelu(x) * lengths_mask(lengths, x.shape[2])[:, None].to(x.dtype))
            lengths = lengths * 2
            x = res(x, lengths_mask(lengths, x.shape[2])[:, None].to(x.dtype))
        return self.out(F.gelu(x) * lengths_mask(lengths, x.shape[2])[:, None].to(x.dtype))


class VectorQuantizer(nn.Module):
    """One EMA codebook: nearest-code quantization with data init, dead-code restart and a commitment loss."""

    def __init__(self, *, dim: int, codebook_size: int, decay: float, eps: float, dead_code_steps: int):
        super().__init__()
        self.codebook_size, self.decay, self.eps, self.dead_code_steps = codebook_size, decay, eps, dead_code_steps
        codebook = torch.randn(codebook_size, dim)  # replaced by data on the first training update
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # EMA of assignment counts
        self.register_buffer("embed_sum", codebook.clone())  # EMA of the sum of assigned latents
        self.register_buffer("unused_steps", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, D) -> nearest code ids (M,) by squared Euclidean distance."""
        x = x.float()
        dist2 = x.pow(2).sum(-1, keepdim=True) - 2 * x @ self.codebook.T + self.codebook.pow(2).sum(-1)
        return dist2.argmin(-1)

    @torch.no_grad()
    def _restart(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        """Replace dead codes (all codes before the first update) by random valid latents of x (M, D)."""
        dead = ~self.initialized
        if self.dead_code_steps > 0:
            dead = dead | (self.unused_steps >= self.dead_code_steps)
        fresh = x[_sample_rows(mask, self.codebook_size)]
        self.codebook.copy_(torch.where(dead[..., None], fresh, self.codebook))
        self.embed_sum.copy_(torch.where(dead[..., None], fresh, self.embed_sum))
        self.cluster_size.copy_(torch.where(dead, 1.0, self.cluster_size))
        self.unused_steps.copy_(torch.where(dead, 0, self.unused_steps))
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, x: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor, counts: torch.Tensor) -> None:
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, x * mask[:, None])
        if dist.is_available() and dist.is_initialized():
            counts = counts.clone()
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.codebook.copy_(self.embed_sum / smoothed[:, None])
        self.unused_steps.copy_(torch.where(counts > 0, 0, self.unused_steps + 1))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, update: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (M, D) float32, mask (M,) bool -> (code vectors (M, D) without gradient, codes (M,), commitment loss
        scalar (masked mean squared distance of x to its code), usage counts (N,)). `update`: restart dead codes
        and apply the EMA update with this batch (training only)."""
        if update:
            self._restart(x.detach(), mask)
        codes = self.quantize(x)
        q = F.embedding(codes, self.codebook)
        counts = torch.zeros_like(self.cluster_size).index_add_(0, codes, mask.float())
        if update:
            self._ema_update(x.detach(), codes, mask.float(), counts)
        commit = ((x - q).pow(2).mean(-1) * mask).sum() / mask.sum().clamp(min=1)
        return q, codes, commit, counts


class ResidualVQ(nn.Module):
    """K `VectorQuantizer`s, each quantizing the (detached) residual the previous ones left."""

    def __init__(self, *, dim: int, n_codebooks: int, codebook_size: int, decay: float, eps: float,
                 dead_code_steps: int):
        super().__init__()
        self.quantizers = nn.ModuleList(
            VectorQuantizer(dim=dim, codebook_size=codebook_size, decay=decay, eps=eps, dead_code_steps=dead_code_steps)
            for _ in range(n_codebooks)
        )

    def forward(
        self, z: torch.Tensor, mask: torch.Tensor, update: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (M, D), mask (M,) bool -> (z + (sum q - z).detach() (M, D), codes (M, K), commitment per stage (K,),
        usage counts (K, N))."""
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            residual, total = z, torch.zeros_like(z)
            codes, commits, usage = [], [], []
            for vq in self.quantizers:
                q, c, commit, counts = vq(residual, mask, update)
                total = total + q
                residual = (residual - q).detach()
                codes.append(c)
                commits.append(commit)
                usage.append(counts)
            return z + (total - z).detach(), torch.stack(codes, -1), torch.stack(commits), torch.stack(usage)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (..., K) -> sum of the K code vectors (..., D)."""
        return sum(F.embedding(codes[..., k], vq.codebook) for k, vq in enumerate(self.quantizers))


@dataclass
class CodecOutput:
    recon: torch.Tensor  # (B, T, n_mels) reconstructed log-mel
    codes: torch.Tensor  # (B, T', K) code ids; rows are valid up to code_lengths
    code_lengths: torch.Tensor  # (B,) valid code frames, ceil(lengths / downsample)
    loss: torch.Tensor  # scalar: recon + commitment_weight * commitment
    losses: dict[str, torch.Tensor]  # "recon", "commitment": detached scalars for logging
    usage: torch.Tensor  # (K, N) code counts over valid frames; see `usage_perplexity`


class Codec(nn.Module):
    """Mel autoencoder with a residual-VQ bottleneck: `encode` mel -> codes, `decode` codes -> mel."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        levels = int(math.log2(cfg.downsample))
        sizes = {"n_mels": cfg.n_mels, "channels": cfg.channels, "latent_dim": cfg.latent_dim, "levels": levels}
        self.encoder = Encoder(**sizes)
        self.rvq = ResidualVQ(
            dim=cfg.latent_dim,
            n_codebooks=cfg.n_codebooks,
            codebook_size=cfg.codebook_size,
            decay=cfg.ema_decay,
            eps=cfg.laplace_eps,
            dead_code_steps=cfg.dead_code_steps,
        )
        self.decoder = Decoder(**sizes)

    def code_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Mel lengths (B,) -> code frames (B,): ceil(lengths / downsample)."""
        return (lengths + self.cfg.downsample - 1) // self.cfg.downsample

    def _latents(self, mel: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, T, n_mels) -> (latents (B, T', D), valid mel lengths (B,))."""
        if mel.dim() != 3 or mel.shape[2] != self.cfg.n_mels:
            raise ValueError(f"expected mel (B, T, {self.cfg.n_mels}), got shape {tuple(mel.shape)}")
        B, T, _ = mel.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=mel.device)
        x = ((mel - self.cfg.mel_mean) / self.cfg.mel_std).transpose(1, 2)
        x = F.pad(x, (0, -T % self.cfg.downsample))  # zeros = the mean level; masked anyway
        return self.encoder(x, lengths).transpose(1, 2), lengths

    def encode(self, mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """mel (B, T, n_mels), lengths (B,) -> codes (B, T', K), T' = ceil(T / downsample). Never updates the codebooks.
        Frames at or past `code_lengths(lengths)` are padding."""
        z, lengths = self._latents(mel, lengths)
        mask = lengths_mask(self.code_lengths(lengths), z.shape[1])
        _, codes, _, _ = self.rvq(z.flatten(0, 1), mask.flatten(), update=False)
        return codes.view(*z.shape[:2], -1)

    def decode(self, codes: torch.Tensor, code_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, T', K), code_lengths (B,) -> log-mel (B, T' * downsample, n_mels); frames past
        downsample * code_lengths are padding."""
        return self.decode_latents(self.rvq.lookup(codes), code_lengths)

    def decode_latents(self, z: torch.Tensor, code_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Quantized latents z (B, T', D) (`rvq.lookup` of codes, or `expected_latents`) -> log-mel as `decode`."""
        if code_lengths is None:
            code_lengths = torch.full(z.shape[:1], z.shape[1], dtype=torch.long, device=z.device)
        return self._decode(z, code_lengths) * self.cfg.mel_std + self.cfg.mel_mean

    def expected_latents(self, probs: torch.Tensor) -> torch.Tensor:
        """Per-codebook code probabilities (..., K, V) -> the expected quantized latent (..., D): the sum over
        codebooks of the probability-weighted code vectors. Decoding it instead of the most likely codes averages
        over the codes a predictor hesitates between rather than committing to one (see omni.speech)."""
        return sum(probs[..., k, :].to(vq.codebook.dtype) @ vq.codebook for k, vq in enumerate(self.rvq.quantizers))

    def _decode(self, z: torch.Tensor, code_lengths: torch.Tensor) -> torch.Tensor:
        """z (B, T', D) -> normalised mel (B, T' * downsample, n_mels)."""
        return self.decoder(z.transpose(1, 2), code_lengths).transpose(1, 2)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor | None = None) -> CodecOutput:
        """mel (B, T, n_mels) log-mel, lengths (B,) valid frames (default T) -> `CodecOutput` with recon
        (B, T, n_mels), codes (B, T', K), the loss, and usage counts. Codebooks update in training mode only."""
        z, lengths = self._latents(mel, lengths)
        B, T, _ = mel.shape
        code_lengths = self.code_lengths(lengths)
        mask = lengths_mask(code_lengths, z.shape[1])
        zq, codes, commits, usage = self.rvq(z.flatten(0, 1), mask.flatten(), update=self.training)
        recon_norm = self._decode(zq.view_as(z).to(z.dtype), code_lengths)[:, :T]
        recon_loss = codec_recon_loss(recon_norm, (mel - self.cfg.mel_mean) / self.cfg.mel_std, lengths)
        commitment = commits.sum()
        return CodecOutput(
            recon=recon_norm * self.cfg.mel_std + self.cfg.mel_mean,
            codes=codes.view(B, z.shape[1], -1),
            code_lengths=code_lengths,
            loss=recon_loss + self.cfg.commitment_weight * commitment,
            losses={"recon": recon_loss.detach(), "commitment": commitment.detach()},
            usage=usage,
        )


def codec_recon_loss(pred: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over valid frames and all bins; pred, target (B, T, n_mels), lengths (B,)."""
    valid = lengths_mask(lengths, pred.shape[1])[:, :, None]
    err = (pred.float() - target.float()).abs() * valid
    return err.sum() / (valid.sum() * pred.shape[2]).clamp(min=1)
