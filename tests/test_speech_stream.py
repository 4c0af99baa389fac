"""omni.speech streaming synthesis: SpeechSynthesizer.stream equals the one-shot synthesize for the convolutional
codec decoder and HiFi-GAN (at chunk sizes that do and do not divide the length, 1-frame and empty utterances),
the receptive fields it relies on cover what an impulse probe measures, streamed Griffin-Lim keeps the one-shot's
log-mel without clicks at the joins, and write_stream (infer_chat.py --speak) writes what the stream yields."""

import math
from types import SimpleNamespace

import pytest
import soundfile as sf
import torch
from torch import nn

from omni import speech
from omni.audio import LogMel
from omni.codec import Codec, CodecConfig
from omni.speech import SpeechSynthesizer, Vocoder, decoder_context, generator_context, stream_conv, write_stream
from omni.talker import Talker, TalkerConfig
from omni.vocoder import Generator, VocoderConfig, griffin_lim

N_MELS, VOCAB, K, N_CODES = 16, 64, 2, 16
ONE_MRF = VocoderConfig(n_mels=N_MELS, upsample_initial_channels=16, resblock_kernel_sizes=(3,),
                        resblock_dilations=((1,),))
FULL_MRF = VocoderConfig(n_mels=N_MELS, upsample_initial_channels=16)  # kernels (3, 7, 11), dilations (1, 3, 5)


def unit_gain(model: nn.Module) -> nn.Module:
    """Conv weights ~ N(0, 1 / fan-in): activations stay O(1) through the stack, so outputs are far from zero (a
    stream error shows against the tolerance) and far taps leave a visible trace (the impulse probe sees them).
    HiFi-GAN's own N(0, 0.01) init makes a near-silent, near-local random generator."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                fan = m.weight.shape[1] * m.weight.shape[2] if isinstance(m, nn.Conv1d) else \
                    m.weight.shape[0] * m.weight.shape[2] / m.stride[0]
                m.weight.copy_(torch.randn_like(m.weight) / math.sqrt(fan))
    return model


def codec(frame_rate_hz: float = 12.5) -> Codec:
    return Codec(CodecConfig(n_mels=N_MELS, frame_rate_hz=frame_rate_hz, channels=8, latent_dim=8, n_codebooks=K,
                             codebook_size=N_CODES)).eval()


def generator(cfg: VocoderConfig = ONE_MRF) -> Generator:
    return unit_gain(Generator(cfg).eval().remove_weight_norm())


def synthesizer(vocoder: Vocoder, frame_rate_hz: float = 12.5) -> SpeechSynthesizer:
    """A synthesizer of tiny random parts; tests set `latents` (the Talker's part) to the utterance they need."""
    talker = Talker(TalkerConfig(text_vocab_size=VOCAB, n_codebooks=K, codebook_size=N_CODES, d_model=16,
                                 n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)).eval()
    tokenizer = SimpleNamespace(vocab_size=VOCAB, model_path="stub tokenizer")  # latents() is replaced below
    return SpeechSynthesizer(tokenizer, talker, codec(frame_rate_hz), vocoder)


def speaking(synth: SpeechSynthesizer, frames: int) -> SpeechSynthesizer:
    codes = torch.randint(0, N_CODES, (frames, K), generator=torch.Generator().manual_seed(frames))
    synth.latents = lambda text: synth.codec.rvq.lookup(codes)
    return synth


@pytest.fixture(scope="module")
def hifigan_synth():
    torch.manual_seed(0)
    return synthesizer(Vocoder(generator()))


@pytest.mark.parametrize("frames", [0, 1, 5, 45])  # code frames: empty, one, and lengths no chunk divides
@pytest.mark.parametrize("chunk_frames", [1, 7, 50, 1000])  # mel frames (a code frame is 8 of them)
def test_hifigan_stream_equals_one_shot(hifigan_synth, frames, chunk_frames):
    synth = speaking(hifigan_synth, frames)
    one_shot = synth.synthesize("hi")
    chunks = list(synth.stream("hi", chunk_frames=chunk_frames))
    if frames == 0:
        assert chunks == [] and one_shot.shape == (0,)
        return
    assert all(c.dim() == 1 and c.dtype == torch.float32 and c.device.type == "cpu" for c in chunks)
    assert all(c.shape[0] == chunk_frames * 160 for c in chunks[:-1])  # the last one takes the rest
    stream = torch.cat(chunks)
    assert stream.shape == one_shot.shape == (frames * 8 * 160,)
    assert one_shot.abs().max() > 0.1  # a loud enough signal for the tolerance to mean something
    assert (stream - one_shot).abs().max() < 1e-4


@pytest.mark.parametrize("frame_rate_hz", [12.5, 25.0])
@pytest.mark.parametrize("chunk", [1, 3, 4, 100])
def test_codec_decoder_streams_to_its_one_shot_mel(frame_rate_hz, chunk):
    torch.manual_seed(0)
    model, codes = codec(frame_rate_hz), torch.randint(0, N_CODES, (22, K))
    with torch.no_grad():
        one_shot = model.decode(codes[None])[0]
        pieces = list(stream_conv(lambda c: model.decode(c[None])[0], [codes[:9], codes[9:]], chunk=chunk,
                                  context=decoder_context(model.decoder), scale=model.cfg.downsample))
        blind = torch.cat(list(stream_conv(lambda c: model.decode(c[None])[0], [codes], chunk=chunk, context=(0, 0),
                                           scale=model.cfg.downsample)))
    torch.testing.assert_close(torch.cat(pieces), one_shot, atol=1e-4, rtol=0)
    if chunk < 22:  # without context the chunks' edges differ: the comparison above can fail
        assert (blind - one_shot).abs().max() > 1e-2


def impulse_reach(fn, x: torch.Tensor, bumped: torch.Tensor, scale: int, at: int) -> tuple[int, int]:
    """Context (left, right) in input frames that outputs need, measured: the input frame `at` differs between x
    and bumped; output frame i (at input resolution) changes only if it sees frame `at`, i.e. `at` lies within
    its left context when i > at and within its right context when i < at."""
    with torch.no_grad():
        changed = (fn(x) - fn(bumped)).abs().flatten(1).amax(1)
    frames = changed.nonzero()[:, 0] // scale
    return int(frames.max()) - at, at - int(frames.min())


@pytest.mark.parametrize("frame_rate_hz", [12.5, 25.0, 100.0])
def test_decoder_context_covers_its_impulse_response(frame_rate_hz):
    torch.manual_seed(0)
    model = unit_gain(codec(frame_rate_hz).double())
    codes = torch.randint(0, N_CODES, (60, K))
    bumped = codes.clone()
    bumped[30] = (codes[30] + 1) % N_CODES
    measured = impulse_reach(lambda c: model.decode(c[None])[0], codes, bumped, model.cfg.downsample, 30)
    derived = decoder_context(model.decoder)
    assert all(m <= d <= m + 2 for m, d in zip(measured, derived)), (measured, derived)  # enough, not wasteful


@pytest.mark.parametrize("cfg", [ONE_MRF, FULL_MRF])
def test_generator_context_covers_its_impulse_response(cfg):
    torch.manual_seed(0)
    model = generator(cfg).double()  # float64: the far taps' small contributions are not rounded away
    mel = torch.randn(60, N_MELS, dtype=torch.float64)
    bumped = mel.clone()
    bumped[30] += 1
    measured = impulse_reach(lambda m: model(m[None])[0][:, None], mel, bumped, 160, 30)
    derived = generator_context(model)
    assert all(m <= d <= m + 2 for m, d in zip(measured, derived)), (measured, derived)


def voice(seconds: float = 1.5, sr: int = 16000) -> torch.Tensor:
    """A speech-like test signal: 7 harmonics of a gliding 100-180 Hz pitch, amplitude-modulated at 3 Hz."""
    t = torch.arange(int(seconds * sr)) / sr
    phase = 2 * math.pi * torch.cumsum(140 + 40 * torch.sin(2 * math.pi * 1.3 * t), 0) / sr
    return 0.1 * (0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t).clamp(min=0)) * sum(
        torch.sin(h * phase) / h for h in range(1, 8))


@pytest.mark.parametrize("chunk", [50, 23])
def test_streamed_griffin_lim_keeps_the_one_shot_log_mel_without_clicks(chunk):
    """Griffin-Lim cannot reproduce the one-shot phase chunk by chunk; the criteria are: (1) the stream's log-mel
    is within 0.02 nats (mean |diff| per bin and frame) of the one-shot's, and its distance to the target mel within
    2 % of the one-shot's (Griffin-Lim's own error); (2) no click: no sample step within 25 ms of a join is larger
    than the largest step anywhere in the one-shot. Independent windows without context miss both (checked)."""
    logmel = LogMel(128)  # the full mel resolution: with few bins a hard cut's step hides in the coarse spectrum
    mel = logmel(voice())[:-1]  # T frames <-> T * 160 samples
    T = mel.shape[0]
    one_shot = griffin_lim(mel, n_iter=32)

    def judge(wav):
        heard, reference = logmel(wav)[:T], logmel(one_shot)[:T]
        steps = wav.diff().abs()
        join_step = max(steps[j * 160 - 400 : j * 160 + 400].max() for j in range(chunk, T, chunk))
        return ((heard - reference).abs().mean(), (heard - mel).abs().mean() / (reference - mel).abs().mean(),
                join_step / one_shot.diff().abs().max())

    stream = torch.cat(list(speech.stream_griffin_lim(lambda m: griffin_lim(m, n_iter=32), [mel[:40], mel[40:]],
                                                      chunk=chunk)))
    assert stream.shape == one_shot.shape
    mel_diff, error_ratio, click = judge(stream)
    assert mel_diff < 0.02 and error_ratio < 1.02 and click <= 1.0, (mel_diff, error_ratio, click)
    blind = torch.cat([griffin_lim(mel[a : a + chunk], n_iter=32) for a in range(0, T, chunk)])
    mel_diff, error_ratio, click = judge(blind)
    assert mel_diff > 0.02 and error_ratio > 1.02 and click > 1.0, (mel_diff, error_ratio, click)


@pytest.mark.parametrize("frames", [0, 1, 9])
def test_griffin_lim_synthesizer_streams_the_whole_utterance(frames):
    """End to end with the fallback vocoder: the stream covers exactly the one-shot's samples; an utterance that
    fits in one window (1 code frame = 8 mel frames) is vocoded in one piece, so it equals the one-shot."""
    torch.manual_seed(0)
    synth = speaking(synthesizer(Vocoder()), frames)
    one_shot, chunks = synth.synthesize("hi"), list(synth.stream("hi", chunk_frames=20))
    assert sum(c.shape[0] for c in chunks) == one_shot.shape[0] == frames * 8 * 160
    if frames == 1:
        assert len(chunks) == 1 and (chunks[0] - one_shot).abs().max() < 1e-4


def test_write_stream_writes_each_chunk_as_it_arrives(hifigan_synth, tmp_path):
    """What infer_chat.py --speak does: the file on disk equals the stream (to 16-bit PCM), and each chunk is on
    disk before the next one is made."""
    synth, out = speaking(hifigan_synth, 13), tmp_path / "out.wav"  # 104 mel frames: 4 chunks
    chunks = list(synth.stream("hi", chunk_frames=30))
    expected = torch.cat(chunks)
    on_disk = []

    def watched():
        for chunk in synth.stream("hi", chunk_frames=30):
            yield chunk
            on_disk.append(sf.info(out).frames)  # resumed only after write_stream wrote the chunk

    samples, first = write_stream(watched(), out)
    written, rate = sf.read(out, dtype="float32")
    assert rate == 16000 and samples == written.shape[0] == expected.shape[0] and first is not None
    assert abs(torch.from_numpy(written) - expected).max() <= 1 / 32768 + 1e-6
    assert on_disk == torch.tensor([c.shape[0] for c in chunks]).cumsum(0).tolist() and len(on_disk) >= 3
    assert write_stream(iter([]), tmp_path / "empty.wav") == (0, None) and sf.info(tmp_path / "empty.wav").frames == 0
