"""Stage weights on disk: what each stage's final-weights file holds, written and read here only.

Every stage script writes its final file through one function below (`thinker_weights`, ..., `sft_weights`,
each returning {file name: payload} for `Run.finish(final_weights=...)`); everything that reads those files (the
export, inference, speech, Stage C's frozen Thinker, Stage E's starting weights) reads them through
`read_stage_weights` / `load_stage_model` / `read_sft`. The layout (unchanged since the files were first written):

    thinker.pt    {"model": Thinker state, "config": ThinkerConfig, "tokenizer": "tokenizer.model" (beside it)}
    audio_enc.pt  {"model": AsrModel state (encoder + CTC head), "config": AudioEncoderConfig, "vocab": CTC
                   characters, "ctc_upsample": int, "n_mels": int}
    vision.pt     {"model": ContrastiveModel state without a frozen Thinker (the ViT is "vision.*"), "config":
                   ContrastiveConfig (the ViT's is config["vision"]), "labels", "tokenizer", "thinker"}
    rvq_codec.pt  {"model": Codec state, "config": CodecConfig}
    talker.pt     {"model": Talker state, "config": TalkerConfig, "tokenizer": file, "codec": "rvq_codec.pt"}
    hifigan.pt    {"model": generator state, "config": VocoderConfig, "judge": {"choice", "criterion", "reason"}
                   (runs before the judge had none)}
    ocr.pt        {"model": OcrModel state, "config": OcrConfig, "vocab": characters, "max_width": int | None}
    omni_final.pt {"model": the parameters Stage E changed, "<component>.<name>", "config": per component model
                   configs ("omni": OmniConfig), "tokenizer": file, "stage_weights": the stage files the rest
                   comes from}

- `COMPONENTS` maps a component name (the tensor prefix in an export) to its stage's final-weights file and to the
  module/model class/config class that rebuild it. A new component adds one entry. Its "config" is the model
  config dataclass as a dict (shapes only), plus the extras the entry names (copied into an export's config.json).
- A component's state is what its model class loads: vision.pt's ViT part is taken here (`vision_encoder_part`),
  the only place that knows the "vision." prefix.
- Files are read with `torch.load(weights_only=True)` (omni.training.checkpoint.load). The config is checked
  strictly against the config dataclass (a stage config with LRs or data paths is refused) and the weights are
  loaded strictly into a model built once from it, so a mismatch is reported with the file named.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from omni.config import ConfigError, from_dict, to_dict
from omni.errors import InvalidInput
from omni.tokenizer import TOKENIZER_FILE
from omni.training.checkpoint import load as load_checkpoint

THINKER_FILE = "thinker.pt"
AUDIO_FILE = "audio_enc.pt"
VISION_FILE = "vision.pt"
CODEC_FILE = "rvq_codec.pt"
TALKER_FILE = "talker.pt"
VOCODER_FILE = "hifigan.pt"
OCR_FILE = "ocr.pt"
SFT_WEIGHTS_FILE = "omni_final.pt"  # Stage E: trainable-only parameters, keys prefixed by component


class ExportError(InvalidInput):
    """A checkpoint or export folder that cannot be exported/loaded; the message names the file and key."""


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


def vision_encoder_part(state: dict, config: dict) -> tuple[dict, dict]:
    """vision.pt holds the whole Stage-C model (ViT "vision.*" + text tower, projections, classifier); the export
    keeps the ViT, whose patch tokens Stage E projects (the rest only served the Stage-C objective)."""
    if not isinstance(config.get("vision"), dict):
        return state, config  # already a bare VisionEncoder
    return {k.removeprefix("vision."): v for k, v in state.items() if k.startswith("vision.")}, config["vision"]


def vision_encoder_config(config: dict) -> dict:
    """The ViT's config (dict) of a vision.pt "config" or a vision stage preset's "model" section."""
    return vision_encoder_part({}, config)[1]


# Every component, in export order. The projectors are born in Stage E: only omni_final.pt holds them.
COMPONENTS: dict[str, Component] = {c.name: c for c in (
    Component("thinker", THINKER_FILE, "omni.thinker", "Thinker", "ThinkerConfig"),
    Component("audio_encoder", AUDIO_FILE, "omni.audio_encoder", "AsrModel", "AudioEncoderConfig",
              extras=("vocab",), optional_extras=("ctc_upsample",), build=_build_asr),
    Component("vision_encoder", VISION_FILE, "omni.vision_encoder", "VisionEncoder", "VisionConfig",
              extract=vision_encoder_part),
    Component("audio_projector", None, "omni.omni_model", "Projector", "ProjectorConfig"),
    Component("vision_projector", None, "omni.omni_model", "Projector", "ProjectorConfig"),
    Component("codec", CODEC_FILE, "omni.codec", "Codec", "CodecConfig"),
    Component("talker", TALKER_FILE, "omni.talker", "Talker", "TalkerConfig"),
    Component("vocoder", VOCODER_FILE, "omni.vocoder", "Generator", "VocoderConfig", optional_extras=("judge",)),
    Component("ocr", OCR_FILE, "omni.ocr", "OcrModel", "OcrConfig", extras=("vocab",), optional_extras=("max_width",)),
)}


@dataclass
class StageWeights:
    """One component's weights as read from its stage file."""

    component: str
    source: Path  # the file it came from
    state: dict[str, torch.Tensor]  # unprefixed state dict
    config: dict  # model config (shapes only)
    extras: dict  # registry extras, e.g. {"vocab": [...]}
    tokenizer: Path | None = None  # the tokenizer file the stage wrote beside it (thinker.pt, talker.pt, vision.pt)


def classes(component: Component) -> tuple[object, type, type]:
    """(module, model class, config class) of a component."""
    module = importlib.import_module(component.module)
    return module, getattr(module, component.model_class), getattr(module, component.config_class)


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


def read_stage_weights(path: str | Path, component: str, *, check: bool = True) -> StageWeights:
    """Read one stage's final weights (run dir or file). check: also build the model and load them strictly (a
    caller that builds the model itself passes False and loads strictly then). Errors name the file and key."""
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
    tokenizer = file.parent / data["tokenizer"] if isinstance(data.get("tokenizer"), str) else None
    weights = StageWeights(component, file, state, config, extras, tokenizer)
    if check:
        _build_loaded(weights)
    return weights


def load_stage_model(path: str | Path, component: str, device: torch.device | str = "cpu"):
    """(model in eval mode on `device`, StageWeights): the component built once from its file's config, with the
    file's weights loaded strictly."""
    weights = read_stage_weights(path, component, check=False)
    return _build_loaded(weights).to(device).eval(), weights


def stage_config(weights: StageWeights):
    """The component's model config dataclass from its file (strict: unknown keys are an error naming the file)."""
    _, _, config_class = classes(COMPONENTS[weights.component])
    return from_dict(config_class, weights.config, where=f"{weights.source} 'config'")


@dataclass
class SftWeights:
    """omni_final.pt as read (see the module docstring)."""

    state: dict[str, torch.Tensor]  # the parameters Stage E changed, "<component>.<name>"
    config: dict  # per component model configs, "omni": the OmniConfig
    source: Path
    stage_weights: dict  # component -> the stage file it was trained on (or None)
    tokenizer: Path  # the tokenizer file beside it


def read_sft(path: str | Path) -> SftWeights:
    """Stage E's omni_final.pt (run dir or file)."""
    file = find_weights(path, SFT_WEIGHTS_FILE, "Stage-E")
    data = _read(file, "Stage-E checkpoint")
    return SftWeights(dict(data["model"]), data["config"], file, dict(data.get("stage_weights") or {}),
                      file.parent / (data.get("tokenizer") or TOKENIZER_FILE))


def read_sft_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """Stage E: (trainable-only state with component prefixes, its config, the file)."""
    sft = read_sft(path)
    return sft.state, sft.config, sft.source


def check_loads(weights: StageWeights) -> None:
    """Build the component's model and load the weights strictly."""
    _build_loaded(weights)


def _build_loaded(weights: StageWeights) -> nn.Module:
    where = str(weights.source)
    model = build_model(COMPONENTS[weights.component], {"config": weights.config, **weights.extras}, where)
    load_state(model, weights.state, where, weights.component)
    return model


def load_state(model: nn.Module, state: dict[str, torch.Tensor], where: str, component: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"{where}: the {component} weights do not fit its model: {e}") from None


# ---- writing: one function per final-weights file, {file name: payload} for Run.finish(final_weights=...)
def thinker_weights(model: nn.Module, config) -> dict[str, dict]:
    """Stage A: the Thinker; its tokenizer is saved beside it as TOKENIZER_FILE."""
    return {THINKER_FILE: {"model": model.state_dict(), "config": to_dict(config), "tokenizer": TOKENIZER_FILE}}


def audio_encoder_weights(model: nn.Module, encoder_config, *, vocab: list[str], ctc_upsample: int) -> dict:
    """Stage B: AsrModel (encoder + CTC head) with the CTC characters."""
    return {AUDIO_FILE: {"model": model.state_dict(), "config": to_dict(encoder_config), "vocab": vocab,
                         "ctc_upsample": ctc_upsample, "n_mels": encoder_config.n_mels}}


def vision_weights(model: nn.Module, config, *, labels: list[str] | None, tokenizer: bool,
                   thinker: str | None) -> dict:
    """Stage C: the ContrastiveModel without its frozen Thinker (`thinker`: the file it reloads from, or None);
    labels for the classifier; tokenizer: whether TOKENIZER_FILE is saved beside it."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("thinker.")}
    return {VISION_FILE: {"model": state, "config": to_dict(config), "labels": labels,
                          "tokenizer": TOKENIZER_FILE if tokenizer else None, "thinker": thinker}}


def codec_weights(model: nn.Module, config) -> dict:
    """Stage D, codec phase."""
    return {CODEC_FILE: {"model": model.state_dict(), "config": to_dict(config)}}


def talker_weights(model: nn.Module, config) -> dict:
    """Stage D, Talker phase: its codec (CODEC_FILE) and tokenizer are saved beside it."""
    return {TALKER_FILE: {"model": model.state_dict(), "config": to_dict(config), "tokenizer": TOKENIZER_FILE,
                          "codec": CODEC_FILE}}


def vocoder_weights(generator: nn.Module, config, judge: dict | None = None) -> dict:
    """Vocoder: the generator only (the discriminators stay in the step checkpoints), and the verdict of
    omni.vocoder.judge_vocoders (HiFi-GAN or Griffin-Lim) that omni.speech.Vocoder follows."""
    return {VOCODER_FILE: {"model": generator.state_dict(), "config": to_dict(config),
                           **({"judge": judge} if judge is not None else {})}}


def ocr_weights(model: nn.Module, config, *, vocab: list[str], max_width: int | None) -> dict:
    """OCR: the recogniser, its characters and the width inference squeezes lines to."""
    return {OCR_FILE: {"model": model.state_dict(), "config": to_dict(config), "vocab": vocab,
                       "max_width": max_width}}


def sft_weights(model: nn.Module, changed: dict[str, torch.Tensor], *, stage_weights: dict) -> dict:
    """Stage E: the `changed` parameters of the OmniModel `model` (its component prefixes), the configs that
    rebuild it, and the stage files (component -> path or None) the other parameters come from."""
    configs = {"omni": to_dict(model.cfg), "thinker": to_dict(model.thinker.cfg)}
    for name in ("audio_encoder", "vision_encoder", "audio_projector", "vision_projector"):
        module = getattr(model, name)
        if module is not None:
            configs[name] = to_dict(module.encoder.cfg if name == "audio_encoder" else module.cfg)
    return {SFT_WEIGHTS_FILE: {"model": changed, "config": configs, "tokenizer": TOKENIZER_FILE,
                               "stage_weights": stage_weights}}
