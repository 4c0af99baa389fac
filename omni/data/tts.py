"""Speech-out data (Stage D codec and Talker, the vocoder): clips as log-mels (+ waveforms), and text -> codes pairs.

Records come from `omni.data.speech_layouts.load_asr_records` (JSONL manifests, Common Voice TSVs, transcript
CSV/TSV tables, LibriSpeech or LJSpeech folders, or a list of these): {"audio", "text"[, "duration"]}, so every
layout Stage B reads feeds these stages too.

- `SpeechClips`: item -> log-mel (T, F) (+ the 16 kHz waveform for the vocoder). Batches are padded with silence
  (log-mel floor, zero samples), so a padded mel and its padded waveform still describe the same sound.
- `random_segments`: the vocoder's (and the codec's) random training crops. They are drawn on the batch's device
  with the global torch RNG inside the training step, never in data workers: the RNG state is checkpointed, so a
  resumed run draws the same crops as an uninterrupted one, for any num_workers.
- `build_code_cache` / `TalkerCodes`: the Talker trains on the codes of a frozen, trained codec and on the
  frames each text unit lasts, from CTC forced alignment with a Stage-B model (omni.alignment). Both are computed
  once into a cache file that is rebuilt when the codec or aligner weights, the tokenizer, the manifest or any
  audio file (size, mtime) changes (omni.data.fingerprint), so a changed codec or a re-rendered clip never feeds
  stale codes or durations, and the Talker's data loading reads no audio at all. Utterances that cannot be used
  (unreadable audio, empty text, too long for the Talker, no alignment) are kept in the cache as a reason, and the
  source raises `BadSample` with it, so the training loop counts and reports them like any other bad sample.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from omni.text_frontend import text_units
from omni.audio import (
    HOP_LENGTH,
    LOG_MEL_FLOOR,
    LogMel,
)
from omni import faults
from omni.data import fingerprint
from omni.data.resumable import BadSample
from omni.data.speech import AsrSource, load_log_mel, load_waveform
from omni.torch_io import load as load_file
from omni.torch_io import save as atomic_save

SILENCE_LOG_MEL = math.log(LOG_MEL_FLOOR)  # LogMel of digital silence: the pad value that matches zero samples


class SpeechClips:
    """Indexable source of speech clips: item -> {"mel" (T, F), "audio", ["wav" (T * hop,)]}.

    with_wav: also return the waveform, cut or zero-padded to exactly T * HOP_LENGTH samples (the length the
    vocoder produces for T frames; LogMel's centred frames give T = N // hop + 1, so at most one hop is padded).
    """

    def __init__(self, records: list[dict], *, n_mels: int, with_wav: bool = False):
        self.records = records
        self.with_wav = with_wav
        self.logmel = LogMel(n_mels)
        self.n_mels = n_mels
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def lengths(self) -> list[int]:
        """Approximate mel frames per item for length bucketing (manifest duration, else the file header)."""
        if self._lengths is None:
            self._lengths = [AsrSource._estimate_frames(r) for r in self.records]
        return self._lengths

    def __getitem__(self, i: int) -> dict:
        path = self.records[i]["audio"]
        wav = load_waveform(path, self.records[i].get("duration"))  # a clip cut short of its duration is bad
        mel = load_log_mel(path, self.logmel, wav)
        item = {"mel": mel, "audio": str(path)}
        if self.with_wav:
            n = mel.shape[0] * HOP_LENGTH
            item["wav"] = torch.nn.functional.pad(wav[:n], (0, max(0, n - wav.shape[0])))
        return item

    def collate(self, samples: list[dict]) -> dict:
        """mel (B, T, F) padded with SILENCE_LOG_MEL, mel_lengths (B,), [wav (B, T * hop) zero-padded], audio."""
        lengths = torch.tensor([s["mel"].shape[0] for s in samples])
        mel = torch.full((len(samples), int(lengths.max()), self.n_mels), SILENCE_LOG_MEL)
        for i, s in enumerate(samples):
            mel[i, : s["mel"].shape[0]] = s["mel"]
        batch = {"mel": mel, "mel_lengths": lengths, "audio": [s["audio"] for s in samples]}
        if self.with_wav:
            wav = torch.zeros(len(samples), mel.shape[1] * HOP_LENGTH)
            for i, s in enumerate(samples):
                wav[i, : s["wav"].shape[0]] = s["wav"]
            batch["wav"] = wav
        return batch


def random_segments(
    mel: torch.Tensor, lengths: torch.Tensor, frames: int, wav: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Random crops of `frames` mel frames per row (and the matching frames * hop samples of wav).

    mel (B, T, F), lengths (B,), wav (B, T * hop) or None -> (mel (B, S, F), lengths (B,), wav (B, S * hop) or
    None) with S = min(frames, T). A row longer than S starts at a uniform offset in [0, length - S]; a shorter
    row starts at 0 and keeps its padding. Offsets come from the global torch RNG on mel's device (see the module
    docstring for why).
    """
    B, T, _ = mel.shape
    S = min(frames, T)
    lengths = lengths.to(mel.device)
    room = (lengths - S).clamp(min=0)
    start = (torch.rand(B, device=mel.device) * (room + 1)).floor().long().clamp(max=room)
    index = start[:, None] + torch.arange(S, device=mel.device)  # (B, S)
    mel_out = mel.gather(1, index[:, :, None].expand(B, S, mel.shape[2]))
    wav_out = None
    if wav is not None:
        samples = start[:, None] * HOP_LENGTH + torch.arange(S * HOP_LENGTH, device=wav.device)
        wav_out = wav.gather(1, samples)
    return mel_out, (lengths - start).clamp(max=S), wav_out


def code_cache_path(cache_dir: str | Path, name: str) -> Path:
    return Path(cache_dir) / f"{name}.codes.pt"


def _code_cache_inputs(records: list[dict], codec_file, aligner_file, tokenizer, n_mels: int, max_text_len: int,
                       max_frames: int) -> dict:
    """What a code cache depends on (see omni.data.fingerprint): every audio file by size and mtime (a clip
    re-rendered in place changes its codes), the codec and aligner weights and the record list (transcripts
    included) by hash, the tokenizer, and the limits that decide which records are unusable. A missing audio file
    is an input too (its record is a bad sample), so the cache is rebuilt when it appears. A record's duration
    belongs to the record list: it decides whether a decoded clip counts as cut short (a bad sample)."""
    records_hash = hashlib.sha256(json.dumps([[str(r["audio"]), r["text"], *_duration(r)] for r in records]).encode())
    return fingerprint.cache_inputs(
        [r["audio"] for r in records], missing_ok=True,
        codec=fingerprint.file_digest(codec_file), aligner=fingerprint.file_digest(aligner_file),
        tokenizer=tokenizer.fingerprint,
        records=records_hash.hexdigest()[:16], n_mels=n_mels, max_text_len=max_text_len, max_frames=max_frames)


def _duration(record: dict) -> list[float]:
    """[duration] when the record states one, else [] (records without one hash as they always did)."""
    return [record["duration"]] if record.get("duration") is not None else []


@torch.no_grad()
def build_code_cache(
    records: list[dict],
    *,
    codec,
    codec_file: str | Path,
    aligner,
    tokenizer,
    max_text_len: int,
    max_frames: int,
    cache_dir: str | Path,
    name: str,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    log=print,
) -> Path:
    """Encode every record once with the frozen `codec` (eval mode) and align it with `aligner`
    (omni.alignment.CtcAligner): `<cache_dir>/<name>.codes.pt` holding per record its text units (character and
    token ids, omni.text_frontend.text_units), the frames of each unit (int16) and the codes (F, K) (int16), or the
    reason it is unusable (unreadable audio, empty or too long text, too many frames, no alignment). Returns the
    path. The cache is reused while its inputs (`_code_cache_inputs`) are unchanged, else rebuilt in place; `log`
    says which and why. Call on one process only."""
    path = code_cache_path(cache_dir, name)
    inputs = _code_cache_inputs(records, codec_file, aligner.source, tokenizer, codec.cfg.n_mels, max_text_len,
                                max_frames)
    reason = fingerprint.stale_reason(path, inputs)
    if reason is None:
        log(f"code cache {path}: reused (codec, tokenizer, transcripts and {len(records)} audio files unchanged)")
        return path
    log(f"encoding {len(records)} utterances with the frozen codec into {path}, aligned by {aligner.source} "
        f"({reason})")
    clips = SpeechClips(records, n_mels=codec.cfg.n_mels, with_wav=True)
    units, codes, durations, reasons = [], [], [], []
    pending: list[tuple[int, dict]] = []  # (record index, clip) waiting to be encoded as one batch

    def flush():
        batch = clips.collate([clip for _, clip in pending])
        out = codec.encode(batch["mel"].to(device), batch["mel_lengths"].to(device)).cpu()
        n_frames = [math.ceil(clip["mel"].shape[0] / codec.cfg.downsample) for _, clip in pending]
        aligned = aligner.durations([clip["wav"] for _, clip in pending], [units[i].text for i, _ in pending],
                                    n_frames, codec.cfg.frame_rate_hz)
        for row, (i, clip) in enumerate(pending):
            if n_frames[row] > max_frames:
                reasons[i] = f"{clip['audio']}: {n_frames[row]} code frames exceed the Talker's max_frames={max_frames}"
            elif isinstance(aligned[row], str):
                reasons[i] = f"{clip['audio']}: {aligned[row]}"
            else:
                codes[i] = out[row, : n_frames[row]].to(torch.int16)
                durations[i] = torch.tensor(aligned[row], dtype=torch.int16)
        pending.clear()
        faults.point("cache")  # no-op unless OMNI_FAULT=cache@n (crash tests): a batch encoded and aligned

    for i, record in enumerate(records):
        units.append(text_units(tokenizer, record["text"]))
        codes.append(torch.zeros(0, codec.cfg.n_codebooks, dtype=torch.int16))
        durations.append(torch.zeros(0, dtype=torch.int16))
        reasons.append("")
        n_units = len(units[i].chars)
        if not units[i].text:
            reasons[i] = f"{record['audio']}: empty transcript"
        elif n_units > max_text_len:
            reasons[i] = f"{record['audio']}: {n_units} text units exceed the Talker's max_text_len={max_text_len}"
        else:
            try:
                pending.append((i, clips[i]))
            except BadSample as e:
                reasons[i] = str(e)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    atomic_save({"chars": [torch.tensor(u.chars, dtype=torch.int16) for u in units],
                 "tokens": [torch.tensor(u.tokens, dtype=torch.int32) for u in units],
                 "durations": durations, "codes": codes, "bad": reasons}, path)
    faults.point("cache")  # the cache written, its record not yet: the next start must rebuild it
    fingerprint.record_built(path, inputs)
    return path


class TalkerCodes:
    """Indexable source over a code cache: item -> {"chars", "tokens", "durations" (U,), "codes" (F, K)}; see
    build_code_cache."""

    def __init__(self, cache_file: str | Path):
        data = load_file(cache_file)
        self.chars, self.tokens, self.durations = data["chars"], data["tokens"], data["durations"]
        self.codes, self.bad = data["codes"], data["bad"]

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def lengths(self) -> list[int]:
        """Text units + code frames per item, for length bucketing."""
        return [len(t) + len(c) for t, c in zip(self.chars, self.codes)]

    def __getitem__(self, i: int) -> dict:
        if self.bad[i]:
            raise BadSample(self.bad[i])
        return {"chars": self.chars[i].long(), "tokens": self.tokens[i].long(),
                "durations": self.durations[i].long(), "codes": self.codes[i].long()}

    def collate(self, samples: list[dict]) -> dict:
        """chars, tokens, durations (B, U) right-padded with 0, unit_lengths (B,), codes (B, F, K) padded with 0,
        code_lengths (B,)."""
        unit_lengths = torch.tensor([len(s["chars"]) for s in samples])
        code_lengths = torch.tensor([len(s["codes"]) for s in samples])
        batch = {key: torch.zeros(len(samples), int(unit_lengths.max()), dtype=torch.long)
                 for key in ("chars", "tokens", "durations")}
        codes = torch.zeros(len(samples), int(code_lengths.max()), samples[0]["codes"].shape[1], dtype=torch.long)
        for i, s in enumerate(samples):
            for key in ("chars", "tokens", "durations"):
                batch[key][i, : len(s[key])] = s[key]
            codes[i, : len(s["codes"])] = s["codes"]
        return {**batch, "unit_lengths": unit_lengths, "codes": codes, "code_lengths": code_lengths}
