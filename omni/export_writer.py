"""Writing an export folder (the format: omni/export_format.py): merge the stage weights and Stage E's trainable
parameters, check that the parts fit together, store tied tensors once, cast, and write the files through
omni/export_files.py (checksummed; a failed export leaves the previous one)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from omni.components import COMPONENTS, ExportError, StageWeights, check_loads
from omni.export_files import FILES_KEY, write_folder
from omni.export_format import (
    AUDIO_COMPONENTS,
    CONFIG_FILE,
    DTYPES,
    EXPORT_FILES,
    FORMAT,
    FORMAT_VERSION,
    GENERATION_CONFIG_FILE,
    GENERATION_DEFAULTS,
    README_FILE,
    WEIGHTS_FILE,
    component_state,
    prefix,
)


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


def audio_constants() -> dict:
    """Public constants of omni.audio (sample rate, hop, frame rates, ...): what inference needs to match them."""
    from omni import audio  # only exports with an audio component need it

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
    if present & set(AUDIO_COMPONENTS):
        config["audio"] = audio_constants()

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
        "are stored once; load them with `omni.export_reader.read_export`, which re-ties them), and "
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
