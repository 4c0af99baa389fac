"""Text frontend: how transcripts and the text to be spoken are normalised, for training and inference alike.

- ASR (`normalize_transcript`): the text the CTC character vocabulary covers, lowercase a-z, apostrophe and single
  spaces. Stage B's targets, the CER of every TTS -> ASR check (omni.speech, infer_chat.py --speak) and the
  synthetic speech sentences all go through it, so a reference and a transcript are always compared alike.
  `normalize_transcript_report` also counts the content it removed, for the ASR data's bad-sample check.
- TTS (`talker_text`, `text_units`): the text the Talker reads, in Stage D training and at synthesis. Its units
  are the characters of `talker_text(text)` between a <bos> and an <eos> unit; each carries two ids: its
  character (Latin-1 code point, one shared id for any other character, and the two boundary ids) and the Thinker
  tokenizer's token that covers it (`Tokenizer.char_tokens`), so the Talker reads the Thinker's text
  representation and still knows each letter. Characters are what a CTC ASR model aligns (omni.alignment), and
  what generalises to words the Talker never heard.

Pure functions of the text (no model, no data files), so inference does not import the training-data modules.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

# Characters normalisation may remove that carry spoken content, by Unicode major category. Punctuation, spaces and
# combining accents are meant to go and are not counted.
CONTENT_KINDS = {"N": "digits", "L": "letters", "S": "symbols"}  # letters: non-Latin ones; symbols: emoji, $, %, ...
# The Talker's character ids (text_units): Latin-1 code points, then these.
OTHER_CHAR = 256  # a character outside Latin-1
BOS_CHAR, EOS_CHAR = 257, 258  # the boundary units
N_CHAR_IDS = 259


@dataclass(frozen=True)
class NormalizedTranscript:
    """What `normalize_transcript_report` made of one transcript."""

    text: str  # the normalised transcript
    dropped: dict[str, int]  # content characters removed, by kind ("digits", "letters", "symbols")
    content: int  # content characters (letters, digits, symbols) in the raw transcript, after accent stripping

    @property
    def lost_fraction(self) -> float:
        return sum(self.dropped.values()) / self.content if self.content else 0.0


def normalize_transcript_report(text: str) -> NormalizedTranscript:
    """The text the CTC vocabulary covers: lowercase a-z, apostrophe, single spaces; and what it lost.

    Accents are stripped (cafe for café), typographic apostrophes become "'", every other character (punctuation,
    hyphens, digits) becomes a space, and apostrophes not touching a letter (quotes) are dropped. Digits are not
    spelled out: corpora we read (LibriSpeech, LJSpeech normalized_text, the synthetic set) already spell numbers;
    other data may not ("Room 101" -> "room"), so the digits, non-Latin letters and symbols removed are counted
    (`dropped`) for the readers' summary and the bad-sample check (`omni.data.speech.AsrSource`).
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    kinds = [CONTENT_KINDS.get(unicodedata.category(c)[0]) for c in text]
    dropped = Counter(k for c, k in zip(text, kinds) if k and not "a" <= c <= "z")
    content = sum(k is not None for k in kinds)
    text = re.sub(r"[^a-z' ]+", " ", text)
    text = re.sub(r"(?<![a-z])'+(?![a-z])", " ", text)
    return NormalizedTranscript(" ".join(text.split()), dict(sorted(dropped.items())), content)


def normalize_transcript(text: str) -> str:
    """`normalize_transcript_report(text).text`: lowercase a-z, apostrophe, single spaces."""
    return normalize_transcript_report(text).text


def talker_text(text: str) -> str:
    """The text the Talker reads: NFKC, lowercase, single spaces. Punctuation and digits are kept (the tokenizer
    covers them); case is folded because speech corpora disagree on it (LibriSpeech is upper case). Nothing else
    is removed: digits, emoji and non-Latin letters reach the tokenizer, whose byte fallback encodes any character,
    so unlike the ASR `normalize_transcript` there is no content loss to count."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


@dataclass
class TextUnits:
    """One utterance as the Talker reads it: per unit a character id and a token id (both len(text) + 2)."""

    text: str  # talker_text(...): units 1..len(text) are its characters
    chars: list[int]
    tokens: list[int]


def text_units(tokenizer, text: str) -> TextUnits:
    """<bos> + the characters of talker_text(text) + <eos>, with each character's covering token."""
    text = talker_text(text)
    chars = [ord(c) if ord(c) < OTHER_CHAR else OTHER_CHAR for c in text]
    return TextUnits(text, [BOS_CHAR, *chars, EOS_CHAR],
                     [tokenizer.bos_id, *tokenizer.char_tokens(text), tokenizer.eos_id])
