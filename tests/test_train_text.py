"""Stage A end to end: train_text.py on a tiny config, SIGKILL at random moments + rerun == straight run, DDP."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO
from tests.stage_helpers import kill_and_rerun_until_done

TINY = {
    "model": {"vocab_size": 400, "d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64,
              "max_seq_len": 64, "dropout": 0.1},
    "data": {"seq_len": 32, "val_batch_size": 16, "sample_tokens": 4},
    "train": {"max_steps": 16, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "val_freq": 8,
              "checkpoint_freq": 2, "log_freq": 4, "keep_last": 2},
}


def command(tmp_path, corpus, save_dir, *extra, launcher=(sys.executable,)):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    return [*launcher, str(REPO / "train_text.py"), "--config", str(cfg), "--set", f"train.save_dir={save_dir}",
            f"data.train_path={corpus / 'train.txt'}", f"data.val_path={corpus / 'val.txt'}", *extra]


def weights(save_dir):
    return torch.load(save_dir / "thinker.pt", weights_only=True)["model"]


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_at_random_moments_then_rerun_is_bitwise_identical(tmp_path, text_corpus, workers):
    extra = (f"train.num_workers={workers}",)
    straight = subprocess.run(command(tmp_path, text_corpus, tmp_path / "straight", *extra), cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert "val_ppl" in straight.stdout
    killed = tmp_path / "killed"
    kills = kill_and_rerun_until_done(command(tmp_path, text_corpus, killed, *extra), killed, seed=workers)
    assert kills >= 1
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = (tmp_path / "killed" / "training.log").read_text()
    assert "resumed at step" in log


def test_outputs_and_rerun_of_finished_run(tmp_path, text_corpus):
    save = tmp_path / "run"
    subprocess.run(command(tmp_path, text_corpus, save), cwd=REPO, check=True, capture_output=True, timeout=300)
    assert (save / "tokenizer.model").exists() and (save / "config.json").exists()
    final = torch.load(save / "thinker.pt", weights_only=True)
    assert final["config"]["vocab_size"] == 400 and final["tokenizer"] == "tokenizer.model"
    summary = json.loads((save / "summary.json").read_text())
    assert summary["step"] == 16 and summary["metrics"]["val_ppl"] < 400  # better than uniform over the vocab
    log = (save / "training.log").read_text()
    assert "sample: 'Once upon a time'" in log
    metrics = (save / "metrics.jsonl").read_text()
    assert {json.loads(x)["kind"] for x in metrics.splitlines()} == {"train", "eval"}
    again = subprocess.run(command(tmp_path, text_corpus, save), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "resumed at step 16" in again.stderr
    # Only the final bookkeeping: no training step, no new evaluation (counted, not timed).
    assert (save / "metrics.jsonl").read_text() == metrics


def test_two_process_gloo_ddp_trains_and_resumes(tmp_path, text_corpus):
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29613")
    save = tmp_path / "ddp"
    first = subprocess.run(command(tmp_path, text_corpus, save, "train.max_steps=6", launcher=launcher), cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    log = (save / "training.log").read_text()
    assert "world size 2" in log and "batch 8 x accum 1 x 2 processes" in log
    second = subprocess.run(command(tmp_path, text_corpus, save, "train.max_steps=10", "--force", launcher=launcher),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((save / "summary.json").read_text())["step"] == 10
    assert "resumed at step 6" in (save / "training.log").read_text()


def test_sigterm_to_the_whole_process_group_with_workers_checkpoints_and_exits_zero(tmp_path, text_corpus):
    """As Ctrl-C in a terminal, Slurm or `kill -- -PGID` do: the DataLoader workers get the signal too. The run
    sends it to its own process group inside its 5th optimizer step (OMNI_FAULT=...:term), so it lands mid-run on
    any machine."""
    save = tmp_path / "run"
    cmd = command(tmp_path, text_corpus, save, "train.num_workers=2")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, start_new_session=True,
                          env={**os.environ, "OMNI_FAULT": "step@5:term"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SIGTERM received" in proc.stderr and "stopped at step 5; rerun the same command to resume" in proc.stderr
    stopped = max(int(p.stem.rsplit("_", 1)[1]) for p in save.glob("thinker_step_*.pt"))
    assert stopped == 5
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and f"resumed at step {stopped}" in again.stderr
