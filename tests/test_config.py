import json
import subprocess
import sys

import pytest

from omni.config import ConfigError, TrainConfig, from_dict, load_config_file, parse_override
from omni.stages import AudioStage, OcrStage, SftStage, TalkerStage, TextStage, VisionStage, VocoderStage
from tests.conftest import REPO


def write(tmp_path, data) -> str:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, {"train": {"lrr": 1e-3}})
    with pytest.raises(ConfigError) as e:
        load_config_file(TextStage, path)
    msg = str(e.value)
    assert "'lrr'" in msg and "'lr'" in msg and path in msg


def test_wrong_type_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="batch_size.*expected int.*str"):
        load_config_file(TextStage, write(tmp_path, {"train": {"batch_size": "8"}}))
    with pytest.raises(ConfigError, match="expected int, got bool"):
        from_dict(TrainConfig, {"batch_size": True})


def test_int_is_accepted_for_float_and_nested_defaults_kept(tmp_path):
    cfg = load_config_file(TextStage, write(tmp_path, {"train": {"lr": 1}, "model": {"vocab_size": 500}}))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.vocab_size == 500 and cfg.model.d_model == 256  # default from ThinkerConfig


def test_overrides_are_typed_and_strict(tmp_path):
    path = write(tmp_path, {"model": {"vocab_size": 500}})
    cfg = load_config_file(TextStage, path, ["train.lr=3e-4", "train.max_steps=20", "data.tokenizer=null",
                                             "train.save_dir=some/dir", "train.compile=true"])
    assert (cfg.train.lr, cfg.train.max_steps, cfg.data.tokenizer) == (3e-4, 20, None)
    assert cfg.train.save_dir == "some/dir" and cfg.train.compile is True
    with pytest.raises(ConfigError, match="'lrr'.*'lr'"):
        load_config_file(TextStage, path, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.lr")


def test_validation_errors_name_values(tmp_path):
    with pytest.raises(ConfigError, match="precision"):
        load_config_file(TextStage, write(tmp_path, {"train": {"precision": "fp8"}}))
    with pytest.raises(ConfigError, match="seq_len"):
        load_config_file(TextStage, write(tmp_path, {"data": {"seq_len": 4096}}))
    with pytest.raises(ConfigError, match="250"):
        load_config_file(TextStage, write(tmp_path, {"model": {"vocab_size": 100, "d_model": 250}}))


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "train": {"lr": 1e-3,}\n}')
    with pytest.raises(ConfigError, match=r"bad\.json:2"):
        load_config_file(TextStage, path)


def test_script_exits_nonzero_on_unknown_key():
    result = subprocess.run([sys.executable, "train_text.py", "--config", "configs/demo/thinker.json",
                             "--set", "train.lrr=1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "lrr" in result.stderr and "did you mean 'lr'" in result.stderr


# config file name prefix -> stage dataclass (configs/thinker_tiny.json, configs/demo/thinker.json, ...)
STAGE_OF_CONFIG = {"thinker": TextStage, "audio_enc": AudioStage, "vision": VisionStage, "ocr": OcrStage,
                   "omni_sft": SftStage, "talker": TalkerStage, "vocoder": VocoderStage}


def test_shipped_configs_load():
    loaded = []
    for path in sorted((REPO / "configs").rglob("*.json")):
        for prefix, stage in STAGE_OF_CONFIG.items():
            if path.name.startswith(prefix):
                load_config_file(stage, path)
                loaded.append(prefix)
    assert set(loaded) == set(STAGE_OF_CONFIG)


def test_speech_out_configs_check_what_the_phases_share(tmp_path):
    tiny = load_config_file(TalkerStage, REPO / "configs/talker_tiny.json")
    assert (tiny.talker.model.d_model, tiny.talker.model.n_layers, tiny.talker.model.n_heads) == (192, 4, 3)
    assert tiny.talker.model.d_ff == 768 and tiny.phase == "all"
    demo = REPO / "configs/demo/talker.json"
    with pytest.raises(ConfigError, match="talker.model.codebook_size=512 must equal codec.model.codebook_size=256"):
        load_config_file(TalkerStage, demo, ["talker.model.codebook_size=512"])
    with pytest.raises(ConfigError, match="each phase is a run of its own"):
        load_config_file(TalkerStage, demo, ["codec.train.save_dir=checkpoints/demo/talker"])
    with pytest.raises(ConfigError, match="phase must be one of"):
        load_config_file(TalkerStage, demo, ["phase=vocoder"])
    with pytest.raises(ConfigError, match="'train' in TalkerStage"):  # each phase has its own train section
        load_config_file(TalkerStage, demo, ["train.lr=1"])
    vocoder = load_config_file(VocoderStage, REPO / "configs/demo/vocoder.json", ["adam_betas=[0.5, 0.9]"])
    assert vocoder.adam_betas == (0.5, 0.9) and vocoder.mel_warmup_steps > 0
    with pytest.raises(ConfigError, match="fp16"):
        load_config_file(VocoderStage, REPO / "configs/demo/vocoder.json", ["train.precision=fp16"])
