"""Speech out: text -> Talker codes -> codec decoder -> log-mel -> HiFi-GAN (or Griffin-Lim) -> 16 kHz waveform, and
the intelligibility check that closes the loop: synthesize held-out sentences, transcribe them with the Stage-B ASR
model, report the CER.

    synth = SpeechSynthesizer.from_checkpoints("checkpoints/talker_tiny", vocoder="checkpoints/vocoder_tiny")
    wav = synth.synthesize("a red circle")             # FloatTensor (N,) at omni.audio.SAMPLE_RATE
    python -m omni.speech --talker checkpoints/demo/talker --vocoder checkpoints/demo/vocoder \
        --asr checkpoints/demo/audio_enc --manifest data/speech/val.jsonl --n 50 \
        [--phrases data/speech/train.jsonl] [--json out.json]

Design choices
- Weights are the stages' final files (`talker.pt` with the `rvq_codec.pt` and `tokenizer.model` beside it,
  `hifigan.pt`, `audio_enc.pt`), each built once by omni.components.load_stage_model, so the checks the export
  applies (strict config, strict weights) apply here too.
- The vocoder is the one the vocoder run's verdict favours (HiFi-GAN or Griffin-Lim, judged by the ASR CER of
  their held-out audio, else by MR-STFT distance: omni.vocoder.judge_vocoders, stored in `hifigan.pt`),
  HiFi-GAN when the file has no verdict, Griffin-Lim when there is no `hifigan.pt`; the choice and its reason are
  logged. A missing or unfinished vocoder run never yields a randomly initialised generator: only the final
  weights file counts.
- Decoding is greedy by default (deterministic, so the CER is reproducible). The Talker predicts how many frames
  each character lasts (`pace` > 1 speaks slower) and then all frames' codes at once (omni/talker.py); its
  length is capped at its max_frames.
- `stream` yields the waveform in chunks (default 0.5 s) as they are made; infer_chat.py --speak writes them
  into the WAV as they come (`write_stream`). The codec decoder and HiFi-GAN are convolutional: each chunk is run
  with its receptive field (derived from the layers, `decoder_context` / `generator_context`) as context on both
  sides, so the stream equals `synthesize` to float rounding. Griffin-Lim is iterative over the whole signal, so
  a chunk cannot get the one-shot phase: each chunk is vocoded with 12 mel frames of context per side and
  neighbours are crossfaded over 40 ms; its log-mel stays within 0.02 nats of the one-shot's, without clicks.
  `synthesize` stays the one-shot reference.
- The CER compares normalised transcripts (omni.text_frontend.normalize_transcript) summed over the corpus.
- `--phrases MANIFEST` scores the one-word answers too (the records marked "phrase": true, e.g. in the synthetic
  speech sets' train.jsonl: "black", "top left", ...), apart from the sentences: Stage E answers are mostly such
  words, and a Talker that reads sentences well can still babble on a single word. The phrases are training texts
  of the synthetic sets, so that CER is not a held-out figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import soundfile as sf
import torch
from torch import nn

from omni.asr import Transcriber
from omni.audio import HOP_LENGTH, SAMPLE_RATE
from omni.components import CODEC_FILE, TALKER_FILE, VOCODER_FILE, load_stage_model
from omni.data.manifest import read_jsonl
from omni.data.speech_layouts import load_asr_records
from omni.errors import InvalidInput, MissingInput
from omni.metrics import char_error_counts, word_error_counts
from omni.text_frontend import normalize_transcript, text_units
from omni.tokenizer import TOKENIZER_FILE, Tokenizer
from omni.vocoder import VOCODER_LABELS, VOCODERS, griffin_lim

STREAM_CHUNK_FRAMES = 50  # mel frames (10 ms each) per streamed chunk: 0.5 s of audio
GL_CONTEXT_FRAMES = 12  # mel frames of context on each side of a streamed Griffin-Lim window
GL_FADE_FRAMES = 4  # mel frames over which streamed Griffin-Lim windows are crossfaded


class Vocoder:
    """log-mel (B, T, F) -> waveform (B, T * hop): the trained HiFi-GAN generator, or Griffin-Lim (generator None).
    `passed_over`: a HiFi-GAN generator that the vocoder run's verdict ranked below Griffin-Lim, kept so that a
    caller offering a choice (omni.chat_session) can still offer it; this vocoder never speaks with it."""

    def __init__(self, generator=None, *, griffin_lim_iters: int = 32, passed_over=None):
        # Every inference path comes through here: fold HiFi-GAN's weight norm into plain weights once.
        self.generator = None if generator is None else generator.remove_weight_norm()
        self.griffin_lim_iters = griffin_lim_iters
        self.passed_over = passed_over
        self.name = "hifigan" if generator is not None else "griffin-lim"

    @classmethod
    def load(cls, path: str | Path | None, device: torch.device | str = "cpu", log=print, *,
             prefer: str | None = None) -> Vocoder:
        """The vocoder of a vocoder run (its dir or hifigan.pt): HiFi-GAN or Griffin-Lim, whichever the run's
        verdict favours (`judged`); Griffin-Lim when there are no final weights. prefer ("hifigan" or
        "griffin-lim") overrides the verdict."""
        if prefer not in (None, *VOCODERS):
            raise InvalidInput(f"vocoder {prefer!r}: choose one of {VOCODERS}")
        file = None if path is None else (Path(path) / VOCODER_FILE if Path(path).is_dir() else Path(path))
        if file is None or not file.is_file():
            if prefer == "hifigan":
                raise MissingInput(f"HiFi-GAN asked for, but no vocoder weights{'' if file is None else f' at {file}'}")
            log(f"no vocoder weights{'' if file is None else f' at {file}'}: using the Griffin-Lim fallback")
            return cls()
        generator, weights = load_stage_model(file, "vocoder", device)
        return cls.judged(generator, weights.extras.get("judge"), source=str(file), prefer=prefer, log=log)

    @classmethod
    def judged(cls, generator, judge: dict | None, *, source: str, prefer: str | None = None, log=print) -> Vocoder:
        """HiFi-GAN `generator` or Griffin-Lim, as `judge` says: the verdict train_vocoder.py stores in hifigan.pt
        (and an export in its config.json), omni.vocoder.judge_vocoders' {"choice", "reason", ...} from the
        held-out ASR CER (else MR-STFT distance) of both. No verdict (a run from before the judge): HiFi-GAN, as
        then. prefer ("hifigan" or "griffin-lim") overrides the verdict. The choice and its reason are logged."""
        if judge is not None and not (isinstance(judge, dict) and judge.get("choice") in VOCODERS
                                      and isinstance(judge.get("reason"), str)):
            raise InvalidInput(f"{source}: the vocoder verdict 'judge' must choose one of {VOCODERS}, got {judge!r}")
        verdict = f"the verdict in {source}: {judge['reason']}" if judge else f"no verdict in {source}"
        if prefer is not None:
            choice, why = prefer, f"{VOCODER_LABELS[prefer]}, as asked ({verdict})"
        elif judge is None:
            choice, why = "hifigan", f"HiFi-GAN from {source} ({verdict}: a run from before the vocoder judge)"
        else:
            choice, why = judge["choice"], f"{judge['reason']} (verdict of the vocoder run: {source}; every number " \
                                           "in vocoder_judge.json beside its hifigan.pt)"
        log(f"vocoder: {why}")
        return cls(generator) if choice == "hifigan" else cls(passed_over=generator)

    @torch.no_grad()
    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            return griffin_lim(mel, n_iter=self.griffin_lim_iters)
        return self.generator(mel.to(next(self.generator.parameters()).device)).float()


class SpeechSynthesizer:
    """Text -> 16 kHz waveform with a Talker, its codec and a vocoder."""

    def __init__(self, tokenizer: Tokenizer, talker, codec, vocoder: Vocoder, *, temperature: float = 0.0,
                 pace: float = 1.0):
        cfg_t, cfg_c = talker.cfg, codec.cfg
        if (cfg_t.n_codebooks, cfg_t.codebook_size) != (cfg_c.n_codebooks, cfg_c.codebook_size):
            raise ValueError(f"the Talker speaks {cfg_t.n_codebooks} x {cfg_t.codebook_size} codes, the codec has "
                             f"{cfg_c.n_codebooks} x {cfg_c.codebook_size}")
        if vocoder.generator is not None and vocoder.generator.conv_pre.in_channels != cfg_c.n_mels:
            raise ValueError(f"the vocoder takes {vocoder.generator.conv_pre.in_channels} mel bins, the codec makes "
                             f"{cfg_c.n_mels}")
        if tokenizer.vocab_size != cfg_t.text_vocab_size:
            raise ValueError(f"{tokenizer.model_path} has {tokenizer.vocab_size} pieces, the Talker was trained on "
                             f"{cfg_t.text_vocab_size}")
        self.tokenizer, self.talker, self.codec, self.vocoder = tokenizer, talker, codec, vocoder
        self.temperature, self.pace = temperature, pace
        self.device = next(talker.parameters()).device

    @classmethod
    def from_checkpoints(cls, talker_dir: str | Path, *, vocoder: str | Path | None = None,
                         tokenizer: str | Path | None = None, device: torch.device | str = "cpu", log=print,
                         **kwargs) -> SpeechSynthesizer:
        """talker_dir holds talker.pt, rvq_codec.pt and tokenizer.model (what train_talker.py writes); vocoder is a
        vocoder run dir or hifigan.pt (None or missing: Griffin-Lim)."""
        talker, _ = load_stage_model(Path(talker_dir) / TALKER_FILE, "talker", device)
        codec, _ = load_stage_model(Path(talker_dir) / CODEC_FILE, "codec", device)
        tok = Tokenizer.load(tokenizer or Path(talker_dir) / TOKENIZER_FILE)
        return cls(tok, talker, codec, Vocoder.load(vocoder, device, log), **kwargs)

    @torch.no_grad()
    def latents(self, text: str) -> torch.Tensor:
        """The codec latents (F, D) the Talker makes for `text` (F may be 0): its units, their predicted durations
        (times `pace`), then every frame's code distribution at once. Greedy (temperature 0) synthesis decodes the
        expected code vector of each frame (`Codec.expected_latents`) rather than the most likely codes: on the
        demo's held-out sentences the TTS->ASR CER was 6.1 % instead of 7.3 % (README, Speech out). Sampling
        decodes the sampled codes."""
        units = text_units(self.tokenizer, text)
        chars, tokens = (torch.tensor([x], device=self.device) for x in (units.chars, units.tokens))
        codes, lengths, probs = self.talker.generate(chars, tokens, temperature=self.temperature, pace=self.pace,
                                                     return_probs=True)
        n = int(lengths[0])
        if self.temperature == 0:
            return self.codec.expected_latents(probs[0, :n])
        return self.codec.rvq.lookup(codes[0, :n])

    @torch.no_grad()
    def mel(self, text: str) -> torch.Tensor:
        """The log-mel (T, F) the Talker and codec make for `text` (T = downsample x code frames; may be 0)."""
        z = self.latents(text)
        if z.shape[0] == 0:
            return torch.zeros(0, self.codec.cfg.n_mels, device=self.device)
        return self.codec.decode_latents(z[None])[0]

    @torch.no_grad()
    def synthesize(self, text: str) -> torch.Tensor:
        """text -> waveform (N,) float32 on CPU at SAMPLE_RATE, N = 160 x mel frames (empty if the Talker ends at
        once). The one-shot reference that `stream` reproduces."""
        mel = self.mel(text)
        if mel.shape[0] == 0:
            return torch.zeros(0)
        return self.vocoder(mel[None])[0].cpu()

    @torch.no_grad()  # on a generator function torch applies it while the generator runs, not between yields
    def stream(self, text: str, *, chunk_frames: int = STREAM_CHUNK_FRAMES) -> Iterator[torch.Tensor]:
        """text -> waveform chunks (n,) float32 on CPU at SAMPLE_RATE, each yielded as soon as it is vocoded:
        `chunk_frames` mel frames (10 ms each) of audio per chunk, the last one shorter or longer (up to the right
        context; with Griffin-Lim the first is half a crossfade shorter). Nothing is yielded when the Talker ends at
        once. The codec decoder and HiFi-GAN run chunk by chunk with their receptive fields as context
        (`decoder_context`, `generator_context`), so the concatenated chunks equal `synthesize(text)` up to float
        rounding; Griffin-Lim runs on overlapping windows joined by crossfades (`stream_griffin_lim`): the same
        log-mel as one-shot within a tolerance, not the same samples. The Talker's latents come all at once
        (`latents`), so the time to first audio is the Talker's time plus one codec and one vocoder window."""
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        z = self.latents(text)
        if z.shape[0] == 0:
            return
        if self.vocoder.generator is None:
            vocoder_right = GL_CONTEXT_FRAMES
            vocode = functools.partial(stream_griffin_lim, lambda m: self.vocoder(m[None])[0], chunk=chunk_frames)
        else:
            context = generator_context(self.vocoder.generator)
            vocoder_right = context[1]
            vocode = functools.partial(stream_conv, lambda m: self.vocoder(m[None])[0], chunk=chunk_frames,
                                       context=context, scale=HOP_LENGTH)
        # A codec window decodes at least all the mel that a vocoder chunk and its right context need, so the first
        # audio takes one call of each, and at least as many code frames as its context, so that recomputing the
        # context at most doubles the decoder's work (it is cheap next to the vocoder; per-call overhead is not).
        ds, context = self.codec.cfg.downsample, decoder_context(self.codec.decoder)
        mel = stream_conv(lambda c: self.codec.decode_latents(c[None])[0], [z], context=context, scale=ds,
                          chunk=max(-(-(chunk_frames + vocoder_right) // ds), sum(context)))
        wavs = vocode(mel)
        for wav in wavs:
            yield wav.float().cpu()


# ---- streaming: chunked convolution with receptive-field context, and windowed Griffin-Lim
#
# A convolutional stack's output at one position depends on a bounded span of input around it, its receptive
# field. Running the stack on a chunk plus that much context on each side therefore gives, in the chunk's own
# span, what the whole-signal run gives: the zero padding at the window's artificial edges reaches no further in
# than the context. At the true start and end of the signal the window edges are the signal's edges, as in one
# shot. The codec decoder's masking past each row's length is a no-op for one unpadded row, in both runs.
#
# The receptive fields are derived from the layers' kernel sizes, dilations, paddings and strides, walked in the
# order the modules' forward() applies them (not measured): tests/test_speech_stream.py checks them against an
# impulse probe. Reaches are in input frames; a layer after an upsampling by `scale` reaches scale times fewer
# input frames; layers in series add up, parallel branches (HiFi-GAN's MRF blocks) take the widest.


def _conv_reach(conv: nn.Module, scale: int) -> tuple[float, float]:
    """(left, right) reach of one Conv1d (stride 1) or ConvTranspose1d, in frames of the stack's input when the
    layer runs at `scale` samples per input frame. Conv1d output n sees inputs n - p + d*j (j < k); ConvTranspose1d
    output n sees inputs m with s*m - p + d*j = n, i.e. (n + p - d*j) / s, around n / s."""
    k, d, p, s = conv.kernel_size[0], conv.dilation[0], conv.padding[0], conv.stride[0]
    if isinstance(conv, nn.ConvTranspose1d):
        return (d * (k - 1) - p) / s / scale, p / s / scale
    if not isinstance(conv, nn.Conv1d) or s != 1:
        raise TypeError(f"no receptive-field rule for {conv}")
    return p / scale, (d * (k - 1) - p) / scale


def _series(*reaches: tuple[float, float]) -> tuple[float, float]:
    return sum(r[0] for r in reaches), sum(r[1] for r in reaches)


def _parallel(*reaches: tuple[float, float]) -> tuple[float, float]:
    return max(r[0] for r in reaches), max(r[1] for r in reaches)


def _context_frames(reach: tuple[float, float]) -> tuple[int, int]:
    # +1: positions at the upsampled rates fall between input frames, so a fractional reach can touch one more.
    return math.ceil(reach[0]) + 1, math.ceil(reach[1]) + 1


def decoder_context(decoder: nn.Module) -> tuple[int, int]:
    """(left, right) code frames of context that omni.codec.Decoder needs: stem, then per level an upsampling
    ConvTranspose1d and a residual unit (dilated conv, 1x1 proj; the skip adds no reach), then the output conv."""
    reaches, scale = [_conv_reach(decoder.stem, 1)], 1
    for up, res in zip(decoder.up, decoder.res):
        reaches.append(_conv_reach(up, scale))
        scale *= up.stride[0]
        reaches += [_conv_reach(res.conv, scale), _conv_reach(res.proj, scale)]
    reaches.append(_conv_reach(decoder.out, scale))
    return _context_frames(_series(*reaches))


def generator_context(generator: nn.Module) -> tuple[int, int]:
    """(left, right) mel frames of context that omni.vocoder.Generator (HiFi-GAN) needs: conv_pre, then per
    upsampling a ConvTranspose1d and an MRF (parallel residual blocks, each a series of dilated + plain convs),
    then conv_post."""
    reaches, scale = [_conv_reach(generator.conv_pre, 1)], 1
    for up, mrf in zip(generator.ups, generator.mrfs):
        reaches.append(_conv_reach(up, scale))
        scale *= up.stride[0]
        reaches.append(_parallel(*(_series(*(_conv_reach(c, scale) for pair in zip(block.dilated, block.plain)
                                             for c in pair)) for block in mrf)))
    reaches.append(_conv_reach(generator.conv_post, scale))
    return _context_frames(_series(*reaches))


class _FrameBuffer:
    """Frames (T, ...) arriving in pieces: the frames from `start` on are kept, indexed by their absolute position."""

    def __init__(self):
        self.frames: torch.Tensor | None = None
        self.start = self.end = 0

    def append(self, piece: torch.Tensor) -> None:
        self.frames = piece if self.frames is None else torch.cat([self.frames, piece])
        self.end += piece.shape[0]

    def window(self, a: int, b: int) -> torch.Tensor:
        """Frames [a, b) (absolute; a >= start)."""
        return self.frames[a - self.start : b - self.start]

    def drop_before(self, a: int) -> None:
        if a > self.start:
            self.frames, self.start = self.frames[a - self.start :], a


def stream_conv(fn: Callable[[torch.Tensor], torch.Tensor], pieces: Iterable[torch.Tensor], *, chunk: int,
                context: tuple[int, int], scale: int) -> Iterator[torch.Tensor]:
    """fn maps frames (T, ...) to (T * scale, ...) convolutionally with a receptive field within `context` =
    (left, right) frames. Applied to the concatenation of `pieces` `chunk` frames at a time, each window with its
    context, yielding each chunk's output as soon as its right context has arrived: the concatenated output is
    fn(concatenated pieces) up to float rounding."""
    left, right = context
    buf, done = _FrameBuffer(), 0
    for piece in pieces:
        buf.append(piece)
        while buf.end - done >= chunk + right:
            start = max(0, done - left)
            out = fn(buf.window(start, done + chunk + right))
            yield out[(done - start) * scale : (done - start + chunk) * scale]
            done += chunk
            buf.drop_before(done - left)
    if buf.end > done:  # the rest (< chunk + right frames), its window ending where the signal does
        start = max(0, done - left)
        yield fn(buf.window(start, buf.end))[(done - start) * scale :]


def stream_griffin_lim(vocode: Callable[[torch.Tensor], torch.Tensor], pieces: Iterable[torch.Tensor], *,
                       chunk: int, context: int = GL_CONTEXT_FRAMES,
                       fade: int = GL_FADE_FRAMES) -> Iterator[torch.Tensor]:
    """Griffin-Lim over mel `pieces` (T, n_mels) -> waveform chunks, `chunk` frames at a time. Griffin-Lim
    iterates over the whole signal from zero phase, so no window reproduces the one-shot phase; instead each chunk
    is vocoded with `context` mel frames on each side (its edges are then consistent spectrogram frames, not
    truncated ones) and neighbouring windows are crossfaded over `fade` frames centred on their boundary (raised
    cosine; a window that comes out in opposite polarity to its neighbour in the fade, which Griffin-Lim cannot
    tell apart, is flipped first, so the fade never cancels). The log-mel matches the one-shot's within the
    tolerance tests/test_speech_stream.py states, and the joins are continuous."""
    hop = HOP_LENGTH
    buf, done, tail = _FrameBuffer(), 0, None  # tail: the previous window's samples over the next fade zone
    half = min(fade, chunk, 2 * context) * hop // 2  # zones stay apart and inside both windows

    def window(last: bool) -> torch.Tensor:
        nonlocal done, tail
        start, stop = max(0, done - context), min(buf.end, done + chunk + context)
        wav = vocode(buf.window(start, stop))
        offset = start * hop  # sample index of wav[0]
        head = done * hop - (half if tail is not None else 0)  # first sample to emit
        out = wav[head - offset : (buf.end if last else done + chunk) * hop - (0 if last else half) - offset]
        if tail is not None:
            fresh = out[: 2 * half]
            if (fresh * tail).sum() < 0:
                wav, out, fresh = -wav, -out, -fresh
            ramp = 0.5 - 0.5 * torch.cos(torch.linspace(0, math.pi, 2 * half + 2, device=wav.device)[1:-1])
            out = torch.cat([tail + ramp * (fresh - tail), out[2 * half :]])
        end = (done + chunk) * hop
        tail = None if last else wav[end - half - offset : end + half - offset]
        done = buf.end if last else done + chunk
        buf.drop_before(done - context)
        return out

    for piece in pieces:
        buf.append(piece)
        while buf.end - done >= chunk + context + 1:  # + 1: this window does not reach the end
            yield window(last=False)
    while buf.end > done:  # the window that reaches the end is the last (up to chunk + context frames)
        yield window(last=done + chunk + context >= buf.end)


def write_stream(chunks: Iterable[torch.Tensor], path: str | Path) -> tuple[int, float | None]:
    """Write waveform chunks (n,) at SAMPLE_RATE into a 16-bit WAV as they arrive (each flushed, so the file grows
    while later chunks are still being made) -> (samples written, seconds from the call to the first chunk on
    disk, None when there was none). `chunks` should be lazy (SpeechSynthesizer.stream), so that the time to the
    first chunk is the time to first audio."""
    start, first, samples = time.perf_counter(), None, 0
    with sf.SoundFile(path, "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16") as out:
        for chunk in chunks:
            out.write(chunk.numpy())
            out.flush()
            samples += chunk.shape[0]
            if first is None:
                first = time.perf_counter() - start
    return samples, first


def intelligibility(synth: SpeechSynthesizer, asr: Transcriber, texts: list[str], log=print,
                    show: int = 4) -> dict:
    """Synthesize each text, transcribe it, and score: corpus CER and WER against the normalised texts, plus the
    seconds of audio made and the seconds it took (synthesis only)."""
    char_edits = chars = word_edits = words = 0
    audio_s = synth_s = 0.0
    samples = []
    for text in texts:
        start = time.perf_counter()
        wav = synth.synthesize(text)
        synth_s += time.perf_counter() - start
        audio_s += wav.shape[0] / SAMPLE_RATE
        ref, hyp = normalize_transcript(text), asr.transcribe([wav])[0]
        (ce, cn), (we, wn) = char_error_counts(hyp, ref), word_error_counts(hyp, ref)
        char_edits, chars, word_edits, words = char_edits + ce, chars + cn, word_edits + we, words + wn
        if len(samples) < show:
            samples.append({"text": ref, "asr": hyp, "seconds": round(wav.shape[0] / SAMPLE_RATE, 2)})
            log(f"tts->asr: {ref!r} -> {hyp!r} ({wav.shape[0] / SAMPLE_RATE:.2f} s)")
    return {"cer": char_edits / max(chars, 1), "wer": word_edits / max(words, 1), "sentences": len(texts),
            "audio_seconds": audio_s, "synth_seconds": synth_s, "vocoder": synth.vocoder.name, "samples": samples}


def manifest_phrases(path: str | Path) -> list[str]:
    """The texts of the records marked "phrase": true in a JSONL manifest, once each, in manifest order."""
    phrases = list(dict.fromkeys(r["text"] for r in read_jsonl(path) if r.get("phrase") is True))
    if not phrases:
        raise InvalidInput(f"{path}: no record has \"phrase\": true (the synthetic speech sets' train.jsonl lists "
                           "the one-word answers so)")
    return phrases


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="TTS -> ASR intelligibility: CER of the Stage-B ASR model on "
                                     "synthesized held-out sentences")
    parser.add_argument("--talker", required=True, help="Stage-D talker run dir (talker.pt, rvq_codec.pt, tokenizer)")
    parser.add_argument("--vocoder", default=None, help="vocoder run dir or hifigan.pt (missing: Griffin-Lim)")
    parser.add_argument("--asr", required=True, help="Stage-B run dir or audio_enc.pt")
    parser.add_argument("--manifest", default="data/speech/val.jsonl", help="held-out sentences (their text is used)")
    parser.add_argument("--n", type=int, default=50, help="the first N sentences of the manifest")
    parser.add_argument("--phrases", metavar="MANIFEST", default=None,
                        help="also score the one-word answers: the texts of this manifest's records marked "
                             "\"phrase\": true, e.g. data/tts/train.jsonl (key 'phrases')")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    synth = SpeechSynthesizer.from_checkpoints(args.talker, vocoder=args.vocoder)
    texts = [r["text"] for r in load_asr_records(args.manifest)[: args.n]]
    asr = Transcriber.load(args.asr)
    result = intelligibility(synth, asr, texts)
    print(f"tts->asr cer {result['cer']:.4f} wer {result['wer']:.4f} on {result['sentences']} sentences "
          f"({result['vocoder']}; {result['audio_seconds']:.1f} s of audio in {result['synth_seconds']:.1f} s)")
    if args.phrases:
        phrases = manifest_phrases(args.phrases)
        result["phrases"] = intelligibility(synth, asr, phrases)
        print(f"tts->asr phrases cer {result['phrases']['cer']:.4f} on {len(phrases)} one-word answers")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
