"""Evaluation metrics shared by the stages: error counts for CER/WER (ASR, OCR, TTS->ASR) and perplexity.

The error-rate helpers return (errors, reference_length) counts so that callers sum them across batches and ranks
before dividing; averaging per-utterance rates would weight short utterances too much. (Retrieval R@k lives with
the contrastive model, omni/contrastive.py; codebook usage with the codec, omni/codec.py.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torchaudio.functional import edit_distance


def edit_counts(hypothesis: Sequence, reference: Sequence) -> tuple[int, int]:
    """(Levenshtein distance, len(reference)) between two token sequences."""
    return edit_distance(list(reference), list(hypothesis)), len(reference)


def word_error_counts(hypothesis: str, reference: str) -> tuple[int, int]:
    """(word edits, reference words): sum these over a corpus, then divide, for the corpus WER."""
    return edit_counts(hypothesis.split(), reference.split())


def char_error_counts(hypothesis: str, reference: str) -> tuple[int, int]:
    """(character edits, reference characters): the corpus CER is sum(edits) / sum(characters)."""
    return edit_counts(hypothesis, reference)


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp(mean negative log-likelihood per token); inf rather than an overflow error for a diverged model."""
    if total_tokens <= 0:
        raise ValueError("perplexity needs at least one token")
    mean = total_nll / total_tokens
    return math.exp(mean) if mean < 700 else math.inf
