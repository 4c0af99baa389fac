"""Stage B end to end: train_audio_enc.py on a tiny config (espeak-ng speech, or tones standing in for it), final
weights readable by the export, bad clips skipped and named, SIGKILL at random moments + rerun == straight run, and
scripts/check_mel_lengths.py."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from omni.audio import SAMPLE_RATE, mel_frames
from omni.components import read_stage_weights
from omni.data.manifest import write_jsonl
from omni.synthetic.speech import split_sentences
from tests.conftest import REPO
from tests.stage_data import asr_speech
from tests.stage_helpers import kill_and_rerun_until_done, run_ok

TINY = {
    "model": {"encoder": {"n_mels": 16, "d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64,
                          "conv_channels": 4, "dropout": 0.1},
              "ctc_upsample": 2},
    "data": {"bucket_batches": 2, "val_batch_size": 8, "sample_transcriptions": 2,
             "spec_augment": {"freq_masks": 1, "freq_width": 4, "time_masks": 1, "time_width_frac": 0.1}},
    "train": {"max_steps": 8, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "val_freq": 4, "checkpoint_freq": 2,
              "log_freq": 2, "keep_last": 2, "threads": 1},
}
TONE_SECONDS_PER_CHAR = 0.08  # 2 CTC frames per character at 25 Hz: every transcript is alignable


def write_tone_dataset(out, *, n_train, n_val):
    """Stand-in speech: each character of a synthetic sentence is an 80 ms tone of its own pitch. Used where
    espeak-ng is missing, and for the bad-sample test, which needs no real speech."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    splits = dict(zip(("train", "val"), split_sentences(seed=0, n_train=n_train, n_val=n_val)))
    for split, sentences in splits.items():
        records = []
        for i, text in enumerate(sentences):
            t = np.arange(int(TONE_SECONDS_PER_CHAR * SAMPLE_RATE)) / SAMPLE_RATE
            wav = np.concatenate([0.3 * np.sin(2 * np.pi * (200 + 25 * (ord(c) - 32)) * t) for c in text])
            wav += 0.01 * rng.standard_normal(wav.size)
            name = f"wavs/{split}_{i:05d}.wav"
            (out / "wavs").mkdir(exist_ok=True)
            sf.write(out / name, wav.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
            records.append({"audio": name, "text": text, "duration": round(wav.size / SAMPLE_RATE, 3)})
        write_jsonl(out / f"{split}.jsonl", records)
    return out


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return asr_speech(tmp_path_factory.mktemp("speech"), n_train=40, n_val=10)  # 10 steps per epoch at batch 4


def command(tmp_path, data, save_dir, *extra, config=TINY):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    return [sys.executable, str(REPO / "train_audio_enc.py"), "--config", str(path), "--set",
            f"train.save_dir={save_dir}", f"data.train_manifest={data / 'train.jsonl'}",
            f"data.val_manifest={data / 'val.jsonl'}", *extra]



def test_trains_writes_exportable_weights_and_rerun_resumes(tmp_path, speech):
    save = tmp_path / "run"
    out = run_ok(command(tmp_path, speech, save))
    cer, wer = (float(x) for x in re.search(r"val_cer ([\d.]+) val_wer ([\d.]+)", out.stdout).groups())
    summary = json.loads((save / "summary.json").read_text())
    assert summary["step"] == 8 and summary["metrics"]["val_cer"] == pytest.approx(cer, abs=1e-4)
    assert 0.0 <= cer and 0.0 <= wer and summary["bad_samples"] == 0
    weights = torch.load(save / "audio_enc.pt", weights_only=True)
    vocab = json.loads((save / "vocab.json").read_text())
    texts = [json.loads(line)["text"] for line in (speech / "train.jsonl").read_text().splitlines()]
    assert weights["vocab"] == vocab == sorted(set("".join(texts)))
    assert weights["ctc_upsample"] == 2 and weights["n_mels"] == weights["config"]["n_mels"] == 16
    exported = read_stage_weights(save, "audio_encoder")  # the export reads it: config strict, weights strict
    assert exported.extras == {"vocab": vocab, "ctc_upsample": 2}
    assert exported.state["head.proj.weight"].shape[0] == 2 * (len(vocab) + 1)  # 2 CTC slots x (chars + blank)
    log = (save / "training.log").read_text()
    assert len(re.findall(r"sample val_\d+\.wav: ['\"].+['\"] -> ['\"]", log)) == 2 * 2  # 2 evals x 2 samples
    assert re.search(r"padding [\d.]+", log)
    again = run_ok(command(tmp_path, speech, save))
    assert "resumed at step 8" in again.stderr

    # A manifest with a different alphabet would silently resize the CTC head: refused, naming the run's vocab.json.
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"audio": str(speech / "wavs" / "train_00000.wav"), "text": "zz top"}) + "\n")
    refused = subprocess.run([*command(tmp_path, speech, save), f"data.train_manifest={other}"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "vocab.json" in refused.stderr


def test_sigkill_at_random_moments_then_rerun_is_bitwise_identical(tmp_path, speech):
    config = {**TINY, "train": {**TINY["train"], "max_steps": 12, "checkpoint_freq": 3, "val_freq": 6}}
    run_ok(command(tmp_path, speech, tmp_path / "straight", config=config))
    killed = tmp_path / "killed"
    assert kill_and_rerun_until_done(command(tmp_path, speech, killed, config=config), killed, seed=5) >= 1
    a = torch.load(tmp_path / "straight" / "audio_enc.pt", weights_only=True)["model"]
    b = torch.load(killed / "audio_enc.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "resumed at step" in (killed / "training.log").read_text()


def test_corrupt_wav_empty_and_unalignable_transcripts_are_skipped_and_named(tmp_path):
    data = write_tone_dataset(tmp_path / "tones", n_train=25, n_val=6)
    (data / "wavs" / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt this is not audio")
    shutil.copy(data / "wavs" / "train_00001.wav", data / "wavs" / "no_text.wav")
    sf.write(data / "wavs" / "short.wav", 0.3 * np.sin(np.arange(4000) / 5.0), SAMPLE_RATE)  # 0.25 s: 8 CTC frames
    with (data / "train.jsonl").open("a") as f:
        for rec in ({"audio": "wavs/corrupt.wav", "text": "a red box"},
                    {"audio": "wavs/no_text.wav", "text": " ?! "},  # normalises to an empty transcript
                    {"audio": "wavs/short.wav", "text": "a much longer sentence than a quarter second holds"}):
            f.write(json.dumps(rec) + "\n")
    save = tmp_path / "bad"
    # 25 + 3 records = 7 full batches: every record is read, and one whole epoch writes the bad-sample report.
    run_ok(command(tmp_path, data, save, "train.max_steps=null", "train.max_bad_fraction=0.15"))
    log = (save / "training.log").read_text()
    assert "skipped 3 bad samples of 28" in log
    assert re.search(r"corrupt\.wav: cannot read audio", log)
    assert re.search(r"no_text\.wav: empty transcript", log)
    assert re.search(r"short\.wav: transcript needs \d+ CTC frames", log)
    summary = json.loads((save / "summary.json").read_text())
    assert summary["bad_samples"] == 3 and summary["step"] == 7


def test_check_mel_lengths_prints_percentiles_and_a_recommendation(tmp_path):
    data = write_tone_dataset(tmp_path / "tones", n_train=30, n_val=1)
    out = subprocess.run([sys.executable, "scripts/check_mel_lengths.py", str(data / "train.jsonl"), "--keep", "90"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout
    durations = [json.loads(line)["duration"] for line in (data / "train.jsonl").read_text().splitlines()]
    frames = sorted(mel_frames(round(d * SAMPLE_RATE)) for d in durations)
    assert re.search(rf"^\s+100\s+[\d.]+\s+{frames[-1]}\s", out, re.M)  # the max in mel frames
    assert re.search(r"^\s+50\s+[\d.]+\s+\d+\s+\d+\s+\d+$", out, re.M)
    best = int(re.search(r"recommended data.max_mel_length: (\d+)", out).group(1))
    assert best % 8 == 0 and best - 8 < np.percentile(frames, 90) <= best
    skipped = int(re.search(r"skips (\d+)", out).group(1))
    assert skipped == sum(f > best for f in frames) <= 3
    assert "more characters than CTC frames at ctc_upsample=2: 0" in out
