"""Shared transformer building blocks and the one transformer trunk: every transformer in omni (Thinker, AuT audio
encoder, ViT, text encoder, Talker, OCR) subclasses `Transformer`, a stack of the `Block` defined here.

Design choices
- `Transformer` owns what the six models share: the blocks (`layers`), the final `norm`, the rotary table
  (`rotary_emb`, absent for the ViT's learned positions), the block loop with gradient checkpointing
  (`run_blocks`; recompute only when training with autograd and no KV cache, which must not be written twice) and
  `init_weights`. It is a base class, not a submodule, so checkpoints keep their keys (`layers.i.*`, `norm.*`).
- Init (`init_weights`, GPT-2): normal(0, 0.02) for Linear/Embedding weights, residual output projections
  (o_proj, down_proj) 0.02 / sqrt(2 n_layers) so the residual stream variance does not grow with depth.
- Qwen3 layout and naming (RMSNorm pre-norm, per-head QK RMSNorm applied before rotary, GQA, SwiGLU, no biases), so
  a Thinker's state dict maps 1:1 onto Hugging Face `Qwen3ForCausalLM` (`model.` prefix aside) and exports with
  matching logits. Rotary uses the HF "rotate_half" convention (the first and second halves of head_dim pair up),
  not the interleaved one of the RoFormer paper.
- Attention always goes through `F.scaled_dot_product_attention`. The unmasked causal path passes `is_causal=True`
  so fused (flash) kernels apply; a boolean mask is built only for padding or for a multi-token step on top of a
  KV cache (where SDPA's own `is_causal` would align the triangle to the wrong corner). GQA uses `enable_gqa=True`
  instead of materialising repeated k/v.
- A masked query always may attend to itself: a fully padded row would otherwise make some kernels return NaN,
  which then leaks into real positions through the next layer's values (0 * NaN = NaN).
- `KVCache` is one layer's cache. It allocates its (B, H_kv, max_len, head_dim) buffers on the first update, with
  the batch size, dtype and device of the keys it receives, so callers only choose max_len.
- MoE routes each token to its top-k SwiGLU experts, weighted by the raw router probabilities (no renormalisation,
  so the router also learns through the main loss when top_k == 1; HF `norm_topk_prob=False`), and returns the
  Switch Transformer load-balancing loss n_experts * sum_e(fraction of assignments to e * mean router prob of e),
  which is 1.0 for perfectly uniform routing. Expert and router names follow HF Qwen3-MoE (`gate`, `experts.i`).
  Each expert runs once on the tokens routed to it; gathering them has a data-dependent size, which costs one
  device sync per expert on GPU (the price of not running every expert on every token).

References: Su et al. 2021 (RoFormer); Ainslie et al. 2023 (GQA); Shazeer 2020 (GLU variants); Fedus et al. 2021
(Switch Transformers); Qwen3 technical report 2025 (QK-norm).

Shape legend: B batch, T time/tokens, D model width, H heads, E experts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

RoPE = tuple[torch.Tensor, torch.Tensor]


def lengths_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) lengths -> (B, size) bool, True at the real (non-padding) positions."""
    return torch.arange(size, device=lengths.device) < lengths[:, None]


def check_rotary_heads(d_model: int, n_heads: int, n_kv_heads: int, dropout: float | None = None) -> None:
    """The attention shape every rotary transformer config needs (raises ValueError naming the values): d_model
    splits into n_heads heads of even width (rotary rotates pairs), n_kv_heads divides n_heads (GQA), and the
    dropout, when the config has one, is a probability below 1."""
    if d_model % n_heads or (d_model // n_heads) % 2:
        raise ValueError(f"d_model={d_model} must split into n_heads={n_heads} heads of even size (rotary)")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}")
    if dropout is not None and not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got dropout={dropout}")


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale, computed in float32 like HF Qwen3."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) -> (..., dim), same dtype as x."""
        # F.rms_norm is one fused kernel forward and backward (the composite pow/mean/rsqrt/mul chain cost ~6x more
        # on CPU) and gives bitwise the same values and gradients in float32. Other dtypes normalise in float32,
        # round to x's dtype and only then scale, as HF Qwen3 does.
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Precomputed rotary cos/sin tables for positions [0, max_seq_len)."""

    def __init__(self, *, head_dim: int, max_seq_len: int, theta: float = 1_000_000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary head_dim must be even, got head_dim={head_dim}")
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
        freqs = torch.outer(torch.arange(max_seq_len).float(), inv_freq)
        angles = torch.cat([freqs, freqs], dim=-1)
        # Non-persistent: derived from the config, so never part of a checkpoint.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, positions: torch.Tensor) -> RoPE:
        """positions (T,) or (B, T) int64, each < max_seq_len -> (cos, sin), each (T, hd) or (B, 1, T, hd),
        broadcastable onto (B, H, T, hd)."""
        cos, sin = self.cos[positions], self.sin[positions]
        if positions.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, hd) by the angles of (cos, sin) from `RotaryEmbedding`.

    HF's rotate_half(x) * sin = cat(-x2, x1) * sin; here the minus moves onto the small sin table and the halves
    swap with one roll: bitwise the same result, without the chunk/neg/cat copies of x (and their backward)."""
    half = x.shape[-1] // 2
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    signed_sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
    return x * cos + x.roll(half, dims=-1) * signed_sin


class KVCache:
    """One attention layer's key/value cache: prefill T tokens, then append steps of any length."""

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0  # tokens stored so far; a Python int, so reading it never syncs with the device
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H_kv, T, hd) at positions [length, length + T) and return all keys and values so far,
        each (B, H_kv, length + T, hd)."""
        new_len = self.length + k.shape[2]
        if new_len > self.max_len:
            raise ValueError(f"KV cache overflow: {self.length} cached + {k.shape[2]} new > max_len={self.max_len}")
        if self.k is None:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.k = k.new_zeros(shape)
            self.v = v.new_zeros(shape)
        self.k[:, :, self.length : new_len] = k
        self.v[:, :, self.length : new_len] = v
        self.length = new_len
        return self.k[:, :, :new_len], self.v[:, :, :new_len]


class Attention(nn.Module):
    """Multi-head self-attention with GQA, optional per-head QK RMSNorm, rotary, padding masks and a KV cache."""

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int | None = None,
        qk_norm: bool = True,
        causal: bool = True,
        dropout: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
            head_dim = d_model // n_heads
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.causal, self.dropout = causal, dropout
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)
        self.q_norm = RMSNorm(head_dim, norm_eps) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim, norm_eps) if qk_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        rope: RoPE | None = None,
        key_padding_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D).

        rope: (cos, sin) for the T new positions, or None for no rotary (e.g. a ViT with learned positions).
        key_padding_mask: (B, T_k) bool, True = real token, over every key this call attends to: T_k = T without a
            cache, cache.length + T with one.
        cache: this layer's `KVCache`; the new keys are appended and a query at absolute position p sees keys <= p.
        """
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        offset = 0
        if cache is not None:
            offset = cache.length
            k, v = cache.update(k, v)

        # SDPA's is_causal aligns the triangle top-left, which is right only when the queries start at key 0; a
        # single decode step sees every cached key, so it needs no mask either.
        mask, is_causal = None, False
        if key_padding_mask is None and self.causal and offset == 0:
            is_causal = True
        elif key_padding_mask is not None or (self.causal and T > 1):
            mask = self._mask(T, k.shape[2], offset, key_padding_mask, x.device)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def _mask(
        self, q_len: int, k_len: int, offset: int, key_padding_mask: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor:
        """Boolean (B or 1, 1, q_len, k_len) mask, True = may attend; queries sit at absolute offset + i."""
        q_pos = torch.arange(offset, offset + q_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        allowed = k_pos <= q_pos if self.causal else torch.ones(q_len, k_len, dtype=torch.bool, device=device)
        if key_padding_mask is not None:
            allowed = (allowed & key_padding_mask[:, None, None, :]) | (k_pos == q_pos)
        return allowed


class SwiGLU(nn.Module):
    """Gated feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, *, d_model: int, d_ff: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> (..., D)."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    """Top-k mixture of SwiGLU experts with a Switch-style load-balancing loss."""

    def __init__(self, *, d_model: int, d_ff: int, n_experts: int, top_k: int):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"MoE needs 1 <= top_k <= n_experts, got top_k={top_k}, n_experts={n_experts}")
        self.n_experts, self.top_k = n_experts, top_k
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d_model=d_model, d_ff=d_ff) for _ in range(n_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> (y (B, T, D), aux_loss scalar float32)."""
        flat = x.reshape(-1, x.shape[-1])
        probs = self.gate(flat).float().softmax(dim=-1)  # (B*T, E)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (B*T, k)
        y = torch.zeros_like(flat)
        # Loop over experts (not tokens): each expert runs once on the tokens routed to it.
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)
            out = expert(flat[token]) * weights[token, slot, None]
            y.index_add_(0, token, out.to(y.dtype))
        assigned = F.one_hot(chosen, self.n_experts).sum(dim=(0, 1)).float() / chosen.numel()
        aux = self.n_experts * (assigned * probs.mean(dim=0)).sum()
        return y.view_as(x), aux


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)); mlp is SwiGLU or MoE."""

    def __init__(self, *, d_model: int, n_heads: int, n_kv_heads: int, d_ff: int, head_dim: int | None = None,
                 causal: bool = True, qk_norm: bool = True, norm_eps: float = 1e-6, n_experts: int = 0,
                 moe_top_k: int = 2, dropout: float = 0.0):
        super().__init__()
        self.input_layernorm = RMSNorm(d_model, norm_eps)
        self.self_attn = Attention(d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                                   qk_norm=qk_norm, causal=causal, dropout=dropout, norm_eps=norm_eps)
        self.post_attention_layernorm = RMSNorm(d_model, norm_eps)
        if n_experts > 0:
            self.mlp = MoE(d_model=d_model, d_ff=d_ff, n_experts=n_experts, top_k=moe_top_k)
        else:
            self.mlp = SwiGLU(d_model=d_model, d_ff=d_ff)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: RoPE | None = None,
        key_padding_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> (x (B, T, D), aux_loss scalar; zero without MoE). Arguments as in `Attention.forward`."""
        x = x + self.resid_dropout(self.self_attn(self.input_layernorm(x), rope, key_padding_mask, cache))
        h = self.mlp(self.post_attention_layernorm(x))
        if isinstance(self.mlp, MoE):
            h, aux = h
        else:
            aux = x.new_zeros((), dtype=torch.float32)
        return x + self.resid_dropout(h), aux


class Transformer(nn.Module):
    """Base class of every omni transformer: `build_trunk` makes `layers`, `norm` and `rotary_emb`, `run_blocks`
    runs them, `init_weights` initialises them; subclasses add their own embeddings and heads."""

    def build_trunk(self, *, n_layers: int, d_model: int, norm_eps: float, rotary_len: int | None = None,
                    rope_theta: float = 10_000.0, **block) -> None:
        """n_layers `Block(d_model=, norm_eps=, **block)`, the final RMSNorm, and a rotary table over rotary_len
        positions (None: no rotary, e.g. learned positions). Call it where the blocks belong in the state dict."""
        self.layers = nn.ModuleList(Block(d_model=d_model, norm_eps=norm_eps, **block) for _ in range(n_layers))
        self.norm = RMSNorm(d_model, norm_eps)
        head_dim = block.get("head_dim") or d_model // block["n_heads"]
        self.rotary_emb = None if rotary_len is None else RotaryEmbedding(
            head_dim=head_dim, max_seq_len=rotary_len, theta=rope_theta)
        self.gradient_checkpointing = False

    def init_weights(self, root: nn.Module | None = None) -> None:
        """The GPT-2 init (module docstring) over root's Linear/Embedding weights (default: the whole model), in
        named_modules order; biases, convs and norms keep PyTorch's defaults. Call it last in __init__."""
        out_std = 0.02 / math.sqrt(2 * len(self.layers))
        for name, module in (self if root is None else root).named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = out_std if name.endswith(("o_proj", "down_proj")) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each block's activations in the backward pass instead of storing them (less memory, about
        a third more compute); applies in training mode with autograd on and no KV cache."""
        self.gradient_checkpointing = enabled

    def make_caches(self, max_len: int) -> list[KVCache]:
        """One empty `KVCache` per layer, holding up to max_len positions."""
        return [KVCache(max_len) for _ in self.layers]

    def run_blocks(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                   key_padding_mask: torch.Tensor | None = None,
                   caches: list[KVCache] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> (final-norm hidden (B, T, D), MoE aux loss averaged over layers; zero without MoE).
        positions: rotary positions (T,) or (B, T); None = the T positions after what the caches hold (0.. without
        caches). key_padding_mask and caches (one per layer) as in `Attention.forward`."""
        rope = None
        if self.rotary_emb is not None:
            if positions is None:
                start = caches[0].length if caches is not None else 0
                positions = torch.arange(start, start + x.shape[1], device=x.device)
            rope = self.rotary_emb(positions)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and caches is None
        aux = x.new_zeros((), dtype=torch.float32)
        for i, layer in enumerate(self.layers):
            cache = caches[i] if caches is not None else None
            if recompute:
                x, layer_aux = checkpoint(layer, x, rope, key_padding_mask, cache, use_reentrant=False)
            else:
                x, layer_aux = layer(x, rope, key_padding_mask, cache)
            aux = aux + layer_aux
        return self.norm(x), aux / len(self.layers)


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (..., V) -> token ids (...) int64. temperature 0 is greedy (argmax); otherwise sample from the
    temperature-scaled distribution restricted to the top_k tokens and/or the smallest set with mass >= top_p.
    Shared by every autoregressive model (Thinker, Talker); `generator` makes sampling reproducible."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got temperature={temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got top_k={top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got top_p={top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p; the most likely token always stays.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return flat.view(probs.shape[:-1])
