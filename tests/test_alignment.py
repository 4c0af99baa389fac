"""omni.alignment: the Talker's text units, and their durations from CTC forced alignment (known timings)."""

import math

import pytest
import torch
from torch import nn

from omni.alignment import AlignmentError, CtcAligner, ctc_targets, unit_durations
from omni.asr import Transcriber
from omni.audio import ENCODER_FRAME_RATE, HOP_LENGTH, SAMPLE_RATE, encoder_frames
from omni.ctc import CharVocab
from omni.text_frontend import BOS_CHAR, EOS_CHAR, OTHER_CHAR, text_units
from omni.tokenizer import train_tokenizer

VOCAB = CharVocab(list(" 'abcdefghijklmnopqrstuvwxyz"))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, text_corpus):
    return train_tokenizer([text_corpus / "train.txt"], tmp_path_factory.mktemp("tok"), vocab_size=400)


def emissions(T: int, spans: dict[int, str]) -> torch.Tensor:
    """CTC log-probs (T, C) whose best path is blank except `spans` (frame -> character)."""
    logits = torch.full((T, len(VOCAB.chars) + 1), -8.0)
    logits[:, 0] = 0.0
    for t, c in spans.items():
        logits[t, 0], logits[t, VOCAB.chars.index(c) + 1] = -8.0, 0.0
    return logits.log_softmax(-1)


def test_text_units_pair_each_character_with_its_token(tokenizer):
    units = text_units(tokenizer, "  The RED Ball,  ü ")
    assert units.text == "the red ball, ü"
    assert len(units.chars) == len(units.tokens) == len(units.text) + 2
    assert units.chars[0] == BOS_CHAR and units.chars[-1] == EOS_CHAR
    assert units.tokens[0] == tokenizer.bos_id and units.tokens[-1] == tokenizer.eos_id
    assert units.chars[1:4] == [ord("t"), ord("h"), ord("e")] and ord("ü") < OTHER_CHAR
    assert text_units(tokenizer, "a ж").chars[-2] == OTHER_CHAR
    # Each character's token is one that decodes to text containing it (the byte piece of "ü" aside).
    for c, tok in zip(units.text[:-1], units.tokens[1:-2]):
        assert c in tokenizer._sp.id_to_piece(tok).replace("\u2581", " "), (c, tokenizer._sp.id_to_piece(tok))
    assert set(units.tokens[1:-1]) <= set(tokenizer.encode(units.text))


def test_ctc_targets_letters_word_breaks_and_silent_characters():
    targets, where = ctc_targets("it's a, b-c 12 x!", VOCAB)
    text = "".join(VOCAB.chars[t - 1] for t in targets)
    assert text == "it's a b c x"  # punctuation is one word break, digits have no target, no trailing break
    assert where == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 15]


def test_durations_follow_a_known_alignment():
    # "ab cd": a at 3-4, b at 6, space at 8, c at 10-11, d at 13; 20 frames.
    lp = emissions(20, {3: "a", 4: "a", 6: "b", 8: " ", 10: "c", 11: "c", 13: "d"})
    d = unit_durations(lp, "ab cd", VOCAB, n_frames=20, ctc_rate=25.0, frame_rate=25.0)
    # <bos> 0-2, a 3-5, b 6-7, space 8-9, c 10-12, d 13, <eos> 14-19
    assert d == [3, 3, 2, 2, 3, 1, 6]
    # At half the rate the boundaries are halved (and rounded), and the sum is the codec's frame count.
    lp = emissions(40, {6: "a", 12: "b", 16: " ", 20: "c", 26: "d"})
    d = unit_durations(lp, "ab cd", VOCAB, n_frames=21, ctc_rate=25.0, frame_rate=12.5)
    assert d == [3, 3, 2, 2, 3, 1, 7] and sum(d) == 21


def test_silent_units_get_no_frames_and_repeats_are_separate():
    lp = emissions(16, {2: "a", 5: " ", 8: "b", 10: "b"})
    d = unit_durations(lp, "a, bb", VOCAB, n_frames=16, ctc_rate=25.0, frame_rate=25.0)
    # units: <bos> a , ' ' b b <eos>: "," is the word break, the space after it has no target
    assert d == [2, 3, 3, 0, 2, 1, 5]


def test_unalignable_clips_raise():
    with pytest.raises(AlignmentError, match="CTC frames"):
        unit_durations(emissions(3, {}), "abcdef", VOCAB, n_frames=3, ctc_rate=25.0, frame_rate=25.0)
    with pytest.raises(AlignmentError, match="alphabet"):
        unit_durations(emissions(10, {}), "123", VOCAB, n_frames=10, ctc_rate=25.0, frame_rate=25.0)


class LoudnessAsr(nn.Module):
    """A stand-in CTC model with a known behaviour: a CTC frame is 'a' where the clip is loud, blank elsewhere."""

    ctc_upsample = 2

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def output_lengths(self, mel_lengths):
        return encoder_frames(mel_lengths) * self.ctc_upsample

    def forward(self, mel, mel_lengths):
        T = int(self.output_lengths(torch.tensor(mel.shape[1])))
        per_frame = mel.shape[1] / T
        loud = torch.stack([mel[:, int(t * per_frame): int((t + 1) * per_frame) + 1].amax(dim=2).mean(dim=1) > -5
                            for t in range(T)], dim=1)  # (B, T)
        logits = torch.full((*loud.shape, len(VOCAB.chars) + 1), -8.0)
        logits[..., 0] = torch.where(loud, -8.0, 0.0)
        logits[..., VOCAB.chars.index("a") + 1] = torch.where(loud, 0.0, -8.0)
        return logits.log_softmax(-1), None


def test_aligner_times_a_clip_with_known_timing():
    """A 2 s clip, silent but for a tone from 0.4 s to 0.8 s, read as "a": <bos> owns the silence before the tone,
    "a" the tone, <eos> the rest, in codec frames at 12.5 Hz."""
    t = torch.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    wav = torch.where((t >= 0.4) & (t < 0.8), 0.5 * torch.sin(2 * math.pi * 440 * t), torch.zeros(()))
    aligner = CtcAligner(Transcriber(LoudnessAsr(), VOCAB, n_mels=32, source="loudness"))
    assert aligner.ctc_rate == ENCODER_FRAME_RATE * 2
    n_frames = math.ceil((wav.shape[0] // HOP_LENGTH + 1) / 8)
    [d] = aligner.durations([wav], ["a"], [n_frames], frame_rate=12.5)
    assert sum(d) == n_frames
    assert abs(d[0] - 0.4 * 12.5) <= 1 and abs(d[1] - 0.4 * 12.5) <= 1
    # A clip too short to take a mel frame, and one the text cannot fit, are reasons, not exceptions.
    out = aligner.durations([torch.zeros(10), wav[: SAMPLE_RATE // 10]], ["a", "abcdefghij"], [1, 2], 12.5)
    assert all(isinstance(x, str) for x in out)
