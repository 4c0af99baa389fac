"""Evaluation metrics shared by the stages: error rates, perplexity, accuracy, retrieval, codebook usage.

Everything here works on plain Python values or CPU/GPU tensors and returns plain floats (or, for the
error-rate helpers, the (errors, reference_length) counts so that callers can sum them across batches and ranks
before dividing; averaging per-utterance rates would weight short utterances too much).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
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


def wer(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus word error rate: total word edits / total reference words."""
    return _corpus_rate(word_error_counts, hypotheses, references)


def cer(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus character error rate: total character edits / total reference characters."""
    return _corpus_rate(char_error_counts, hypotheses, references)


def _corpus_rate(counter, hypotheses, references) -> float:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    errors = total = 0
    for hyp, ref in zip(hypotheses, references):
        e, n = counter(hyp, ref)
        errors, total = errors + e, total + n
    if total == 0:
        raise ValueError("references are all empty: the error rate is undefined")
    return errors / total


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp(mean negative log-likelihood per token); inf rather than an overflow error for a diverged model."""
    if total_tokens <= 0:
        raise ValueError("perplexity needs at least one token")
    mean = total_nll / total_tokens
    return math.exp(mean) if mean < 700 else math.inf


def accuracy(predictions: Sequence, targets: Sequence) -> float:
    """Fraction of exact matches."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    if not targets:
        raise ValueError("accuracy of an empty set is undefined")
    return sum(p == t for p, t in zip(predictions, targets)) / len(targets)


def retrieval_at_k(similarity: torch.Tensor, k: int, targets: torch.Tensor | None = None) -> float:
    """Recall@k of a query x candidate similarity matrix.

    similarity: (Q, N); targets: (Q,) index of the correct candidate per query (default: the diagonal, i.e. query i
    matches candidate i). A query counts as a hit when its target is among its k highest-scoring candidates.
    """
    if similarity.dim() != 2:
        raise ValueError(f"similarity must be (queries, candidates), got shape {tuple(similarity.shape)}")
    q, n = similarity.shape
    if targets is None:
        if q != n:
            raise ValueError(f"diagonal targets need a square matrix, got {q}x{n}")
        targets = torch.arange(q, device=similarity.device)
    top = similarity.topk(min(k, n), dim=1).indices
    return (top == targets[:, None]).any(dim=1).float().mean().item()


def codebook_perplexity(codes: torch.Tensor, codebook_size: int) -> float:
    """exp(entropy) of code usage: codebook_size when every code is used equally, 1 when one code is used."""
    counts = torch.bincount(codes.flatten().long(), minlength=codebook_size).float()
    if counts.sum() == 0:
        raise ValueError("no codes given")
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return entropy.exp().item()
