"""Benchmark plumbing: the resume probe lands on the right samples, every stage's synthetic step trains, and
bench.py / measure_memory.py run end to end on CPU. Correctness only: speed is measured by `make bench`, never
asserted here."""

import json

import pytest
import torch

from omni.data.resumable import ResumableDataset
from omni.stage_bench import STAGES, build_stage
from tests.conftest import REPO, load_script

bench = load_script("bench")
measure_memory = load_script("measure_memory")


@pytest.mark.parametrize("bucket_batches", [0, 8])
def test_resume_after_a_million_samples_reads_only_the_batch_at_that_position(bucket_batches):
    source = bench.IndexSource(2_000_000)
    skip, batch_size = 1_000_000, 32
    loaded, _ = bench.first_batch_after(source, skip, batch_size=batch_size, bucket_batches=bucket_batches)
    # The batch a dataset gives at that position, computed directly from its epoch order.
    order = ResumableDataset(source, batch_size=batch_size, bucket_batches=bucket_batches).order(0)
    first = skip // batch_size
    assert loaded.index == first
    assert loaded.batch["index"].tolist() == order[first * batch_size:(first + 1) * batch_size].tolist()
    assert source.reads == batch_size  # nothing before the position was read: O(1) in the skipped samples


@pytest.mark.parametrize("bucket_batches", [0, 4])
def test_resumed_batch_equals_the_batch_an_uninterrupted_pass_reaches(bucket_batches):
    source, skip, batch_size = bench.IndexSource(5_000), 2_000, 16
    uninterrupted = ResumableDataset(source, batch_size=batch_size, bucket_batches=bucket_batches)
    reached = next(b for b in uninterrupted if b.index == skip // batch_size)
    loaded, _ = bench.first_batch_after(source, skip, batch_size=batch_size, bucket_batches=bucket_batches)
    assert torch.equal(loaded.batch["index"], reached.batch["index"])


# Shapes shrunk where one CPU step at batch 1 would take seconds (the 71 M-parameter discriminators, long inputs).
SMALL = {"vocoder": ["data.segment_frames=8", "model.mpd_channels=[8,16,16,16]",
                     "model.msd_channels=[16,16,32,32,32,32,32]"],
         "D-codec": ["codec.data.crop_frames=64"], "A": ["data.seq_len=64"]}


@pytest.mark.parametrize("key", STAGES)
def test_every_stage_step_trains_its_trainable_parameters(key):
    stage = build_stage(key, REPO / "configs", "cpu", batch_size=1, overrides=SMALL.get(key, ()))
    before = {n: p.detach().clone() for n, p in stage.model.named_parameters()}
    loss = stage.step()
    assert loss.dim() == 0 and torch.isfinite(loss)
    after = dict(stage.model.named_parameters())
    changed = {n for n, p in after.items() if not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in after.items() if p.requires_grad}
    assert changed and changed <= trainable
    if key == "E":  # configs/omni_sft_tiny.json freezes both encoders: the step must leave them alone
        assert not any(n.startswith(("audio_encoder.", "vision_encoder.")) for n in changed)
        assert any(n.startswith("thinker.") for n in changed)


def test_bench_writes_one_row_per_stage_and_the_resume_probe(tmp_path, capsys, monkeypatch):
    # A smaller resume probe: the million-sample position is covered above, without DataLoader workers.
    monkeypatch.setattr(bench, "RESUME_SOURCE_ITEMS", 20_000)
    monkeypatch.setattr(bench, "RESUME_SKIP", 10_000)
    out = tmp_path / "bench.json"
    bench.main(["--stages", "D-talker", "C", "--steps", "1", "--batch-size", "1", "--device", "cpu", "--no-tts",
                "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [r["stage"] for r in rows] == ["D-talker", "C", "resume"]
    assert rows[0]["tokens_per_s"] > 0 and rows[1]["tokens_per_s"] is None
    assert rows[2]["plain_first_batch_index"] == bench.RESUME_SKIP // rows[2]["batch"]
    table = capsys.readouterr().out
    assert "D-talker Talker" in table and "samples/s" in table


def test_measure_memory_on_cpu_reports_every_requested_stage(tmp_path):
    out = tmp_path / "memory.json"
    rc = measure_memory.main(["--device", "cpu", "--steps", "1", "--batch-size", "1", "--stages", "A", "D-talker",
                              "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert [r["stage"] for r in report["stages"]] == ["A", "D-talker"]
    assert all(r["status"] == "ok" and r["max_rss_mb"] > 0 for r in report["stages"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_measure_memory_without_cuda_exits_2(capsys):
    assert measure_memory.main(["--stages", "A"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
