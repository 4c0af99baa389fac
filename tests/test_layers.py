"""Tests for the shared transformer blocks in omni.layers."""

import hashlib
import math

import pytest
import torch

from omni.layers import (
    Attention,
    Block,
    KVCache,
    MoE,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    Transformer,
    apply_rotary,
    lengths_mask,
    sample_next_token,
)

D, H, HKV, HD = 32, 4, 2, 8


def make_attention(causal=True, n_kv_heads=HKV, seed=0):
    torch.manual_seed(seed)
    attn = Attention(d_model=D, n_heads=H, n_kv_heads=n_kv_heads, causal=causal).eval()
    # Non-trivial norm weights so the reference really depends on q_norm / k_norm being applied.
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
    return attn


def reference_attention(attn, x, rope, allowed):
    """Plain softmax attention with repeated kv heads; allowed (B, 1, T, T) bool."""
    B, T, _ = x.shape
    q = attn.q_norm(attn.q_proj(x).view(B, T, attn.n_heads, HD)).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(x).view(B, T, attn.n_kv_heads, HD)).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, attn.n_kv_heads, HD).transpose(1, 2)
    q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    rep = attn.n_heads // attn.n_kv_heads
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(HD)
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    return attn.o_proj((probs @ v).transpose(1, 2).reshape(B, T, -1))


def test_rmsnorm_normalises_and_scales():
    norm = RMSNorm(16)
    with torch.no_grad():
        norm.weight.fill_(2.0)
    x = torch.randn(3, 5, 16) * 7
    y = norm(x)
    assert torch.allclose(y.pow(2).mean(-1).sqrt(), torch.full((3, 5), 2.0), atol=1e-4)
    assert torch.allclose(y / 2, x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt(), atol=1e-6)


def test_rotary_known_values_use_rotate_half_pairs():
    rope = RotaryEmbedding(head_dim=4, max_seq_len=8, theta=100.0)
    cos, sin = rope(torch.tensor([1]))
    x = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 4)
    y = apply_rotary(x, cos, sin).flatten()
    # Dimension 0 pairs with dimension head_dim/2 = 2 (HF convention), angle = position * theta^0 = 1.
    assert torch.allclose(y, torch.tensor([math.cos(1.0), 0.0, math.sin(1.0), 0.0]), atol=1e-6)
    # Second pair (1, 3) rotates at theta^(-2/4) = 0.1 rad per position.
    y = apply_rotary(torch.tensor([0.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 4), cos, sin).flatten()
    assert torch.allclose(y, torch.tensor([0.0, math.cos(0.1), 0.0, math.sin(0.1)]), atol=1e-6)


def test_rotary_score_depends_only_on_relative_offset():
    rope = RotaryEmbedding(head_dim=HD, max_seq_len=64, theta=10_000.0)
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, HD), torch.randn(1, 1, 1, HD)

    def score(m, n):
        qm = apply_rotary(q, *rope(torch.tensor([m])))
        kn = apply_rotary(k, *rope(torch.tensor([n])))
        return (qm * kn).sum()

    assert torch.allclose(score(3, 1), score(40, 38), atol=1e-5)
    assert torch.allclose(score(0, 5), score(20, 25), atol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-3)


def test_rotary_batched_positions_broadcast():
    rope = RotaryEmbedding(head_dim=HD, max_seq_len=16)
    pos = torch.tensor([[0, 1, 2], [5, 6, 7]])
    cos, sin = rope(pos)
    assert cos.shape == (2, 1, 3, HD)
    x = torch.randn(2, H, 3, HD)
    y = apply_rotary(x, cos, sin)
    assert torch.allclose(y[1], apply_rotary(x[1:2], *rope(pos[1]))[0])
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation keeps norms


@pytest.mark.parametrize("n_kv_heads", [H, HKV, 1])
def test_causal_sdpa_matches_reference(n_kv_heads):
    attn = make_attention(causal=True, n_kv_heads=n_kv_heads)
    x = torch.randn(2, 7, D)
    rope = RotaryEmbedding(head_dim=HD, max_seq_len=16)(torch.arange(7))
    allowed = torch.ones(7, 7, dtype=torch.bool).tril().expand(2, 1, 7, 7)
    assert torch.allclose(attn(x, rope), reference_attention(attn, x, rope, allowed), atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_mask_sdpa_matches_reference(causal):
    attn = make_attention(causal=causal)
    x = torch.randn(2, 6, D)
    rope = RotaryEmbedding(head_dim=HD, max_seq_len=16)(torch.arange(6))
    real = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    allowed = real[:, None, None, :].expand(2, 1, 6, 6)
    if causal:
        allowed = allowed & torch.ones(6, 6, dtype=torch.bool).tril()
    out, ref = attn(x, rope, key_padding_mask=real), reference_attention(attn, x, rope, allowed)
    assert torch.allclose(out[real], ref[real], atol=1e-5)  # padded queries are free to differ


def test_padded_keys_do_not_influence_real_positions():
    torch.manual_seed(0)
    block = Block(d_model=D, n_heads=H, n_kv_heads=HKV, d_ff=64, causal=False).eval()
    x = torch.randn(2, 6, D)
    real = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    x2 = x.clone()
    x2[1, 3:] = torch.randn(3, D) * 10
    y, _ = block(x, key_padding_mask=real)  # rope=None: the ViT / learned-position use
    y2, _ = block(x2, key_padding_mask=real)
    assert torch.allclose(y[real], y2[real], atol=1e-5)
    assert not torch.allclose(y[1, 3:], y2[1, 3:])


def test_fully_padded_row_stays_finite():
    attn = make_attention(causal=False)
    real = torch.tensor([[True, True, True], [False, False, False]])
    assert torch.isfinite(attn(torch.randn(2, 3, D), key_padding_mask=real)).all()


def test_kv_cache_prefill_then_steps_matches_full_attention():
    attn = make_attention(causal=True)
    rotary = RotaryEmbedding(head_dim=HD, max_seq_len=16)
    x = torch.randn(2, 9, D)
    full = attn(x, rotary(torch.arange(9)))
    cache = KVCache(max_len=9)
    pieces = []
    for start, stop in [(0, 4), (4, 5), (5, 8), (8, 9)]:  # prefill, single step, multi-token chunk, single step
        pieces.append(attn(x[:, start:stop], rotary(torch.arange(start, stop)), cache=cache))
    assert cache.length == 9 and cache.k.shape == (2, HKV, 9, HD)
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)
    with pytest.raises(ValueError, match="max_len=9"):
        attn(x[:, :1], rotary(torch.tensor([8])), cache=cache)


def test_kv_cache_with_padding_mask_over_all_keys():
    attn = make_attention(causal=True)
    rotary = RotaryEmbedding(head_dim=HD, max_seq_len=16)
    x = torch.randn(2, 5, D)
    real = torch.tensor([[True] * 5, [False, True, True, True, True]])  # row 1 left-padded
    full = attn(x, rotary(torch.arange(5)), key_padding_mask=real)
    cache = KVCache(max_len=5)
    first = attn(x[:, :3], rotary(torch.arange(3)), key_padding_mask=real[:, :3], cache=cache)
    rest = attn(x[:, 3:], rotary(torch.arange(3, 5)), key_padding_mask=real, cache=cache)
    assert torch.allclose(torch.cat([first, rest], dim=1)[real], full[real], atol=1e-5)


def test_attention_validates_head_counts():
    with pytest.raises(ValueError, match="d_model=250"):
        Attention(d_model=250, n_heads=4, n_kv_heads=2)
    with pytest.raises(ValueError, match="n_kv_heads=3"):
        Attention(d_model=48, n_heads=4, n_kv_heads=3)
    assert Attention(d_model=250, n_heads=4, n_kv_heads=2, head_dim=16).q_proj.out_features == 64


def test_gqa_has_fewer_kv_params():
    mha = Attention(d_model=D, n_heads=H, n_kv_heads=H)
    gqa = Attention(d_model=D, n_heads=H, n_kv_heads=1)
    assert gqa.k_proj.weight.numel() * H == mha.k_proj.weight.numel()
    assert sum(p.numel() for p in gqa.parameters()) < sum(p.numel() for p in mha.parameters())


def test_swiglu_and_dense_block_shapes():
    torch.manual_seed(0)
    x = torch.randn(2, 5, D)
    assert SwiGLU(d_model=D, d_ff=48)(x).shape == (2, 5, D)
    block = Block(d_model=D, n_heads=H, n_kv_heads=HKV, d_ff=48)
    y, aux = block(x)
    assert y.shape == x.shape and aux.shape == () and aux.item() == 0.0
    assert not any("bias" in name for name, _ in block.named_parameters())


def test_moe_matches_per_token_reference_and_trains():
    torch.manual_seed(0)
    moe = MoE(d_model=D, d_ff=24, n_experts=4, top_k=2)
    x = torch.randn(2, 16, D, requires_grad=True)
    y, aux = moe(x)
    assert y.shape == x.shape and aux.shape == ()
    assert torch.isfinite(aux) and aux.item() > 0

    with torch.no_grad():
        flat = x.reshape(-1, D)
        probs = moe.gate(flat).softmax(-1)
        ref = torch.stack(
            [sum(probs[n, e] * moe.experts[e](flat[n]) for e in probs[n].topk(2).indices) for n in range(len(flat))]
        )
    assert torch.allclose(y.reshape(-1, D), ref, atol=1e-5)

    (y.pow(2).mean() + aux).backward()
    assert moe.gate.weight.grad.abs().sum() > 0
    for expert in moe.experts:
        assert expert.down_proj.weight.grad.abs().sum() > 0


def test_moe_aux_loss_is_one_for_uniform_router():
    moe = MoE(d_model=D, d_ff=24, n_experts=4, top_k=2)
    with torch.no_grad():
        moe.gate.weight.zero_()
    _, aux = moe(torch.randn(3, 5, D))
    assert torch.allclose(aux, torch.tensor(1.0))
    with pytest.raises(ValueError, match="top_k=5"):
        MoE(d_model=D, d_ff=24, n_experts=4, top_k=5)


def test_moe_block_returns_aux():
    torch.manual_seed(0)
    block = Block(d_model=D, n_heads=H, n_kv_heads=HKV, d_ff=24, n_experts=4, moe_top_k=2)
    assert isinstance(block.mlp, MoE)
    y, aux = block(torch.randn(2, 5, D))
    assert y.shape == (2, 5, D) and aux.item() > 0


def test_sample_next_token_greedy_topk_topp():
    torch.manual_seed(0)
    logits = torch.randn(3, 20)
    best = logits.argmax(-1)
    assert torch.equal(sample_next_token(logits), best)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(sample_next_token(logits, temperature=1.0, top_k=1, generator=g), best)
    assert torch.equal(sample_next_token(logits, temperature=1.0, top_p=1e-4, generator=g), best)

    draws = torch.stack([sample_next_token(logits, temperature=2.0, top_k=3, generator=g) for _ in range(200)])
    top3 = logits.topk(3).indices
    assert all(set(draws[:, row].tolist()) <= set(top3[row].tolist()) for row in range(3))
    assert len(set(draws[:, 0].tolist())) > 1  # it really samples

    # top_p keeps the smallest set with mass >= p: here the two tokens holding 0.5 + 0.3.
    two = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.1]]))
    draws = {sample_next_token(two, temperature=1.0, top_p=0.7, generator=g).item() for _ in range(100)}
    assert draws == {0, 1}


def test_sample_next_token_reproducible_and_any_leading_shape():
    logits = torch.randn(2, 3, 50)  # e.g. Talker: (B, K codebooks, V)
    a = sample_next_token(logits, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(7))
    b = sample_next_token(logits, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(7))
    assert a.shape == (2, 3) and torch.equal(a, b)
    with pytest.raises(ValueError, match="top_p=1.5"):
        sample_next_token(logits, temperature=1.0, top_p=1.5)


def state_digest(model: torch.nn.Module) -> str:
    """sha256 (first 16 hex digits) over the state dict's keys, in order, and the bytes of every tensor."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _small_transformers() -> dict:
    from omni.audio_encoder import AudioEncoder, AudioEncoderConfig
    from omni.contrastive import TextEncoder, TextEncoderConfig
    from omni.ocr import OcrConfig, OcrModel
    from omni.talker import Talker, TalkerConfig
    from omni.thinker import Thinker, ThinkerConfig
    from omni.vision_encoder import VisionConfig, VisionEncoder

    sizes = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=64)
    return {
        "thinker": lambda: Thinker(ThinkerConfig(vocab_size=50, max_seq_len=32, **sizes)),
        "thinker_moe_untied": lambda: Thinker(ThinkerConfig(
            vocab_size=50, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=32, n_experts=3,
            moe_top_k=2, tie_embeddings=False, head_dim=16)),
        "audio": lambda: AudioEncoder(AudioEncoderConfig(n_mels=16, conv_channels=8, **sizes)),
        "vision": lambda: VisionEncoder(VisionConfig(image_size=32, patch_size=8, **sizes)),
        "text": lambda: TextEncoder(TextEncoderConfig(vocab_size=40, max_len=16, **sizes)),
        "talker": lambda: Talker(TalkerConfig(text_vocab_size=40, n_codebooks=2, codebook_size=16, max_text_len=16,
                                              max_frames=20, n_decoder_layers=2, **sizes)),
        "ocr": lambda: OcrModel(OcrConfig(vocab_size=12, height=16, conv_channels=8, max_frames=32, **sizes)),
    }


# Digests of each model built under torch.manual_seed(1234), taken before the six models shared one trunk: the
# refactor kept every init (and so the demo) bit-for-bit. AudioEncoder keeps PyTorch's default init (no
# init_weights), pinned here too. A deliberate init change updates these, and says so in the commit.
INIT_DIGESTS = {
    "thinker": "3a3beefd30a152cc",
    "thinker_moe_untied": "0ebc0719bae6064d",
    "audio": "51684c7f0f9cfdd8",
    "vision": "fb111dedfb53306a",
    "text": "ccca65f6a13397cd",
    "talker": "bc6aa4808feb0ecf",  # the duration-guided Talker (issue 17): a new model, so a new init
    "ocr": "aa8d67b1e2e84111",
}


def test_every_transformer_shares_the_trunk_and_keeps_its_seeded_init():
    digests = {}
    for name, build in _small_transformers().items():
        torch.manual_seed(1234)
        model = build()
        assert isinstance(model, Transformer), name
        digests[name] = state_digest(model)
    assert digests == INIT_DIGESTS


def test_trunk_gradient_checkpointing_recomputes_only_when_training_without_cache():
    torch.manual_seed(0)
    calls = []

    class Counting(Transformer):
        def __init__(self):
            super().__init__()
            self.build_trunk(n_layers=2, d_model=D, norm_eps=1e-6, rotary_len=16, n_heads=H, n_kv_heads=HKV,
                             d_ff=64)
            for layer in self.layers:  # count forward calls (checkpoint's recompute skips module hooks)
                layer.forward = self._counted(layer.forward)

        @staticmethod
        def _counted(forward):
            def counted(*args, **kwargs):
                calls.append(1)
                return forward(*args, **kwargs)
            return counted

    model = Counting()
    x = torch.randn(2, 5, D, requires_grad=True)
    model.set_gradient_checkpointing(True)
    model.run_blocks(x)[0].sum().backward()
    assert len(calls) == 4  # each block once forward, once recomputed in backward
    calls.clear()
    model.eval()
    model.run_blocks(x)[0].sum().backward()
    assert len(calls) == 2  # eval: no recompute
    calls.clear()
    model.train()
    with torch.no_grad():
        ref, _ = model.run_blocks(x[:, :3])
        caches = model.make_caches(8)
        cached, _ = model.run_blocks(x[:, :3], None, None, caches)
    assert len(calls) == 4 and torch.allclose(cached, ref, atol=1e-6) and caches[0].length == 3


def test_lengths_mask():
    assert lengths_mask(torch.tensor([0, 2, 4]), 3).tolist() == [[False] * 3, [True, True, False], [True] * 3]
