"""The export format: every trained component of omni in one folder, with nothing pickled.

    <output_dir>/
      model.safetensors       all tensors, named "<component>.<name in the component's state dict>"
      config.json             format version, dtype, components present/absent, per component its model config
                              (shapes only) and extras (CTC/OCR character lists), tied tensors, special-token ids,
                              audio frontend constants, and "files": the sha256 and size of every other file
      tokenizer.model         the SentencePiece model (when a Thinker is exported)
      generation_config.json  bos/eos/pad ids and decoding defaults
      README.md               what is in the folder and how to load it

Design choices
- Components come from the registry in omni/components.py (name = tensor prefix -> stage file and classes). A
  component whose module is not written yet is still exported (its tensors and config); `load_exported` lists it
  as unsupported and still gives its raw tensors. Stage files are checked (config strict, weights loaded into the
  model) when read, so a broken export fails at export time, naming the file.
- Stage E (`omni_final.pt`) holds only the parameters that were trainable, keyed by component prefix;
  `merge_trainable` lays them over the stage weights and reports what it overrode and what it added.
- Tied tensors: safetensors refuses tensors that share memory. Aliases (the same storage, offset, shape and
  stride, e.g. a Thinker's lm_head.weight = embed_tokens.weight) are stored once under the alphabetically first
  name and listed in config.json "tied_weights" (alias -> stored name); `read_export` puts the alias back as the
  very same tensor. Partial overlaps (views) are stored as independent copies.
- dtype: only floating tensors are cast (integer buffers such as counters keep theirs); config.json records the
  chosen dtype and the count of tensors per stored dtype. A cast that overflows (fp16 inf) is an error.
- Files: written beside the target and moved in (omni/export_files.py), so a failed export never leaves half an
  export and a previous export is updated without touching the user's own files in the folder; config.json
  "files" records each file's sha256 and size, and `read_export` checks them (verify=False skips it).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from omni.components import (
    COMPONENTS,
    ComponentUnavailable,
    ExportError,
    StageWeights,
    build_model,
    check_loads,
    classes,
    load_state,
)
from omni.export_files import FILES_KEY, write_folder
from omni.export_files import verify as verify_files

FORMAT = "omni-export"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
README_FILE = "README.md"
# Every file write_export may write (config.json is its manifest): what a re-export may remove of an export made
# before config.json listed its files.
EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, "tokenizer.model", GENERATION_CONFIG_FILE, README_FILE)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GENERATION_DEFAULTS = {"max_new_tokens": 256, "temperature": 0.0, "top_k": None, "top_p": None}  # 0 = greedy
AUDIO_COMPONENTS = ("audio_encoder", "codec", "talker", "vocoder")  # these need the audio frontend constants


def prefix(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for k, v in state.items()}


def component_state(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The tensors of one component, prefix removed."""
    head = f"{name}."
    return {k[len(head):]: v for k, v in state.items() if k.startswith(head)}


def _alias_key(t: torch.Tensor) -> tuple:
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype


def find_ties(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """alias -> owner for entries that are the same tensor view (owner = the alphabetically first name)."""
    owners: dict[tuple, str] = {}
    ties = {}
    for key in sorted(state):
        if state[key].numel() == 0:
            continue  # empty tensors have no storage to share
        owner = owners.setdefault(_alias_key(state[key]), key)
        if owner != key:
            ties[key] = owner
    return ties


def merge_trainable(
    stage_state: dict[str, torch.Tensor],
    sft_state: dict[str, torch.Tensor],
    *,
    new_components: tuple[str, ...] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Lay Stage-E trainable-only parameters over the stage weights -> (complete state, report).

    Both dicts use component-prefixed keys ("thinker.layers.0...", "audio_projector.0.weight"). A key present in
    stage_state is overridden (shapes must match); a key of a component that only Stage E trains (`new_components`,
    default: the registry's components without a stage file) is added; any other key is an error, because it means
    the names drifted apart or a stage's weights were not given. Tied tensors in stage_state stay tied: overriding
    either name updates both. report = {"overridden": [...], "added": [...]} (sorted keys).
    """
    if new_components is None:
        new_components = tuple(n for n, c in COMPONENTS.items() if c.weights_file is None)
    ties = find_ties(stage_state)
    merged = dict(stage_state)
    report = {"overridden": [], "added": []}
    present = {k.split(".", 1)[0] for k in stage_state}
    for key, value in sft_state.items():
        if not isinstance(value, torch.Tensor):
            raise ExportError(f"Stage-E entry {key!r} is a {type(value).__name__}, not a tensor")
        name = key.split(".", 1)[0]
        if key in stage_state:
            if value.shape != stage_state[key].shape:
                raise ExportError(f"Stage-E parameter {key!r} has shape {tuple(value.shape)}, the stage weights "
                                  f"have {tuple(stage_state[key].shape)}")
            report["overridden"].append(key)
        elif name in new_components:
            report["added"].append(key)
        elif name in present:
            raise ExportError(f"Stage-E parameter {key!r} does not exist in the {name} stage weights (renamed?)")
        elif name not in COMPONENTS:
            raise ExportError(f"Stage-E parameter {key!r}: unknown component {name!r} (components: "
                              f"{list(COMPONENTS)}; a new one needs an entry in omni/components.py)")
        else:
            raise ExportError(f"Stage-E parameter {key!r} belongs to {name!r}, whose stage weights were not given "
                              "(its frozen parameters would be missing); pass that stage's checkpoint too")
        merged[key] = value
    for alias, owner in ties.items():
        # A module's named_parameters() lists a tied parameter once, so Stage E may give either name, or both.
        given = [sft_state[k] for k in (owner, alias) if k in sft_state]
        if len(given) == 2 and given[0] is not given[1] and not torch.equal(*given):
            raise ExportError(f"Stage-E gives tied parameters {alias!r} and {owner!r} different values")
        if given:
            merged[owner] = merged[alias] = given[0]
    report = {k: sorted(v) for k, v in report.items()}
    return merged, report


def check_consistency(parts: dict[str, StageWeights], tokenizer) -> None:
    """Sizes that must agree between components that work together (each checked when both sides are given)."""
    pairs = []
    if tokenizer is not None:
        pairs += [("thinker", "vocab_size"), ("talker", "text_vocab_size")]
    for name, key in pairs:
        if name in parts and key in parts[name].config and parts[name].config[key] != tokenizer.vocab_size:
            raise ExportError(f"{parts[name].source}: {key} {parts[name].config[key]} != {tokenizer.model_path} "
                              f"vocabulary ({tokenizer.vocab_size} pieces)")
    if "talker" in parts and "codec" in parts:
        for key in ("n_codebooks", "codebook_size"):
            t, c = parts["talker"].config.get(key), parts["codec"].config.get(key)
            if t is not None and c is not None and t != c:
                raise ExportError(f"{parts['talker'].source}: {key} {t} != {c} of its codec {parts['codec'].source}")


def prepare_tensors(state: dict[str, torch.Tensor], dtype: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """-> (tensors safetensors can store: ties removed, floats cast, contiguous, on CPU; tied_weights map)."""
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    ties = find_ties(state)
    out = {}
    for key, t in state.items():
        if key in ties:
            continue
        t = t.detach().to("cpu")
        if t.is_floating_point():
            cast = t.to(DTYPES[dtype])
            if bool(torch.isfinite(t).all()) and not bool(torch.isfinite(cast).all()):
                raise ExportError(f"tensor {key!r} overflows {dtype} (max |x| = {t.abs().max().item():.4g})")
            t = cast
        out[key] = t.contiguous()
    # Entries that still share memory (overlapping views, not full aliases) are stored as independent copies.
    storages: dict[int, int] = {}
    for t in out.values():
        storages[t.untyped_storage().data_ptr()] = storages.get(t.untyped_storage().data_ptr(), 0) + 1
    for key, t in out.items():
        if t.numel() and storages[t.untyped_storage().data_ptr()] > 1:
            out[key] = t.clone()
    return out, ties


def _dtype_counts(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in tensors.values():
        name = str(t.dtype).removeprefix("torch.")
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def audio_constants() -> dict | None:
    """Public constants of omni.audio (sample rate, hop, frame rates, ...), or None when it does not exist."""
    try:
        audio = importlib.import_module("omni.audio")
    except ModuleNotFoundError as e:
        if e.name != "omni.audio":
            raise  # omni.audio exists but one of its dependencies is missing: that is an error, not "no audio"
        return None
    return {k: v for k, v in vars(audio).items()
            if k.isupper() and not k.startswith("_") and isinstance(v, (bool, int, float, str))}


def tokenizer_info(tokenizer) -> dict:
    """The special tokens and ids that inference needs (config.json "tokenizer")."""
    from omni.tokenizer import SPECIAL_TOKENS, TOKENIZER_FILE

    return {
        "file": TOKENIZER_FILE,
        "vocab_size": tokenizer.vocab_size,
        "special_tokens": {piece: i for i, piece in enumerate(SPECIAL_TOKENS)},
        "pad_id": tokenizer.pad_id, "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id,
        "im_start_id": tokenizer.im_start_id, "im_end_id": tokenizer.im_end_id,
    }


def generation_config(tokenizer) -> dict:
    """Decoding defaults; chat turns end at <|im_end|>, documents at <eos>, so both stop generation."""
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": [tokenizer.eos_id, tokenizer.im_end_id],
            "pad_token_id": tokenizer.pad_id, "do_sample": False, **GENERATION_DEFAULTS}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _is_export(folder: Path) -> bool:
    try:
        return json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write_export(
    out_dir: str | Path,
    parts: list[StageWeights],
    *,
    dtype: str = "fp32",
    tokenizer=None,
    sft: tuple[dict[str, torch.Tensor], dict, Path] | None = None,
) -> dict:
    """Merge stage weights (+ Stage E) and write the export folder; returns the config.json written.

    tokenizer: an omni.tokenizer.Tokenizer, required with a Thinker (its vocabulary must match).
    sft: (state, config, file) from `read_sft_weights`.
    """
    present = {p.component for p in parts}
    if present & {"thinker", "talker"} and tokenizer is None:
        raise ExportError("the Thinker and the Talker read text: export the tokenizer too (tokenizer.model beside "
                          "thinker.pt, or --tokenizer)")
    sections: dict[str, dict] = {p.component: {"config": p.config, **p.extras, "source": p.source.name}
                                 for p in parts}
    check_consistency({p.component: p for p in parts}, tokenizer)
    state: dict[str, torch.Tensor] = {}
    for p in parts:
        state.update(prefix(p.state, p.component))
    merge_report = None
    if sft is not None:
        sft_state, sft_config, sft_file = sft
        state, merge_report = merge_trainable(state, sft_state)
        for name in sorted({k.split(".", 1)[0] for k in merge_report["added"]}):
            # A Stage-E-born component's config is the Stage-E config's entry of that name (or the whole config).
            config = sft_config.get(name, sft_config) if isinstance(sft_config, dict) else sft_config
            sections[name] = {"config": config, "source": sft_file.name}
            present.add(name)
        for name in sorted({k.split(".", 1)[0] for k in merge_report["overridden"] + merge_report["added"]}):
            check_loads(StageWeights(name, sft_file, component_state(state, name), sections[name]["config"],
                                     {k: v for k, v in sections[name].items() if k not in ("config", "source")}))
    tensors, ties = prepare_tensors(state, dtype)
    order = [n for n in COMPONENTS if n in present]
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dtype": dtype,
        "tensor_dtypes": _dtype_counts(tensors),
        "components_present": order,
        "components_absent": [n for n in COMPONENTS if n not in present],
        "components": {n: sections[n] for n in order},
        "tied_weights": ties,
    }
    if merge_report is not None:
        config["stage_e"] = {"source": sft[2].name, **merge_report}
        if isinstance(sft[1], dict) and "omni" in sft[1]:  # how media become tokens (e.g. pooled image tokens)
            config["omni"] = sft[1]["omni"]
    if tokenizer is not None:
        config["tokenizer"] = tokenizer_info(tokenizer)
    if present & set(AUDIO_COMPONENTS) and (constants := audio_constants()) is not None:
        config["audio"] = constants

    def write(folder: Path) -> None:  # config.json, which lists these files' checksums, is written after them
        save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": "pt", "omni_format": FORMAT})
        if tokenizer is not None:
            tokenizer.save(folder)
            write_json(folder / GENERATION_CONFIG_FILE, generation_config(tokenizer))
        (folder / README_FILE).write_text(readme(config), encoding="utf-8")

    return write_folder(out_dir, write, manifest=CONFIG_FILE, content=config, marker=_is_export,
                        known_files=EXPORT_FILES)


def readme(config: dict) -> str:
    n_params = sum(config["tensor_dtypes"].values())
    lines = [
        "# omni export",
        "",
        f"Components: {', '.join(config['components_present']) or 'none'}"
        f" (absent: {', '.join(config['components_absent']) or 'none'}). Weights: {config['dtype']}, "
        f"{n_params} tensors in `{WEIGHTS_FILE}`, named `<component>.<parameter>`.",
        "",
        "```python",
        "from omni import load_exported",
        "m = load_exported(\"path/to/this/folder\")   # m.thinker, m.tokenizer, m.config, m.components",
        "```",
        "",
        f"- `{CONFIG_FILE}`: each component's model config (shapes only) and extras (CTC/OCR character lists), "
        "special-token ids, audio frontend constants, and `tied_weights` (alias -> stored tensor: tied tensors "
        "are stored once; load them with `omni.export_format.read_export`, which re-ties them), and "
        f"`{FILES_KEY}`: the sha256 and size of every other file, which `load_exported` checks.",
        f"- `{GENERATION_CONFIG_FILE}`: bos/eos/pad ids and decoding defaults (temperature 0 = greedy).",
        "- `tokenizer.model`: the SentencePiece tokenizer (`omni.tokenizer.Tokenizer`).",
        "",
        "Nothing here is pickled: safetensors, JSON and the SentencePiece model only.",
    ]
    if "stage_e" in config:
        e = config["stage_e"]
        lines += ["", f"Stage E ({e['source']}) overrode {len(e['overridden'])} and added {len(e['added'])} tensors."]
    return "\n".join(lines) + "\n"


def read_export(path: str | Path, device: str | torch.device = "cpu", *,
                verify: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, state with tied tensors restored) of an export folder; errors name the file at fault.

    verify: check every file against the checksums in config.json first (a UserError names a changed or damaged
    file); False skips it, e.g. to save the read of a large folder that was just checked.
    """
    path = Path(path)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{config_path} not found: {path} is not an omni export") from None
    except ValueError as e:
        raise ExportError(f"{config_path} is not valid JSON: {e}") from None
    if config.get("format") != FORMAT:
        raise ExportError(f"{config_path}: format is {config.get('format')!r}, expected {FORMAT!r}")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ExportError(f"{config_path}: format_version {config['format_version']} is newer than this code "
                          f"({FORMAT_VERSION}); update omni")
    if verify:
        verify_files(path, config, config_path)
    try:
        state = load_file(weights_path, device=str(device))
    except FileNotFoundError:
        raise ExportError(f"{weights_path} not found") from None
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise ExportError(f"{weights_path} is unreadable ({type(e).__name__}: {e})") from None
    for alias, owner in config.get("tied_weights", {}).items():
        if owner not in state:
            raise ExportError(f"{config_path}: tied_weights {alias!r} -> {owner!r}, but {weights_path} has no "
                              f"{owner!r}")
        state[alias] = state[owner]
    unknown = sorted({k.split(".", 1)[0] for k in state} - set(config.get("components_present", [])))
    if unknown:
        raise ExportError(f"{weights_path} holds tensors of {unknown}, which {config_path} does not list as present")
    return config, state


class ExportedModel:
    """The components of an export folder. `.thinker`, `.audio_encoder`, ... are the models (eval mode) of the
    present components whose classes exist; `.tokenizer` the Tokenizer (or None); `.config` the config.json dict;
    `.unsupported` maps a present component that could not be built to why; `.state_dict(name)` gives the raw
    tensors of any present component."""

    def __init__(self, path: Path, config: dict, state: dict[str, torch.Tensor], components: dict[str, nn.Module],
                 unsupported: dict[str, str], tokenizer):
        self.path, self.config, self._state = path, config, state
        self.components, self.unsupported, self.tokenizer = components, unsupported, tokenizer

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in COMPONENTS:
            raise AttributeError(name)
        if name in self.components:
            return self.components[name]
        if name in self.unsupported:
            raise AttributeError(f"{self.path}: component {name!r} cannot be loaded yet: {self.unsupported[name]}")
        raise AttributeError(f"{self.path}: component {name!r} was not exported (present: "
                             f"{self.config['components_present']})")

    def __getitem__(self, name: str) -> nn.Module:
        return getattr(self, name)

    def state_dict(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self.config["components_present"]:
            raise KeyError(f"{name!r} is not in {self.path} (present: {self.config['components_present']})")
        return component_state(self._state, name)

    def __repr__(self) -> str:
        return (f"ExportedModel({str(self.path)!r}, dtype={self.config['dtype']}, loaded={list(self.components)}, "
                f"unsupported={list(self.unsupported)})")


def load_exported(path: str | Path, *, dtype: str | None = None, device: str | torch.device = "cpu",
                  verify: bool = True) -> ExportedModel:
    """Load an export folder: every present component whose classes exist, weights loaded strictly, eval mode.

    dtype: "fp32" | "fp16" | "bf16" for the models' floating tensors; None = the dtype the export stored.
    verify: check the files against their checksums first (see `read_export`).
    """
    path = Path(path)
    config, state = read_export(path, device, verify=verify)
    dtype = dtype or config["dtype"]
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    components, unsupported = {}, {}
    for name in config["components_present"]:
        comp = COMPONENTS.get(name)
        if comp is None:
            unsupported[name] = "unknown component (exported by a newer omni?)"
            continue
        try:
            classes(comp)
        except ComponentUnavailable as e:
            unsupported[name] = str(e)
            continue
        where = f"{path / CONFIG_FILE} components.{name}"
        model = build_model(comp, config["components"][name], where)
        load_state(model, component_state(state, name), str(path / WEIGHTS_FILE), name)
        components[name] = model.to(device=device, dtype=DTYPES[dtype]).eval()
    tokenizer = None
    if "tokenizer" in config:
        from omni.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(path / config["tokenizer"]["file"])
    return ExportedModel(path, config, state, components, unsupported, tokenizer)
