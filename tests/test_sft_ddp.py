"""Stage E under `torchrun --nproc_per_node 2` (gloo on CPU): trains, only rank 0 writes, resumes from its
checkpoint step, equals a one-process run that accumulates the two ranks' micro-batches, and a resume with another
world size lands on the same sample with a logged WARNING.

Why the one-process reference accumulates (batch 4 x accum 2) rather than taking batch 8: the SFT loss is the mean
over each micro-batch's assistant tokens, and DDP averages the ranks' gradients, so two ranks give the mean of two
per-rank means. One process with batch 8 gives the mean over all tokens, which weighs the halves by their token
counts: a different (equally valid) gradient, not a rounding difference. Accumulating the same two halves is the
same computation as DDP up to the order of float additions.
"""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO
from tests.test_sft_omni import TINY, command, stages  # noqa: F401  (stages is a fixture used below)

LAUNCH = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29617")
# Fixed sample order for any batch size (no length bucketing), evaluation only at the end, every checkpoint kept.
CONFIG = {**TINY, "data": {**TINY["data"], "bucket_batches": 0},
          "train": {**TINY["train"], "batch_size": 4, "max_steps": 4, "val_freq": 100, "checkpoint_freq": 2}}


def launch(tmp_path, stages, save, *extra, two_processes=True):  # noqa: F811
    cmd = command(tmp_path, stages, save, *extra, config=CONFIG)
    if two_processes:
        cmd = [*LAUNCH, *cmd[1:]]  # torchrun runs the script itself
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def trained(path) -> dict:
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, stages):  # noqa: F811
    """Four optimizer steps on two gloo processes (global batch 8), checkpoints at steps 2 and 4."""
    tmp = tmp_path_factory.mktemp("ddp")
    launch(tmp, stages, tmp / "run")
    return tmp / "run"


def test_two_processes_train_write_once_and_resume(ddp_run, stages, tmp_path):  # noqa: F811
    log = (ddp_run / "training.log").read_text()
    assert "world size 2" in log and "batch 4 x accum 1 x 2 processes" in log
    assert json.loads((ddp_run / "summary.json").read_text())["step"] == 4
    assert (ddp_run / "omni_final.pt").is_file() and (ddp_run / "tokenizer.model").is_file()
    # Only rank 0 writes: one log line per event (no duplicate from rank 1), no stray files.
    assert log.count("run omni_sft: dir") == 1 and log.count("group projectors:") == 1
    names = {p.name for p in ddp_run.iterdir()}
    assert {"omni_sft_step_2.pt", "omni_sft_step_4.pt", "omni_final.pt"} <= names
    assert not [n for n in names if n.endswith(".tmp") or "rank" in n]

    save = tmp_path / "run"  # stop after 4 steps, then rerun asking for 6: continues from step 4, not from 0
    shutil.copytree(ddp_run, save)
    result = launch(tmp_path, stages, save, "train.max_steps=6", "--force")
    log = (save / "training.log").read_text()
    assert "resumed at step 4, epoch 0, sample 32" in log and "WARNING: checkpoint was written" not in log
    assert json.loads((save / "summary.json").read_text())["step"] == 6
    assert "mixed_acc" in result.stdout


def test_two_processes_equal_one_accumulating_process_and_world_size_change_resumes(ddp_run, stages, tmp_path):  # noqa: F811
    one = tmp_path / "one"
    launch(tmp_path, stages, one, "train.grad_accum_steps=2", two_processes=False)
    assert "batch 4 x accum 2 x 1 processes" in (one / "training.log").read_text()
    ddp, single = trained(ddp_run / "omni_sft_step_4.pt"), trained(one / "omni_sft_step_4.pt")
    assert set(ddp) == set(single) and len(ddp) == 9
    for name in ddp:
        torch.testing.assert_close(ddp[name], single[name], rtol=0, atol=1e-5, msg=name)

    # The two-process checkpoint at step 2, resumed by one process with the same global batch (8 = 4 x accum 2):
    # the run warns and continues at sample 16 of epoch 0, the same position in the data.
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(ddp_run / "omni_sft_step_2.pt", moved)
    launch(tmp_path, stages, moved, "train.grad_accum_steps=2", "--force", two_processes=False)
    log = (moved / "training.log").read_text()
    assert "WARNING: checkpoint was written with world size 2, now 1: resuming at sample 16 of epoch 0" in log
    assert "resumed at step 2, epoch 0, sample 16" in log
    assert json.loads((moved / "summary.json").read_text())["step"] == 4
    resumed = trained(moved / "omni_sft_step_4.pt")  # same samples in steps 3-4 as the uninterrupted run
    for name in ddp:
        torch.testing.assert_close(resumed[name], ddp[name], rtol=0, atol=1e-5, msg=name)
