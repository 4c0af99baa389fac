"""Stage C end to end: train_vision.py on tiny configs (contrastive with the text encoder or the frozen Thinker,
classify), bad images, clear errors, SIGKILL at random moments + rerun == straight run."""

import hashlib
import json
import re
import subprocess
import sys

import pytest
import torch

from omni.config import from_dict
from omni.contrastive import ContrastiveConfig, ContrastiveModel
from omni.synthetic.images import write_image_dataset
from omni.thinker import Thinker, ThinkerConfig
from tests.conftest import REPO
from tests.stage_data import stage_a_standin
from tests.stage_helpers import kill_and_rerun_until_done, run_ok

TINY = {
    "model": {"vision": {"image_size": 16, "patch_size": 8, "d_model": 32, "n_layers": 1, "n_heads": 2,
                         "n_kv_heads": 1, "d_ff": 64},
              "text": {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64, "max_len": 32},
              "embed_dim": 16},
    "data": {"max_text_length": 24, "val_batch_size": 8, "sample_images": 2},
    "train": {"max_steps": 8, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "val_freq": 4, "checkpoint_freq": 2,
              "log_freq": 2, "keep_last": 2, "threads": 1},
}
CLASSIFY = {**TINY, "model": {"vision": TINY["model"]["vision"], "objective": "classify", "n_classes": 5}}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    out = tmp_path_factory.mktemp("images")
    write_image_dataset(out, seed=1, n_train=40, n_val=12, image_size=32)  # 5 steps per epoch at batch 8
    return out


@pytest.fixture(scope="module")
def stage_a(tmp_path_factory, text_corpus):
    """A Stage-A folder as train_text.py leaves it: tokenizer.model + thinker.pt {"model", "config", "tokenizer"}."""
    return stage_a_standin(tmp_path_factory.mktemp("thinker"), text_corpus)


def command(tmp_path, images, stage_a, save_dir, *extra, config=TINY):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    return [sys.executable, str(REPO / "train_vision.py"), "--config", str(path), "--set",
            f"train.save_dir={save_dir}", f"data.train_manifest={images / 'train.jsonl'}",
            f"data.val_manifest={images / 'val.jsonl'}", f"data.tokenizer={stage_a / 'tokenizer.model'}",
            f"data.thinker_ckpt={stage_a / 'thinker.pt'}", *extra]



def final(save_dir) -> dict:
    return torch.load(save_dir / "vision.pt", weights_only=True)


def test_contrastive_outputs_and_rerun_of_finished_run(tmp_path, images, stage_a):
    save = tmp_path / "run"
    out = run_ok(command(tmp_path, images, stage_a, save))
    assert re.search(r"i2t_r1 [\d.]+ i2t_r5 [\d.]+ t2i_r1 [\d.]+ t2i_r5 [\d.]+", out.stdout)
    weights = final(save)
    assert weights["config"]["text"]["vocab_size"] == 400  # filled in from the tokenizer
    assert weights["tokenizer"] == "tokenizer.model" and (save / "tokenizer.model").exists()
    model = ContrastiveModel(from_dict(ContrastiveConfig, weights["config"]))
    model.load_state_dict(weights["model"])  # strict: vision.pt rebuilds the whole model
    summary = json.loads((save / "summary.json").read_text())
    metrics = summary["metrics"]
    assert summary["step"] == 8 and metrics["n_images"] == 12
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"))
    assert metrics["i2t_r5"] >= metrics["i2t_r1"]
    log = (save / "training.log").read_text()
    assert "sample: val_000000.png" in log and "top caption" in log and "logit_scale" in log
    again = run_ok(command(tmp_path, images, stage_a, save))
    assert "resumed at step 8" in again.stderr


def test_sigkill_at_random_moments_then_rerun_is_bitwise_identical(tmp_path, images, stage_a):
    run_ok(command(tmp_path, images, stage_a, tmp_path / "straight"))
    killed = tmp_path / "killed"
    assert kill_and_rerun_until_done(command(tmp_path, images, stage_a, killed), killed, seed=3) >= 1
    a, b = final(tmp_path / "straight")["model"], final(killed)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "resumed at step" in (killed / "training.log").read_text()


def test_frozen_thinker_text_tower_trains_resumes_and_stays_unchanged(tmp_path, images, stage_a):
    thinker_bytes = hashlib.sha256((stage_a / "thinker.pt").read_bytes()).hexdigest()
    save = tmp_path / "thinker_text"
    # data.tokenizer=null: the tokenizer beside the Thinker checkpoint is used.
    cmd = command(tmp_path, images, stage_a, save, "model.use_thinker_for_text=true", "data.tokenizer=null")
    run_ok([*cmd, "train.max_steps=4"])
    run_ok(cmd)  # resumes from a trainable-only checkpoint: the Thinker is reloaded from its own file
    log = (save / "training.log").read_text()
    assert "resumed at step 4" in log
    total, trainable = (int(x.replace(",", "")) for x in re.search(r"([\d,]+) parameters, ([\d,]+) trainable",
                                                                   log).groups())
    saved = torch.load(stage_a / "thinker.pt", weights_only=True)
    thinker = Thinker(ThinkerConfig(**saved["config"]))
    thinker.load_state_dict(saved["model"])
    assert total - trainable == sum(p.numel() for p in thinker.parameters())
    step = torch.load(sorted(save.glob("vision_step_*.pt"))[-1], weights_only=True)
    assert step["trainable_only"] and not any(k.startswith("thinker.") for k in step["model"])
    weights = final(save)
    assert weights["thinker"] == str(stage_a / "thinker.pt") and not any(k.startswith("thinker.")
                                                                         for k in weights["model"])
    model = ContrastiveModel(from_dict(ContrastiveConfig, weights["config"]), thinker=thinker)
    result = model.load_state_dict(weights["model"], strict=False)
    assert not result.unexpected_keys and all(k.startswith("thinker.") for k in result.missing_keys)
    assert hashlib.sha256((stage_a / "thinker.pt").read_bytes()).hexdigest() == thinker_bytes
    assert f"text tower: the frozen Thinker of {stage_a / 'thinker.pt'}" in log
    assert 0.0 <= json.loads((save / "summary.json").read_text())["metrics"]["i2t_r1"] <= 1.0


def test_classify_with_a_corrupt_and_a_missing_image(tmp_path, images, stage_a):
    manifest = tmp_path / "train.jsonl"
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    bad = [{"image": str(tmp_path / "corrupt.png"), "caption": "a red circle", "label": "circle"},
           {"image": str(tmp_path / "missing.png"), "caption": "a red circle", "label": "circle"}]
    lines = (images / "train.jsonl").read_text().splitlines()[:38]
    records = [{**json.loads(line), "image": str(images / json.loads(line)["image"])} for line in lines]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records + bad))
    save = tmp_path / "classify"
    # 38 + 2 records = 5 full batches: every record is read, and one whole epoch writes the bad-sample report.
    out = run_ok([*command(tmp_path, images, stage_a, save, "train.max_steps=null", "train.max_bad_fraction=0.1",
                           config=CLASSIFY), f"data.train_manifest={manifest}"])
    assert re.search(r"val_acc [\d.]+", out.stdout)
    log = (save / "training.log").read_text()
    assert "corrupt.png" in log and "missing.png" in log and "skipped 2 bad samples" in log
    assert "-> predicted" in log
    summary = json.loads((save / "summary.json").read_text())
    assert summary["bad_samples"] == 2 and 0.0 <= summary["metrics"]["val_acc"] <= 1.0
    weights = final(save)
    assert weights["labels"] == ["circle", "multiple", "square", "star", "triangle"]
    ContrastiveModel(from_dict(ContrastiveConfig, weights["config"])).load_state_dict(weights["model"])


def test_missing_thinker_or_tokenizer_is_a_clear_error(tmp_path, images, stage_a):
    missing = tmp_path / "nowhere" / "thinker.pt"
    result = subprocess.run(command(tmp_path, images, stage_a, tmp_path / "a", "model.use_thinker_for_text=true",
                                    f"data.thinker_ckpt={missing}"), cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and str(missing) in result.stderr and "use_thinker_for_text" in result.stderr
    result = subprocess.run(command(tmp_path, images, stage_a, tmp_path / "b", f"data.tokenizer={tmp_path}/no.model"),
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no.model" in result.stderr and "train_text.py" in result.stderr
