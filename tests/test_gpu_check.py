"""scripts/gpu_check.py's dry mode on CPU: every check runs (tiny), the report has its structure, and the real checks
pass (the Stage A run is killed inside a step and its resumed loss curve is bitwise the uninterrupted one). Speed is
never asserted."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

CHECKS = ["memory_12gb", "thinker_speed", "talker_speed", "sft_speed", "train_resume", "fp16_gradscaler",
          "torchrun_smoke"]


@pytest.fixture(scope="module")
def dry_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    command = [sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(out), "--device", "cpu"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    return proc, out


def test_dry_mode_runs_every_check_and_the_real_ones_pass(dry_report):
    proc, out = dry_report
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry"] is True and report["device"] == "cpu"
    assert list(report["checks"]) == CHECKS
    statuses = {name: r["status"] for name, r in report["checks"].items()}
    assert statuses == {**{name: "ok" for name in CHECKS}, "fp16_gradscaler": "skipped"}
    assert report["checks"]["fp16_gradscaler"]["reason"].startswith("needs CUDA")

    memory = report["checks"]["memory_12gb"]["stages"]
    assert [r["stage"] for r in memory] == ["A", "B", "C", "OCR", "D-codec", "D-talker", "vocoder", "E"]
    assert all(r["loss_finite"] and r["max_rss_mb"] > 0 for r in memory)
    thinker = report["checks"]["thinker_speed"]
    assert [r["compile"] for r in thinker["rows"]] == [False] and thinker["compile"].startswith("skipped")
    for row in [*thinker["rows"], report["checks"]["talker_speed"], report["checks"]["sft_speed"]]:
        assert row["tokens_per_s"] > 0 and row["step_ms"] > 0

    train = report["checks"]["train_resume"]
    assert train["last_loss"] < train["first_loss"]
    assert train["checkpoints_at_kill"] and "resumed at step 8" in train["resumed"]
    assert train["bitwise_equal_losses"] is True and train["max_loss_diff"] == 0.0
    assert report["checks"]["torchrun_smoke"]["summary"]["step"] == 6

    markdown = (out / "gpu_check.md").read_text()
    assert "DRY MODE" in markdown and "| train_resume | ok |" in markdown and "## Peak training memory" in markdown


def test_help_documents_the_checks():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for name in CHECKS:
        assert name in proc.stdout
    assert "--device cpu" in proc.stdout and "--limit-gb" in proc.stdout
