"""scripts/evaluate.py: a finished tiny run of Stages A, B, OCR and E scored again from its final weights gives the
metrics of its summary.json (the same evaluation code), on another held-out set too, without touching the run dir."""

import importlib.util
import json
import subprocess

import pytest

from tests import test_sft_omni, test_train_audio_enc, test_train_ocr, test_train_text
from tests.conftest import REPO
from tests.stage_data import asr_speech, sft_standins

spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "scripts" / "evaluate.py")
evaluate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(evaluate)

SHORT = ("train.max_steps=2", "train.val_freq=2", "train.checkpoint_freq=2", "train.log_freq=1")


def train(cmd):
    result = subprocess.run([*cmd, *SHORT], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def snapshot(run_dir) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.rglob("*")}


def score(tmp_path, cmd, *extra) -> dict:
    """evaluate.py with the training command's --config/--set (and extra --set items), metrics from --json."""
    config, sets = cmd[cmd.index("--config") + 1], cmd[cmd.index("--set") + 1:]
    out = tmp_path / "eval.json"
    assert evaluate.main(["--config", config, "--set", *sets, *SHORT, *extra, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def check_same_as_summary(tmp_path, cmd, run_dir, stage, metric, capsys):
    before = snapshot(run_dir)
    result = score(tmp_path, cmd)
    assert result["stage"] == stage
    summary = json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert result["metrics"].keys() == summary.keys()
    for key, value in summary.items():
        assert result["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert f"{metric} " in capsys.readouterr().out
    assert snapshot(run_dir) == before  # no checkpoint, log or summary written or touched


def test_text(tmp_path, text_corpus, capsys):
    run_dir = tmp_path / "run"
    cmd = test_train_text.command(tmp_path, text_corpus, run_dir)
    train(cmd)
    check_same_as_summary(tmp_path, cmd, run_dir, "text", "val_ppl", capsys)
    # another held-out set: the training text scores differently, through the same code
    other = score(tmp_path, cmd, f"data.val_path={text_corpus / 'train.txt'}")
    assert other["val"] == str(text_corpus / "train.txt") and other["metrics"]["val_ppl"] > 1


def test_audio(tmp_path, capsys):
    data = asr_speech(tmp_path / "speech", n_train=8, n_val=4)
    run_dir = tmp_path / "run"
    cmd = test_train_audio_enc.command(tmp_path, data, run_dir)
    train(cmd)
    check_same_as_summary(tmp_path, cmd, run_dir, "audio", "val_cer", capsys)


def test_ocr(tmp_path, capsys):
    from omni.synthetic.ocr_lines import write_ocr_dataset

    lines = tmp_path / "ocr"
    write_ocr_dataset(lines, seed=1, n_train=16, n_val=6, height=32)
    run_dir = tmp_path / "run"
    cmd = test_train_ocr.command(tmp_path, lines, run_dir)
    train(cmd)
    check_same_as_summary(tmp_path, cmd, run_dir, "ocr", "val_cer", capsys)
    with pytest.raises(evaluate.UserError, match="no final weights"):
        evaluate.main(["--config", cmd[cmd.index("--config") + 1], "--set", f"train.save_dir={tmp_path / 'none'}",
                       f"data.val_manifest={lines / 'val.jsonl'}", "--stage", "ocr"])


def test_sft_per_task(tmp_path, text_corpus, capsys):
    stages = sft_standins(tmp_path / "stages", text_corpus)
    run_dir = tmp_path / "run"
    cmd = test_sft_omni.command(tmp_path, stages, run_dir)
    train(cmd)
    check_same_as_summary(tmp_path, cmd, run_dir, "sft", "mixed_acc", capsys)
    metrics = json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert {"em_image_qa", "em_audio_qa", "em_text"} <= metrics.keys()
