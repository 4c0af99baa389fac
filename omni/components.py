"""The component registry: which final-weights file each stage writes, and which classes rebuild the component.

Used by the export (omni/export_format.py) and by anything that loads stage weights by component name.

- `COMPONENTS` maps a component name (the tensor prefix in an export) to its stage's final-weights file and to the
  module/model class/config class that rebuild it. A new component adds one entry; entries for modules that are
  not written yet name the planned classes, and their authors correct the names when the module lands.
- The final-weights convention: a dict with "model" (state dict of the raw module) and "config" (the model config
  dataclass as a dict, shapes only), plus the extras the entry names (e.g. "vocab", the CTC character list).
  Stage E (`omni_final.pt`) holds only the trained parameters, keyed by component prefix.
- Files are read with `torch.load(weights_only=True)` (omni.training.checkpoint.load). When a component's classes
  import, its config is checked strictly against the config dataclass (a stage config with LRs or data paths is
  refused) and the weights are loaded strictly into a fresh model, so a mismatch is reported with the file named.
  A component whose module does not exist yet is read unchecked.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from omni.config import ConfigError, from_dict
from omni.errors import InvalidInput
from omni.training.checkpoint import load as load_checkpoint

SFT_WEIGHTS_FILE = "omni_final.pt"  # Stage E: trainable-only parameters, keys prefixed by component


class ExportError(InvalidInput):
    """A checkpoint or export folder that cannot be exported/loaded; the message names the file and key."""


class ComponentUnavailable(LookupError):
    """The component's module or classes are not written yet."""


@dataclass(frozen=True)
class Component:
    name: str  # tensor prefix in model.safetensors and key in config.json "components"
    weights_file: str | None  # final-weights file of its stage; None = born in Stage E (only in omni_final.pt)
    module: str  # where the classes live
    model_class: str
    config_class: str
    extras: tuple[str, ...] = ()  # keys of the stage file copied into config.json (required)
    optional_extras: tuple[str, ...] = ()  # copied when present
    # (module, config.json section) -> model, for classes not built as model_class(config_class(**config)).
    build: Callable[[object, dict], nn.Module] | None = None
    # (stage state, stage config) -> (state, config) of the exported part, when the stage trains more than it.
    extract: Callable[[dict, dict], tuple[dict, dict]] | None = None


def _build_asr(module, section: dict) -> nn.Module:
    """Audio encoder + CTC head: AsrModel takes the encoder, the CTC vocabulary size and ctc_upsample."""
    from omni.ctc import CharVocab

    encoder = module.AudioEncoder(from_dict(module.AudioEncoderConfig, section["config"]))
    kwargs = {"ctc_upsample": section["ctc_upsample"]} if "ctc_upsample" in section else {}
    return module.AsrModel(encoder, vocab_size=len(CharVocab.from_list(section["vocab"])), **kwargs)


def _vision_from_contrastive(state: dict, config: dict) -> tuple[dict, dict]:
    """vision.pt holds the whole Stage-C model (ViT "vision.*" + text tower, projections, classifier); the export
    keeps the ViT, whose patch tokens Stage E projects (the rest only served the Stage-C objective)."""
    if not isinstance(config.get("vision"), dict):
        return state, config  # already a bare VisionEncoder
    return {k.removeprefix("vision."): v for k, v in state.items() if k.startswith("vision.")}, config["vision"]


# Every planned component, in export order. The projectors' module (omni/omni_model.py) is not written yet: their
# entries name the planned classes, and the Stage-E author corrects them (or adds a `build`) when it lands.
COMPONENTS: dict[str, Component] = {c.name: c for c in (
    Component("thinker", "thinker.pt", "omni.thinker", "Thinker", "ThinkerConfig"),
    Component("audio_encoder", "audio_enc.pt", "omni.audio_encoder", "AsrModel", "AudioEncoderConfig",
              extras=("vocab",), optional_extras=("ctc_upsample",), build=_build_asr),
    Component("vision_encoder", "vision.pt", "omni.vision_encoder", "VisionEncoder", "VisionConfig",
              extract=_vision_from_contrastive),
    Component("audio_projector", None, "omni.omni_model", "Projector", "ProjectorConfig"),
    Component("vision_projector", None, "omni.omni_model", "Projector", "ProjectorConfig"),
    Component("codec", "rvq_codec.pt", "omni.codec", "Codec", "CodecConfig"),
    Component("talker", "talker.pt", "omni.talker", "Talker", "TalkerConfig"),
    Component("vocoder", "hifigan.pt", "omni.vocoder", "Generator", "VocoderConfig"),
    Component("ocr", "ocr.pt", "omni.ocr", "OcrModel", "OcrConfig", extras=("vocab",), optional_extras=("max_width",)),
)}


@dataclass
class StageWeights:
    """One component's weights as read from its stage file."""

    component: str
    source: Path  # the file it came from
    state: dict[str, torch.Tensor]  # unprefixed state dict
    config: dict  # model config (shapes only)
    extras: dict  # registry extras, e.g. {"vocab": [...]}


def classes(component: Component) -> tuple[object, type, type]:
    """(module, model class, config class); ComponentUnavailable when the module or a class does not exist yet.
    Any other import error (a bug inside an existing module) propagates."""
    try:
        module = importlib.import_module(component.module)
    except ModuleNotFoundError as e:
        if e.name != component.module:
            raise
        raise ComponentUnavailable(f"module {component.module} does not exist yet") from None
    missing = [n for n in (component.model_class, component.config_class) if not hasattr(module, n)]
    if missing:
        raise ComponentUnavailable(f"{component.module} has no {' / '.join(missing)}")
    return module, getattr(module, component.model_class), getattr(module, component.config_class)


def available(component: Component) -> bool:
    try:
        classes(component)
    except ComponentUnavailable:
        return False
    return True


def build_model(component: Component, section: dict, where: str) -> nn.Module:
    """A fresh model of `component` from its config.json section ({"config": ..., extras}); errors name `where`."""
    module, model_class, config_class = classes(component)
    try:
        if component.build is not None:
            return component.build(module, section)
        return model_class(from_dict(config_class, section["config"], where=f"{where} 'config'"))
    except (ConfigError, TypeError, ValueError, KeyError) as e:
        raise ExportError(f"{where}: cannot build {component.name} ({component.model_class}): {e}") from None


def find_weights(path: str | Path, filename: str, what: str) -> Path:
    """A run dir (holding the final-weights file `filename`) or a file -> the weights file. `what` names it."""
    path = Path(path)
    if path.is_dir():
        if not (path / filename).is_file():
            found = sorted(p.name for p in path.glob("*.pt"))
            raise ExportError(f"{path}: no {filename} (the final {what} weights) in this run dir; found "
                              f"{found or 'no .pt files'}. Has the stage finished?")
        return path / filename
    if not path.is_file():
        raise ExportError(f"{what} checkpoint not found: {path}")
    return path


def _read(path: Path, what: str) -> dict:
    try:
        data = load_checkpoint(path)
    except (FileNotFoundError, RuntimeError) as e:
        raise ExportError(f"{what}: {e}") from None
    if not isinstance(data, dict) or "model" not in data or "config" not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ExportError(f"{path}: not a final-weights file (needs 'model' and 'config', has {keys})")
    if isinstance(data["config"], dict) and {"model", "train"} <= data["config"].keys():
        raise ExportError(f"{path}: 'config' is a whole stage config (a training checkpoint?); export reads the "
                          "final weights file (e.g. thinker.pt), whose 'config' is the model config only")
    state = data["model"]
    if not isinstance(state, dict) or not state:
        raise ExportError(f"{path}: 'model' must be a non-empty state dict")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ExportError(f"{path}: 'model' entry {key!r} is a {type(value).__name__}, not a tensor")
    try:
        json.dumps(data["config"])
    except (TypeError, ValueError) as e:
        raise ExportError(f"{path}: 'config' is not JSON-serialisable ({e})") from None
    return data


def read_stage_weights(path: str | Path, component: str) -> StageWeights:
    """Read and check one stage's final weights (run dir or file). Errors name the file and key."""
    comp = COMPONENTS[component]
    if comp.weights_file is None:
        raise ExportError(f"{component} has no stage of its own: its weights come from {SFT_WEIGHTS_FILE}")
    file = find_weights(path, comp.weights_file, component)
    data = _read(file, f"{component} checkpoint")
    missing = [k for k in comp.extras if k not in data]
    if missing:
        raise ExportError(f"{file}: missing {missing} (the {component} final weights must hold them)")
    extras = {k: data[k] for k in comp.extras + comp.optional_extras if k in data}
    state, config = dict(data["model"]), data["config"]
    if comp.extract is not None:
        state, config = comp.extract(state, config)
        if not state:
            raise ExportError(f"{file}: no {component} tensors in 'model'")
    weights = StageWeights(component, file, state, config, extras)
    check_loads(weights)
    return weights


def read_sft_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """Stage E: (trainable-only state with component prefixes, its config, the file)."""
    file = find_weights(path, SFT_WEIGHTS_FILE, "Stage-E")
    data = _read(file, "Stage-E checkpoint")
    return dict(data["model"]), data["config"], file


def check_loads(weights: StageWeights) -> None:
    """Build the component's model and load the weights strictly, when its classes exist (else nothing to check)."""
    comp = COMPONENTS[weights.component]
    if not available(comp):
        return
    where = str(weights.source)
    model = build_model(comp, {"config": weights.config, **weights.extras}, where)
    load_state(model, weights.state, where, weights.component)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], where: str, component: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"{where}: the {component} weights do not fit its model: {e}") from None
