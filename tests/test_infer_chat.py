"""infer_chat.py one-shot and interactive on tiny untrained checkpoints in the stages' final-weights formats: text,
image, audio, OCR and --speak from the checkpoints, the same answers from an export.py folder, and clear errors.
Answers of random tiny models are gibberish: the tests check the plumbing (exit codes, output, files, equality of
the two loading paths), not the content."""

import dataclasses
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image, ImageDraw

from omni.audio_encoder import AsrModel, AudioEncoderConfig
from omni.codec import Codec, CodecConfig
from omni.config import to_dict
from omni.ocr import OcrConfig, OcrModel
from omni.omni_model import OmniConfig, OmniModel
from omni.talker import Talker, TalkerConfig
from omni.thinker import ThinkerConfig
from omni.tokenizer import train_tokenizer
from omni.training.checkpoint import atomic_save
from omni.vision_encoder import VisionConfig
from omni.vocoder import Generator, VocoderConfig
from tests.conftest import REPO

VOCAB, N_MELS = 400, 16
CHARS = list("abcdefghijklmnopqrstuvwxyz '")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, text_corpus):
    """Stage files as the stage scripts write them (random weights), omni_final.pt as sft_omni.py writes it, media
    files, and an export.py folder of all of it."""
    root = tmp_path_factory.mktemp("infer")
    tokenizer = train_tokenizer([text_corpus / "train.txt"], root / "thinker", vocab_size=VOCAB)
    torch.manual_seed(0)
    thinker = ThinkerConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
                            max_seq_len=128, tie_embeddings=False)  # untied: a random model does not echo "\n"
    audio = AudioEncoderConfig(n_mels=N_MELS, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=32,
                               conv_channels=4)
    vision = VisionConfig(image_size=16, patch_size=4, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=32)
    model = OmniModel.from_configs(OmniConfig(projector_hidden=24, image_tokens="pooled"),  # export keeps the mode
                                   thinker=thinker, audio=audio, vision=vision)
    atomic_save({"model": model.thinker.state_dict(), "config": to_dict(thinker), "tokenizer": "tokenizer.model"},
                root / "thinker" / "thinker.pt")
    asr = AsrModel(model.audio_encoder.encoder, vocab_size=len(CHARS) + 1, ctc_upsample=2)
    atomic_save({"model": asr.state_dict(), "config": to_dict(audio), "vocab": CHARS, "ctc_upsample": 2},
                root / "audio_enc" / "audio_enc.pt")
    atomic_save({"model": {f"vision.{k}": v for k, v in model.vision_encoder.state_dict().items()},
                 "config": {"objective": "contrastive", "vision": to_dict(vision)}}, root / "vision" / "vision.pt")
    # Stage E: the projectors and one changed Thinker tensor, keyed by component (sft_omni.py's omni_final.pt).
    sft_state = {k: v for k, v in model.state_dict().items() if "_projector." in k}
    sft_state["thinker.norm.weight"] = torch.full_like(model.thinker.norm.weight, 1.5)
    configs = {"omni": to_dict(model.cfg), "thinker": to_dict(thinker), "audio_encoder": to_dict(audio),
               "vision_encoder": to_dict(vision), "audio_projector": to_dict(model.audio_projector.cfg),
               "vision_projector": to_dict(model.vision_projector.cfg)}
    atomic_save({"model": sft_state, "config": configs, "tokenizer": "tokenizer.model",
                 "stage_weights": {"thinker": str(root / "thinker" / "thinker.pt"),
                                   "audio_encoder": str(root / "audio_enc" / "audio_enc.pt"),
                                   "vision_encoder": str(root / "vision" / "vision.pt")}},
                root / "sft" / "omni_final.pt")
    tokenizer.save(root / "sft")
    ocr = OcrConfig(vocab_size=len(CHARS) + 1, height=16, conv_channels=4, d_model=16, n_layers=1, n_heads=2,
                    n_kv_heads=2, d_ff=32, max_frames=64)
    atomic_save({"model": OcrModel(ocr).state_dict(), "config": to_dict(ocr), "vocab": CHARS, "max_width": 128},
                root / "ocr" / "ocr.pt")
    codec = Codec(CodecConfig(n_mels=N_MELS, channels=8, latent_dim=8, n_codebooks=2, codebook_size=16)).eval()
    talker = Talker(TalkerConfig(text_vocab_size=VOCAB, n_codebooks=2, codebook_size=16, d_model=16, n_layers=1,
                                 n_decoder_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, max_frames=24)).eval()
    with torch.no_grad():  # about 2 frames per text unit (a fresh duration head says ~0: nothing would be spoken)
        talker.duration.out.bias.fill_(1.1)
    for name, part in (("talker.pt", talker), ("rvq_codec.pt", codec)):
        atomic_save({"model": part.state_dict(), "config": dataclasses.asdict(part.cfg)}, root / "talker" / name)
    tokenizer.save(root / "talker")
    vocoder = VocoderConfig(n_mels=N_MELS, upsample_initial_channels=16, resblock_kernel_sizes=(3,),
                            resblock_dilations=((1,),))
    atomic_save({"model": Generator(vocoder).state_dict(), "config": to_dict(vocoder)}, root / "vocoder" / "hifigan.pt")

    # media: a red circle, 0.6 s of a tone at 22.05 kHz (resampled on load), a rendered text line
    img = Image.new("RGB", (32, 32), "white")
    ImageDraw.Draw(img).ellipse((6, 6, 26, 26), fill="red")
    img.save(root / "circle.png")
    t = np.arange(int(0.6 * 22050)) / 22050
    sf.write(root / "tone.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 22050)
    line = Image.new("RGB", (80, 20), "white")
    ImageDraw.Draw(line).text((2, 4), "a cat", fill="black")
    line.save(root / "line.png")

    ckpts = ["--omni_ckpt", str(root / "sft"), "--ocr_ckpt", str(root / "ocr"), "--talker_ckpt", str(root / "talker")]
    export = subprocess.run(
        [sys.executable, str(REPO / "export.py"), "--omni_ckpt", str(root / "sft"), "--thinker_ckpt",
         str(root / "thinker"), "--audio_ckpt", str(root / "audio_enc"), "--vision_ckpt", str(root / "vision"),
         "--talker_ckpt", str(root / "talker"), "--vocoder_ckpt", str(root / "vocoder"), "--ocr_ckpt",
         str(root / "ocr"), "--output_dir", str(root / "merged")], cwd=REPO, capture_output=True, text=True,
        timeout=120)
    assert export.returncode == 0, export.stderr
    return root, ckpts


def chat(*args, stdin=None):
    return subprocess.run([sys.executable, str(REPO / "infer_chat.py"), "--max_new_tokens", "8", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, input=stdin)


def ok(result) -> list[str]:
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines and lines[0].strip() and not lines[0].startswith("speech:")  # the answer comes first
    return lines


def test_text_greedy_is_deterministic_and_sampling_follows_the_seed(tiny):
    root, ckpts = tiny
    greedy = ok(chat(*ckpts, "--text", "Say something."))
    assert len(greedy) == 1
    sampled = [ok(chat(*ckpts, "--text", "Say something.", "--temperature", "1.5", "--top_k", "50", "--top_p",
                       "0.95", "--seed", 1))[0] for _ in range(2)]
    assert sampled[0] == sampled[1]
    assert sampled[0] != greedy[0]  # at a high temperature, sampling departs from the greedy answer


@pytest.mark.parametrize("flag,file,log", [("--audio", "tone.wav", "model: "), ("--ocr", "line.png", "ocr: ")])
def test_media_one_shot_from_checkpoints(tiny, flag, file, log):
    root, ckpts = tiny
    result = chat(*ckpts, flag, root / file, "--text", "What is it?")
    assert len(ok(result)) == 1
    assert log in result.stderr


def test_image_question_spoken_into_a_16khz_wav_with_its_cer(tiny, tmp_path):
    root, ckpts = tiny
    out = tmp_path / "reply" / "out.wav"
    result = chat(*ckpts, "--image", root / "circle.png", "--text", "What colour is the circle?", "--speak", out)
    lines = ok(result)
    assert "image tokens 4" in result.stderr  # 4 x 4 patches of the 16-pixel ViT, pooled 2 x 2
    info = sf.info(out)
    assert info.samplerate == 16000 and info.frames > 0 and info.channels == 1
    assert lines[1].startswith(f"speech: wrote {out}") and "griffin-lim" in lines[1]
    assert lines[2].startswith("speech: asr ") and " cer " in lines[2]
    assert float(lines[2].rsplit(" ", 1)[1]) >= 0


def test_export_runs_every_mode_and_answers_as_the_checkpoints_do(tiny, tmp_path):
    root, ckpts = tiny
    media = ["--image", root / "circle.png", "--audio", root / "tone.wav", "--ocr", root / "line.png", "--text", "Hi"]
    from_ckpt = ok(chat(*ckpts, *media))
    result = chat("--model_dir", root / "merged", *media, "--speak", tmp_path / "e.wav")
    exported = ok(result)
    assert exported[0] == from_ckpt[0]
    assert "image tokens 4" in result.stderr  # the export keeps Stage E's pooled image-token mode
    assert "hifigan" in exported[1] and sf.info(tmp_path / "e.wav").samplerate == 16000
    assert " cer " in exported[2]
    forced = ok(chat("--model_dir", root / "merged", "--text", "Hi", "--speak", tmp_path / "g.wav", "--griffin_lim"))
    assert "griffin-lim" in forced[1]  # the exported HiFi-GAN is set aside on request


def test_damaged_export_is_refused_unless_no_verify(tiny, tmp_path):
    from tests.test_export import flip_tensor_bit

    root, _ = tiny
    shutil.copytree(root / "merged", tmp_path / "merged")
    flip_tensor_bit(tmp_path / "merged" / "model.safetensors")
    result = chat("--model_dir", tmp_path / "merged", "--text", "Hi")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{tmp_path}/merged/model.safetensors: sha256 mismatch" in result.stderr, result.stderr
    ok(chat("--model_dir", tmp_path / "merged", "--text", "Hi", "--no_verify"))


def test_interactive_answers_each_line_until_exit(tiny):
    _, ckpts = tiny
    result = chat(*ckpts, stdin="Hello there.\n\nAnd again?\nexit\nnever asked\n")
    assert len(ok(result)) == 2 and all(line.strip() for line in result.stdout.splitlines())


@pytest.mark.parametrize("args,named", [
    (["--omni_ckpt", "{root}/nowhere"], "nowhere"),
    (["--model_dir", "{root}/no_export"], "no_export"),
    (["--omni_ckpt", "{root}/sft", "--image", "{root}/missing.png", "--text", "x"], "missing.png"),
    (["--omni_ckpt", "{root}/sft", "--thinker_ckpt", "{root}/ocr", "--text", "x"], "thinker.pt"),
    (["--omni_ckpt", "{root}/sft", "--ocr", "{root}/line.png", "--text", "x"], "--ocr needs"),
])
def test_missing_files_and_parts_exit_nonzero_naming_them(tiny, args, named):
    root, _ = tiny
    result = chat(*[a.format(root=root) for a in args])
    assert result.returncode != 0 and named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
