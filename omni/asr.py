"""Stage-B ASR over raw 16 kHz waveforms: the listener of every TTS -> ASR check (omni.speech, train_vocoder.py's
judge, infer_chat.py --speak) and, through its CTC log-probabilities, the Talker's aligner (omni.alignment).

    asr = Transcriber.load("checkpoints/audio_enc_tiny")     # a Stage-B run dir or its audio_enc.pt
    asr.transcribe([wav])                                   # ["the red ball"] (greedy CTC)
"""

from __future__ import annotations

from pathlib import Path

import torch

from omni.audio import MIN_SAMPLES, LogMel
from omni.components import load_stage_model
from omni.ctc import CharVocab, ctc_transcripts


class Transcriber:
    """Stage-B ASR (AuT encoder + CTC head, greedy decoding) over raw 16 kHz waveforms."""

    def __init__(self, model, vocab: CharVocab, n_mels: int, source: str | Path | None = None):
        self.model, self.vocab, self.logmel, self.source = model, vocab, LogMel(n_mels), source
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> Transcriber:
        """path: a Stage-B run dir or its audio_enc.pt."""
        model, weights = load_stage_model(path, "audio_encoder", device)
        return cls(model, CharVocab.from_list(weights.extras["vocab"]), weights.config["n_mels"], weights.source)

    @torch.no_grad()
    def log_probs(self, wavs: list[torch.Tensor]) -> tuple[list[int], torch.Tensor | None, torch.Tensor | None]:
        """(the indexes of the waveforms long enough for one mel frame, their CTC log-probabilities (n, T, V) as one
        padded batch, each row's CTC frames (n,)); (usable, None, None) when none is."""
        usable = [i for i, w in enumerate(wavs) if w.shape[0] >= MIN_SAMPLES]
        if not usable:
            return usable, None, None
        mels = [self.logmel(wavs[i].float().cpu()) for i in usable]
        lengths = torch.tensor([m.shape[0] for m in mels])
        batch = torch.zeros(len(mels), int(lengths.max()), mels[0].shape[1])
        for row, m in enumerate(mels):
            batch[row, : m.shape[0]] = m
        log_probs, _ = self.model(batch.to(self.device), lengths.to(self.device))
        return usable, log_probs, self.model.output_lengths(lengths.to(self.device))

    def transcribe(self, wavs: list[torch.Tensor]) -> list[str]:
        """One transcript per waveform (N,); clips too short for one mel frame give ""."""
        out = [""] * len(wavs)
        usable, log_probs, lengths = self.log_probs(wavs)
        if usable:
            for i, text in zip(usable, ctc_transcripts(log_probs, lengths, self.vocab)):
                out[i] = text
        return out
