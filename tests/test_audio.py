"""omni.audio: loading + resampling, the log-mel frontend, frame arithmetic, bad-file errors, SpecAugment."""

import math
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from omni.audio import (
    N_MELS,
    SAMPLE_RATE,
    AudioError,
    LogMel,
    encoder_frames,
    load_audio,
    mel_frames,
    spec_augment,
    truncation_tolerance,
)


def _sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def speech_clip(tmp_path):
    """A real espeak-ng utterance (22.05 kHz), or a speech-like harmonic clip with noise when espeak-ng is absent."""
    path = tmp_path / "clip.wav"
    exe = shutil.which("espeak-ng")
    if exe:
        subprocess.run([exe, "-v", "en-us", "-w", str(path), "the red circle is on the table"], check=True)
    else:
        rng = np.random.default_rng(0)
        t = np.arange(int(22050 * 1.3)) / 22050
        f0 = 120 + 30 * np.sin(2 * np.pi * 2 * t)
        phase = 2 * np.pi * np.cumsum(f0) / 22050
        wav = sum(np.sin(k * phase) / k for k in range(1, 12)) * 0.2 + 0.01 * rng.standard_normal(t.size)
        sf.write(path, wav.astype(np.float32), 22050)
    return path


def test_log_mel_of_real_clip_has_expected_frames_and_finite_values(speech_clip):
    wav = load_audio(speech_clip)
    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert abs(wav.shape[0] - sf.info(str(speech_clip)).duration * SAMPLE_RATE) <= 1
    mel = LogMel()(wav)
    assert mel.shape == (mel_frames(wav.shape[0]), N_MELS)
    assert torch.isfinite(mel).all()
    assert mel.max() > mel.min() + 10  # speech has dynamics, not a constant floor
    batched = LogMel()(torch.stack([wav, wav]))
    assert batched.shape == (2, *mel.shape)
    torch.testing.assert_close(batched[1], mel)


@pytest.mark.parametrize("n", [400, 1599, 1600, 1601, 16000, 16159, 16160])
def test_mel_frames_matches_the_frontend(n):
    assert LogMel(n_mels=40)(torch.randn(n)).shape == (mel_frames(n), 40)


def test_encoder_frames_is_ceil_div_8_for_ints_and_tensors():
    ts = list(range(1, 70))
    assert [encoder_frames(t) for t in ts] == [math.ceil(t / 8) for t in ts]
    assert encoder_frames(torch.tensor(ts)).tolist() == [math.ceil(t / 8) for t in ts]


@pytest.mark.parametrize("rate", [8000, 44100])
def test_resampling_keeps_duration_and_frequency(tmp_path, rate):
    path = tmp_path / f"sine_{rate}.wav"
    sf.write(path, _sine(440.0, rate, 1.0), rate)
    wav = load_audio(path)
    assert abs(wav.shape[0] - SAMPLE_RATE) <= 1
    spectrum = torch.fft.rfft(wav).abs()
    peak_hz = spectrum.argmax().item() * SAMPLE_RATE / wav.shape[0]
    assert abs(peak_hz - 440.0) <= 2.0
    assert abs(wav.abs().max().item() - 0.5) < 0.02  # no gain change


def test_stereo_is_mixed_down(tmp_path):
    path = tmp_path / "stereo.wav"
    left = _sine(300.0, SAMPLE_RATE, 0.5)
    sf.write(path, np.stack([left, np.zeros_like(left)], axis=1), SAMPLE_RATE)
    wav = load_audio(path)
    torch.testing.assert_close(wav, torch.from_numpy(left) / 2, atol=1e-4, rtol=0)


def _truncated(tmp_path):
    path = tmp_path / "truncated.wav"
    sf.write(path, _sine(300.0, SAMPLE_RATE, 1.0), SAMPLE_RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "truncated"


def _zero_bytes(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    return path, "cannot read"


def _text_file(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    return path, "cannot read"


def _silent(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    return path, "silent"


def _no_samples(tmp_path):
    path = tmp_path / "nosamples.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    return path, "no samples"


def _missing(tmp_path):
    return tmp_path / "missing.wav", "not found"


@pytest.mark.parametrize("make", [_truncated, _zero_bytes, _text_file, _silent, _no_samples, _missing])
def test_bad_audio_raises_error_naming_the_file(tmp_path, make):
    path, reason = make(tmp_path)
    with pytest.raises(AudioError, match=reason) as info:
        load_audio(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_truncation_tolerance_is_10_percent_or_half_a_second():
    assert truncation_tolerance(1.0) == pytest.approx(0.1 + 0.05)
    assert truncation_tolerance(3.0) == pytest.approx(0.3 + 0.05)
    assert truncation_tolerance(60.0) == pytest.approx(0.5 + 0.05)


@pytest.mark.parametrize("stated, ok", [(1.0, True), (1.1, True), (1.2, False), (0.5, True), (30.0, False)])
def test_load_audio_checks_the_stated_duration(tmp_path, stated, ok):
    """A 1 s clip: a manifest duration up to 0.15 s longer is rounding or codec framing; more means it was cut. A
    longer clip than stated is not a truncation (and is left to the length limits)."""
    path = tmp_path / "one_second.wav"
    sf.write(path, _sine(220, SAMPLE_RATE, 1.0), SAMPLE_RATE)
    if ok:
        assert load_audio(path, duration=stated).shape == (SAMPLE_RATE,)
    else:
        with pytest.raises(AudioError, match=rf"one_second\.wav: truncated or corrupt audio: decodes to 1\.00 s but "
                                             rf"the manifest's duration is {stated:.2f} s"):
            load_audio(path, duration=stated)


@pytest.mark.parametrize("fmt, subtype", [("MP3", "MPEG_LAYER_III"), ("OGG", "OPUS"), ("OGG", "VORBIS"),
                                         ("FLAC", None)])
def test_load_audio_rejects_half_a_compressed_file(tmp_path, fmt, subtype):
    """A partial download of each compressed format libsndfile writes: an error, given the true duration; the
    complete file loads."""
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, _sine(220, SAMPLE_RATE, 3.0) * np.linspace(0.5, 1.0, 3 * SAMPLE_RATE, dtype=np.float32),
             SAMPLE_RATE, format=fmt, subtype=subtype)
    assert abs(load_audio(path, duration=3.0).shape[0] - 3 * SAMPLE_RATE) < 0.05 * SAMPLE_RATE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AudioError, match=r"clip\.\w+: (truncated or corrupt audio|cannot read audio)"):
        load_audio(path, duration=3.0)


def _augment(mel, lengths):
    return spec_augment(mel, lengths, freq_masks=2, freq_width=8, time_masks=2, time_width_frac=0.3)


def test_spec_augment_masks_only_valid_frames():
    torch.manual_seed(0)
    mel = torch.randn(4, 60, 32)
    lengths = torch.tensor([60, 40, 13, 1])
    out = _augment(mel, lengths)
    changed = out != mel
    for row, n in enumerate(lengths.tolist()):
        assert not changed[row, n:].any(), "padding frames must stay untouched"
    assert changed[:3].any(dim=(1, 2)).all(), "every row with room gets masked"
    # Masked values are the row mean of its valid frames.
    row_mean = mel[1, :40].mean()
    torch.testing.assert_close(out[1][changed[1]], row_mean.expand(int(changed[1].sum())))


def test_spec_augment_is_reproducible_under_manual_seed():
    mel = torch.randn(3, 50, 16)
    lengths = torch.tensor([50, 30, 20])
    torch.manual_seed(123)
    a = _augment(mel, lengths)
    torch.manual_seed(123)
    b = _augment(mel, lengths)
    torch.manual_seed(124)
    c = _augment(mel, lengths)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_spec_augment_without_masks_is_identity_and_checks_settings():
    mel = torch.randn(2, 10, 8)
    lengths = torch.tensor([10, 5])
    out = spec_augment(mel, lengths, freq_masks=0, freq_width=5, time_masks=0, time_width_frac=0.2)
    assert torch.equal(out, mel)
    with pytest.raises(ValueError, match="time_width_frac=1.5"):
        spec_augment(mel, lengths, freq_masks=1, freq_width=2, time_masks=1, time_width_frac=1.5)
