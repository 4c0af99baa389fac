"""ResumableDataset: deterministic, shardable, O(1)-skippable iteration over an indexable source.

The order of an epoch is a permutation seeded by (seed, epoch). Position p of that order belongs to global batch
p // G (G = batch_size x world_size); within a global batch, rank r takes the slice [r*B, (r+1)*B). DataLoader
workers take whole global batches round-robin, which is exactly the order in which the DataLoader hands them out,
so the sequence of batches is the same for any `num_workers`. Resuming at `skip_samples` starts at global batch
skip_samples // G without reading anything before it.

A *source* is anything with `__len__`, `__getitem__(i) -> dict` (raising BadSample for an unusable item) and
`collate(samples) -> dict`; optionally `lengths` (cheap per-item sizes) for length bucketing, which sorts windows
of `bucket_batches` global batches by length and shuffles the resulting batches, so padding stays low while the
order stays a pure function of (seed, epoch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from omni.errors import UserError


class BadSample(Exception):
    """Raised by a source for an item it cannot use; the message names the file and the reason."""


@dataclass
class LoadedBatch:
    """One rank's micro-batch as produced by a worker, plus what the worker had to skip."""

    batch: dict | None  # collated samples, None when every sample of the batch was bad
    index: int  # global batch index within the epoch
    bad: list[str] = field(default_factory=list)  # one message per skipped sample
    size: int = 0  # samples this rank was assigned (good + bad)


class ResumableDataset(IterableDataset):
    def __init__(self, source, *, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                 bucket_batches: int = 0):
        if len(source) == 0:
            raise ValueError(f"{type(source).__name__} is empty: nothing to train or evaluate on")
        if bucket_batches and getattr(source, "lengths", None) is None:
            raise ValueError(f"bucket_batches={bucket_batches} needs a source with `lengths`")
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.bucket_batches = bucket_batches
        self.epoch = 0
        self.skip_samples = 0
        self.rank = 0
        self.world_size = 1

    def __len__(self) -> int:
        """Samples in the source."""
        return len(self.source)

    def set_position(self, *, epoch: int, skip_samples: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Where the next iteration starts; call before creating the DataLoader iterator."""
        self.epoch, self.skip_samples, self.rank, self.world_size = epoch, skip_samples, rank, world_size

    def global_batch(self, world_size: int | None = None) -> int:
        return self.batch_size * (world_size or self.world_size)

    def num_batches(self, world_size: int | None = None) -> int:
        """Global batches per epoch."""
        n, g = len(self.source), self.global_batch(world_size)
        return n // g if self.drop_last else -(-n // g)

    def order(self, epoch: int) -> np.ndarray:
        """The sample order of `epoch`: a pure function of (seed, epoch)."""
        n = len(self.source)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n)
        if self.bucket_batches:
            order = self._bucket(order, rng)
        return order

    def _bucket(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        g = self.global_batch()
        window = g * self.bucket_batches
        lengths = np.asarray(self.source.lengths)
        out = []
        for start in range(0, len(order), window):
            chunk = order[start:start + window]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches = [chunk[i:i + g] for i in range(0, len(chunk), g)]
            full = [b for b in batches if len(b) == g]
            rest = [b for b in batches if len(b) < g]
            out.extend(full[i] for i in rng.permutation(len(full)))
            out.extend(rest)
        return np.concatenate(out)

    def __iter__(self):
        order = self.order(self.epoch)
        g = self.global_batch()
        first = self.skip_samples // g
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        for b in range(first + worker_id, self.num_batches(), num_workers):
            start = b * g + self.rank * self.batch_size
            indices = order[start:min(start + self.batch_size, (b + 1) * g)]
            yield self._load(b, indices)

    def _load(self, index: int, indices: np.ndarray) -> LoadedBatch:
        samples, bad = [], []
        for i in indices.tolist():
            try:
                samples.append(self.source[i])
            except BadSample as e:
                bad.append(str(e))
        batch = self.source.collate(samples) if samples else None
        return LoadedBatch(batch=batch, index=index, bad=bad, size=len(indices))


def evaluation_batches(source, *, batch_size: int, rank: int = 0, world_size: int = 1):
    """Every sample of `source` once, in order, this rank's share (rank r takes batches r, r+W, ...), as
    LoadedBatch (so bad samples can be reported; `batch` is None when all of a batch was bad)."""
    ds = ResumableDataset(source, batch_size=batch_size, shuffle=False, drop_last=False)
    for b in range(rank, ds.num_batches(1), world_size):
        yield ds._load(b, np.arange(b * batch_size, min((b + 1) * batch_size, len(source))))


def require_usable(source, *, name: str, what: str = "validation") -> int:
    """Index of the first sample of `source` that loads; a UserError naming `name` (the file it comes from) when
    none does. Stages call it on their validation source at setup: an evaluation over no sample would divide by
    zero (or concatenate nothing) at the first val_freq step, or at the end of the run. It scans only until the
    first good sample, so a healthy validation set costs one sample load."""
    reasons = []
    for i in range(len(source)):
        try:
            source[i]
        except BadSample as e:
            reasons.append(str(e))
            continue
        return i
    if not reasons:
        raise UserError(f"{name}: the {what} set is empty: nothing to evaluate on")
    shown = "\n  ".join(reasons[:3]) + (f"\n  ... and {len(reasons) - 3} more" if len(reasons) > 3 else "")
    raise UserError(f"{name}: no usable {what} sample: all {len(reasons)} are bad, so nothing could be scored:\n  "
                    f"{shown}")


def seed_worker_generator(seed: int, epoch: int) -> torch.Generator:
    """A DataLoader generator that never touches the global RNG (so creating an iterator doesn't shift it)."""
    g = torch.Generator()
    g.manual_seed(seed * 100_003 + epoch)
    return g
