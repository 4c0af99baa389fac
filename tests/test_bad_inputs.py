"""The bad-input suite: one table of broken inputs per modality, and what each must end in.

Every case ends in one of:
- ERROR: an exception whose message names the file and line (or the config key) — the input cannot be used at all;
- SKIP: `BadSample` naming the file (manifest:line for SFT) — the training loop logs, counts and skips it, and stops
  with a clear error past `train.max_bad_fraction` (the two `e2e-*` cases run stage scripts to show both ends);
- VALID: the input is odd but usable, and is converted (image modes, 1x1, extreme aspect ratios, BOM / CRLF).

Most cases call the readers, sources and config loader in-process (the suite runs in seconds). Related unit tests
elsewhere: load_audio errors (test_audio.py), AsrSource reasons (test_speech_data.py), image modes and errors
(test_image_data.py), SFT record checks (test_sft_data.py), config strictness (test_config.py), the skip / count /
limit machinery on a toy model (test_run.py::test_bad_samples_are_named_counted_and_limited). Here each broken input
goes in the way a user's data does: a file on disk, a manifest line or a config file.
"""

import io
import json
import re
import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from omni.audio import SAMPLE_RATE
from omni.config import ConfigError, load_config, load_config_file
from omni.ctc import CharVocab
from omni.data.image_layouts import read_image_manifest, read_ocr_manifest
from omni.data.images import ImageSource
from omni.data.manifest import DataError, read_jsonl_lines
from omni.data.resumable import BadSample
from omni.data.sft import SftSource, read_sft_manifest
from omni.data.speech import AsrSource
from omni.data.speech_layouts import read_asr_manifest, read_librispeech
from omni.data.text import read_documents
from omni.errors import InvalidInput
from omni.stages import AudioStage, TalkerStage, TextStage, VisionStage
from omni.tokenizer import train_tokenizer
from tests.conftest import REPO
from tests.stage_data import chat_tokenizer

VOCAB = CharVocab.from_texts(["abcdefghijklmnopqrstuvwxyz' "])


@dataclass
class Case:
    id: str
    run: Callable  # (tmp_path) -> result; builds the input and feeds it where a user's data would go
    expect: str  # "error" | "skip" | "valid"
    match: str = ""  # error / skip: regex the message must contain (the file and line or key it names)
    error: type = DataError  # error: the exception type (DataError: a data file names its file:line)
    check: Callable | None = None  # valid: assertion on the result


# ------------------------------------------------------------------------------------------------ helpers


def tone(path, seconds=0.5):
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SAMPLE_RATE)
    return path


def png_bytes(mode="RGB", size=(8, 8), color=(200, 30, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.full(1600, 0.3, dtype=np.float32), SAMPLE_RATE, format="WAV")
    return buf.getvalue()


def write_lines(path: Path, lines, *, newline="\n", encoding="utf-8") -> Path:
    """A JSONL file of `lines`: dicts are dumped, str / bytes written as they are."""
    parts = [(json.dumps(x) if isinstance(x, dict | list) else x) for x in lines]
    data = b"".join((p if isinstance(p, bytes) else p.encode(encoding)) + newline.encode() for p in parts)
    path.write_bytes(data)
    return path


def asr_item(tmp_path, name, make, text="a cat", duration=None, **source_args):
    """Write the audio `name` with make(path) (None: leave it missing), list it in a manifest (with `duration` when
    given), read item 0 of an AsrSource(**source_args)."""
    if make is not None:
        make(tmp_path / name)
    record = {"audio": name, "text": text} | ({"duration": duration} if duration is not None else {})
    manifest = write_lines(tmp_path / "asr.jsonl", [record])
    return AsrSource(read_asr_manifest(manifest), vocab=VOCAB, n_mels=32, **source_args)[0]


def compressed(fmt, subtype, damage=None, seconds=3.0):
    """A writer of a `seconds` long tone as fmt/subtype (libsndfile's encoders), then damaged: "cut" keeps the first
    half of the bytes (a partial download), "middle" overwrites a sixth of the bytes a third of the way in."""
    def make(path):
        t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
        wav = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
        sf.write(path, wav.astype(np.float32), SAMPLE_RATE, format=fmt, subtype=subtype)
        data = bytearray(path.read_bytes())
        if damage == "cut":
            data = data[:len(data) // 2]
        elif damage == "middle":
            n = len(data)
            data[n // 3:n // 3 + n // 6] = np.random.default_rng(0).integers(0, 256, n // 6, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
    return make


def speech_clip_item(tmp_path, name, make, duration):
    """Stage D / vocoder clips: item 0 of SpeechClips over a manifest line with `duration`."""
    from omni.data.tts import SpeechClips

    make(tmp_path / name)
    manifest = write_lines(tmp_path / "clips.jsonl", [{"audio": name, "text": "a cat", "duration": duration}])
    return SpeechClips(read_asr_manifest(manifest), n_mels=32)[0]


def talker_item(tmp_path, tokenizer, seconds, max_frames):
    """Stage D Talker: a clip through build_code_cache (a tiny untrained codec) and TalkerCodes, item 0."""
    from omni.alignment import CtcAligner
    from omni.codec import Codec, CodecConfig
    from omni.data.tts import TalkerCodes, build_code_cache
    from tests.stage_data import random_aligner

    tone(tmp_path / "long.wav", seconds)
    manifest = write_lines(tmp_path / "talk.jsonl", [{"audio": "long.wav", "text": "say hello"}])
    codec = Codec(CodecConfig(n_mels=32, channels=8, latent_dim=4, codebook_size=8)).eval()
    codec_file = tmp_path / "codec.pt"
    torch.save(codec.state_dict(), codec_file)
    cache = build_code_cache(read_asr_manifest(manifest), codec=codec, codec_file=codec_file, tokenizer=tokenizer,
                             aligner=CtcAligner.load(random_aligner(tmp_path / "aligner")), max_text_len=32,
                             max_frames=max_frames, cache_dir=tmp_path, name="t", log=lambda m: None)
    return TalkerCodes(cache)[0]


def image_item(tmp_path, name, make, size=16):
    """Write the image `name` with make(path) (None: leave it missing), list it in a manifest, read item 0."""
    if make is not None:
        make(tmp_path / name)
    manifest = write_lines(tmp_path / "img.jsonl", [{"image": name, "caption": "a shape"}])
    return ImageSource(read_image_manifest(manifest), image_size=size)[0]


def save_image(img: Image.Image):
    return lambda path: img.save(path)


def rgba_half_transparent(path):
    """16 x 16 (the source's size, so no resampling blurs the edge) with a fully transparent black top half."""
    img = Image.new("RGBA", (16, 16), (10, 20, 30, 255))
    img.paste((0, 0, 0, 0), (0, 0, 16, 8))
    img.save(path)


def pixels(sample) -> torch.Tensor:
    """(3, S, S) normalised image tensor -> 0..255 RGB values."""
    from omni.data.images import IMAGE_MEAN, IMAGE_STD

    return (sample["image"] * torch.tensor(IMAGE_STD).view(3, 1, 1) + torch.tensor(IMAGE_MEAN).view(3, 1, 1)) * 255


def sliver(tmp_path):
    """A 1 x 100000 image: before the fix, image_to_tensor resized it to 32 x 3.2M (300 MB) before cropping."""
    path = tmp_path / "sliver.png"
    Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), 400)[:100_000, None]).save(path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    sample = image_item(tmp_path, "sliver.png", None, size=32)
    return sample, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before


# SFT: a tokenizer trained once, and a manifest of one conversation per case.


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return chat_tokenizer(tmp_path_factory.mktemp("tok"))


def chat(user, answer="red"):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def sft_item(tmp_path, tokenizer, record, max_length=64, **source_args):
    (tmp_path / "x.png").write_bytes(png_bytes())
    tone(tmp_path / "x.wav")
    manifest = write_lines(tmp_path / "sft.jsonl", [record])
    source = SftSource(read_sft_manifest(manifest), tokenizer=tokenizer, max_length=max_length, image_size=16,
                       image_tokens=16, n_mels=32, **source_args)
    return source[0]


def ocr_item(tmp_path, width, **source_args):
    """A 16-pixel-high OCR line `width` pixels wide through read_ocr_manifest and OcrSource, item 0."""
    from omni.data.images import OcrSource

    Image.new("L", (width, 16), 255).save(tmp_path / "line.png")
    manifest = write_lines(tmp_path / "ocr.jsonl", [{"image": "line.png", "text": "a cat"}])
    return OcrSource(read_ocr_manifest(manifest), vocab=VOCAB, height=16, **source_args)[0]


def coco(tmp_path, images, annotations):
    from omni.data.image_layouts import read_coco_captions

    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return read_coco_captions(path, tmp_path)


# Configs: written to a file and loaded as the stage scripts do.


def config(tmp_path, stage, data: dict | str, overrides=()):
    path = tmp_path / "cfg.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return load_config_file(stage, path, list(overrides))


def config_cli(tmp_path, stage, overrides, capsys):
    """load_config as a stage script calls it: exit status 2 and the message on stderr."""
    path = tmp_path / "cfg.json"
    path.write_text("{}")
    with pytest.raises(SystemExit) as info:
        load_config(stage, ["--config", str(path), "--set", *overrides])
    assert info.value.code == 2
    raise ConfigError(capsys.readouterr().err)


# End to end through stage scripts.


def e2e_ocr_too_many_bad(tmp_path):
    """train_ocr.py on 20 good + 4 bad lines (17% > max_bad_fraction=0.05): each bad line is named in the log,
    and the run stops with an error at the end of the epoch."""
    from omni.synthetic.ocr_lines import write_ocr_dataset
    from tests.test_train_ocr import command

    lines = tmp_path / "lines"
    write_ocr_dataset(lines, seed=1, n_train=20, n_val=4, height=32)  # 3 full batches of 8
    (lines / "corrupt.png").write_bytes(png_bytes()[:40])
    (lines / "audio.png").write_bytes(wav_bytes())
    bad = [{"image": "corrupt.png", "text": "abc"}, {"image": "missing.png", "text": "abc"},
           {"image": "audio.png", "text": "abc"}, {"image": "corrupt.png", "text": "abd"}]
    with (lines / "train.jsonl").open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in bad))
    save = tmp_path / "run"
    cmd = command(tmp_path, lines, save, "train.max_steps=null", "train.max_bad_fraction=0.05", "train.val_freq=100")
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    log = (save / "training.log").read_text()
    named = re.findall(r"skipped bad sample: .*(corrupt|missing|audio)\.png", log)
    assert result.returncode == 1 and sorted(named) == ["audio", "corrupt", "corrupt", "missing"], log
    assert "Traceback" not in result.stderr  # a data problem is reported as one, not as a crash
    raise RuntimeError(result.stderr[-2000:])


def e2e_text_missing_data(tmp_path):
    """train_text.py with data.train_path pointing nowhere: exit status 2 before any work, naming key and path."""
    cmd = [sys.executable, "train_text.py", "--config", "configs/demo/thinker.json", "--set",
           f"train.save_dir={tmp_path / 'run'}", f"data.train_path={tmp_path / 'nowhere.txt'}"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and not (tmp_path / "run").exists()
    assert "Traceback" not in result.stderr
    raise ConfigError(result.stderr)


# ------------------------------------------------------------------------------------------------ the table

LONG_QUESTION = {"messages": chat("<image> what colour is the shape"), "image": "x.png"}
TINY_TEXT = {"model": {"vocab_size": 300, "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 64},
             "data": {"seq_len": 32}}

CASES = [
    # ---- audio: through an ASR manifest line and AsrSource
    Case("audio-corrupt-bytes", lambda p: asr_item(p, "corrupt.wav", lambda f: f.write_bytes(
        b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)), "skip", r"corrupt\.wav: cannot read audio"),
    Case("audio-zero-byte", lambda p: asr_item(p, "empty.wav", lambda f: f.write_bytes(b"")),
         "skip", r"empty\.wav: cannot read audio"),
    Case("audio-png-renamed-wav", lambda p: asr_item(p, "picture.wav", lambda f: f.write_bytes(png_bytes())),
         "skip", r"picture\.wav: cannot read audio"),
    Case("audio-missing", lambda p: asr_item(p, "gone.wav", None), "skip", r"gone\.wav: audio file not found"),
    Case("audio-silent", lambda p: asr_item(p, "quiet.wav", lambda f: sf.write(
        f, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)), "skip", r"quiet\.wav: audio is silent"),
    Case("audio-too-short", lambda p: asr_item(p, "blip.wav", lambda f: tone(f, seconds=0.005)),
         "skip", r"blip\.wav: only 80 samples .* too short"),
    Case("audio-transcript-cannot-align", lambda p: asr_item(p, "short.wav", lambda f: tone(f, 0.2),
                                                             text="far too many letters for a fifth of a second"),
         "skip", r"short\.wav: transcript needs \d+ CTC frames but 0\.2\d s of audio gives \d+"),
    Case("audio-empty-transcript", lambda p: asr_item(p, "ok.wav", tone, text=" -- ?! "),
         "skip", r"ok\.wav: empty transcript"),
    Case("audio-transcript-not-utf8", lambda p: read_asr_manifest(write_lines(p / "asr.jsonl", [
        {"audio": "a.wav", "text": "fine"}, b'{"audio": "b.wav", "text": "caf\xe9"}'])),
         "error", r"asr\.jsonl:2: not UTF-8"),
    Case("audio-transcript-not-a-string", lambda p: read_asr_manifest(write_lines(p / "asr.jsonl", [
        {"audio": "a.wav", "text": None}])), "error", r"asr\.jsonl:1: 'text' must be a string"),
    Case("audio-librispeech-not-utf8", lambda p: (p / "19/198").mkdir(parents=True) or read_librispeech(
        write_lines(p / "19/198/19-198.trans.txt", [b"19-198-0001 HELLO", b"19-198-0002 CAF\xc9"]).parents[2]),
         "error", r"19-198\.trans\.txt:2: not UTF-8"),
    # cut / corrupt compressed audio: libsndfile reads a cut MP3 or Opus file as a shorter clip without an error
    Case("audio-mp3-cut-in-half", lambda p: asr_item(p, "cut.mp3", compressed("MP3", "MPEG_LAYER_III", "cut"),
                                                     duration=3.0),
         "skip", r"cut\.mp3: truncated or corrupt audio: decodes to 1\.\d\d s but its header declares 3\.00 s"),
    Case("audio-mp3-corrupt-middle", lambda p: asr_item(p, "mid.mp3", compressed("MP3", "MPEG_LAYER_III", "middle")),
         "skip", r"mid\.mp3: truncated or corrupt audio: .* header declares 3\.00 s"),  # caught without a duration
    Case("audio-opus-cut-in-half", lambda p: asr_item(p, "cut.opus", compressed("OGG", "OPUS", "cut"), duration=3.0),
         "skip", r"cut\.opus: truncated or corrupt audio: decodes to \d\.\d\d s but the manifest's duration is 3\.00"),
    Case("audio-vorbis-cut-in-half", lambda p: asr_item(p, "cut.ogg", compressed("OGG", "VORBIS", "cut"),
                                                        duration=3.0), "skip", r"cut\.ogg: cannot read audio"),
    Case("audio-flac-cut-in-half", lambda p: asr_item(p, "cut.flac", compressed("FLAC", None, "cut"), duration=3.0),
         "skip", r"cut\.flac: cannot read audio"),
    Case("audio-opus-cut-stage-d-clip", lambda p: speech_clip_item(p, "cut.opus", compressed("OGG", "OPUS", "cut"),
                                                                   3.0),
         "skip", r"cut\.opus: truncated or corrupt audio"),
    Case("audio-mp3-complete", lambda p: asr_item(p, "ok.mp3", compressed("MP3", "MPEG_LAYER_III"), duration=3.0),
         "valid", check=lambda s: s["mel"].shape[0] >= 300 * 0.95),
    Case("audio-opus-complete-rounded-duration", lambda p: asr_item(p, "ok.opus", compressed("OGG", "OPUS", None, 2.96),
                                                                    duration=3.0), "valid",  # 40 ms off is rounding
         check=lambda s: s["mel"].shape[0] > 290),
    # longer than the audio encoder's max_frames (its rotary table): skipped, not cropped (the transcript would
    # no longer match)
    Case("audio-longer-than-encoder-max-frames", lambda p: asr_item(p, "long.wav", tone, max_encoder_frames=5),
         "skip", r"long\.wav: 0\.5 s of audio gives 7 encoder frames > the audio encoder's max_frames=5"),
    Case("audio-longer-than-talker-max-frames", lambda p, tokenizer: talker_item(p, tokenizer, 1.0, max_frames=4),
         "skip", r"long\.wav: 13 code frames exceed the Talker's max_frames=4"),
    # normalisation that would strip most of a transcript (digits, non-Latin letters, symbols are not spoken a-z)
    Case("audio-transcript-mostly-digits", lambda p: asr_item(p, "ok.wav", tone, text="Room 10125"),
         "skip", r"asr\.jsonl:1: .*ok\.wav: normalisation removes 5 of 9 characters .*'digits': 5.* -> 'room'"),
    Case("audio-transcript-non-latin", lambda p: asr_item(p, "ok.wav", tone, text="привет cat"),
         "skip", r"asr\.jsonl:1: .*ok\.wav: normalisation removes 6 of 9 characters .*'letters': 6.* -> 'cat'"),
    Case("audio-transcript-some-digits", lambda p: asr_item(p, "ok.wav", tone, text="a cat 42"),  # 2 of 6: kept
         "valid", check=lambda s: s["text"] == "a cat"),

    # ---- images: through an image manifest line and ImageSource (16 x 16)
    Case("image-corrupt", lambda p: image_item(p, "cut.png", lambda f: f.write_bytes(png_bytes(size=(64, 64))[:60])),
         "skip", r"cannot read image .*cut\.png"),
    Case("image-zero-byte", lambda p: image_item(p, "empty.png", lambda f: f.write_bytes(b"")),
         "skip", r"cannot read image .*empty\.png"),
    Case("image-wav-renamed-png", lambda p: image_item(p, "sound.png", lambda f: f.write_bytes(wav_bytes())),
         "skip", r"cannot read image .*sound\.png"),
    Case("image-missing", lambda p: image_item(p, "gone.png", None), "skip", r"image not found: .*gone\.png"),
    Case("image-grayscale-L", lambda p: image_item(p, "gray.png", save_image(Image.new("L", (20, 12), 77))),
         "valid", check=lambda s: s["image"].shape == (3, 16, 16) and torch.allclose(pixels(s), torch.tensor(77.0),
                                                                                      atol=0.01)),
    Case("image-RGBA", lambda p: image_item(p, "rgba.png", rgba_half_transparent), "valid",  # transparent -> white
         check=lambda s: s["image"].shape == (3, 16, 16) and (pixels(s)[:, 0, 0] > 254.9).all()
         and torch.allclose(pixels(s)[:, 8, 8], torch.tensor([10.0, 20.0, 30.0]), atol=0.01)),
    Case("image-palette-P", lambda p: image_item(p, "pal.png", save_image(
        Image.new("RGB", (9, 9), (200, 30, 40)).convert("P", palette=Image.ADAPTIVE))), "valid",
         check=lambda s: torch.allclose(pixels(s), torch.tensor([200.0, 30.0, 40.0]).view(3, 1, 1), atol=0.01)),
    Case("image-1x1", lambda p: image_item(p, "dot.png", save_image(Image.new("RGB", (1, 1), (0, 0, 255)))),
         "valid", check=lambda s: torch.allclose(pixels(s), torch.tensor([0.0, 0.0, 255.0]).view(3, 1, 1),
                                                 atol=0.01)),
    Case("image-aspect-1x100000", sliver, "valid",  # the centre 1 x 1 pixel crop, without a 300 MB intermediate
         check=lambda r: r[0]["image"].shape == (3, 32, 32) and torch.isfinite(r[0]["image"]).all()
         and r[1] < 100_000),
    Case("image-path-not-a-string", lambda p: read_image_manifest(write_lines(p / "img.jsonl", [
        {"image": "a.png"}, {"image": 7}])),
         "error", r"img\.jsonl:2: 'image' must be a non-empty string \(a file path\), got int 7"),
    Case("image-label-is-object", lambda p: read_image_manifest(write_lines(p / "img.jsonl", [
        {"image": "a.png", "label": {}}])), "error", r"img\.jsonl:1: 'label' must be a string, got dict \{\}"),
    Case("image-coco-caption-is-number", lambda p: coco(p, [{"id": 1, "file_name": "a.jpg"}], [
        {"image_id": 1, "caption": "a cat"}, {"image_id": 1, "caption": 12345}]),
         "error", r"captions\.json: annotations\[1\]: 'caption' must be a string, got int 12345"),
    Case("image-coco-image-id-is-list", lambda p: coco(p, [{"id": 1, "file_name": "a.jpg"}], [
        {"image_id": [1], "caption": "a cat"}]),
         "error", r"captions\.json: annotations\[0\]: 'image_id' must be an integer or a string, got list"),
    Case("image-ocr-text-is-number", lambda p: read_ocr_manifest(write_lines(p / "ocr.jsonl", [
        {"image": "a.png", "text": 12345}])), "error", r"ocr\.jsonl:1: 'text' must be a string, got int 12345"),
    Case("image-ocr-line-wider-than-model", lambda p: ocr_item(p, 200, max_frames=8),  # 200 px = 50 frames
         "skip", r"line\.png: the 200-pixel-wide line gives 50 frames > the OCR model's max_frames=8"),
    Case("image-ocr-wide-line-squeezed-by-max-width", lambda p: ocr_item(p, 200, max_width=32, max_frames=8),
         "valid", check=lambda s: s["image"].shape == (1, 16, 32)),

    # ---- text corpora (Stage A): read_documents and tokenizer training
    Case("text-empty-file", lambda p: read_documents(write_lines(p / "empty.txt", [])),
         "error", r"text corpus .*empty\.txt is empty", InvalidInput),
    Case("text-whitespace-only", lambda p: read_documents(write_lines(p / "blank.txt", ["  ", "\t", "", " "])),
         "error", r"text corpus .*blank\.txt is empty", InvalidInput),
    Case("text-not-utf8", lambda p: read_documents(write_lines(p / "latin1.txt", ["hello", "", "caf\xe9"],
                                                               encoding="latin-1")),
         "error", r"latin1\.txt:3: not UTF-8"),
    Case("text-not-utf8-tokenizer", lambda p: train_tokenizer([write_lines(
        p / "latin1.txt", ["hello there"] * 5 + ["caf\xe9"], encoding="latin-1")], p, vocab_size=300),
         "error", r"latin1\.txt:6: not UTF-8"),

    # ---- JSONL manifests
    Case("manifest-bad-json-line", lambda p: read_ocr_manifest(write_lines(p / "m.jsonl", [
        {"image": "a.png", "text": "x"}, '{"image": "b.png", "text": }'])), "error", r"m\.jsonl:2: invalid JSON"),
    Case("manifest-line-not-an-object", lambda p: read_jsonl_lines(write_lines(p / "m.jsonl", [
        {"a": 1}, "", ["a.wav", "text"]])), "error", r"m\.jsonl:3: expected a JSON object, got list"),
    Case("manifest-missing-keys", lambda p: read_asr_manifest(write_lines(p / "m.jsonl", [
        {"audio": "a.wav", "text": "x"}, "", {"audio": "b.wav", "txt": "y"}])),
         "error", r"m\.jsonl:3: missing key\(s\) \['text'\]"),
    Case("manifest-empty", lambda p: read_asr_manifest(write_lines(p / "m.jsonl", ["", "  "])),
         "error", r"manifest .*m\.jsonl has no records"),
    Case("manifest-audio-is-list", lambda p: read_asr_manifest(write_lines(p / "m.jsonl", [
        {"audio": "a.wav", "text": "x"}, {"audio": ["a.wav", "b.wav"], "text": "x"}])),
         "error", r"m\.jsonl:2: 'audio' must be a non-empty string \(a file path\), got list \['a\.wav', 'b\.wav'\]"),
    Case("manifest-audio-empty-string", lambda p: read_asr_manifest(write_lines(p / "m.jsonl", [
        {"audio": "", "text": "x"}])), "error", r"m\.jsonl:1: 'audio' must be a non-empty string"),
    Case("manifest-duration-NaN", lambda p: read_asr_manifest(write_lines(p / "m.jsonl", [  # Python's json reads NaN
        '{"audio": "a.wav", "text": "x", "duration": NaN}'])),
         "error", r"m\.jsonl:1: 'duration' must be a finite number of seconds > 0, got float nan"),
    Case("manifest-duration-Infinity", lambda p: read_asr_manifest(write_lines(p / "m.jsonl", [
        '{"audio": "a.wav", "text": "x", "duration": Infinity}'])), "error", r"m\.jsonl:1: 'duration' .*got float inf"),
    Case("manifest-duration-string", lambda p: read_asr_manifest(write_lines(p / "m.jsonl", [
        {"audio": "a.wav", "text": "x", "duration": "3"}])), "error", r"m\.jsonl:1: 'duration' .*got str '3'"),
    Case("manifest-duration-negative", lambda p: read_asr_manifest(write_lines(p / "m.jsonl", [
        {"audio": "a.wav", "text": "x", "duration": -1.5}])), "error", r"m\.jsonl:1: 'duration' .*got float -1\.5"),
    Case("manifest-text-is-number", lambda p: read_asr_manifest(write_lines(p / "m.jsonl", [
        {"audio": "a.wav", "text": 12345}])), "error", r"m\.jsonl:1: 'text' must be a string, got int 12345"),
    Case("manifest-bom-crlf", lambda p: read_image_manifest(write_lines(p / "m.jsonl", [
        "\ufeff" + json.dumps({"image": "a.png", "caption": "one"}), {"image": "b.png", "caption": "two"}],
        newline="\r\n")), "valid", check=lambda r: [x["caption"] for x in r] == ["one", "two"]),

    # ---- SFT conversations: read_sft_manifest + SftSource (16 image tokens, max_length 64)
    Case("sft-no-assistant-turn", lambda p, tokenizer: sft_item(p, tokenizer, {
        "messages": [{"role": "user", "content": "hi"}]}),
         "skip", r"sft\.jsonl:1: .*non-empty assistant turn"),
    Case("sft-two-image-placeholders", lambda p, tokenizer: sft_item(p, tokenizer, {
        "messages": chat("<image> <image> what colour"), "image": "x.png"}),
         "skip", r"sft\.jsonl:1: needs exactly one <image> .* found 2"),
    Case("sft-image-placeholder-without-image", lambda p, tokenizer: sft_item(p, tokenizer, {
        "messages": chat("<image> what")}),
         "skip", r"sft\.jsonl:1: needs exactly one <image> .* found 1 with 'image' absent"),
    Case("sft-too-long-after-media", lambda p, tokenizer: sft_item(p, tokenizer, LONG_QUESTION, max_length=len(
        tokenizer.encode_chat(LONG_QUESTION["messages"])[0]) + 1),  # fits as text, not with the 16 image tokens
         "skip", r"sft\.jsonl:1: \d+ tokens with media expanded > max_length=\d+"),
    Case("sft-audio-longer-than-encoder-max-frames", lambda p, tokenizer: sft_item(p, tokenizer, {
        "messages": chat("<audio> what word"), "audio": "x.wav"}, max_length=128, max_encoder_frames=2),
         "skip", r"sft\.jsonl:1: .*x\.wav: 0\.5 s of audio gives 7 encoder frames > the audio encoder's max_frames=2"),
    Case("sft-audio-cut-short-of-duration", lambda p, tokenizer: sft_item(p, tokenizer, {
        "messages": chat("<audio> what word"), "audio": "x.wav", "duration": 2.0}, max_length=128),
         "skip", r"sft\.jsonl:1: .*x\.wav: truncated or corrupt audio: decodes to 0\.50 s but the manifest's "
                 r"duration is 2\.00 s"),
    Case("sft-task-is-number", lambda p, tokenizer: sft_item(p, tokenizer, {"messages": chat("hi"), "task": 5}),
         "error", r"sft\.jsonl:1: 'task' must be a string, got int 5"),
    Case("sft-image-is-number", lambda p, tokenizer: sft_item(p, tokenizer, {
        "messages": chat("<image> what colour"), "image": 5}),
         "error", r"sft\.jsonl:1: 'image' must be a non-empty string \(a file path\), got int 5"),
    Case("sft-audio-is-list", lambda p, tokenizer: sft_item(p, tokenizer, {
        "messages": chat("<audio> what"), "audio": ["x.wav"]}), "error", r"sft\.jsonl:1: 'audio' must be .*got list"),
    Case("sft-duration-NaN", lambda p, tokenizer: sft_item(p, tokenizer, json.dumps({
        "messages": chat("<audio> what"), "audio": "x.wav"})[:-1] + ', "duration": NaN}'),
         "error", r"sft\.jsonl:1: 'duration' must be a finite number of seconds > 0, got float nan"),

    # ---- configs: load_config_file (errors name the file and key) and load_config (the scripts' entry)
    Case("config-unknown-key", lambda p: config(p, TextStage, {"model": {"vocab_size": 300, "n_head": 4}}),
         "error", r"cfg\.json: model: unknown key 'n_head' in ThinkerConfig; did you mean 'n_heads'", ConfigError),
    Case("config-wrong-type", lambda p: config(p, AudioStage, {"model": {"encoder": {"n_layers": "4"}}}),
         "error", r"cfg\.json: model: encoder: n_layers: expected int, got str '4'", ConfigError),
    Case("config-json-syntax", lambda p: config(p, TextStage, '{\n  "train": {\n    "lr": 1e-3\n  \n}'),
         "error", r"cfg\.json:5: invalid JSON", ConfigError),
    Case("config-missing-data-path", lambda p, capsys: config_cli(p, TextStage, [
        f"data.train_path={p / 'nowhere.txt'}", f"data.val_path={p / 'cfg.json'}"], capsys),
         "error", r"config error: .*cfg\.json: data not found: data\.train_path=.*nowhere\.txt$", ConfigError),
    Case("config-missing-data-path-of-phase", lambda p, capsys: config_cli(p, TalkerStage, [
        "phase=talker", f"talker.data.val_manifest={p / 'val.jsonl'}", f"talker.data.train_manifest={p}"], capsys),
         "error", r"data not found: talker\.data\.val_manifest=.*val\.jsonl$", ConfigError),  # codec.* not checked
    Case("config-d_model-not-divisible-by-heads", lambda p: config(p, TextStage, TINY_TEXT, ["model.d_model=30"]),
         "error", r"cfg\.json.*d_model=30 is not divisible by n_heads=4", ConfigError),
    Case("config-heads-not-divisible-by-kv-heads", lambda p: config(p, TextStage, TINY_TEXT, ["model.n_kv_heads=3"]),
         "error", r"n_heads=4 is not divisible by n_kv_heads=3", ConfigError),
    Case("config-text-tower-heads", lambda p: config(p, VisionStage, {"model": {"text": {"d_model": 30}}}),
         "error", r"cfg\.json.*d_model=30 must split into n_heads=2", ConfigError),
    Case("config-patch-size-not-dividing-image", lambda p: config(p, VisionStage, {
        "model": {"vision": {"image_size": 30, "patch_size": 8}}}),
         "error", r"cfg\.json.*image_size=30 is not divisible by patch_size=8", ConfigError),
    Case("config-codebook-size-zero", lambda p: config(p, TalkerStage, {}, [
        "codec.model.codebook_size=0", "talker.model.codebook_size=0"]),
         "error", r"cfg\.json.*CodecConfig sizes must be >= 1, got \{'codebook_size': 0\}", ConfigError),
    Case("config-lr-zero", lambda p: config(p, TextStage, TINY_TEXT, ["train.lr=0"]),
         "error", r"train\.lr must be > 0, got 0", ConfigError),
    Case("config-lr-negative", lambda p: config(p, TextStage, TINY_TEXT, ["train.lr=-0.001"]),
         "error", r"train\.lr must be > 0, got -0\.001", ConfigError),
    Case("config-batch-size-zero", lambda p: config(p, TextStage, TINY_TEXT, ["train.batch_size=0"]),
         "error", r"train\.batch_size \(0\)", ConfigError),
    Case("config-negative-warmup", lambda p: config(p, TextStage, TINY_TEXT, ["train.warmup_steps=-5"]),
         "error", r"train\.warmup_steps must be >= 0, got -5", ConfigError),
    Case("config-max-bad-fraction-above-1", lambda p: config(p, TextStage, TINY_TEXT, ["train.max_bad_fraction=5"]),
         "error", r"train\.max_bad_fraction must be in \[0, 1\], got 5", ConfigError),
    Case("config-seq-len-zero", lambda p: config(p, TextStage, TINY_TEXT, ["data.seq_len=0"]),
         "error", r"data\.seq_len must be >= 1, got 0", ConfigError),

    # ---- end to end through stage scripts
    Case("e2e-ocr-bad-samples-named-then-fraction-exceeded", e2e_ocr_too_many_bad,
         "error", r"4 of 24 samples of epoch 0 were bad \(> train\.max_bad_fraction=0\.05\)", RuntimeError),
    Case("e2e-text-missing-data-path", e2e_text_missing_data,
         "error", r"config error: configs/demo/thinker\.json: data not found: data\.train_path=.*nowhere\.txt",
         ConfigError),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, request):
    extra = [request.getfixturevalue(name) for name in case.run.__code__.co_varnames[1:case.run.__code__.co_argcount]]
    if case.expect == "valid":
        assert case.check(case.run(tmp_path, *extra))
        return
    expected = BadSample if case.expect == "skip" else case.error
    with pytest.raises(expected) as info:
        case.run(tmp_path, *extra)
    assert type(info.value) is expected or case.expect == "skip", f"{type(info.value).__name__}: {info.value}"
    assert re.search(case.match, str(info.value).strip()), str(info.value)


def test_the_table_covers_every_modality():
    kinds = {c.id.split("-")[0] for c in CASES}
    assert kinds == {"audio", "image", "text", "manifest", "sft", "config", "e2e"}
    assert len({c.id for c in CASES}) == len(CASES)
