"""Thinker -> Hugging Face checkpoint folder: `Qwen3ForCausalLM` (dense) or `Qwen3MoeForCausalLM` (MoE).

    write_hf_thinker("hf_out", state, ThinkerConfig(...), tokenizer=Tokenizer.load(...), dtype="fp32")
    # then: transformers.AutoModelForCausalLM.from_pretrained("hf_out")

Design choices
- The Thinker's parameter names already are HF's without the "model." prefix, so the weights are a rename;
  `lm_head.weight` is written only when the embeddings are untied (HF re-ties from `tie_word_embeddings`). The
  rotary tables are non-persistent buffers and never exported: HF rebuilds them from the config.
- Rotary base: transformers 5.x reads `rope_parameters = {"rope_type": "default", "rope_theta": ...}`; 4.x read a
  top-level `rope_theta`. Both are written with the same value, so either version applies our theta.
- MoE Thinkers map onto Qwen3-MoE: our router (`mlp.gate`) and experts (`mlp.experts.{j}.{gate,up,down}_proj`) use
  its checkpoint names; every layer is sparse (decoder_sparse_step 1, no mlp_only_layers); top-k weights are the raw
  softmax probabilities (norm_topk_prob false), as in `omni.layers.MoE`. transformers 5.x fuses the per-expert
  weights into its 3-D expert tensors when it loads them.
- Refused (ValueError): qk_norm off (Qwen3 always applies q_norm/k_norm, and an RMSNorm with unit scale is not the
  identity). Dropout is a training setting and is exported as 0.
- Tokenizer: `tokenizer.model` plus a `tokenizer_config.json` naming transformers' `SentencePieceBackend`, which
  runs the same SentencePiece model, so `AutoTokenizer` encodes exactly like `omni.tokenizer.Tokenizer` without
  extra packages. Our user-defined symbols (<|im_start|>, <image>, ...) are deliberately not declared special
  there: HF would split the text around them and encode the neighbouring spaces differently. Known limits of that
  class: decode() leaves byte-fallback pieces as "<0xC3><0x89>" and shows the user-defined symbols as text; no chat
  template is provided (ours tokenizes role and content separately, which a Jinja template cannot reproduce).
- Files: written and checked as omni/export_files.py describes; the manifest is `omni_files.json` (transformers
  ignores it; HF's config.json is left as transformers writes it), and `verify_hf_thinker(folder)` checks it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from omni.components import ExportError
from omni.errors import UserError
from omni.export_files import verify, write_folder
from omni.export_format import CONFIG_FILE, GENERATION_CONFIG_FILE, WEIGHTS_FILE
from omni.export_writer import generation_config, prepare_tensors, write_json
from omni.thinker import ThinkerConfig

TORCH_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
MANIFEST_FILE = "omni_files.json"  # {"format": HF_FORMAT, "files": {name: {"sha256", "bytes"}}}
HF_FORMAT = "omni-hf-thinker"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# Every file write_hf_thinker may write: what a re-export may remove of an export made before the manifest existed.
HF_FILES = (WEIGHTS_FILE, CONFIG_FILE, GENERATION_CONFIG_FILE, "tokenizer.model", TOKENIZER_CONFIG_FILE,
            MANIFEST_FILE)


def hf_config(cfg: ThinkerConfig, *, dtype: str = "fp32", tokenizer=None) -> dict:
    """The HF config.json of a Thinker config."""
    if not cfg.qk_norm:
        raise ValueError("Thinker with qk_norm=False has no Qwen3 equivalent (Qwen3 always normalises q and k)")
    head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
    config = {
        "architectures": ["Qwen3MoeForCausalLM" if cfg.n_experts else "Qwen3ForCausalLM"],
        "model_type": "qwen3_moe" if cfg.n_experts else "qwen3",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "use_cache": True,
        "dtype": TORCH_DTYPE_NAMES[dtype],
    }
    if cfg.n_experts:
        config.update({
            "num_experts": cfg.n_experts,
            "num_experts_per_tok": cfg.moe_top_k,
            "moe_intermediate_size": cfg.d_ff,
            "norm_topk_prob": False,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "router_aux_loss_coef": cfg.moe_aux_weight,
        })
    if tokenizer is not None:
        config.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    return config


def hf_state_dict(state: dict[str, torch.Tensor], cfg: ThinkerConfig) -> dict[str, torch.Tensor]:
    """Thinker state dict -> HF names ("model." prefix; lm_head only when untied)."""
    out = {}
    for key, value in state.items():
        if key == "lm_head.weight":
            if not cfg.tie_embeddings:
                out[key] = value
        else:
            out[f"model.{key}"] = value
    return out


def tokenizer_config(tokenizer, max_len: int) -> dict:
    """tokenizer_config.json for transformers' SentencePieceBackend over our tokenizer.model (see module doc)."""
    from omni.tokenizer import BOS, EOS, PAD, UNK

    return {
        "tokenizer_class": "SentencePieceBackend",
        "bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
    }


def _is_hf_thinker(folder: Path) -> bool:
    try:
        arch = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")).get("architectures", [])
    except (OSError, ValueError, AttributeError):
        return False
    return arch in (["Qwen3ForCausalLM"], ["Qwen3MoeForCausalLM"])


def write_hf_thinker(out_dir: str | Path, state: dict[str, torch.Tensor], cfg: ThinkerConfig, *, tokenizer,
                     dtype: str = "fp32") -> dict:
    """Write the Thinker (`state`: its state dict, unprefixed) as an HF checkpoint folder with its tokenizer;
    returns the manifest written (the files and their checksums)."""
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ExportError(f"{tokenizer.model_path} has {tokenizer.vocab_size} pieces, the Thinker vocab_size is "
                          f"{cfg.vocab_size}")
    config = hf_config(cfg, dtype=dtype, tokenizer=tokenizer)
    tensors, ties = prepare_tensors(hf_state_dict(state, cfg), dtype)
    if ties:  # only lm_head can alias the embeddings, and it is left out when tied
        raise ExportError(f"unexpected shared tensors in the Thinker state: {ties}")
    gen = {k: v for k, v in generation_config(tokenizer).items() if v is not None and k != "temperature"}

    def write(folder: Path) -> None:
        save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": "pt"})
        write_json(folder / CONFIG_FILE, config)
        write_json(folder / GENERATION_CONFIG_FILE, gen)
        tokenizer.save(folder)
        write_json(folder / TOKENIZER_CONFIG_FILE, tokenizer_config(tokenizer, cfg.max_seq_len))

    return write_folder(out_dir, write, manifest=MANIFEST_FILE, content={"format": HF_FORMAT},
                        marker=_is_hf_thinker, known_files=HF_FILES)


def verify_hf_thinker(folder: str | Path) -> None:
    """Check an HF export's files against the checksums written with it (transformers does not check them): a
    UserError names a changed or damaged file. An export from before checksums is accepted with a logged warning."""
    manifest_path = Path(folder) / MANIFEST_FILE
    if not Path(folder).is_dir():
        raise UserError(f"{folder}: no such folder")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        manifest = {}  # exported before checksums were recorded: verify() warns
    except (OSError, ValueError) as e:
        raise UserError(f"{manifest_path} is unreadable ({e}); re-export the folder") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{manifest_path} is not a JSON object; re-export the folder")
    verify(folder, manifest, manifest_path)
