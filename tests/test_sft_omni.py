"""Stage E end to end: sft_omni.py on tiny stand-in stage checkpoints. Trainable-only checkpoints, the E1 new-token
row mask, E1 -> E2 chained by init_from, a freeze change across resume, exact resume, missing checkpoints."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from omni.thinker import Thinker, ThinkerConfig
from omni.vision_encoder import VisionConfig, VisionEncoder
from tests.conftest import REPO
from tests.stage_data import sft_standins
from tests.stage_helpers import run_ok

NEW_ROWS = [4, 5, 6, 7]
TINY = {
    "model": {"image_tokens": "pooled", "image_pool": 2, "projector_hidden": 32},
    "data": {"max_length": 160, "val_batch_size": 8, "sample_conversations": 2},
    "train": {"max_steps": 6, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "val_freq": 3, "checkpoint_freq": 2,
              "log_freq": 2, "keep_last": 10, "threads": 1},
    "group_lr": {"embeddings": 1e-2},
}


@pytest.fixture(scope="module")
def stages(tmp_path_factory, text_corpus):
    """Stand-ins for Stages A, B and C in their final-weights formats, plus the SFT data."""
    return sft_standins(tmp_path_factory.mktemp("stages"), text_corpus)


def command(tmp_path, stages, save_dir, *extra, config=TINY):
    root, sft = stages
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    return [sys.executable, str(REPO / "sft_omni.py"), "--config", str(path), "--set", f"train.save_dir={save_dir}",
            f"thinker_ckpt={root / 'thinker' / 'thinker.pt'}", f"audio_ckpt={root / 'audio_enc.pt'}",
            f"vision_ckpt={root / 'vision.pt'}", f"data.train_manifest={sft / 'train.jsonl'}",
            f"data.val_manifest={sft / 'val.jsonl'}", *extra]



@pytest.fixture(scope="module")
def e1(tmp_path_factory, stages):
    """A straight 6-step E1 run: projectors + new-token rows only."""
    tmp = tmp_path_factory.mktemp("e1")
    result = run_ok(command(tmp, stages, tmp / "run"))
    return tmp / "run", result


def final(save_dir):
    return torch.load(save_dir / "omni_final.pt", weights_only=True)


def test_e1_trains_projectors_and_new_rows_only(e1, stages):
    save, result = e1
    assert "mixed_acc" in result.stdout and "em_image_qa" in result.stdout
    summary = json.loads((save / "summary.json").read_text())
    assert summary["step"] == 6
    tasks = {"val_loss", "mixed_acc", "em_image_qa", "em_audio_qa", "em_ocr_qa", "em_text"}
    assert tasks <= set(summary["metrics"])
    kinds = set(summary["metrics"]) - tasks  # per question kind within a task, e.g. em_image_qa/colour
    assert kinds and all(k.split("/")[0] in tasks and 0 <= summary["metrics"][k] <= 1 for k in kinds)
    log = (save / "training.log").read_text()
    assert "group embeddings: 12,800 trainable parameters (rows [4, 5, 6, 7] only)" in log
    assert "group thinker: 0 trainable parameters (frozen)" in log and "sample [" in log
    # Trainable-only step checkpoint: the projectors and the embedding matrix, optimizer state keyed by name.
    step = torch.load(save / "omni_sft_step_6.pt", weights_only=True)
    assert step["trainable_only"] is True
    keys = set(step["model"])
    assert keys == {k for k in keys if k.startswith(("audio_projector.", "vision_projector."))} | {
        "thinker.embed_tokens.weight"}
    assert len(keys) == 9
    state = step["optimizers"]["main"]["state"]
    assert set(state) == keys and all("exp_avg" in s for s in state.values())
    groups = step["optimizers"]["main"]["param_groups"]
    # adamw splits each group into matrices (decayed) and vectors; the row-masked embedding is never decayed.
    assert {(g["name"], g["weight_decay"]) for g in groups if g["params"]} == {
        ("projectors", 0.1), ("projectors", 0.0), ("embeddings", 0.0)}
    # omni_final.pt: the same tensors; the embedding changed on the new rows only (bitwise elsewhere).
    out = final(save)
    assert set(out["model"]) == keys and out["tokenizer"] == "tokenizer.model" and (save / "tokenizer.model").exists()
    assert out["config"]["vision_projector"] == {"in_dim": 16, "out_dim": 32, "hidden_dim": 32}
    stage = torch.load(stages[0] / "thinker" / "thinker.pt", weights_only=True)["model"]["embed_tokens.weight"]
    trained = out["model"]["thinker.embed_tokens.weight"]
    others = [i for i in range(400) if i not in NEW_ROWS]
    assert torch.equal(trained[others], stage[others])
    assert not torch.equal(trained[[4, 5]], stage[[4, 5]])


def test_e2_chained_by_init_from_unfreezes_the_thinker(e1, stages, tmp_path):
    e1_dir, _ = e1
    e2 = tmp_path / "e2"
    run_ok(command(tmp_path, stages, e2, f"init_from={e1_dir / 'omni_final.pt'}", "freeze_thinker=false",
                   "train.max_steps=4", "group_lr.thinker=0.001"))
    log = (e2 / "training.log").read_text()
    assert f"initialised from {e1_dir / 'omni_final.pt'} (9 tensors" in log
    assert "group thinker: " in log and "group thinker: 0 trainable" not in log
    out, e1_out = final(e2)["model"], final(e1_dir)["model"]
    assert any(k.startswith("thinker.layers.") for k in out) and not any(k.startswith("audio_encoder.") for k in out)
    assert set(e1_out) <= set(out)
    step = torch.load(e2 / "omni_sft_step_4.pt", weights_only=True)
    lrs = {g["name"]: g["initial_lr"] for g in step["optimizers"]["main"]["param_groups"]}
    assert lrs == {"projectors": 3e-3, "embeddings": 1e-2, "thinker": 1e-3, "audio_encoder": 3e-3,
                   "vision_encoder": 3e-3}


def test_frozen_tensor_changed_by_init_from_stays_in_omni_final(e1, stages, tmp_path):
    """omni_final.pt holds what differs from the stage weights, also a tensor frozen in this run that init_from
    changed (E1's new-token rows): found by per-tensor digests taken at the start, not by a copy of the model."""
    e1_dir, _ = e1
    run_ok(command(tmp_path, stages, tmp_path / "run", f"init_from={e1_dir / 'omni_final.pt'}",
                   "train_new_tokens=false", "train.max_steps=2"))
    out = final(tmp_path / "run")["model"]
    assert torch.equal(out["thinker.embed_tokens.weight"], final(e1_dir)["model"]["thinker.embed_tokens.weight"])
    assert not any(k.startswith(("thinker.layers.", "audio_encoder.", "vision_encoder.")) for k in out)


def test_resume_with_a_changed_freeze_set(e1, stages, tmp_path):
    save = tmp_path / "run"
    shutil.copytree(e1[0], save)
    for p in save.glob("*"):  # back to the state after step 4 of E1
        if p.name.startswith(("omni_sft_step_6", "omni_final", "omni_sft_best", "summary")):
            p.unlink()
    result = run_ok(command(tmp_path, stages, save, "freeze_thinker=false", "freeze_vision_encoder=false",
                            "train.max_steps=8"))
    log = result.stderr
    assert "resumed at step 4" in log
    assert "freeze change: now trainable (from stage weights): thinker.layers.0" in log
    # Every newly trainable tensor (all of the Thinker but its embedding, all of the ViT) starts a fresh Adam state.
    root = stages[0]
    thinker = Thinker(ThinkerConfig(**torch.load(root / "thinker" / "thinker.pt", weights_only=True)["config"]))
    vision = VisionEncoder(VisionConfig(**torch.load(root / "vision.pt", weights_only=True)["config"]["vision"]))
    fresh = len(list(thinker.parameters())) - 1 + len(list(vision.parameters()))
    assert f"optimizer main: fresh state for {fresh} newly trainable tensors" in log
    step = torch.load(save / "omni_sft_step_8.pt", weights_only=True)
    assert any(k.startswith("vision_encoder.") for k in step["model"])
    assert "thinker.layers.0.mlp.up_proj.weight" in step["optimizers"]["main"]["state"]
    # Freezing again keeps the trained values and says so.
    again = run_ok(command(tmp_path, stages, save, "freeze_vision_encoder=true", "freeze_thinker=false",
                           "train.max_steps=10"))
    assert "freeze change: now frozen (kept at their trained values): vision_encoder." in again.stderr
    out = final(save)["model"]
    trained = torch.load(save / "omni_sft_step_8.pt", weights_only=True)["model"]
    assert torch.equal(out["vision_encoder.pos_embed"], trained["vision_encoder.pos_embed"])


def test_rerun_after_interruption_is_bitwise_identical(e1, stages, tmp_path):
    save = tmp_path / "run"
    shutil.copytree(e1[0], save)
    for p in save.glob("*"):  # as if killed right after the step-2 checkpoint
        if p.name.startswith(("omni_sft_step_4", "omni_sft_step_6", "omni_final", "omni_sft_best", "summary")):
            p.unlink()
    result = run_ok(command(tmp_path, stages, save))
    assert "resumed at step 2" in result.stderr
    a, b = final(e1[0])["model"], final(save)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("key", ["thinker_ckpt", "audio_ckpt"])
def test_missing_stage_checkpoint_is_an_error(stages, tmp_path, key):
    result = subprocess.run(command(tmp_path, stages, tmp_path / "run", f"{key}={tmp_path / 'nope.pt'}"), cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and f"{key}={tmp_path / 'nope.pt'}: no such checkpoint" in result.stderr
    assert not (tmp_path / "run").exists()


def test_progressive_recipes_chain_by_init_from():
    from omni.config import load_config_file
    from omni.stages import SftStage

    e1, e2, e3 = (load_config_file(SftStage, REPO / f"configs/omni_sft_stages/omni_sft_e{i}.json") for i in (1, 2, 3))
    assert e1.init_from is None and e1.freeze_thinker and e1.train_new_tokens and not e1.freeze_projectors
    assert e2.init_from == f"{e1.train.save_dir}/omni_final.pt" and not e2.freeze_thinker
    assert e2.freeze_audio_encoder and e2.freeze_vision_encoder
    assert e3.init_from == f"{e2.train.save_dir}/omni_final.pt"
    assert not (e3.freeze_thinker or e3.freeze_audio_encoder or e3.freeze_vision_encoder)
    assert e3.group_lr.vision_encoder < e3.group_lr.thinker and e3.group_lr.audio_encoder < e3.group_lr.thinker
    assert len({e1.train.save_dir, e2.train.save_dir, e3.train.save_dir}) == 3
    assert all(c.train.warmup_steps > 0 for c in (e1, e2, e3))
    tiny = load_config_file(SftStage, REPO / "configs/omni_sft_tiny.json")
    assert tiny.train.save_dir == "checkpoints/omni_sft_tiny"
