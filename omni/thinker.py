"""Thinker: the Qwen3-style decoder-only language model at the centre of omni.

Design choices
- Layout and parameter names follow Hugging Face `Qwen3ForCausalLM` exactly (`embed_tokens`, `layers.i.*`, `norm`,
  `lm_head`; `model.` prefix aside), so export is a rename, and logits match. Rotary tables are non-persistent
  buffers, as in HF, so they are never part of a checkpoint.
- Inputs are token ids or ready-made embeddings (`inputs_embeds`): the omni model splices projected image/audio
  features into the embedded text and calls the Thinker with the fused sequence.
- Targets are already aligned (targets[t] is the label of position t); the caller shifts, because only the caller
  knows which positions carry loss (e.g. assistant tokens only in SFT).
- With MoE layers the loss adds `moe_aux_weight` x the load-balancing loss averaged over layers, so the weight does
  not depend on depth.
- Blocks, final norm, rotary table, block loop and init are the shared `omni.layers.Transformer` trunk (init:
  normal(0, 0.02) everywhere, output projections scaled by 1/sqrt(2 n_layers), GPT-2).
- `generate` prefills a KV cache and then feeds one token at a time; `use_cache=False` re-runs the whole sequence
  each step and must give the same greedy tokens (tested). Generation is always batch-synchronous: all rows share
  the prompt length (no left padding).

References: Qwen3 technical report (2025); Radford et al. 2019 (GPT-2 init); Holtzman et al. 2020 (top-p).

Shape legend: B batch, T time/tokens, D model width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.chat import IGNORE_INDEX
from omni.layers import KVCache, Transformer, sample_next_token


@dataclass
class ThinkerConfig:
    vocab_size: int  # tokenizer vocabulary incl. special tokens
    d_model: int = 256  # residual stream width
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # query heads
    n_kv_heads: int = 2  # key/value heads (GQA); must divide n_heads
    head_dim: int | None = None  # per-head width; None = d_model // n_heads
    d_ff: int = 1024  # SwiGLU hidden width (per expert with MoE)
    max_seq_len: int = 512  # longest sequence (prompt + generated tokens); sizes the rotary table
    rope_theta: float = 1_000_000.0  # rotary base, Qwen3 default
    norm_eps: float = 1e-6  # RMSNorm epsilon
    qk_norm: bool = True  # per-head RMSNorm on queries and keys (Qwen3)
    tie_embeddings: bool = True  # lm_head shares the input embedding matrix
    n_experts: int = 0  # 0 = dense SwiGLU; > 0 = MoE with this many experts per layer
    moe_top_k: int = 2  # experts per token when n_experts > 0
    moe_aux_weight: float = 0.01  # weight of the load-balancing loss in the total loss
    dropout: float = 0.0  # attention-probability and residual dropout

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"ThinkerConfig.{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.head_dim is not None and self.head_dim < 1:
            raise ValueError(f"ThinkerConfig.head_dim must be None or >= 1, got head_dim={self.head_dim}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        head_dim = self.head_dim or self.d_model // self.n_heads
        if head_dim % 2:
            raise ValueError(f"head_dim={head_dim} must be even for rotary embeddings")
        if self.n_experts < 0 or (self.n_experts > 0 and not 1 <= self.moe_top_k <= self.n_experts):
            raise ValueError(
                f"need n_experts >= 0 and 1 <= moe_top_k <= n_experts, got n_experts={self.n_experts}, "
                f"moe_top_k={self.moe_top_k}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got dropout={self.dropout}")


class Thinker(Transformer):
    """Decoder-only LM over token ids or input embeddings."""

    def __init__(self, cfg: ThinkerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.build_trunk(n_layers=cfg.n_layers, d_model=cfg.d_model, norm_eps=cfg.norm_eps,
                         rotary_len=cfg.max_seq_len, rope_theta=cfg.rope_theta, n_heads=cfg.n_heads,
                         n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, d_ff=cfg.d_ff, causal=True,
                         qk_norm=cfg.qk_norm, n_experts=cfg.n_experts, moe_top_k=cfg.moe_top_k, dropout=cfg.dropout)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, T) -> embeddings (B, T, D)."""
        return self.embed_tokens(input_ids)

    def _inputs(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids / inputs_embeds")
        return self.embed(input_ids) if inputs_embeds is None else inputs_embeds

    def hidden_states(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T) or inputs_embeds (B, T, D) -> final-norm hidden states (B, T, D).
        key_padding_mask: (B, T_k) bool, True = real token (T_k = cached + new tokens when caches are given)."""
        return self.run_blocks(self._inputs(input_ids, inputs_embeds), None, key_padding_mask, caches)[0]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        caches: list[KVCache] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """input_ids (B, T) or inputs_embeds (B, T, D) -> (logits (B, T, V), loss or None).

        targets: (B, T) aligned labels (targets[t] is the label of position t), ignore_index where no loss.
        key_padding_mask: (B, T_k) bool, True = real token (T_k = cached + new tokens when caches are given).
        caches: per-layer KV caches from `make_caches`; the T positions continue after what they hold.
        """
        h, aux = self.run_blocks(self._inputs(input_ids, inputs_embeds), None, key_padding_mask, caches)
        logits = self.lm_head(h)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index)
        if self.cfg.n_experts > 0:
            loss = loss + self.cfg.moe_aux_weight * aux
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Prompt input_ids (B, T) or inputs_embeds (B, T, D) -> new tokens (B, N), N <= max_new_tokens.

        temperature 0 = greedy; otherwise sampling with optional top_k / top_p, drawn from `generator`.
        Stops early once every row has produced eos_id; rows that finished earlier are padded with eos_id.
        Runs in the module's current mode: call eval() first when dropout > 0.
        """
        x = self._inputs(input_ids, inputs_embeds)
        B, T, _ = x.shape
        if max_new_tokens < 0 or T + max_new_tokens > self.cfg.max_seq_len:
            raise ValueError(
                f"need 0 <= max_new_tokens and prompt length + max_new_tokens <= max_seq_len, got prompt length "
                f"{T}, max_new_tokens={max_new_tokens}, max_seq_len={self.cfg.max_seq_len}"
            )
        caches = self.make_caches(T + max_new_tokens) if use_cache else None
        finished = torch.zeros(B, dtype=torch.bool, device=x.device)
        tokens = []
        for _ in range(max_new_tokens):
            h, _ = self.run_blocks(x, None, None, caches)
            next_token = sample_next_token(
                self.lm_head(h[:, -1]), temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
            )
            if eos_id is not None:
                next_token = next_token.masked_fill(finished, eos_id)
                finished |= next_token == eos_id
            tokens.append(next_token)
            if eos_id is not None and bool(finished.all()):
                break
            step = self.embed(next_token[:, None])
            x = step if caches is not None else torch.cat([x, step.to(x.dtype)], dim=1)
        if not tokens:
            return torch.empty(B, 0, dtype=torch.long, device=x.device)
        return torch.stack(tokens, dim=1)
