"""ASR data (Stage B): audio loading for the speech data sources, the normalisation summary, and `AsrSource`.

The records come from `omni.data.speech_layouts.load_asr_records` (JSONL manifests and the public speech layouts):
`{"audio": absolute Path, "text": str, "where": "file:line"}`, plus `"duration"` in seconds when the layout knows it.

`AsrSource` turns a record into a log-mel (T, n_mels) and character ids. It computes the mel on CPU in the data
worker (cheap next to the model, and it keeps raw waveforms off the device); SpecAugment is not done here but on
the device in the training step (`omni.audio.spec_augment`), so that the data order never depends on worker RNG.
Unusable items raise `BadSample` naming the file; the training loop skips and counts them. Besides unreadable audio
that includes a clip that decodes shorter than its manifest `duration` (a cut MP3 / OGG, see `omni.audio.load_audio`),
a clip longer than the audio encoder's `max_frames` (not cropped: the transcript would no longer match), and a
transcript that normalisation would strip of most of its content (omni.text_frontend.normalize_transcript_report).
"""

from __future__ import annotations

from collections import Counter

import soundfile as sf
import torch

from omni.audio import (
    MEL_FRAME_RATE,
    MIN_SAMPLES,
    SAMPLE_RATE,
    AudioError,
    LogMel,
    encoder_frames,
    load_audio,
    mel_frames,
)
from omni.ctc import CharVocab, min_ctc_frames
from omni.data.resumable import BadSample
from omni.text_frontend import NormalizedTranscript, normalize_transcript_report

MAX_LOST_FRACTION = 0.5  # a transcript that loses more of its content characters than this is a bad sample


def normalization_summary(records: list[dict], reports: list[NormalizedTranscript]) -> str | None:
    """One log line on what normalisation removed from the transcripts of `records` (None when nothing): how many
    lost characters, by kind, how many lost too much to be used, and the first example with its file:line."""
    lossy = [(r, n) for r, n in zip(records, reports) if n.dropped]
    if not lossy:
        return None
    kinds = Counter()
    for _, n in lossy:
        kinds.update(n.dropped)
    refused = sum(n.lost_fraction > MAX_LOST_FRACTION for _, n in lossy)
    first, norm = lossy[0]
    return (f"{len(lossy)} of {len(records)} transcripts lost characters to normalisation "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(kinds.items()))}); {refused} lost more than "
            f"{MAX_LOST_FRACTION:.0%} of them and are skipped as bad samples; first: {_where(first)} "
            f"{first['text']!r} -> {norm.text!r}")


def _where(record: dict) -> str:
    """file:line of a record when its reader knew it, else its audio file."""
    return str(record.get("where") or record["audio"])




def load_waveform(path, duration: float | None = None) -> torch.Tensor:
    """16 kHz mono samples of `path`, or BadSample naming the file (unreadable, silent, shorter than one frame, or
    cut short of the manifest's `duration` in seconds)."""
    try:
        wav = load_audio(path, duration=duration)
    except AudioError as e:
        raise BadSample(str(e)) from None
    if wav.shape[0] < MIN_SAMPLES:
        raise BadSample(f"{path}: only {wav.shape[0]} samples at 16 kHz, too short for one mel frame")
    return wav


def load_log_mel(path, logmel, wav: torch.Tensor | None = None, duration: float | None = None) -> torch.Tensor:
    """(T, F) log-mel of `path` (or of its already loaded `wav`); BadSample naming the file when unusable."""
    with torch.no_grad():
        return logmel(load_waveform(path, duration) if wav is None else wav)


def check_encoder_frames(path, n_mel_frames: int, max_encoder_frames: int | None, where: str = "") -> None:
    """BadSample naming the file when `n_mel_frames` give more audio-encoder frames than the encoder's `max_frames`
    (its rotary table): such a clip would crash the model, and cropping it would cut its transcript or answer."""
    if max_encoder_frames is not None and encoder_frames(n_mel_frames) > max_encoder_frames:
        raise BadSample(f"{where}{path}: {n_mel_frames / MEL_FRAME_RATE:.1f} s of audio gives "
                        f"{encoder_frames(n_mel_frames)} encoder frames > the audio encoder's max_frames="
                        f"{max_encoder_frames} (long clips are skipped, not cropped)")


class AsrSource:
    """Indexable ASR source: item -> {"mel" (T, F), "labels" (L,), "text", "audio"}; see the module docstring."""

    def __init__(
        self,
        records: list[dict],
        *,
        vocab: CharVocab,
        n_mels: int = 128,
        max_mel_length: int | None = None,
        ctc_upsample: int = 2,
        max_encoder_frames: int | None = None,
    ):
        """ctc_upsample must equal the model's (`AsrModel.ctc_upsample`): it sets how many CTC frames the audio
        offers, and so which transcripts are too long to align. max_encoder_frames: the audio encoder's
        `max_frames`; longer clips are bad samples (None: no limit)."""
        if max_mel_length is not None and max_mel_length <= 0:
            raise ValueError(f"max_mel_length must be positive or None, got {max_mel_length}")
        if ctc_upsample < 1:
            raise ValueError(f"ctc_upsample must be >= 1, got {ctc_upsample}")
        self.records = records
        self.vocab = vocab
        self.max_mel_length = max_mel_length
        self.ctc_upsample = ctc_upsample
        self.max_encoder_frames = max_encoder_frames
        self.logmel = LogMel(n_mels)
        self._lengths: list[int] | None = None
        self.transcripts = [normalize_transcript_report(r["text"]) for r in records]
        # What normalisation removed from the transcripts, for the stage script's log (None when nothing).
        self.normalization_summary = normalization_summary(records, self.transcripts)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def lengths(self) -> list[int]:
        """Approximate mel frames per item for length bucketing: from the record's duration, else from the file
        header (soundfile.info reads no samples); 0 for unreadable files, which fail later as BadSample."""
        if self._lengths is None:
            self._lengths = [self._estimate_frames(r) for r in self.records]
        return self._lengths

    @staticmethod
    def _estimate_frames(record: dict) -> int:
        duration = record.get("duration")
        if duration is None:
            try:
                duration = sf.info(str(record["audio"])).duration
            except (sf.LibsndfileError, RuntimeError, OSError):
                return 0
        return mel_frames(round(duration * SAMPLE_RATE))

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        path = record["audio"]
        norm = self.transcripts[i]
        text = norm.text
        if not text:
            raise BadSample(f"{path}: empty transcript (raw: {record['text']!r})")
        if norm.lost_fraction > MAX_LOST_FRACTION:
            raise BadSample(f"{_where(record)}: {path}: normalisation removes {sum(norm.dropped.values())} of "
                            f"{norm.content} characters of the transcript ({norm.dropped}): {record['text']!r} -> "
                            f"{text!r}")
        unknown = self.vocab.unknown_chars(text)
        if unknown:
            raise BadSample(f"{path}: transcript characters {sorted(unknown)} are not in the vocabulary")
        labels = self.vocab.encode(text)
        mel = load_log_mel(path, self.logmel, duration=record.get("duration"))  # (T, F)
        n_frames = mel.shape[0]
        if self.max_mel_length is not None and n_frames > self.max_mel_length:
            raise BadSample(f"{path}: {n_frames} mel frames exceed max_mel_length={self.max_mel_length}")
        check_encoder_frames(path, n_frames, self.max_encoder_frames)
        available = encoder_frames(n_frames) * self.ctc_upsample
        needed = min_ctc_frames(labels)
        if needed > available:
            raise BadSample(
                f"{path}: transcript needs {needed} CTC frames but "
                f"{n_frames / MEL_FRAME_RATE:.2f} s of audio gives {available}"
            )
        return {"mel": mel, "labels": torch.tensor(labels, dtype=torch.long), "text": text, "audio": str(path)}

    def collate(self, samples: list[dict]) -> dict:
        """Pad a list of items into a batch.

        mel (B, T, F) zero-padded to max_mel_length when set (static shapes for torch.compile), else to the longest
        item; mel_lengths (B,); labels (B, L) padded with 0 to the longest transcript; label_lengths (B,);
        texts and audio paths as lists. The model masks padding by mel_lengths, so the pad value is irrelevant.
        """
        if not samples:
            raise ValueError("collate needs at least one sample")
        mel_lengths = torch.tensor([s["mel"].shape[0] for s in samples], dtype=torch.long)
        label_lengths = torch.tensor([len(s["labels"]) for s in samples], dtype=torch.long)
        T = self.max_mel_length or int(mel_lengths.max())
        mel = torch.zeros(len(samples), T, samples[0]["mel"].shape[1])
        labels = torch.zeros(len(samples), int(label_lengths.max()), dtype=torch.long)
        for i, s in enumerate(samples):
            mel[i, : s["mel"].shape[0]] = s["mel"]
            labels[i, : len(s["labels"])] = s["labels"]
        return {
            "mel": mel,
            "mel_lengths": mel_lengths,
            "labels": labels,
            "label_lengths": label_lengths,
            "texts": [s["text"] for s in samples],
            "audio": [s["audio"] for s in samples],
        }
