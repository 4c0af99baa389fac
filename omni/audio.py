"""Audio in one place: loading, resampling, the log-mel frontend, frame arithmetic and SpecAugment.

Every stage that touches audio (ASR encoder, codec, vocoder, Talker evaluation) goes through these constants and
functions, so "how many encoder frames does a 3.2 s clip give" has exactly one answer.

- Loading uses soundfile (libsndfile: wav, flac, ogg, mp3, ...); torchaudio's loader needs torchcodec, which we
  avoid. A cut or corrupt file must not pass as a shorter clip (it would no longer match its transcript):
  libsndfile raises for a cut FLAC or Vorbis file, but decodes a cut MP3 or Opus file as far as it goes. So a clip
  that decodes shorter than its header declares (MP3's Xing frame count) or than the manifest's `duration` by more
  than `truncation_tolerance` (10% or 0.5 s, whichever is less, plus 50 ms for rounded durations and codec
  framing) is an AudioError, and so is a WAV whose header declares more data than the file holds.
  Multichannel audio is mixed down to mono; other rates are resampled with `torchaudio.functional.resample`
  (windowed sinc), with one `Resample` module (and so one precomputed kernel) cached per source rate.
- Log-mel: 16 kHz, 25 ms window (n_fft 400), 10 ms hop (160) -> 100 frames per second, Slaney mel scale and
  area normalisation (the Whisper/librosa convention; with 128 mels on 201 FFT bins the HTK scale leaves some
  filters empty), power spectrum, natural log after clamping at 1e-5. `center=True`, so a clip of N samples gives
  N // 160 + 1 frames.
- The audio encoder subsamples 100 Hz mel by 8 with three Conv2d layers (kernel 3, stride 2, padding 1); its
  kernel/stride/padding live here so `encoder_frames` is exact by construction, not by coincidence.
- SpecAugment (Park et al. 2019, arXiv:1904.08779) runs in the training step on the batch's device with the
  global torch RNG, so it is reproduced exactly by the checkpointed RNG state and never depends on data workers.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import nn

from omni.errors import InvalidInput
from omni.layers import lengths_mask

SAMPLE_RATE = 16000  # Hz; everything is resampled to this on load
N_FFT = 400  # 25 ms analysis window at 16 kHz
WIN_LENGTH = 400  # window length equals n_fft (no zero-padded window)
HOP_LENGTH = 160  # 10 ms hop
MEL_FRAME_RATE = SAMPLE_RATE / HOP_LENGTH  # 100.0 mel frames per second
N_MELS = 128  # default mel bins
MIN_SAMPLES = N_FFT // 2 + 1  # shortest clip the centred STFT accepts (its reflect padding needs more input)
LOG_MEL_FLOOR = 1e-5  # power floor before the log: silence maps to log(1e-5) ~ -11.5

# Encoder conv subsampling: three stride-2 convolutions (kernel 3, padding 1) over time and frequency.
SUBSAMPLE_LAYERS = 3
SUBSAMPLE_KERNEL = 3
SUBSAMPLE_STRIDE = 2
SUBSAMPLE_PADDING = 1
ENCODER_SUBSAMPLING = SUBSAMPLE_STRIDE**SUBSAMPLE_LAYERS  # 8
ENCODER_FRAME_RATE = MEL_FRAME_RATE / ENCODER_SUBSAMPLING  # 12.5 encoder frames per second

SILENCE_PEAK = 1e-4  # a clip whose peak |sample| is below this (~ -80 dBFS, ~3 LSB of 16-bit) counts as silent
_WAV_STREAMING_SIZE = 0x7F000000  # data sizes at or above this are "unknown length" placeholders (piped WAVs)
TRUNCATION_FRACTION = 0.1  # a clip may decode up to 10% shorter than declared ...
TRUNCATION_SECONDS = 0.5  # ... or 0.5 s shorter, whichever is less: half a second is already a lost word
TRUNCATION_SLACK_SECONDS = 0.05  # plus this, for durations rounded in a manifest and codec frame padding


class AudioError(InvalidInput):
    """An audio file that cannot be used (unreadable, truncated, empty or silent); the message names the file."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, duration: float | None = None) -> torch.Tensor:
    """Read an audio file as mono float32 at `sample_rate`: FloatTensor (N,), values in [-1, 1].

    duration: the clip's length in seconds as a manifest states it, if known. Raises AudioError naming the file
    when it is unreadable, truncated (see the module docstring), has no samples, or is silent.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        with sf.SoundFile(str(path)) as f:
            declared, rate = f.frames, f.samplerate
            data = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: cannot read audio ({e})") from None
    _check_wav_complete(path)
    if data.shape[0] == 0:
        raise AudioError(f"{path}: audio has no samples")
    got = data.shape[0] / rate
    for expected, source in ((declared / rate, "its header declares"), (duration, "the manifest's duration is")):
        if expected is not None and expected - got > truncation_tolerance(expected):
            raise AudioError(f"{path}: truncated or corrupt audio: decodes to {got:.2f} s but {source} "
                             f"{expected:.2f} s")
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if not torch.isfinite(wav).all():
        raise AudioError(f"{path}: audio contains NaN or Inf samples")
    if wav.abs().max() < SILENCE_PEAK:
        raise AudioError(f"{path}: audio is silent (peak below {SILENCE_PEAK})")
    return resample(wav, rate, sample_rate)


def truncation_tolerance(seconds: float) -> float:
    """How much shorter than `seconds` a clip may decode before it counts as truncated (see the module docstring)."""
    return min(TRUNCATION_FRACTION * seconds, TRUNCATION_SECONDS) + TRUNCATION_SLACK_SECONDS


def _check_wav_complete(path: Path) -> None:
    """libsndfile silently reads a WAV cut off mid-data as a shorter clip; a cut clip no longer matches its
    transcript, so compare the declared data size with the bytes actually present."""
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        file_size = path.stat().st_size
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                available = file_size - f.tell()
                if size < _WAV_STREAMING_SIZE and size > available:
                    raise AudioError(f"{path}: truncated WAV (header declares {size} data bytes, file has {available})")
                return
            f.seek(size + (size & 1), 1)  # RIFF chunks are word-aligned


def resample(wav: torch.Tensor, orig_rate: int, new_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Resample (..., N) from `orig_rate` to `new_rate` (identity when equal)."""
    if orig_rate == new_rate:
        return wav
    return _resampler(int(orig_rate), int(new_rate))(wav)


@functools.lru_cache(maxsize=16)
def _resampler(orig_rate: int, new_rate: int) -> nn.Module:
    # The sinc kernel depends only on the rate pair; building it per clip would dominate small-file loading.
    return torchaudio.transforms.Resample(orig_rate, new_rate)


class LogMel(nn.Module):
    """Waveform -> log-mel frames, frames first: (N,) -> (T, n_mels) or (B, N) -> (B, T, n_mels).

    T = mel_frames(N). Stateless apart from fixed buffers (window, filterbank), so it runs on CPU in data
    workers or on the GPU alike.
    """

    def __init__(self, n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE):
        super().__init__()
        if n_mels <= 0:
            raise ValueError(f"n_mels must be positive, got {n_mels}")
        self.n_mels = n_mels
        self.spec = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=N_FFT,
            win_length=WIN_LENGTH,
            hop_length=HOP_LENGTH,
            n_mels=n_mels,
            power=2.0,
            center=True,
            norm="slaney",
            mel_scale="slaney",
        )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wav: (N,) or (B, N) float -> (T, n_mels) or (B, T, n_mels) natural-log mel power."""
        if wav.shape[-1] < MIN_SAMPLES:
            raise ValueError(f"LogMel needs at least {MIN_SAMPLES} samples, got {wav.shape[-1]}")
        mel = self.spec(wav.float())  # (..., n_mels, T)
        return mel.clamp(min=LOG_MEL_FLOOR).log().transpose(-1, -2)


def mel_frames(num_samples):
    """Mel frames for a clip of `num_samples` samples at 16 kHz (int or LongTensor); center=True padding."""
    return num_samples // HOP_LENGTH + 1


def encoder_frames(num_mel_frames):
    """Encoder output frames for `num_mel_frames` mel frames (int or LongTensor), exactly as the conv stack
    computes them: each layer maps t -> floor((t + 2*padding - kernel) / stride) + 1, i.e. ceil(t / 8) overall."""
    t = num_mel_frames
    for _ in range(SUBSAMPLE_LAYERS):
        t = conv_output_frames(t)
    return t


def conv_output_frames(t):
    """Output length of one subsampling conv for input length t (int or LongTensor); applies to time and to the
    mel-bin axis alike."""
    return (t + 2 * SUBSAMPLE_PADDING - SUBSAMPLE_KERNEL) // SUBSAMPLE_STRIDE + 1


def spec_augment(
    mel: torch.Tensor,
    lengths: torch.Tensor,
    *,
    freq_masks: int,
    freq_width: int,
    time_masks: int,
    time_width_frac: float,
) -> torch.Tensor:
    """SpecAugment frequency and time masking of a padded batch; returns a new tensor.

    mel: (B, T, F); lengths: (B,) valid frames per row. Each row gets `freq_masks` bands of 0..freq_width bins
    and `time_masks` spans of 0..floor(time_width_frac * length) frames, placed uniformly inside the row's valid
    frames. Masked values become the row's mean over its valid frames (a neutral level rather than a spike of
    log(0)); padding frames are never touched. Randomness comes from the global torch RNG on mel's device.
    """
    if mel.dim() != 3:
        raise ValueError(f"spec_augment expects mel of shape (B, T, F), got {tuple(mel.shape)}")
    if freq_masks < 0 or freq_width < 0 or time_masks < 0 or not 0.0 <= time_width_frac <= 1.0:
        raise ValueError(
            f"bad spec_augment settings: freq_masks={freq_masks}, freq_width={freq_width}, "
            f"time_masks={time_masks}, time_width_frac={time_width_frac} (counts >= 0, fraction in [0, 1])"
        )
    B, T, F = mel.shape
    device = mel.device
    lengths = lengths.to(device)
    valid = lengths_mask(lengths, T)  # (B, T)
    mask = torch.zeros(B, T, F, dtype=torch.bool, device=device)
    if freq_masks and freq_width:
        band = _random_spans(torch.full((B, freq_masks), F, device=device), min(freq_width, F), F)
        mask |= band[:, None, :]
    if time_masks and time_width_frac > 0:
        room = lengths[:, None].expand(B, time_masks)
        max_width = (lengths.float() * time_width_frac).floor().long()[:, None].expand(B, time_masks)
        span = _random_spans(room, max_width, T)
        mask |= span[:, :, None]
    mask &= valid[:, :, None]
    n_valid = (lengths.clamp(min=1) * F).to(mel.dtype)
    fill = (mel * valid[:, :, None]).sum(dim=(1, 2)) / n_valid  # (B,) mean over the valid frames
    return torch.where(mask, fill[:, None, None].to(mel.dtype), mel)


def _random_spans(room: torch.Tensor, max_width, size: int) -> torch.Tensor:
    """Union of random spans per row as a (B, size) bool mask. room: (B, M) positions available per span
    (spans stay inside [0, room)); max_width: int or (B, M) longest span. Width ~ U{0..max_width},
    start ~ U{0..room - width}."""
    u_width = torch.rand(room.shape, device=room.device)
    u_start = torch.rand(room.shape, device=room.device)
    width = (u_width * (torch.as_tensor(max_width, device=room.device) + 1)).floor().long()
    width = torch.minimum(width, room)
    start = (u_start * (room - width + 1)).floor().long()
    pos = torch.arange(size, device=room.device)
    inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])  # (B, M, size)
    return inside.any(dim=1)
