"""How long each of the Talker's text units (omni.text_frontend.text_units: <bos>, the characters, <eos>) is
spoken, in codec frames, from CTC forced alignment with the project's own Stage-B ASR model.

Design choices
- Durations come from `torchaudio.functional.forced_align` on the ASR model's CTC log-probabilities (Kürzinger et
  al. 2020, CTC segmentation; the same Viterbi path Stage B's loss sums over). The CTC targets are the units' ASR
  characters: letters and apostrophes as themselves (accents stripped), any other non-alphanumeric character a
  word break (one space, collapsed with its neighbours), digits and other letters no target (their sound goes
  to the units around them). A targeted unit owns the frames from its first aligned frame to the next target's;
  untargeted units get zero frames; <bos> owns the leading frames (silence) and <eos> those after the last
  character's span. Frame boundaries are rescaled from the ASR's CTC rate (25 Hz for Stage B's defaults) to the
  codec's frame rate and rounded, so the durations always sum to the clip's code frames.
- A clip the ASR cannot align (fewer CTC frames than its characters need, no alignable character) is a named bad
  sample (`AlignmentError`), counted like any other.

References: Kürzinger et al. 2020 (CTC segmentation); Ren et al. 2019/2021 (FastSpeech 1/2: durations from an
aligner, length regulator); Badlani et al. 2022 (One TTS Alignment).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import torch
import torchaudio

from omni.asr import Transcriber
from omni.audio import ENCODER_FRAME_RATE
from omni.ctc import BLANK_ID, CharVocab


class AlignmentError(ValueError):
    """The clip and its text cannot be aligned; the message says why."""


def asr_char(c: str) -> str | None:
    """The ASR character unit c is aligned as: itself (accents stripped), " " for a word break, None for none."""
    base = unicodedata.normalize("NFKD", c)[:1]
    if base.isalpha() or base == "'":
        return base if "a" <= base <= "z" or base == "'" else None
    return None if base.isdigit() else " "


def ctc_targets(text: str, vocab: CharVocab) -> tuple[list[int], list[int]]:
    """(CTC target ids, the text index of each target): see the module docstring for which characters count."""
    targets, where = [], []
    for i, c in enumerate(text):
        a = asr_char(c)
        if a is None or a not in vocab.chars:
            continue
        if a == " " and (not targets or vocab.chars[targets[-1] - 1] == " "):
            continue  # no leading or repeated word break
        targets.append(vocab.chars.index(a) + 1)
        where.append(i)
    while targets and vocab.chars[targets[-1] - 1] == " ":
        targets.pop(), where.pop()
    return targets, where


def unit_durations(log_probs: torch.Tensor, text: str, vocab: CharVocab, *, n_frames: int, ctc_rate: float,
                   frame_rate: float) -> list[int]:
    """log_probs (T, C) of one clip's CTC frames (at ctc_rate Hz) -> frames per unit (len(text) + 2 ints, summing
    to n_frames at frame_rate Hz). Raises AlignmentError when the alignment does not exist."""
    targets, where = ctc_targets(text, vocab)
    if not targets:
        raise AlignmentError(f"no character of {text!r} is in the ASR alphabet")
    T = log_probs.shape[0]
    try:
        path, _ = torchaudio.functional.forced_align(log_probs[None].float().cpu(), torch.tensor([targets]),
                                                     blank=BLANK_ID)
    except RuntimeError as e:  # e.g. fewer frames than the targets (with the blanks repeats need)
        raise AlignmentError(f"{len(targets)} characters in {T} CTC frames: {e}") from None
    path = path[0]
    # The first frame of each target: a frame holds target k when it is a non-blank label that starts a new run
    # (forced_align repeats a label across its frames and separates equal neighbours by blanks).
    starts = (path != BLANK_ID) & torch.cat([path.new_ones(1, dtype=torch.bool), path[1:] != path[:-1]])
    first = starts.nonzero().flatten().tolist()
    last_end = int((path != BLANK_ID).nonzero().max()) + 1
    if len(first) != len(targets):
        raise AlignmentError(f"alignment of {text!r} found {len(first)} of {len(targets)} characters")
    # Unit boundaries in CTC frames: unit 0 (<bos>) from 0; unit i + 1 (character i) from the first frame of the
    # next target at or after it; <eos> from the end of the last character's span.
    begins, k = [0], 0
    for i in range(len(text)):
        while k < len(where) and where[k] < i:
            k += 1
        begins.append(first[k] if k < len(where) else last_end)
    begins.append(last_end)
    scale = frame_rate / ctc_rate
    bounds = [min(n_frames, round(b * scale)) for b in begins] + [n_frames]
    for j in range(1, len(bounds)):
        bounds[j] = max(bounds[j], bounds[j - 1])
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


class CtcAligner:
    """A Stage-B ASR model (AuT encoder + CTC head, omni.asr.Transcriber) used to align clips with their text."""

    def __init__(self, asr: Transcriber):
        self.asr, self.source = asr, asr.source
        self.ctc_rate = ENCODER_FRAME_RATE * asr.model.ctc_upsample

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> CtcAligner:
        """path: a Stage-B run dir or its audio_enc.pt."""
        return cls(Transcriber.load(path, device))

    def durations(self, wavs: list[torch.Tensor], texts: list[str], n_frames: list[int],
                  frame_rate: float) -> list[list[int] | str]:
        """Per clip (16 kHz waveform, talker_text, code frames): its unit durations, or why it cannot be aligned."""
        out: list[list[int] | str] = ["clip too short to align"] * len(wavs)
        usable, log_probs, ctc_lengths = self.asr.log_probs(wavs)
        for row, i in enumerate(usable):
            try:
                out[i] = unit_durations(log_probs[row, : int(ctc_lengths[row])], texts[i], self.asr.vocab,
                                        n_frames=n_frames[i], ctc_rate=self.ctc_rate, frame_rate=frame_rate)
            except AlignmentError as e:
                out[i] = f"cannot align: {e}"
        return out
