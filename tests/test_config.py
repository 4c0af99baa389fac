import json
import subprocess
import sys

import pytest

from omni.config import ConfigError, TrainConfig, from_dict, load_config_file, parse_override
from omni.stages import TextStage
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


def test_shipped_configs_load():
    for path in sorted((REPO / "configs").rglob("*.json")):
        if path.name.startswith("thinker"):
            load_config_file(TextStage, path)
