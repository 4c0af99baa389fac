"""Dataclass configs with strict JSON loading and dotted command-line overrides.

Every stage script has one dataclass with nested `model`, `data` and `train` parts (see `omni/stages.py`). A JSON
file mirrors it; loading is strict because a misspelt key that silently falls back to a default costs a researcher
a training run. Unknown keys name the file and the closest valid key; wrong types name the key and both types.

    cfg = load_config(TextStage, ["--config", "configs/thinker_tiny.json", "--set", "train.lr=3e-4"])
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import glob
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from omni.errors import UserError

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass
class TrainConfig:
    """The training knobs every stage shares. Steps count optimizer updates, not micro-batches."""

    save_dir: str = "checkpoints/run"  # run directory: checkpoints, logs, final weights
    max_steps: int | None = None  # optimizer steps; None = max_epochs worth of steps
    max_epochs: int = 1  # used when max_steps is None
    batch_size: int = 8  # micro-batch per process
    grad_accum_steps: int = 1  # micro-batches per optimizer step (or give effective_batch)
    effective_batch: int | None = None  # batch_size * grad_accum_steps * world_size; derives grad_accum_steps
    lr: float = 3e-4  # peak learning rate after warmup
    min_lr: float = 3e-5  # cosine floor, reached at max_steps
    warmup_steps: int = 100  # linear warmup from 0
    weight_decay: float = 0.1  # AdamW decay on matrices only (not norms, biases, embeddings)
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping (the norm is still checked for NaN)
    val_freq: int = 500  # evaluate every N steps (and at the end)
    checkpoint_freq: int = 500  # checkpoint every N steps (and at each epoch end and at the end)
    keep_last: int = 3  # step checkpoints kept; the best one is kept separately
    log_freq: int = 10  # log metrics every N steps (the only host syncs of the loop)
    precision: str = "fp32"  # fp32 | fp16 (with GradScaler) | bf16
    compile: bool = False  # torch.compile the model (static padding lengths recommended)
    grad_checkpointing: bool = False  # recompute each block's activations in backward
    num_workers: int = 0  # DataLoader worker processes; batch order is the same for any value
    threads: int | None = None  # torch intra-op CPU threads; None = torch's default (1 is faster on a busy CPU)
    seed: int = 42
    resume: str = "auto"  # auto (newest valid checkpoint in save_dir) | never | path to a checkpoint
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_bad_fraction: float = 0.05  # more bad samples than this fraction of an epoch is an error
    max_nonfinite_steps: int = 20  # consecutive NaN/Inf steps before the run stops
    tensorboard: bool = False  # also log to TensorBoard (needs the tensorboard package)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 1 or self.grad_accum_steps < 1:
            raise ValueError(f"train.batch_size ({self.batch_size}) and train.grad_accum_steps "
                             f"({self.grad_accum_steps}) must be >= 1")
        if self.effective_batch is not None and self.grad_accum_steps != 1:
            raise ValueError("give either train.effective_batch or train.grad_accum_steps, not both")
        for key in ("val_freq", "checkpoint_freq", "keep_last", "log_freq", "max_epochs"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"train.max_steps must be >= 1, got {self.max_steps}")
        if not self.lr > 0:  # also refuses NaN
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        for key in ("min_lr", "warmup_steps", "weight_decay", "grad_clip", "num_workers"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("effective_batch", "threads"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1 or null, got {getattr(self, key)}")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"train.max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"train.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        for f in dataclasses.fields(self):  # also when built in code, not from a file (see _coerce)
            if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name)):
                raise ValueError(f"train.{f.name} must be a finite number, got {getattr(self, f.name)}")


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the dataclass; the message says where and why."""


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass `cls` from `data`, recursively and strictly. `where` names the file (or --set) in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {sorted(fields)}"
            raise ConfigError(f"{where}: unknown key {key!r} in {cls.__name__}{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{where}: {key}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without a default is missing
        raise ConfigError(f"{where}: {cls.__name__}: {e}") from None
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _coerce(value, annotation, where: str):
    """Check `value` against a type annotation, converting only what JSON cannot express (int -> float)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {annotation}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, dict):
            return from_dict(annotation, value, where)
        raise ConfigError(f"{where}: expected an object, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type, *_) = typing.get_args(annotation) or (typing.Any,)
        items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return origin(items)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {value!r}")
        return value
    if annotation is typing.Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got bool {value!r}")
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
    if annotation is float and not math.isfinite(value):
        # Python's json reads Infinity and NaN (and so does --set): no knob of omni means anything at either, and
        # e.g. train.weight_decay=Infinity would silently turn every weight into NaN.
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return value


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def set_dotted(data: dict, dotted_key: str, value) -> None:
    """data['a']['b'] = value for 'a.b', creating objects along the way (strictness comes from from_dict)."""
    *parents, leaf = dotted_key.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted_key}: {p!r} is not an object")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, object]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003). Values are JSON when they parse as JSON, else plain strings."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="JSON config file (see configs/)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted overrides, e.g. train.lr=3e-4")
    parser.add_argument("--force", action="store_true", help="resume even if the config disagrees with the checkpoint")
    return parser


def load_config(cls, argv: list[str] | None = None, description: str | None = None):
    """Parse --config/--set/--force; return (config, args). Exits with a clear message on a bad config."""
    parser = build_parser(description)
    args = parser.parse_args(argv)
    try:
        cfg = load_config_file(cls, args.config, args.set)
        missing = missing_data_paths(cfg)
        if missing:
            raise ConfigError(f"{args.config}: data not found: " + ", ".join(missing))
        not_dirs = [f"{key}={value}" for key, value in _fields_named(cfg, "save_dir")
                    if isinstance(value, str) and Path(value).exists() and not Path(value).is_dir()]
        if not_dirs:
            raise ConfigError(f"{args.config}: the run directory is an existing file: " + ", ".join(not_dirs))
    except (ConfigError, FileNotFoundError) as e:
        parser.exit(2, f"config error: {e}\n")
    return cfg, args


DATA_PATH_KEYS = ("train_path", "val_path", "train_manifest", "val_manifest")  # inputs every stage reads


def missing_data_paths(cfg, prefix: str = "") -> list[str]:
    """'key=path' for each data input (DATA_PATH_KEYS) of `cfg` that does not exist, so a run stops before it
    starts. A config with a `phase` other than "all" (Stage D) checks only the part of that name."""
    phase = getattr(cfg, "phase", None)
    missing = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            if phase in (None, "all") or f.name == phase:
                missing += missing_data_paths(value, f"{prefix}{f.name}.")
        elif f.name in DATA_PATH_KEYS and isinstance(value, str) and not data_path_exists(value):
            missing.append(f"{prefix}{f.name}={value}")
        elif f.name in DATA_PATH_KEYS and isinstance(value, list):  # several sources: each must exist
            missing += [f"{prefix}{f.name}[{i}]={p}" for i, p in enumerate(value) if not data_path_exists(p)]
    return missing


def data_path_exists(value: str) -> bool:
    """A data path exists: a file or folder, or a glob (e.g. `data/text/*.parquet`) that matches at least one."""
    if any(c in value for c in "*?["):
        return next(glob.iglob(value, recursive=True), None) is not None
    return Path(value).exists()


def _fields_named(cfg, name: str, prefix: str = ""):
    """(dotted key, value) of every field called `name` in a nested config (e.g. each part's train.save_dir)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _fields_named(value, name, f"{prefix}{f.name}.")
        elif f.name == name:
            yield f"{prefix}{f.name}", value


def load_config_file(cls, path: str | Path, overrides: list[str] = ()):
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; --config takes a JSON file (e.g. configs/thinker_tiny.json)")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save it as UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    cfg = from_dict(cls, data, str(path))
    if overrides:
        merged = to_dict(cfg)
        for text in overrides:
            key, value = parse_override(text)
            set_dotted(merged, key, value)
        cfg = from_dict(cls, merged, f"{path} + --set")
    return cfg
