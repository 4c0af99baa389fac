"""The export format: every trained component of omni in one folder, with nothing pickled. This module holds its
names and version; omni/export_writer.py writes it (export.py), omni/export_reader.py reads it (load_exported).

    <output_dir>/
      model.safetensors       all tensors, named "<component>.<name in the component's state dict>"
      config.json             format version, dtype, components present/absent, per component its model config
                              (shapes only) and extras (CTC/OCR character lists), tied tensors, special-token ids,
                              audio frontend constants, and "files": the sha256 and size of every other file
      tokenizer.model         the SentencePiece model (when a Thinker is exported)
      generation_config.json  bos/eos/pad ids and decoding defaults
      README.md               what is in the folder and how to load it

Design choices
- Components come from the registry in omni/components.py (name = tensor prefix -> stage file and classes). Stage
  files are checked (config strict, weights loaded into the model) when read, so a broken export fails at export
  time, naming the file. A component this code does not know (an export by a newer omni) is listed by
  `load_exported` as unsupported, with its raw tensors still available.
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

import torch

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
