"""scripts/calculate_model_size.py (meta-device counts equal real models; every shipped config reports a size) and
scripts/update_configs_from_data.py (counts a tiny dataset; --dry-run writes nothing; a real run loads strictly)."""

import importlib.util
import json
import math
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
from tests.conftest import REPO


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


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
