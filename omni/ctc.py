"""Character vocabulary, the CTC loss and greedy CTC decoding, shared by the ASR head (Stage B) and the OCR model.

Id 0 is the CTC blank, so real characters start at 1. The vocabulary is stored in checkpoints as its character
list (`to_list`) so a model can always be rebuilt with exactly the alphabet it was trained on.

The loss is `F.ctc_loss(blank=0, reduction="mean", zero_infinity=True)` in float32: each row's negative
log-likelihood divided by its label length, then averaged over the batch (nats per character, independent of the
utterance length); an impossible alignment contributes zero instead of inf.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from omni.atomic import atomic_write_text
from omni.errors import UserError

BLANK_ID = 0
VOCAB_FILE = "vocab.json"  # a run's pinned alphabet (see pin_vocab), in its run dir


class CharVocab:
    """Maps characters <-> ids with 0 reserved for the CTC blank."""

    def __init__(self, chars: Sequence[str]):
        if len(set(chars)) != len(chars):
            raise ValueError("CharVocab characters must be unique")
        if any(len(c) != 1 for c in chars):
            raise ValueError(f"CharVocab entries must be single characters, got {[c for c in chars if len(c) != 1]}")
        self.chars = list(chars)
        self._ids = {c: i + 1 for i, c in enumerate(self.chars)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharVocab:
        """The sorted set of characters used by `texts` (sorted, so the vocabulary does not depend on data order)."""
        return cls(sorted(set("".join(texts))))

    @classmethod
    def from_list(cls, chars: Sequence[str]) -> CharVocab:
        return cls(chars)

    def to_list(self) -> list[str]:
        return list(self.chars)

    def __len__(self) -> int:
        """Number of ids including the blank: the size of the CTC output layer."""
        return len(self.chars) + 1

    def unknown_chars(self, text: str) -> set[str]:
        return {c for c in text if c not in self._ids}

    def encode(self, text: str) -> list[int]:
        unknown = self.unknown_chars(text)
        if unknown:
            raise ValueError(f"characters {sorted(unknown)} are not in the vocabulary (text: {text!r})")
        return [self._ids[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids if i != BLANK_ID)


def load_vocab(path: str | Path) -> CharVocab:
    """A vocabulary file written by pin_vocab (a JSON character list)."""
    try:
        return CharVocab.from_list(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{path}: not a character list ({e}); restore it, or use a new train.save_dir") from None


def pin_vocab(vocab: CharVocab, path: str | Path, *, force: bool, source: str, log: Callable[[str], None],
              write: bool = True) -> CharVocab:
    """The alphabet of a training run, pinned in `path` (its run dir's vocab.json). Returns the vocabulary to use.

    The first run writes `vocab` (the characters of `source`, the training data) there; a rerun keeps that file's
    alphabet, because the CTC head's size and the meaning of each id depend on it. When the data now give other
    characters, that is a UserError unless `force`, which keeps the run's alphabet (texts with other characters
    are then skipped as bad samples) and logs a warning. `write=False` only reads and checks (e.g. before the run
    dir is locked); write on one process only."""
    path = Path(path)
    if not path.exists():
        if write:
            atomic_write_text(path, json.dumps(vocab.to_list(), ensure_ascii=False) + "\n")  # never half a file
        return vocab
    pinned = load_vocab(path)
    if pinned.to_list() != vocab.to_list():
        message = (f"the texts of {source} use the characters {''.join(vocab.to_list())!r}, but this run's {path} "
                   f"has {''.join(pinned.to_list())!r}")
        if not force:
            raise UserError(f"{message}; use a new train.save_dir (or --force to keep the run's alphabet and skip "
                            "texts with other characters)")
        log(f"WARNING: {message}; --force: keeping the run's alphabet")
    return pinned


def ctc_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best-path decoding: argmax per frame, merge repeats, drop blanks.

    log_probs: (B, T, V); lengths: (B,) valid frames per row. Returns one id list per row.
    """
    best = log_probs.argmax(dim=-1).cpu()
    out = []
    for row, n in zip(best, lengths.cpu().tolist()):
        path = row[:n]
        keep = torch.ones_like(path, dtype=torch.bool)
        keep[1:] = path[1:] != path[:-1]
        out.append([i for i in path[keep].tolist() if i != BLANK_ID])
    return out


def ctc_transcripts(log_probs: torch.Tensor, lengths: torch.Tensor, vocab: CharVocab) -> list[str]:
    """Greedy (best-path) transcript of each row: log_probs (B, T, V), lengths (B,) valid frames -> B strings."""
    return [vocab.decode(ids) for ids in ctc_greedy_decode(log_probs, lengths)]


def ctc_loss(log_probs: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
             label_lengths: torch.Tensor) -> torch.Tensor:
    """Mean CTC loss in nats per label (module docstring): log_probs (B, T, V) log-softmax, lengths (B,) valid
    frames, labels (B, L) padded with anything past label_lengths (B,) -> scalar float32."""
    return F.ctc_loss(log_probs.float().transpose(0, 1), labels, lengths, label_lengths, blank=BLANK_ID,
                      reduction="mean", zero_infinity=True)


def min_ctc_frames(label_ids: Sequence[int]) -> int:
    """Fewest frames CTC needs to emit `label_ids`: one per label plus a blank between equal neighbours."""
    repeats = sum(a == b for a, b in zip(label_ids, label_ids[1:]))
    return len(label_ids) + repeats
