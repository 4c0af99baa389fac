import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from omni.data.resumable import BadSample, ResumableDataset, evaluation_batches


class Numbers:
    """Source of integers; multiples of `bad_every` are bad."""

    def __init__(self, n, bad_every=0):
        self.n, self.bad_every, self.reads = n, bad_every, 0
        self.lengths = [(i * 7) % 13 for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads += 1
        if self.bad_every and i % self.bad_every == 0:
            raise BadSample(f"item{i}.wav: unreadable")
        return {"x": i}

    def collate(self, samples):
        return {"x": torch.tensor([s["x"] for s in samples])}


def batches(ds, workers, epoch=0, skip=0, rank=0, world=1):
    ds.set_position(epoch=epoch, skip_samples=skip, rank=rank, world_size=world)
    loader = DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=lambda x: x)
    return [(b.index, b.batch["x"].tolist() if b.batch else None, b.bad) for b in loader]


@pytest.mark.parametrize("workers", [1, 2])
def test_same_order_for_any_num_workers(workers):
    ds = ResumableDataset(Numbers(50), batch_size=4, seed=3)
    assert batches(ds, workers) == batches(ds, 0)


def test_epoch_is_a_seeded_permutation_that_changes_per_epoch():
    ds = ResumableDataset(Numbers(40), batch_size=4, seed=1)
    e0, e1 = batches(ds, 0, epoch=0), batches(ds, 0, epoch=1)
    flat0 = [x for _, xs, _ in e0 for x in xs]
    assert sorted(flat0) == list(range(40)) and flat0 != list(range(40))
    assert e0 != e1
    assert e0 == batches(ResumableDataset(Numbers(40), batch_size=4, seed=1), 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_resumes_exactly_and_resets_next_epoch(workers):
    ds = ResumableDataset(Numbers(50), batch_size=4, seed=0)
    full = batches(ds, 0)
    assert batches(ds, workers, skip=5 * 4) == full[5:]
    ds.set_position(epoch=1)  # a new epoch starts from its beginning again
    assert batches(ds, 0, epoch=1)[0][0] == 0


def test_skip_reads_nothing_before_the_position():
    source = Numbers(1_000_000)
    ds = ResumableDataset(source, batch_size=8, seed=0)
    ds.set_position(epoch=0, skip_samples=999_000)
    first = next(iter(ds))
    assert first.index == 999_000 // 8
    assert source.reads == 8  # a permutation, then only the served batch: no read of the skipped items


def test_ranks_partition_each_global_batch():
    ds = ResumableDataset(Numbers(48), batch_size=4, seed=0)
    single = ResumableDataset(Numbers(48), batch_size=8, seed=0)
    r0, r1 = batches(ds, 0, world=2), batches(ds, 0, rank=1, world=2)
    for (i0, a, _), (i1, b, _), (i, whole, _) in zip(r0, r1, batches(single, 0)):
        assert i0 == i1 == i and a + b == whole


def test_bad_samples_are_reported_not_silently_dropped():
    ds = ResumableDataset(Numbers(20, bad_every=5), batch_size=4, seed=0, shuffle=False)
    out = batches(ds, 0)
    bad = [msg for _, _, msgs in out for msg in msgs]
    assert sorted(bad) == sorted(f"item{i}.wav: unreadable" for i in (0, 5, 10, 15))
    assert all(x % 5 for _, xs, _ in out for x in xs)


def test_all_bad_batch_yields_none_and_empty_source_is_an_error():
    out = batches(ResumableDataset(Numbers(4, bad_every=1), batch_size=4, seed=0), 0)
    assert out[0][1] is None and len(out[0][2]) == 4
    with pytest.raises(ValueError, match="empty"):
        ResumableDataset(Numbers(0), batch_size=4)


def test_bucketing_groups_similar_lengths_deterministically():
    src = Numbers(64)
    ds = ResumableDataset(src, batch_size=4, seed=0, bucket_batches=4)
    out = batches(ds, 0)
    assert out == batches(ResumableDataset(src, batch_size=4, seed=0, bucket_batches=4), 0)
    spread = np.mean([np.ptp([src.lengths[x] for x in xs]) for _, xs, _ in out])
    plain = batches(ResumableDataset(src, batch_size=4, seed=0), 0)
    assert spread < np.mean([np.ptp([src.lengths[x] for x in xs]) for _, xs, _ in plain])
    assert sorted(x for _, xs, _ in out for x in xs) == list(range(64))


def test_evaluation_reads_everything_in_order_sharded_by_rank():
    src = Numbers(10)
    whole = [x for b in evaluation_batches(src, batch_size=3) for x in b.batch["x"].tolist()]
    assert whole == list(range(10))
    shards = [x for r in (0, 1) for b in evaluation_batches(src, batch_size=3, rank=r, world_size=2)
              for x in b.batch["x"].tolist()]
    assert sorted(shards) == list(range(10))
    bad = [m for b in evaluation_batches(Numbers(10, bad_every=4), batch_size=3) for m in b.bad]
    assert bad == [f"item{i}.wav: unreadable" for i in (0, 4, 8)]
