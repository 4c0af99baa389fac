"""OCR end to end: train_ocr.py on a tiny config, bad images, SIGKILL at random moments + rerun == straight run."""

import json
import re
import subprocess
import sys

import pytest
import torch

from omni.config import ConfigError, from_dict, load_config_file
from omni.ctc import CharVocab
from omni.ocr import OcrConfig, OcrModel
from omni.stages import OcrStage
from omni.synthetic.ocr_lines import write_ocr_dataset
from tests.conftest import REPO
from tests.stage_helpers import kill_and_rerun_until_done, run_ok

TINY = {
    "model": {"height": 32, "conv_channels": 8, "d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1,
              "d_ff": 64, "max_frames": 256},
    "data": {"bucket_batches": 2, "val_batch_size": 8, "sample_lines": 2},
    "train": {"max_steps": 8, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "val_freq": 4, "checkpoint_freq": 2,
              "log_freq": 2, "keep_last": 2, "threads": 1},
}


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    out = tmp_path_factory.mktemp("ocr")
    write_ocr_dataset(out, seed=1, n_train=40, n_val=10, height=32)  # 5 steps per epoch at batch 8
    return out


def command(tmp_path, lines, save_dir, *extra):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return [sys.executable, str(REPO / "train_ocr.py"), "--config", str(path), "--set", f"train.save_dir={save_dir}",
            f"data.train_manifest={lines / 'train.jsonl'}", f"data.val_manifest={lines / 'val.jsonl'}", *extra]



def final(save_dir) -> dict:
    return torch.load(save_dir / "ocr.pt", weights_only=True)


def test_outputs_static_width_and_rerun_of_finished_run(tmp_path, lines):
    save = tmp_path / "run"
    out = run_ok(command(tmp_path, lines, save, "data.max_width=400"))  # static width, as train.compile needs
    assert re.search(r"val_cer [\d.]+ val_exact_line_acc [\d.]+", out.stdout)
    weights = final(save)
    texts = [json.loads(x)["text"] for x in (lines / "train.jsonl").read_text().splitlines()]
    assert weights["vocab"] == sorted(set("".join(texts))) and weights["max_width"] == 400
    assert weights["config"]["vocab_size"] == len(weights["vocab"]) + 1  # + CTC blank
    model = OcrModel(from_dict(OcrConfig, weights["config"]))
    model.load_state_dict(weights["model"])  # strict: ocr.pt rebuilds the model
    assert len(CharVocab.from_list(weights["vocab"])) == model.cfg.vocab_size
    summary = json.loads((save / "summary.json").read_text())
    assert summary["step"] == 8 and summary["bad_samples"] == 0
    assert summary["metrics"]["val_cer"] >= 0 and 0 <= summary["metrics"]["val_exact_line_acc"] <= 1
    log = (save / "training.log").read_text()
    val_texts = [json.loads(x)["text"] for x in (lines / "val.jsonl").read_text().splitlines()]
    scored = [t for t in val_texts if set(t) <= set(weights["vocab"])]  # the others are reported, not scored
    assert f"sample: {scored[0]!r} -> " in log
    if len(scored) < len(val_texts):  # lines with characters never seen in training are named, not scored
        assert f"evaluation skipped {len(val_texts) - len(scored)} bad samples (not scored)" in log
        assert "are not in the vocabulary" in log
    again = run_ok(command(tmp_path, lines, save, "data.max_width=400"))
    assert "resumed at step 8" in again.stderr


def test_sigkill_at_random_moments_then_rerun_is_bitwise_identical(tmp_path, lines):
    run_ok(command(tmp_path, lines, tmp_path / "straight"))
    killed = tmp_path / "killed"
    assert kill_and_rerun_until_done(command(tmp_path, lines, killed), killed, seed=5) >= 1
    a, b = final(tmp_path / "straight")["model"], final(killed)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "resumed at step" in (killed / "training.log").read_text()


def test_a_corrupt_and_a_missing_image_are_skipped_and_named(tmp_path, lines):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    records = [{**json.loads(x), "image": str(lines / json.loads(x)["image"])}
               for x in (lines / "train.jsonl").read_text().splitlines()[:38]]
    records += [{"image": str(tmp_path / "corrupt.png"), "text": "hello"},
                {"image": str(tmp_path / "missing.png"), "text": "world"}]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    save = tmp_path / "bad"
    # 40 records = 5 full batches: every record is read, and one whole epoch writes the bad-sample report.
    run_ok([*command(tmp_path, lines, save, "train.max_steps=null", "train.max_bad_fraction=0.1"),
            f"data.train_manifest={manifest}"])
    log = (save / "training.log").read_text()
    assert "corrupt.png" in log and "missing.png" in log and "skipped 2 bad samples" in log
    assert json.loads((save / "summary.json").read_text())["bad_samples"] == 2


def test_compile_needs_a_static_width(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"compile": True}}))
    with pytest.raises(ConfigError, match="max_width"):
        load_config_file(OcrStage, path)
    path.write_text(json.dumps({"train": {"compile": True}, "data": {"max_width": 512}}))
    assert load_config_file(OcrStage, path).data.max_width == 512
    with pytest.raises(ConfigError, match="max_frames"):  # 512 px = 128 frames
        load_config_file(OcrStage, path, ["model.max_frames=100"])


def test_a_changed_alphabet_is_refused_and_force_keeps_the_runs_alphabet(tmp_path, lines):
    """The ASR rule (omni.ctc.pin_vocab): --force resumes with the run's alphabet and skips lines with other
    characters. It used to overwrite vocab.json with the new alphabet, so the resumed ids meant other characters
    (or the CTC head no longer fit and the run silently restarted from step 0)."""
    save = tmp_path / "run"
    run_ok(command(tmp_path, lines, save, "train.max_steps=2"))
    pinned = json.loads((save / "vocab.json").read_text(encoding="utf-8"))
    records = [json.loads(x) for x in (lines / "train.jsonl").read_text().splitlines()]
    changed = lines / "train_with_a_new_character.jsonl"  # beside train.jsonl: image paths are relative to it
    changed.write_text("".join(json.dumps(r) + "\n" for r in [*records, {**records[0], "text": "are Who \u00a7"}]))
    moved = [f"data.train_manifest={changed}", "train.max_steps=10"]  # to the end of epoch 1: every line seen
    refused = subprocess.run(command(tmp_path, lines, save, *moved), cwd=REPO, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode != 0 and "vocab.json" in refused.stderr and "Traceback" not in refused.stderr
    forced = run_ok(command(tmp_path, lines, save, *moved, "--force"))
    assert "--force: keeping the run's alphabet" in forced.stderr and "resumed at step 2" in forced.stderr
    assert json.loads((save / "vocab.json").read_text(encoding="utf-8")) == pinned == final(save)["vocab"]
    assert json.loads((save / "summary.json").read_text())["bad_samples"] >= 1
    assert "\u00a7" in (save / "training.log").read_text(encoding="utf-8").split("skipped bad sample", 1)[1]
