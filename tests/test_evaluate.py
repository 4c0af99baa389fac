"""scripts/evaluate.py: a finished tiny run of Stages A, B, D (codec and Talker), OCR, E and the vocoder scored again
from its final weights gives the metrics of its summary.json (the same evaluation code), on another held-out set too,
without touching the run dir; the Talker's TTS->ASR CER is `python -m omni.speech`'s."""

import json
import subprocess

import pytest

from tests import (
    test_sft_omni,
    test_train_audio_enc,
    test_train_ocr,
    test_train_talker,
    test_train_text,
    test_train_vocoder,
)
from tests.conftest import REPO, load_script
from tests.stage_data import asr_speech, random_aligner, sft_standins

evaluate = load_script("evaluate")

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


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """One small speech set for the speech stages here (B, D, vocoder), made once."""
    return asr_speech(tmp_path_factory.mktemp("speech"), n_train=8, n_val=4)


@pytest.fixture(scope="module")
def asr_run(tmp_path_factory, speech):
    """A tiny Stage-B run (trained once): scored itself, and the listener of the Talker's TTS->ASR check."""
    tmp = tmp_path_factory.mktemp("asr")
    cmd = test_train_audio_enc.command(tmp, speech, tmp / "run")
    train(cmd)
    return cmd, tmp / "run"


def test_audio(tmp_path, asr_run, capsys):
    cmd, run_dir = asr_run
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


def test_talker_both_parts_and_tts_asr_cer(tmp_path, tmp_path_factory, speech, text_corpus, asr_run, capsys):
    from omni import speech as omni_speech
    from omni.tokenizer import train_tokenizer

    tmp = tmp_path_factory.mktemp("talker")
    tokenizer = train_tokenizer([text_corpus / "train.txt"], tmp / "tok", vocab_size=400).model_path
    run_dir = tmp / "run"  # the Talker's run dir; the codec's is run/codec
    cmd = test_train_talker.command(tmp, test_train_talker.tiny(speech, tokenizer, run_dir, codec_steps=2,
                                                                talker_steps=2))
    test_train_talker.run_ok(cmd)
    config, asr_dir = cmd[cmd.index("--config") + 1], asr_run[1]
    before = snapshot(run_dir)
    out = tmp_path / "eval.json"
    assert evaluate.main(["--config", config, "--asr", str(asr_dir), "--tts-sentences", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["stage"] == "talker" and result["weights"] == {"codec": str(run_dir / "codec" / "rvq_codec.pt"),
                                                                 "talker": str(run_dir / "talker.pt")}
    expected = {f"codec.{k}": v for k, v in json.loads((run_dir / "codec" / "summary.json").read_text())["metrics"]
                .items()}
    expected.update({f"talker.{k}": v for k, v in json.loads((run_dir / "summary.json").read_text())["metrics"]
                     .items()})
    assert {"codec.val_recon_l1", "codec.val_ppl_cb1", "talker.val_loss", "talker.val_acc_cb1"} <= expected.keys()
    assert result["metrics"].keys() == expected.keys() | {"talker.tts_asr_cer", "talker.tts_asr_wer"}
    for key, value in expected.items():
        assert result["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert "talker.val_acc " in capsys.readouterr().out
    assert snapshot(run_dir) == before  # the val codes were encoded elsewhere; nothing of the run touched

    # The TTS->ASR figures are those of `python -m omni.speech` (Griffin-Lim, the first 2 val sentences).
    speech_json = tmp_path / "speech.json"
    omni_speech.main(["--talker", str(run_dir), "--asr", str(asr_dir), "--manifest", str(speech / "val.jsonl"),
                      "--n", "2", "--json", str(speech_json)])
    reference = json.loads(speech_json.read_text())
    assert result["metrics"]["talker.tts_asr_cer"] == pytest.approx(reference["cer"])
    assert result["metrics"]["talker.tts_asr_wer"] == pytest.approx(reference["wer"])

    # One part: phase=codec scores the codec alone, with the keys of its summary.json.
    assert evaluate.main(["--config", config, "--set", "phase=codec", "--json", str(out)]) == 0
    codec_only = json.loads(out.read_text())
    assert codec_only["weights"] == str(run_dir / "codec" / "rvq_codec.pt")
    assert codec_only["metrics"].keys() == {k.removeprefix("codec.") for k in expected if k.startswith("codec.")}
    with pytest.raises(evaluate.UserError, match="--asr scores the Talker"):
        evaluate.main(["--config", asr_run[0][asr_run[0].index("--config") + 1], "--asr", str(asr_dir)])


def test_vocoder(tmp_path, speech, capsys):
    run_dir = tmp_path / "run"
    cmd = test_train_vocoder.command(tmp_path, speech, run_dir, "mel_warmup_steps=0", "data.val_utterances=3")
    train(cmd)
    check_same_as_summary(tmp_path, cmd, run_dir, "vocoder", "val_mel_l1", capsys)
    # --asr (else the config's data.asr): the judge's ASR CER too, for both vocoders and the real clips
    heard = score(tmp_path, cmd, "--asr", str(random_aligner(tmp_path / "asr")))["metrics"]
    for key in ("val_asr_cer", "val_asr_cer_griffin_lim", "val_asr_cer_real", "val_mr_stft", "val_mel_l1"):
        assert key in heard and heard[key] >= 0, key
