"""HiFi-GAN vocoder (log-mel -> 16 kHz waveform) and a Griffin-Lim fallback for speech output.

Design choices
- Written from the paper (Kong et al. 2020, "HiFi-GAN: Generative Adversarial Networks for Efficient and High
  Fidelity Speech Synthesis"). Generator: Conv1d(7) -> for each upsampling rate u: LeakyReLU(0.1), transposed conv
  (stride u, channels halved), multi-receptive-field fusion (MRF: the mean of residual blocks with kernels
  (3, 7, 11), each block a chain of [LeakyReLU, dilated conv, LeakyReLU, conv] residual units with dilations
  (1, 3, 5)) -> LeakyReLU -> Conv1d(7) to one channel -> tanh. Weight norm on every generator and MPD conv
  (`torch.nn.utils.parametrizations.weight_norm`), N(0, 0.01) init of the generator as in the paper's code.
- The upsampling product must equal omni.audio.HOP_LENGTH (160), so T mel frames give exactly T * 160 samples:
  each transposed conv with kernel k and stride u uses padding ceil((k - u) / 2) and output_padding
  2 * padding - (k - u), i.e. exactly u samples per input sample for odd k - u as well (5 with kernel 10).
- Inference folds the weight norm into plain weights once (`Generator.remove_weight_norm`, called by
  `omni.speech.Vocoder` for every inference path): the same output without recomputing g * v / |v| per call.
- Discriminators: MPD (periods 2, 3, 5, 7, 11: the waveform, right-padded by reflection to a multiple of p, is
  folded into (N / p, p) and seen by Conv2d with (5, 1) kernels, so each period sees its own periodic
  structure) and MSD (MelGAN's grouped Conv1d stack on the raw, x2 and x4 average-pooled waveform; spectral norm
  on the first scale, weight norm on the others). Each returns per-discriminator scores and every intermediate
  feature map. Channel widths are config fields so a demo-scale model trains on CPU.
- Losses: least-squares GAN for both players, L1 feature matching summed over all discriminator layers, and L1
  between log-mels; total generator loss = adv + lambda_fm * fm + lambda_mel * mel (paper: 2 and 45). The mel
  loss uses omni.audio.LogMel on the generated audio, the very frontend that made `mel_real`. With center=True
  padding, LogMel of T * 160 samples gives T + 1 frames whose first T line up with the T input frames; the last
  is dropped.
- `griffin_lim` inverts the same mel definition: parameters are read off a `LogMel` instance (n_fft, window,
  hop, power, Slaney scale and norm, f_min/f_max), the natural log is undone with exp, torchaudio's
  `InverseMelScale` (least squares) recovers a linear power spectrogram and `GriffinLim` (zero initial phase, so
  deterministic) the phase; the (T - 1) * hop samples it gives are right-padded to T * hop like the generator's.
- `HifiGanTrainModel` holds generator + MPD + MSD so one checkpoint holds all three. The two-player step itself is
  written out in train_vocoder.py (as in HiFi-GAN's train.py), from the loss functions here; `frozen` keeps the
  generator's backward pass off the discriminators' gradients.

References: Kong et al. 2020 (HiFi-GAN, arXiv:2010.05646); Kumar et al. 2019 (MelGAN, MSD); Mao et al. 2017
(LSGAN); Griffin & Lim 1984; Perraudin et al. 2013 (fast Griffin-Lim).

Shape legend: B batch, T mel frames (100 Hz), N samples (16 kHz, N = 160 T), C channels.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from omni.audio import HOP_LENGTH, N_MELS, LogMel

LRELU_SLOPE = 0.1
MSD_KERNELS = (15, 41, 41, 41, 41, 41, 5)  # MelGAN discriminator block, as used by HiFi-GAN's MSD
MSD_STRIDES = (1, 2, 2, 4, 4, 1, 1)
MSD_GROUPS = (1, 4, 16, 16, 16, 16, 1)


@dataclass
class VocoderConfig:
    n_mels: int = N_MELS  # log-mel bins of the input (omni.audio.N_MELS)
    upsample_rates: tuple[int, ...] = (8, 5, 4)  # product must equal omni.audio.HOP_LENGTH (160)
    upsample_kernel_sizes: tuple[int, ...] = (16, 10, 8)  # one per rate, each >= its rate (2x rate is usual)
    upsample_initial_channels: int = 128  # channels after conv_pre; halved by each upsampling (V2 = 128, V1 = 512)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)  # MRF: one residual block per kernel size
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))  # per block
    mpd_periods: tuple[int, ...] = (2, 3, 5, 7, 11)  # MPD sub-discriminator periods (primes: little overlap)
    mpd_channels: tuple[int, ...] = (32, 128, 512, 1024)  # MPD strided Conv2d widths (a stride-1 conv follows)
    msd_channels: tuple[int, ...] = (128, 128, 256, 512, 1024, 1024, 1024)  # MSD conv widths (groups 1,4,16..)
    lambda_fm: float = 2.0  # weight of the feature-matching loss
    lambda_mel: float = 45.0  # weight of the mel L1 loss

    def __post_init__(self):
        for name in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes", "mpd_periods"):
            setattr(self, name, tuple(getattr(self, name)))  # JSON gives lists
        self.resblock_dilations = tuple(tuple(d) for d in self.resblock_dilations)
        self.mpd_channels, self.msd_channels = tuple(self.mpd_channels), tuple(self.msd_channels)
        if math.prod(self.upsample_rates) != HOP_LENGTH:
            raise ValueError(f"upsample_rates={self.upsample_rates} must multiply to the mel hop {HOP_LENGTH}")
        if len(self.upsample_kernel_sizes) != len(self.upsample_rates) or any(
            k < u for k, u in zip(self.upsample_kernel_sizes, self.upsample_rates)
        ):
            raise ValueError(
                f"need one upsample kernel >= its rate per rate, got upsample_kernel_sizes="
                f"{self.upsample_kernel_sizes} for upsample_rates={self.upsample_rates}"
            )
        if self.upsample_initial_channels % 2 ** len(self.upsample_rates):
            raise ValueError(
                f"upsample_initial_channels={self.upsample_initial_channels} must be divisible by "
                f"2**{len(self.upsample_rates)} (halved per upsampling)"
            )
        if len(self.resblock_dilations) != len(self.resblock_kernel_sizes):
            raise ValueError(
                f"resblock_dilations={self.resblock_dilations} needs one entry per resblock_kernel_sizes="
                f"{self.resblock_kernel_sizes}"
            )
        widths = (1, *self.msd_channels)
        if len(self.msd_channels) != len(MSD_GROUPS) or any(
            c % g for i, g in enumerate(MSD_GROUPS) for c in widths[i : i + 2]
        ):
            raise ValueError(f"msd_channels={self.msd_channels} must be 7 widths divisible by groups {MSD_GROUPS}")
        if not self.mpd_channels or min(self.mpd_channels) < 1 or min(self.mpd_periods, default=0) < 1:
            raise ValueError(f"bad mpd_channels={self.mpd_channels} or mpd_periods={self.mpd_periods}")


def _conv1d(c_in: int, c_out: int, kernel: int, dilation: int = 1) -> nn.Conv1d:
    """Weight-normed 'same' Conv1d with N(0, 0.01) init."""
    conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
    nn.init.normal_(conv.weight, 0.0, 0.01)
    return weight_norm(conv)


class ResBlock(nn.Module):
    """x + conv(lrelu(conv_dilated(lrelu(x)))) for each dilation in turn (HiFi-GAN ResBlock1)."""

    def __init__(self, *, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.dilated = nn.ModuleList(_conv1d(channels, channels, kernel, d) for d in dilations)
        self.plain = nn.ModuleList(_conv1d(channels, channels, kernel) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, N) -> (B, C, N)."""
        for c1, c2 in zip(self.dilated, self.plain):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class Generator(nn.Module):
    """Log-mel (B, T, n_mels) -> waveform (B, T * 160) in [-1, 1]."""

    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        self.conv_pre = _conv1d(cfg.n_mels, cfg.upsample_initial_channels, 7)
        self.ups, self.mrfs = nn.ModuleList(), nn.ModuleList()
        channels = cfg.upsample_initial_channels
        for u, k in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes):
            padding = (k - u + 1) // 2
            up = nn.ConvTranspose1d(
                channels, channels // 2, k, u, padding=padding, output_padding=2 * padding - (k - u)
            )
            nn.init.normal_(up.weight, 0.0, 0.01)
            self.ups.append(weight_norm(up))
            channels //= 2
            self.mrfs.append(
                nn.ModuleList(
                    ResBlock(channels=channels, kernel=kr, dilations=d)
                    for kr, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations)
                )
            )
        self.conv_post = _conv1d(channels, 1, 7)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, T, n_mels) natural-log mel power (omni.audio.LogMel) -> wav (B, T * 160)."""
        x = self.conv_pre(mel.transpose(1, 2))
        for up, mrf in zip(self.ups, self.mrfs):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            x = sum(block(x) for block in mrf) / len(mrf)
        return torch.tanh(self.conv_post(F.leaky_relu(x, LRELU_SLOPE))).squeeze(1)

    def remove_weight_norm(self) -> Generator:
        """For inference: replace every weight-norm parametrization by the weight it gives (same output, no
        per-call g * v / |v|). The state dict then has plain `weight` keys, so do it after loading, never before
        saving a checkpoint."""
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return self


def _run_stack(convs: nn.ModuleList, conv_post: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A sub-discriminator's conv stack (LeakyReLU after each conv, none after conv_post) -> (scores (B, S), the
    feature map of every layer, conv_post's included: feature matching compares them all)."""
    fmaps = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmaps.append(x)
    x = conv_post(x)
    fmaps.append(x)
    return x.flatten(1), fmaps


class PeriodDiscriminator(nn.Module):
    """MPD sub-discriminator for one period: Conv2d (5, 1) stack over the waveform folded to (N / p, p)."""

    def __init__(self, *, period: int, channels: tuple[int, ...]):
        super().__init__()
        self.period = period
        widths = (1, *channels)
        convs = [nn.Conv2d(widths[i], widths[i + 1], (5, 1), (3, 1), padding=(2, 0)) for i in range(len(channels))]
        convs.append(nn.Conv2d(channels[-1], channels[-1], (5, 1), 1, padding=(2, 0)))
        self.convs = nn.ModuleList(weight_norm(c) for c in convs)
        self.conv_post = weight_norm(nn.Conv2d(channels[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """wav (B, N) -> (scores (B, S), feature maps (B, C, N', p) per layer)."""
        pad = -wav.shape[1] % self.period
        x = F.pad(wav[:, None], (0, pad), mode="reflect") if pad else wav[:, None]
        x = x.view(x.shape[0], 1, -1, self.period)
        return _run_stack(self.convs, self.conv_post, x)


class ScaleDiscriminator(nn.Module):
    """MSD sub-discriminator: MelGAN's grouped, strided Conv1d stack over the waveform."""

    def __init__(self, *, channels: tuple[int, ...], use_spectral_norm: bool):
        super().__init__()
        norm = spectral_norm if use_spectral_norm else weight_norm
        widths = (1, *channels)
        self.convs = nn.ModuleList(
            norm(nn.Conv1d(widths[i], widths[i + 1], k, s, groups=g, padding=k // 2))
            for i, (k, s, g) in enumerate(zip(MSD_KERNELS, MSD_STRIDES, MSD_GROUPS))
        )
        self.conv_post = norm(nn.Conv1d(channels[-1], 1, 3, 1, padding=1))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """wav (B, N) -> (scores (B, S), feature maps (B, C, N') per layer)."""
        return _run_stack(self.convs, self.conv_post, wav[:, None])


class MultiPeriodDiscriminator(nn.Module):
    """One `PeriodDiscriminator` per period."""

    def __init__(self, *, periods: tuple[int, ...], channels: tuple[int, ...]):
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(period=p, channels=channels) for p in periods)

    def forward(self, wav: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """wav (B, N) -> (scores per discriminator, feature maps per discriminator)."""
        outs = [d(wav) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class MultiScaleDiscriminator(nn.Module):
    """`ScaleDiscriminator`s on the raw, x2 and x4 average-pooled waveform; spectral norm on the raw scale."""

    def __init__(self, *, channels: tuple[int, ...], n_scales: int = 3):
        super().__init__()
        self.discriminators = nn.ModuleList(
            ScaleDiscriminator(channels=channels, use_spectral_norm=i == 0) for i in range(n_scales)
        )
        self.pool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, wav: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """wav (B, N) -> (scores per scale, feature maps per scale)."""
        scores, fmaps = [], []
        for i, d in enumerate(self.discriminators):
            if i > 0:
                wav = self.pool(wav[:, None]).squeeze(1)
            s, f = d(wav)
            scores.append(s)
            fmaps.append(f)
        return scores, fmaps


def discriminator_loss(real_scores: list[torch.Tensor], fake_scores: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN discriminator loss: sum over discriminators of mean((1 - D(real))^2) + mean(D(fake)^2)."""
    return sum(((1 - r.float()) ** 2).mean() + (f.float() ** 2).mean() for r, f in zip(real_scores, fake_scores))


def generator_adversarial_loss(fake_scores: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN generator loss: sum over discriminators of mean((1 - D(G(s)))^2)."""
    return sum(((1 - f.float()) ** 2).mean() for f in fake_scores)


def feature_matching_loss(real_fmaps: list[list[torch.Tensor]], fake_fmaps: list[list[torch.Tensor]]) -> torch.Tensor:
    """Sum over discriminators and layers of mean |D_i(real) - D_i(fake)|; the real features are targets."""
    return sum(
        (r.detach().float() - f.float()).abs().mean() for rs, fs in zip(real_fmaps, fake_fmaps) for r, f in zip(rs, fs)
    )


@functools.lru_cache(maxsize=8)
def _log_mel(n_mels: int, device: str) -> LogMel:
    # One frontend per (n_mels, device); its buffers (window, filterbank) are fixed, so sharing it is safe.
    return LogMel(n_mels).to(device)


def mel_l1_loss(wav_fake: torch.Tensor, mel_real: torch.Tensor) -> torch.Tensor:
    """Mean |LogMel(wav_fake) - mel_real|; wav_fake (B, T * 160), mel_real (B, T, n_mels) from omni.audio.LogMel.
    The generated audio's log-mel has T + 1 frames (center padding); its first T align with mel_real."""
    with torch.autocast(wav_fake.device.type, enabled=False):
        mel_fake = _log_mel(mel_real.shape[-1], str(wav_fake.device))(wav_fake.float())
    return F.l1_loss(mel_fake[:, : mel_real.shape[1]], mel_real.float())


class HifiGanTrainModel(nn.Module):
    """Generator + MPD + MSD in one module, so one checkpoint holds the whole GAN."""

    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.mpd = MultiPeriodDiscriminator(periods=cfg.mpd_periods, channels=cfg.mpd_channels)
        self.msd = MultiScaleDiscriminator(channels=cfg.msd_channels)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, T, n_mels) -> wav (B, T * 160) (the generator)."""
        return self.generator(mel)


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Turn off requires_grad of the modules' trainable parameters for the block, then turn it back on: the
    generator's loss runs through the discriminators without leaving gradients on them, which their next step
    would otherwise add to its own."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def inverse_mel_scale(n_mels: int = N_MELS) -> torchaudio.transforms.InverseMelScale:
    """torchaudio's least-squares mel -> linear power inversion, built with LogMel's own mel parameters. Runs on
    CPU: 128 Slaney filters on 201 FFT bins have rank 106 (low filters share single bins), which needs the
    rank-revealing "gelsd" driver, and CUDA's lstsq only offers "gels"."""
    spec = _log_mel(n_mels, "cpu").spec  # torchaudio MelSpectrogram: the mel definition
    return torchaudio.transforms.InverseMelScale(
        n_stft=spec.n_fft // 2 + 1,
        n_mels=spec.n_mels,
        sample_rate=spec.sample_rate,
        f_min=spec.f_min,
        f_max=spec.f_max,
        norm=spec.mel_scale.norm,
        mel_scale=spec.mel_scale.mel_scale,
        driver="gelsd",
    )


def griffin_lim(mel: torch.Tensor, *, n_iter: int = 32, momentum: float = 0.99) -> torch.Tensor:
    """Fallback vocoder: log-mel (B, T, n_mels) or (T, n_mels) from omni.audio.LogMel -> wav (B, T * 160) or
    (T * 160,). Deterministic (zero initial phase)."""
    spec = _log_mel(mel.shape[-1], str(mel.device)).spec
    power = inverse_mel_scale(mel.shape[-1])(mel.detach().float().cpu().exp().transpose(-1, -2))  # (..., F, T)
    power = power.to(mel.device)
    wav = torchaudio.functional.griffinlim(
        power,
        spec.spectrogram.window,  # LogMel's own analysis window
        n_fft=spec.n_fft,
        hop_length=spec.hop_length,
        win_length=spec.win_length,
        power=spec.power,
        n_iter=n_iter,
        momentum=momentum,
        length=None,
        rand_init=False,
    )  # (..., (T - 1) * hop)
    return F.pad(wav, (0, mel.shape[-2] * spec.hop_length - wav.shape[-1]))


# ---------------------------------------------------------------------------------------------- judging the vocoders
# Mel-L1 favours Griffin-Lim by construction (it inverts the very mel it is scored on), so the two vocoders are
# also compared on the waveform (MR-STFT distance to the real clip) and on what a listener gets out of it (the
# Stage-B ASR's CER on the vocoded audio). `judge_vocoders` turns those numbers into the choice Vocoder.load follows.
VOCODERS = ("hifigan", "griffin-lim")  # omni.speech.Vocoder.name of each
VOCODER_LABELS = {"hifigan": "HiFi-GAN", "griffin-lim": "Griffin-Lim"}

# (FFT size, hop, window) of each resolution: Parallel WaveGAN's three (Yamamoto et al. 2020, Table 1 footnote),
# which HiFi-GAN's follow-ups reuse; each trades time for frequency resolution, so no single STFT's blind spot hides
# an artefact (phase smearing shows at 2048, clicks at 512).
MR_STFT_RESOLUTIONS = ((512, 50, 240), (1024, 120, 600), (2048, 240, 1200))


def mr_stft_distance(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT distance (the Parallel WaveGAN auxiliary loss, Yamamoto et al. 2020, used here as a
    metric): the mean over `MR_STFT_RESOLUTIONS` of spectral convergence ||S_real| - |S_fake||_F / ||S_real||_F plus
    the mean |log |S_real| - log |S_fake||. fake, real: (N,) or (B, N) waveforms of equal length -> scalar (mean
    over the batch). 0 for identical signals. Magnitudes are floored at 1e-7 (log of silence) and the frames are
    zero-padded at the ends, so clips shorter than an FFT are scored too."""
    if fake.shape != real.shape:
        raise ValueError(f"mr_stft_distance needs equal shapes, got {tuple(fake.shape)} and {tuple(real.shape)}")
    fake, real = fake.float().reshape(-1, fake.shape[-1]), real.float().reshape(-1, real.shape[-1])
    total = fake.new_zeros(())
    for n_fft, hop, win in MR_STFT_RESOLUTIONS:
        window = torch.hann_window(win, device=fake.device)
        mags = [torch.stft(x, n_fft, hop, win, window, center=True, pad_mode="constant", return_complex=True)
                .abs().clamp(min=1e-7) for x in (fake, real)]  # (B, n_fft // 2 + 1, frames)
        diff = torch.linalg.vector_norm(mags[1] - mags[0], dim=(1, 2))
        convergence = diff / torch.linalg.vector_norm(mags[1], dim=(1, 2)).clamp(min=1e-7)
        log_l1 = (mags[1].log() - mags[0].log()).abs().mean(dim=(1, 2))
        total = total + (convergence + log_l1).mean()
    return total / len(MR_STFT_RESOLUTIONS)


# Judged on these metric keys (vocoder_metrics' HiFi-GAN key; Griffin-Lim's adds "_griffin_lim"), first present
# first: what the ASR hears when an ASR model was configured, else the waveform distance. Lower is better for both.
JUDGE_CRITERIA = (("val_asr_cer", "ASR CER", lambda v: f"{100 * v:.1f} %"),
                  ("val_mr_stft", "MR-STFT distance", lambda v: f"{v:.3f}"))


def judge_vocoders(metrics: dict, *, clips: int) -> dict:
    """{"choice": "hifigan" | "griffin-lim", "criterion": metric key, "reason": one sentence} from the held-out
    metrics of both vocoders (omni.evaluation.vocoder_metrics) on `clips` clips. A tie goes to HiFi-GAN (the
    trained model, and the faster one); a non-finite HiFi-GAN score (a diverged run) loses."""
    criterion = next((c for c in JUDGE_CRITERIA if c[0] in metrics and f"{c[0]}_griffin_lim" in metrics), None)
    if criterion is None:
        raise ValueError(f"no metric to judge the vocoders by: need one of {[k for k, *_ in JUDGE_CRITERIA]} "
                         f"and its _griffin_lim twin, got {sorted(metrics)}")
    key, label, show = criterion
    ours, theirs = metrics[key], metrics[f"{key}_griffin_lim"]
    choice = "hifigan" if math.isfinite(ours) and ours <= theirs else "griffin-lim"
    score = {"hifigan": ours, "griffin-lim": theirs}
    other = VOCODERS[1 - VOCODERS.index(choice)]
    verb = "matches" if ours == theirs else "beats"
    reason = (f"{VOCODER_LABELS[choice]}, because its {label} {show(score[choice])} {verb} "
              f"{VOCODER_LABELS[other]}'s {show(score[other])} on {clips} held-out clips")
    if key != "val_asr_cer":
        reason += " (no ASR model configured: data.asr)"
    return {"choice": choice, "criterion": key, "reason": reason}
