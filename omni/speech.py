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
- The vocoder is HiFi-GAN when `hifigan.pt` exists and Griffin-Lim otherwise; the fallback is logged. A missing or
  unfinished vocoder run never yields a randomly initialised generator: only the final weights file counts.
- Decoding is greedy by default (deterministic, so the CER is reproducible); the Talker may stop early (END) or
  run to a length cap of `max_seconds_per_char` per input character, which bounds an untrained model's babble.
- The CER compares normalised transcripts (omni.text_frontend.normalize_transcript) summed over the corpus.
- `--phrases MANIFEST` scores the one-word answers too (the records marked "phrase": true, e.g. in the synthetic
  speech sets' train.jsonl: "black", "top left", ...), apart from the sentences: Stage E answers are mostly such
  words, and a Talker that reads sentences well can still babble on a single word. The phrases are training texts
  of the synthetic sets, so that CER is not a held-out figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from omni.audio import MIN_SAMPLES, SAMPLE_RATE, LogMel
from omni.components import CODEC_FILE, TALKER_FILE, VOCODER_FILE, load_stage_model
from omni.ctc import CharVocab, ctc_transcripts
from omni.data.manifest import read_jsonl
from omni.data.speech_layouts import load_asr_records
from omni.errors import InvalidInput
from omni.metrics import char_error_counts, word_error_counts
from omni.text_frontend import normalize_transcript, talker_text_ids
from omni.tokenizer import TOKENIZER_FILE, Tokenizer
from omni.vocoder import griffin_lim


class Vocoder:
    """log-mel (B, T, F) -> waveform (B, T * hop): the trained HiFi-GAN generator, or Griffin-Lim."""

    def __init__(self, generator=None, *, griffin_lim_iters: int = 32):
        # Every inference path comes through here: fold HiFi-GAN's weight norm into plain weights once.
        self.generator = None if generator is None else generator.remove_weight_norm()
        self.griffin_lim_iters = griffin_lim_iters
        self.name = "hifigan" if generator is not None else "griffin-lim"

    @classmethod
    def load(cls, path: str | Path | None, device: torch.device | str = "cpu", log=print) -> Vocoder:
        """HiFi-GAN from `path` (a vocoder run dir or hifigan.pt) when its final weights exist, else Griffin-Lim."""
        file = None if path is None else (Path(path) / VOCODER_FILE if Path(path).is_dir() else Path(path))
        if file is None or not file.is_file():
            log(f"no vocoder weights{'' if file is None else f' at {file}'}: using the Griffin-Lim fallback")
            return cls()
        generator, _ = load_stage_model(file, "vocoder", device)
        log(f"vocoder: HiFi-GAN from {file}")
        return cls(generator)

    @torch.no_grad()
    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            return griffin_lim(mel, n_iter=self.griffin_lim_iters)
        return self.generator(mel.to(next(self.generator.parameters()).device)).float()


class SpeechSynthesizer:
    """Text -> 16 kHz waveform with a Talker, its codec and a vocoder."""

    def __init__(self, tokenizer: Tokenizer, talker, codec, vocoder: Vocoder, *, temperature: float = 0.0,
                 max_seconds_per_char: float = 0.25):
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
        self.temperature, self.max_seconds_per_char = temperature, max_seconds_per_char
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

    def max_frames(self, text: str) -> int:
        cap = round((1 + len(text)) * self.max_seconds_per_char * self.codec.cfg.frame_rate_hz)
        return max(1, min(self.talker.cfg.max_frames, cap))

    @torch.no_grad()
    def codes(self, text: str) -> torch.Tensor:
        """The Talker's codes (F, K) for `text` (F may be 0)."""
        ids = torch.tensor([talker_text_ids(self.tokenizer, text)], device=self.device)
        codes, lengths = self.talker.generate(ids, max_frames=self.max_frames(text), temperature=self.temperature)
        return codes[0, : int(lengths[0])]

    @torch.no_grad()
    def mel(self, text: str) -> torch.Tensor:
        """The log-mel (T, F) the Talker and codec make for `text` (T = downsample x code frames; may be 0)."""
        codes = self.codes(text)
        if codes.shape[0] == 0:
            return torch.zeros(0, self.codec.cfg.n_mels, device=self.device)
        return self.codec.decode(codes[None])[0]

    @torch.no_grad()
    def synthesize(self, text: str) -> torch.Tensor:
        """text -> waveform (N,) float32 on CPU at SAMPLE_RATE, N = 160 x mel frames (empty if the Talker ends at
        once)."""
        mel = self.mel(text)
        if mel.shape[0] == 0:
            return torch.zeros(0)
        return self.vocoder(mel[None])[0].cpu()


class Transcriber:
    """Stage-B ASR (AuT encoder + CTC head, greedy decoding) over raw 16 kHz waveforms."""

    def __init__(self, model, vocab: CharVocab, n_mels: int):
        self.model, self.vocab, self.logmel = model, vocab, LogMel(n_mels)
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> Transcriber:
        """path: a Stage-B run dir or its audio_enc.pt."""
        model, weights = load_stage_model(path, "audio_encoder", device)
        return cls(model, CharVocab.from_list(weights.extras["vocab"]), weights.config["n_mels"])

    @torch.no_grad()
    def transcribe(self, wavs: list[torch.Tensor]) -> list[str]:
        """One transcript per waveform (N,); clips too short for one mel frame give ""."""
        out = [""] * len(wavs)
        usable = [i for i, w in enumerate(wavs) if w.shape[0] >= MIN_SAMPLES]
        if not usable:
            return out
        mels = [self.logmel(wavs[i].float().cpu()) for i in usable]
        lengths = torch.tensor([m.shape[0] for m in mels])
        batch = torch.zeros(len(mels), int(lengths.max()), mels[0].shape[1])
        for row, m in enumerate(mels):
            batch[row, : m.shape[0]] = m
        log_probs, _ = self.model(batch.to(self.device), lengths.to(self.device))
        texts = ctc_transcripts(log_probs, self.model.output_lengths(lengths.to(self.device)), self.vocab)
        for i, text in zip(usable, texts):
            out[i] = text
        return out


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
