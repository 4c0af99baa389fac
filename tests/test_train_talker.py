"""Stage D end to end: train_talker.py codec phase then Talker phase on tiny configs (a random Stage-B model aligns
the clips), final weights readable by the export and by omni.speech, SIGKILL at random moments in either phase and
while the code cache is built + rerun == straight run, a code cache rebuilt when the aligner changes, and a Talker
run that refuses to continue on a codec that changed under it or to start without its aligner."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from omni.audio import SAMPLE_RATE, resample
from omni.components import read_stage_weights
from omni.data.manifest import read_jsonl, write_jsonl
from omni.speech import SpeechSynthesizer
from omni.synthetic.speech import split_sentences, write_speech_dataset
from omni.tokenizer import train_tokenizer
from tests.conftest import REPO
from tests.stage_data import random_aligner
from tests.stage_helpers import FAULTS, kill_and_rerun_until_done, run_ok


def speech_dataset(out, *, n_train, n_val):
    """espeak-ng speech with transcripts; where espeak-ng is missing, chirps stand in for it (the codec, Talker and
    vocoder only need audio and some text, not intelligible speech)."""
    if shutil.which("espeak-ng") is not None:
        write_speech_dataset(out, seed=0, n_train=n_train, n_val=n_val, workers=2)
        return out
    rng = np.random.default_rng(0)
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    for split, sentences in zip(("train", "val"), split_sentences(seed=0, n_train=n_train, n_val=n_val)):
        records = []
        for i, text in enumerate(sentences):
            t = np.arange(int(0.06 * len(text) * SAMPLE_RATE)) / SAMPLE_RATE
            wav = 0.3 * np.sin(2 * np.pi * (150 + 400 * t) * t) + 0.01 * rng.standard_normal(t.size)
            sf.write(out / f"wavs/{split}_{i:05d}.wav", wav.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
            records.append({"audio": f"wavs/{split}_{i:05d}.wav", "text": text, "duration": t.size / SAMPLE_RATE})
        write_jsonl(out / f"{split}.jsonl", records)
    return out


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return speech_dataset(tmp_path_factory.mktemp("speech"), n_train=16, n_val=4)  # 4 steps per epoch at batch 4


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory, text_corpus):
    return train_tokenizer([text_corpus / "train.txt"], tmp_path_factory.mktemp("tok"), vocab_size=400).model_path


def tiny(speech, tokenizer_file, save, *, aligner=None, codec_steps=12, talker_steps=12):
    """Both phases' tiny config; aligner: the Stage-B file aligning the clips (default: a random one, always the
    same weights, written beside `save`)."""
    aligner = aligner or random_aligner(save.parent / "aligner")
    train = {"batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "checkpoint_freq": 2, "log_freq": 2,
             "keep_last": 2, "threads": 1}
    data = {"train_manifest": str(speech / "train.jsonl"), "val_manifest": str(speech / "val.jsonl"),
            "bucket_batches": 2, "val_batch_size": 8}
    return {
        "codec": {"model": {"n_mels": 16, "channels": 8, "latent_dim": 8, "n_codebooks": 2, "codebook_size": 16,
                            "dead_code_steps": 3},
                  "data": {**data, "crop_frames": 48},
                  "train": {**train, "max_steps": codec_steps, "val_freq": 3, "save_dir": str(save / "codec")}},
        "talker": {"model": {"text_vocab_size": 400, "n_codebooks": 2, "codebook_size": 16, "d_model": 16,
                             "n_layers": 1, "n_decoder_layers": 1, "n_heads": 2, "n_kv_heads": 1, "d_ff": 32,
                             "max_text_len": 96, "max_frames": 64, "dropout": 0.1},
                   "data": {**data, "tokenizer": str(tokenizer_file), "aligner": str(aligner),
                            "sample_sentences": 1},
                   "train": {**train, "max_steps": talker_steps, "val_freq": 4, "save_dir": str(save)}},
    }


def command(tmp_path, config, *extra):
    path = tmp_path / f"tiny_{len(list(tmp_path.glob('tiny_*.json')))}.json"
    path.write_text(json.dumps(config))
    return [sys.executable, str(REPO / "train_talker.py"), "--config", str(path), *(("--set", *extra) if extra else ())]



def state(path):
    return torch.load(path, weights_only=True)["model"]


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def aligner(tmp_path_factory):
    """The straight run's aligner (a run resumes only with the data paths it started with, so its copies use it
    too); test_both_phases_... retrains it (new weights, same file) after the straight run."""
    return random_aligner(tmp_path_factory.mktemp("aligner"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, speech, tokenizer_file, aligner):
    """One uninterrupted phase=all run, shared: its outputs are checked, and the killed runs must reproduce it."""
    tmp = tmp_path_factory.mktemp("straight")
    result = run_ok(command(tmp, tiny(speech, tokenizer_file, tmp / "talker", aligner=aligner)))
    return tmp / "talker", result


def test_both_phases_write_exportable_weights_resume_and_refuse_a_changed_codec(tmp_path, speech, tokenizer_file,
                                                                                 aligner, straight):
    done, out = straight
    recon, mse, ppl0, ppl1 = (float(x) for x in re.search(
        r"codec val_recon_l1 ([\d.]+) val_recon_mse ([\d.]+) val_ppl_cb0 ([\d.]+) val_ppl_cb1 ([\d.]+)",
        out.stdout).groups())
    codec_summary = json.loads((done / "codec" / "summary.json").read_text())
    assert codec_summary["step"] == 12 and codec_summary["metrics"]["val_recon_l1"] == pytest.approx(recon, abs=1e-4)
    assert 0 < recon and 0 < mse and 1.0 <= ppl0 <= 16 and 1.0 <= ppl1 <= 16
    assert 1 <= codec_summary["metrics"]["val_used_cb0"] <= 16
    talker_summary = json.loads((done / "summary.json").read_text())
    assert talker_summary["step"] == 12 and talker_summary["bad_samples"] == 0
    m = talker_summary["metrics"]
    assert 0 <= m["val_acc_cb0"] <= 1 and 0 <= m["val_acc"] <= 1 and m["val_loss"] < np.log(17)  # beats uniform
    assert f"talker val_loss {m['val_loss']:.4f}" in out.stdout

    # The Talker's folder holds the pair that works together: its weights, the codec it speaks and the tokenizer.
    assert same(state(done / "rvq_codec.pt"), state(done / "codec" / "rvq_codec.pt"))
    assert read_stage_weights(done, "codec").config["codebook_size"] == 16  # the export reads both, strictly
    assert read_stage_weights(done, "talker").config["text_vocab_size"] == 400
    assert (done / "tokenizer.model").read_bytes() == tokenizer_file.read_bytes()
    assert (done / "train.codes.pt").is_file() and (done / "val.codes.pt").is_file()  # one cache per split
    logs = (done / "codec" / "training.log").read_text(), (done / "training.log").read_text()
    assert "val_ppl_cb1" in logs[0] and re.search(r"sample '.+': \d+ frames spoken", logs[1])
    synth = SpeechSynthesizer.from_checkpoints(done, vocoder=None, log=lambda _: None)
    wav = synth.synthesize("a red circle")
    assert wav.ndim == 1 and wav.shape[0] % (8 * 160) == 0 and synth.vocoder.name == "griffin-lim"

    save = tmp_path / "talker"
    shutil.copytree(done, save)
    config = tiny(speech, tokenizer_file, save, aligner=aligner)
    again = run_ok(command(tmp_path, config))
    assert again.stderr.count("resumed at step 12") == 2 and "encoding" not in again.stderr  # cache reused
    assert f"code cache {save / 'train.codes.pt'}: reused" in again.stderr

    # A retrained aligner (other weights in the same file) means other durations: both caches are rebuilt, saying why.
    random_aligner(aligner.parent, seed=1)
    realigned = run_ok(command(tmp_path, config, "phase=talker"))
    for split in ("train", "val"):
        assert re.search(rf"encoding \d+ utterances .* into {re.escape(str(save / f'{split}.codes.pt'))}, aligned by "
                         rf"{re.escape(str(aligner))} \(changed: aligner\)", realigned.stderr), realigned.stderr[-2000:]

    # No Stage-B model where talker.data.aligner points: one error line that names the key, no traceback.
    missing = subprocess.run(command(tmp_path, config, "phase=talker", f"talker.data.aligner={tmp_path / 'nowhere'}"),
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith(f"error: talker.data.aligner: {tmp_path / 'nowhere'}")

    # Train the codec further: its weights change, and the Talker, which has checkpoints, must not mix two codecs.
    run_ok(command(tmp_path, config, "phase=codec", "codec.train.max_steps=14"))
    refused = subprocess.run(command(tmp_path, config, "phase=talker"), cwd=REPO, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode != 0 and "changed after this Talker run started" in refused.stderr


def test_sigkill_in_either_phase_then_rerun_is_bitwise_identical(tmp_path, speech, tokenizer_file, straight):
    killed = tmp_path / "killed"
    config = tiny(speech, tokenizer_file, killed)
    no_codec = subprocess.run(command(tmp_path, config, "phase=talker"), cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    assert no_codec.returncode != 0 and "run the codec phase first" in no_codec.stderr
    kills = kill_and_rerun_until_done(command(tmp_path, config, "phase=codec"), killed / "codec", seed=1)
    # The Talker phase is first killed while it builds its code cache: after the first encoded and aligned batch,
    # then between writing the cache and recording its inputs (the rerun must not trust that file).
    kills += kill_and_rerun_until_done(command(tmp_path, config, "phase=talker"), killed, seed=2,
                                       faults=("cache@1", "cache@2", *FAULTS), random_kills=1)  # suite time
    assert kills >= 6
    log = (killed / "training.log").read_text()
    assert f"{killed / 'train.codes.pt'}, aligned by" in log and "is missing or unreadable, so its inputs" in log
    for name in ("codec/rvq_codec.pt", "talker.pt"):
        assert same(state(straight[0] / name), state(killed / name)), name
    assert "resumed at step" in (killed / "training.log").read_text() + (killed / "codec" / "training.log").read_text()


def ljspeech_folder(out, speech, split):
    """`speech`'s clips of `split` in LJSpeech's layout: metadata.csv `id|text|normalized_text` (no header; the raw
    text with its digits, the normalised one spelled out) and wavs/<id>.wav at LJSpeech's 22.05 kHz."""
    (out / "wavs").mkdir(parents=True)
    lines = []
    for i, record in enumerate(read_jsonl(speech / f"{split}.jsonl")):
        wav, rate = sf.read(speech / record["audio"], dtype="float32")
        wav = resample(torch.from_numpy(wav), rate, 22050).numpy()
        sf.write(out / "wavs" / f"LJ001-{i:04d}.wav", wav, 22050, subtype="PCM_16")
        raw = record["text"].replace(" two ", " 2 ").capitalize() + "."
        lines.append(f"LJ001-{i:04d}|{raw}|{record['text']}")
    (out / "metadata.csv").write_text("\n".join(lines) + "\n")
    return out


def test_tts_trained_on_an_ljspeech_folder_speaks_a_sentence(tmp_path, speech, tokenizer_file):
    """Codec and Talker trained a few steps straight from LJSpeech folders (aligned by a random Stage-B model), then
    a sentence synthesized from the final weights."""
    folders = {split: ljspeech_folder(tmp_path / f"lj_{split}", speech, split) for split in ("train", "val")}
    save = tmp_path / "talker"
    config = tiny(speech, tokenizer_file, save, codec_steps=4, talker_steps=16)
    for phase in ("codec", "talker"):
        config[phase]["data"] |= {"train_manifest": str(folders["train"]), "val_manifest": str(folders["val"])}
        config[phase]["train"] |= {"val_freq": 100, "checkpoint_freq": 100}
    config["talker"]["train"]["lr"] = 2e-2  # enough for the duration head to say "frames" in 16 steps
    run_ok(command(tmp_path, config))
    log = (save / "training.log").read_text()
    assert f"talker.data.train_manifest: LJSpeech folder {folders['train']}, 16 clips" in log
    summary = json.loads((save / "summary.json").read_text())
    assert summary["step"] == 16 and summary["bad_samples"] == 0  # every clip aligned
    synth = SpeechSynthesizer.from_checkpoints(save, vocoder=None, log=lambda _: None)
    wav = synth.synthesize("The red circle is beside two blue squares.")
    assert wav.shape[0] > 0 and torch.isfinite(wav).all()
    assert synth.synthesize("hi").shape[0] < wav.shape[0]  # durations follow the text: a longer one speaks longer
