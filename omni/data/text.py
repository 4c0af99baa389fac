"""Packed text corpus: tokenized once into a flat memmap, served as fixed-length windows.

The corpus is any layout omni.data.text_sources reads (a .txt / .jsonl / .parquet file, gzipped or not, a folder or
a glob of shards). `<corpus>.<tokenizer fingerprint>.bin` (beside the file or folder; for a glob, see
text_sources.cache_stem) holds every document as <bos> ids <eos>, back to back, so no window wastes room on padding.
It is written while the documents stream in, so memory does not grow with the corpus. Window i covers tokens
[i*L, i*L + L] (L+1 tokens: inputs are the first L, targets the last L). The cache is written atomically. A
different tokenizer gets a cache of its own (its fingerprint is in the name); an edited corpus (a shard of new size
or mtime, or a shard added or gone; see omni.data.fingerprint) rebuilds the cache in place, and the log says which
layout was read, whether a cache was reused or rebuilt and why, and how many documents it holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from omni.atomic import atomic_file
from omni.data import fingerprint
from omni.data.text_sources import TextCorpus, cache_stem, normalize_document, open_corpus
from omni.errors import InvalidInput
from omni.tokenizer import Tokenizer

_WRITE_TOKENS = 1 << 20  # tokens buffered before they are appended to the cache file


def read_documents(path: str | Path) -> list[str]:
    """All documents of a corpus (any layout of omni.data.text_sources), normalised as they are tokenized. Holds the
    whole corpus in memory: for small corpora and tools; training streams (build_token_cache)."""
    corpus = open_corpus(path)
    docs = [normalize_document(d) for d in corpus.documents()]
    if not docs:
        raise InvalidInput(f"text corpus {path} is empty (no non-blank text)")
    return docs


def token_cache_path(corpus: str | Path | TextCorpus, tokenizer: Tokenizer) -> Path:
    stem = cache_stem(corpus.spec if isinstance(corpus, TextCorpus) else corpus)
    return stem.with_name(f"{stem.name}.{tokenizer.fingerprint}.bin")


def build_token_cache(corpus: str | Path | TextCorpus, tokenizer: Tokenizer, *, log=print) -> Path:
    """Tokenize `corpus` into its memmap cache unless the cache is current (same tokenizer, the same shards of the
    same size and mtime as when it was built); returns the cache path. `log` gets a line on the layout read and one
    on the cache: reused, or built (why, and how many documents and tokens)."""
    if not isinstance(corpus, TextCorpus):
        corpus = open_corpus(corpus)
    log(f"text corpus {corpus.describe()}")
    out = token_cache_path(corpus, tokenizer)
    inputs = fingerprint.cache_inputs(corpus.shards, tokenizer=tokenizer.fingerprint)
    reason = fingerprint.stale_reason(out, inputs)
    if reason is None:
        log(f"token cache {out}: reused ({corpus.spec} unchanged since it was built)")
        return out
    log(f"token cache {out}: tokenizing {corpus.spec} ({reason})")
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    total = 0
    with atomic_file(out) as f:
        pending = []
        for doc in corpus.documents():
            pending.extend(tokenizer.encode(normalize_document(doc), bos=True, eos=True))
            if len(pending) >= _WRITE_TOKENS:
                np.asarray(pending, dtype=dtype).tofile(f)
                total, pending = total + len(pending), []
        np.asarray(pending, dtype=dtype).tofile(f)
        total += len(pending)
        if not corpus.counts["documents"]:  # raised inside the block: no empty cache is left behind
            raise InvalidInput(f"text corpus {corpus.spec} is empty (no non-blank text)")
    fingerprint.record_built(out, inputs)
    log(f"token cache {out}: done tokenizing {corpus.spec} ({reason}): {total:,} tokens of {corpus.summary()}")
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
