"""Reading an export folder (the format: omni/export_format.py): check the files against their checksums, re-tie
tied tensors, and build every component's model from its config.json section (`omni.load_exported`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from omni.components import COMPONENTS, ExportError, build_model, load_state
from omni.export_files import verify as verify_files
from omni.export_format import CONFIG_FILE, DTYPES, FORMAT, FORMAT_VERSION, WEIGHTS_FILE, component_state


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
    `.unsupported` maps a present component this code does not know to why; `.state_dict(name)` gives the raw
    tensors of any present component."""

    def __init__(self, path: Path, config: dict, state: dict[str, torch.Tensor], components: dict[str, nn.Module],
                 unsupported: dict[str, str], tokenizer):
        self.path, self.config, self._state = path, config, state
        self.components, self.unsupported, self.tokenizer = components, unsupported, tokenizer

    def __getattr__(self, name: str):
        if name in self.__dict__.get("unsupported", {}):
            raise AttributeError(f"{self.path}: component {name!r} cannot be loaded: {self.unsupported[name]}")
        if name.startswith("_") or name not in COMPONENTS:
            raise AttributeError(name)
        if name in self.components:
            return self.components[name]
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
        where = f"{path / CONFIG_FILE} components.{name}"
        model = build_model(comp, config["components"][name], where)
        load_state(model, component_state(state, name), str(path / WEIGHTS_FILE), name)
        components[name] = model.to(device=device, dtype=DTYPES[dtype]).eval()
    tokenizer = None
    if "tokenizer" in config:
        from omni.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(path / config["tokenizer"]["file"])
    return ExportedModel(path, config, state, components, unsupported, tokenizer)
