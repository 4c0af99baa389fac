"""scripts/calculate_model_size.py (meta-device counts equal real models; every shipped config reports a size) and
scripts/update_configs_from_data.py (counts a tiny dataset; --dry-run writes nothing; a real run loads strictly)."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from omni.builders import build_sft
from omni.config import load_config_file
from omni.data.text import read_documents
from omni.omni_model import OmniModel
from omni.stages import STAGE_CLASSES, STAGE_OF_PREFIX, AudioStage, SftStage, TextStage, detect_stage
from omni.thinker import Thinker
from omni.tokenizer import AUDIO, IM_END, IM_START, IMAGE, SPECIAL_TOKENS, Tokenizer, train_tokenizer
from tests.conftest import REPO, load_script

sizes = load_script("calculate_model_size")
ALL_CONFIGS = sorted((REPO / "configs").rglob("*.json"))


def unique_params(models):
    seen = {}
    for model in models.values():
        for p in model.parameters():
            seen[id(p)] = p
    return list(seen.values())


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*_tiny.json")), ids=lambda p: p.stem)
def test_meta_device_counts_equal_the_real_models(path):
    """The same models built for real on the CPU have exactly the counted parameters (and trainable ones)."""
    report = sizes.analyse(path)
    cfg = load_config_file(STAGE_CLASSES[report.stage], path)
    real, _ = sizes.build(report.stage, cfg, path, sizes.parse_args([str(path)]), device="cpu")
    params = unique_params(real)
    assert all(p.device.type == "cpu" for p in params)
    assert report.total == sum(p.numel() for p in params) > 0
    assert report.trainable == sum(p.numel() for p in params if p.requires_grad)
    assert sum(report.components.values()) == report.total


def test_counts_match_models_built_as_the_stage_scripts_build_them():
    """Independent of the script's own builder: Stage A's Thinker and Stage E's frozen/unfrozen split."""
    text = load_config_file(TextStage, REPO / "configs/thinker_tiny.json")
    thinker = Thinker(text.model)
    assert sizes.analyse(REPO / "configs/thinker_tiny.json").total == sum(p.numel() for p in thinker.parameters())
    sft_path = REPO / "configs/omni_sft_stages/omni_sft_e1.json"  # frozen Thinker + encoders, new-token rows
    sft = load_config_file(SftStage, sft_path)
    shapes = {name: load_config_file(STAGE_CLASSES[stage], REPO / f"configs/{name}_tiny.json").model
              for name, stage in (("thinker", "text"), ("audio_enc", "audio"), ("vision", "vision"))}
    model = OmniModel.from_configs(sft.model, thinker=shapes["thinker"], audio=shapes["audio_enc"].encoder,
                                   vision=shapes["vision"].vision)
    model.set_trainable(thinker=False, audio_encoder=False, vision_encoder=False, projectors=True,
                        embedding_rows=[4, 5, 6, 7])
    report = sizes.analyse(sft_path)
    assert report.total == sum(p.numel() for p in model.parameters())
    assert report.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad) < report.total



def test_sft_size_is_the_model_the_sft_builder_returns():
    """calculate_model_size's Stage E is sft_omni.py's: the same trainable count and the same embedding rows train
    with a frozen Thinker (the chat/media tokens <|im_start|> <|im_end|> <image> <audio>, not pad/unk/bos/eos)."""
    sft_path = REPO / "configs/omni_sft_stages/omni_sft_e1.json"  # frozen Thinker + train_new_tokens
    sft = load_config_file(SftStage, sft_path)
    assert sft.freeze_thinker and sft.train_new_tokens
    args = sizes.parse_args([str(sft_path)])
    counted, _ = sizes.build("sft", sft, sft_path, args, device="cpu")
    omni = counted["omni"]
    built = build_sft(sft, thinker=omni.thinker.cfg, audio=omni.audio_encoder.encoder.cfg,
                      vision=omni.vision_encoder.cfg)
    assert sizes.analyse(sft_path).trainable == built.trainable() > 0
    rows = omni.embedding_row_mask[:, 0].nonzero()[:, 0].tolist()
    assert rows == built.model.embedding_row_mask[:, 0].nonzero()[:, 0].tolist() == [
        SPECIAL_TOKENS.index(t) for t in (IM_START, IM_END, IMAGE, AUDIO)]

@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_loads_strictly_and_reports_a_size(path):
    stage = detect_stage(json.loads(path.read_text()), path.name)
    prefix = next(p for p in STAGE_OF_PREFIX if path.name.startswith(p))
    assert stage == STAGE_OF_PREFIX[prefix]  # the keys and the file name agree
    load_config_file(STAGE_CLASSES[stage], path)
    report = sizes.analyse(path)
    memory = report.memory()
    assert report.total > 0 and 0 < report.trainable <= report.total
    assert memory["total"] > memory["weights"] + memory["grads"] + memory["adamw"]


def test_every_stage_has_tiny_medium_and_large_presets_that_grow():
    for prefix in STAGE_OF_PREFIX:
        totals = [sizes.analyse(REPO / f"configs/{prefix}_{size}.json").total for size in ("tiny", "medium", "large")]
        assert totals == sorted(totals) and totals[0] < totals[2], (prefix, totals)


def test_size_script_prints_json():
    out = subprocess.run([sys.executable, "scripts/calculate_model_size.py", "configs/demo/thinker.json", "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["stage"] == "text" and row["total"] == sum(row["components"].values())
    assert row["memory_bytes"]["adamw"] == 8 * row["trainable"]


# ---- update_configs_from_data.py

def make_speech(root, durations):
    """root/speech/train.jsonl (+ val) over sine-wave WAVs of the given lengths in seconds."""
    folder = root / "speech"
    (folder / "wavs").mkdir(parents=True)
    lines = []
    for i, seconds in enumerate(durations):
        t = np.arange(int(16000 * seconds)) / 16000
        sf.write(folder / "wavs" / f"{i}.wav", 0.1 * np.sin(2 * np.pi * 220 * t), 16000)
        lines.append(json.dumps({"audio": f"wavs/{i}.wav", "text": "hello world"}))
    for split in ("train", "val"):
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


def update_configs(*args):
    return subprocess.run([sys.executable, "scripts/update_configs_from_data.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_update_configs_dry_run_then_write(tmp_path):
    durations = [0.5, 1.0, 1.5, 0.5, 1.0, 1.5, 0.5, 1.0, 1.5, 2.0]  # 11 s in 10 clips
    make_speech(tmp_path / "data", durations)
    config = tmp_path / "audio.json"
    config.write_text(json.dumps({"model": {"encoder": {"d_model": 32, "n_layers": 1, "n_heads": 2,
                                                         "n_kv_heads": 2, "d_ff": 64}},
                                  "train": {"batch_size": 2, "max_steps": 1000, "save_dir": str(tmp_path / "run")}}))
    before = config.read_bytes()
    dry = update_configs(config, "--data-dir", tmp_path / "data", "--epochs", 3, "--evals", 5, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "samples 10, audio_seconds 11.0" in dry.stdout
    assert "train.max_steps: 1000 -> 15" in dry.stdout  # 3 epochs x 10 // 2 batches
    assert f'data.train_manifest: null -> "{tmp_path / "data" / "speech" / "train.jsonl"}"' in dry.stdout
    assert config.read_bytes() == before  # --dry-run writes nothing

    real = update_configs(config, "--data-dir", tmp_path / "data", "--epochs", 3, "--evals", 5)
    assert real.returncode == 0, real.stderr
    cfg = load_config_file(AudioStage, config)  # the strict loader accepts what was written
    t = cfg.train
    assert (t.max_steps, t.warmup_steps, t.val_freq, t.checkpoint_freq) == (15, round(0.05 * 15), 3, 1)
    assert cfg.data.train_manifest == str(tmp_path / "data" / "speech" / "train.jsonl")
    assert cfg.model.encoder.d_model == 32 and t.batch_size == 2  # everything else kept
    assert not list(tmp_path.glob(".audio.json.*"))  # no temporary file left behind
    again = update_configs(config, "--data-dir", tmp_path / "data", "--epochs", 3, "--evals", 5, "--dry-run")
    assert "(no changes)" in again.stdout


def test_update_configs_counts_stage_a_tokens_and_accumulation(tmp_path, text_corpus):
    train_tokenizer([text_corpus / "train.txt"], tmp_path, vocab_size=400)
    tok = Tokenizer.load(tmp_path / "tokenizer.model")
    tokens = sum(len(tok.encode(d, bos=True, eos=True)) for d in read_documents(text_corpus / "train.txt"))
    config = tmp_path / "thinker.json"
    config.write_text(json.dumps({"model": {"vocab_size": 400, "d_model": 32, "n_layers": 1, "n_heads": 2,
                                            "n_kv_heads": 1, "d_ff": 64, "max_seq_len": 64},
                                  "data": {"train_path": str(text_corpus / "train.txt"),
                                           "val_path": str(text_corpus / "val.txt"), "seq_len": 64},
                                  "train": {"batch_size": 4, "effective_batch": 16, "save_dir": str(tmp_path)}}))
    out = update_configs(config, "--world-size", 2)
    assert out.returncode == 0, out.stderr
    samples = (tokens - 1) // 64
    assert f"tokens {tokens}, samples {samples}" in out.stdout
    cfg = load_config_file(TextStage, config)
    # global batch 4 x 2 processes, accumulation 16 / 8 = 2
    assert cfg.train.max_steps == math.ceil((samples // 8) / 2)
    assert cfg.train.val_freq == max(1, cfg.train.max_steps // 10)


# ---- the shipped configs/*_tiny.json read what the download and converter scripts write under data/

def write_wav(path, seconds, fmt="WAV"):
    t = np.arange(int(16000 * seconds)) / 16000
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.1 * np.sin(2 * np.pi * 220 * t), 16000, format=fmt)


@pytest.fixture(scope="module")
def download_layouts(tmp_path_factory, text_corpus):
    """A data/ folder as the download scripts leave it, 4 training samples per stage in each dataset's layout:
    download_text.py tinystories (parquet shards), download_librispeech.py (train-clean-100 + dev-clean chapters),
    download_ljspeech.py (LJSpeech-1.1/ with train/val.jsonl), download_coco.py (coco/ with train/val.jsonl over
    val2017/), make_ocr_lines.py --out data/ocr_corpus and make_sft_from_data.py --out data/sft_real."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    root = tmp_path_factory.mktemp("downloads") / "data"
    docs = read_documents(text_corpus / "train.txt")[:9]
    shards = root / "text" / "tinystories" / "data"
    shards.mkdir(parents=True)
    for name, part in (("train-00000-of-00002-a1.parquet", docs[:4]), ("train-00001-of-00002-b2.parquet", docs[4:7]),
                       ("validation-00000-of-00001-c3.parquet", docs[7:])):
        pq.write_table(pa.table({"text": part}), shards / name)
    for split in ("train-clean-100", "dev-clean"):
        chapter = root / "LibriSpeech" / split / "19" / "198"
        for i in range(4):
            write_wav(chapter / f"19-198-{i:04d}.flac", 0.5, "FLAC")
        (chapter / "19-198.trans.txt").write_text("".join(f"19-198-{i:04d} HELLO WORLD\n" for i in range(4)))
    lj = root / "LJSpeech-1.1"
    for i in range(6):
        write_wav(lj / "wavs" / f"LJ001-{i:04d}.wav", 1.0)
    for split, ids in (("train", range(4)), ("val", range(4, 6))):
        (lj / f"{split}.jsonl").write_text("".join(json.dumps({"audio": f"wavs/LJ001-{i:04d}.wav", "text": "hi"})
                                                   + "\n" for i in ids))
    for folder, key, prefix in (("coco", "caption", "val2017"), ("ocr_corpus", "text", "images")):
        for split in ("train", "val"):
            rows = []
            for i in range(4):
                image = f"{prefix}/{split}{i:06d}.jpg"
                (root / folder / prefix).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(root / folder / image)
                rows.append(json.dumps({"image": image, key: f"a red square {i}"}))
            (root / folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    sft = root / "sft_real"
    sft.mkdir()
    for split in ("train", "val"):
        (sft / f"{split}.jsonl").write_text("".join(json.dumps(
            {"task": "text", "messages": [{"role": "user", "content": f"Continue the text: {d}"},
                                          {"role": "assistant", "content": "The end."}]}) + "\n" for d in docs[:4]))
    return root, docs


TINY_SAMPLES = {"thinker": None, "audio_enc": 4, "talker": 4, "vocoder": 4, "vision": 4, "ocr": 4, "omni_sft": 4}


@pytest.mark.parametrize("name", sorted(TINY_SAMPLES))
def test_shipped_tiny_configs_point_at_the_download_layouts(name, tmp_path, download_layouts, text_corpus, capsys):
    """Each configs/<name>_tiny.json, with only its batch size shrunk, counts the dataset its download script
    writes once `--data-dir` moves data/ to the fixture: its default paths are the download scripts' layouts."""
    update = load_script("update_configs_from_data")
    root, docs = download_layouts
    raw = json.loads((REPO / "configs" / f"{name}_tiny.json").read_text())
    for part in (raw["codec"], raw["talker"]) if name == "talker" else (raw,):
        part["train"]["batch_size"] = 1 if name == "thinker" else 2  # 7 short stories fill one 512-token window
    config = tmp_path / f"{name}_tiny.json"
    config.write_text(json.dumps(raw))
    tokenizer = train_tokenizer([text_corpus / "train.txt"], tmp_path, vocab_size=400).model_path \
        if name == "thinker" else None
    update.main([str(config), "--data-dir", str(root), "--dry-run",
                 *(["--tokenizer", str(tokenizer)] * (name == "thinker"))])
    out = capsys.readouterr().out
    if name == "thinker":  # the two train shards of the glob, streamed; tokens exactly as train_text.py counts
        tok = Tokenizer.load(tokenizer)
        tokens = sum(len(tok.encode(d, bos=True, eos=True)) for d in docs[:7])
        assert f"{root}/text/tinystories/data/train-*.parquet: glob, 2 parquet shards" in out
        assert f"documents 7, tokens {tokens}, samples {(tokens - 1) // 512}" in out
    else:
        assert out.count(f"samples {TINY_SAMPLES[name]}") == (2 if name == "talker" else 1), out
    moved = [line for line in out.splitlines() if re.match(r"\s+\S*data\.(train|val)_(path|manifest): .* -> ", line)]
    assert len(moved) == (4 if name == "talker" else 2)  # every data path moved from data/ to the fixture
    assert all(re.search(rf'"data/\S+" -> "{root}/\S+"$', line) for line in moved), moved


def test_update_configs_counts_sft_conversations_in_any_format_sft_omni_reads(tmp_path, capsys):
    """A LLaVA JSON array is counted by the SFT reader (conversations per task, unusable ones named), not as lines."""
    update = load_script("update_configs_from_data")
    (tmp_path / "cat.jpg").write_bytes(b"")  # never opened: counting reads the records, not the media
    turn = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]
    items = [{"id": str(i), "image": "cat.jpg", "conversations": turn} for i in range(3)]
    items.append({"id": "3", "image": ["cat.jpg", "cat.jpg"], "conversations": turn})  # two images: unusable
    (tmp_path / "llava.json").write_text(json.dumps(items, indent=1))
    config = tmp_path / "omni_sft.json"
    config.write_text(json.dumps({"data": {"train_manifest": str(tmp_path / "llava.json")},
                                  "train": {"batch_size": 2, "save_dir": str(tmp_path / "run")}}))
    update.main([str(config), "--dry-run"])
    out = capsys.readouterr().out
    assert "LLaVA" in out and "4 conversations, 1 unusable" in out
    assert "samples 4, tasks {'image_qa': 3, 'text': 1}, unusable 1" in out and "train.max_steps: null -> 2" in out
