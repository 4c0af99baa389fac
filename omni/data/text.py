"""Packed text corpus: tokenized once into a flat memmap, served as fixed-length windows.

`<corpus>.<tokenizer fingerprint>.bin` holds every document as <bos> ids <eos>, back to back, so no window wastes
room on padding. Window i covers tokens [i*L, i*L + L] (L+1 tokens: inputs are the first L, targets the last L).
The cache is written atomically. A different tokenizer gets a cache of its own (its fingerprint is in the name);
an edited corpus (new size or mtime, see omni.data.fingerprint) rebuilds the cache in place, and the log says
whether a cache was reused or rebuilt, and why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from omni.atomic import atomic_file
from omni.data import fingerprint
from omni.data.manifest import read_text_lines
from omni.errors import InvalidInput, MissingInput
from omni.tokenizer import Tokenizer


def read_documents(path: str | Path) -> list[str]:
    """Documents of a plain-text corpus: paragraphs separated by blank lines. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"text corpus not found: {path}")
    text = "\n".join(read_text_lines(path))  # non-UTF-8 bytes: ValueError naming file:line
    docs = [" ".join(block.split()) for block in text.split("\n\n")]
    docs = [d for d in docs if d]
    if not docs:
        raise InvalidInput(f"text corpus {path} is empty (no non-blank text)")
    return docs


def token_cache_path(corpus: str | Path, tokenizer: Tokenizer) -> Path:
    corpus = Path(corpus)
    return corpus.with_name(f"{corpus.name}.{tokenizer.fingerprint}.bin")


def build_token_cache(corpus: str | Path, tokenizer: Tokenizer, *, log=print) -> Path:
    """Tokenize `corpus` into its memmap cache unless the cache is current (same tokenizer, corpus of the same size
    and mtime as when it was built); returns the cache path. `log` gets one line: reused, or built and why."""
    out = token_cache_path(corpus, tokenizer)
    inputs = fingerprint.cache_inputs([corpus], tokenizer=tokenizer.fingerprint)
    reason = fingerprint.stale_reason(out, inputs)
    if reason is None:
        log(f"token cache {out}: reused ({corpus} unchanged since it was built)")
        return out
    log(f"token cache {out}: tokenizing {corpus} ({reason})")
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    ids = []
    for doc in read_documents(corpus):
        ids.extend(tokenizer.encode(doc, bos=True, eos=True))
    with atomic_file(out) as f:
        np.asarray(ids, dtype=dtype).tofile(f)
    fingerprint.record_built(out, inputs)
    return out


def open_tokens(cache: str | Path, vocab_size: int) -> np.memmap:
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    return np.memmap(cache, dtype=dtype, mode="r")


class TokenWindows:
    """Source of (seq_len + 1)-token windows over a token memmap (see omni.data.resumable for 'source')."""

    def __init__(self, tokens: np.ndarray, seq_len: int, *, name: str = "corpus"):
        self.tokens = tokens
        self.seq_len = seq_len
        self.n = (len(tokens) - 1) // seq_len
        if self.n < 1:
            raise InvalidInput(f"{name}: {len(tokens)} tokens cannot fill one window of {seq_len + 1} tokens "
                               "(data.seq_len + 1): add text or lower data.seq_len")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        start = i * self.seq_len
        window = np.asarray(self.tokens[start:start + self.seq_len + 1], dtype=np.int64)
        return {"tokens": torch.from_numpy(window)}

    def collate(self, samples: list[dict]) -> dict:
        tokens = torch.stack([s["tokens"] for s in samples])
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
