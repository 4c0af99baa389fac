"""Tests for the RVQ codec: shapes and lengths, padding, RVQ gradients, EMA/init/restart, perplexity, overfitting."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from omni.codec import Codec, CodecConfig, VectorQuantizer, usage_perplexity

F_MELS = 16



def make_codec(**overrides) -> Codec:
    sizes = {"n_mels": F_MELS, "channels": 16, "latent_dim": 8, "codebook_size": 32, "n_codebooks": 2}
    return Codec(CodecConfig(**{**sizes, **overrides}))


def structured_mels(batch: int, frames: int, n_mels: int = F_MELS) -> torch.Tensor:
    """Smooth, distinct log-mel-like patterns (B, T, n_mels) around -5."""
    t = torch.arange(frames, dtype=torch.float32)[:, None]
    f = torch.arange(n_mels, dtype=torch.float32)[None]
    rows = [-5 + 3 * torch.sin(0.08 * (b + 1) * t + f / (3 + b)) * torch.cos(f / 7 + b) for b in range(batch)]
    return torch.stack(rows)


@pytest.mark.parametrize("frames", [40, 45, 17, 1])
def test_round_trip_shapes_and_lengths(frames):
    codec = make_codec().eval()
    mel = structured_mels(2, frames)
    out = codec(mel)
    n_codes = math.ceil(frames / 8)
    assert out.recon.shape == mel.shape
    assert out.codes.shape == (2, n_codes, 2) and out.codes.dtype == torch.long
    assert out.code_lengths.tolist() == [n_codes, n_codes]
    assert torch.equal(codec.encode(mel), out.codes)
    decoded = codec.decode(out.codes)
    assert decoded.shape == (2, n_codes * 8, F_MELS)
    # forward's reconstruction is the decoded codes cropped to T frames.
    assert torch.allclose(decoded[:, :frames], out.recon, atol=1e-5)


def test_padding_does_not_change_codes_or_reconstruction():
    codec = make_codec()
    codec.train()
    codec(structured_mels(2, 48))  # initialise the codebooks from data
    for vq in codec.rvq.quantizers:
        vq.codebook.add_(0.1 * torch.randn_like(vq.codebook))  # no exact ties between codes
    codec.eval()
    mel = structured_mels(3, 45)
    lengths = torch.tensor([45, 30, 17])
    batch = codec(mel, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = codec(mel[i : i + 1, :n])
        k = math.ceil(n / 8)
        assert batch.code_lengths[i] == k
        assert torch.equal(batch.codes[i, :k], alone.codes[0])
        assert torch.allclose(batch.recon[i, :n], alone.recon[0], atol=1e-4)
    decoded = codec.decode(batch.codes, batch.code_lengths)
    assert torch.allclose(decoded[2, :17], codec.decode(batch.codes[2:3, :3])[0, :17], atol=1e-4)


def test_padding_is_excluded_from_loss_and_usage():
    codec = make_codec().eval()
    mel = structured_mels(2, 40)
    lengths = torch.tensor([40, 24])
    out = codec(mel, lengths)
    assert out.usage.shape == (2, 32)
    assert out.usage.sum(-1).tolist() == [out.code_lengths.sum().item()] * 2  # 5 + 3 valid code frames
    garbage = mel.clone()
    garbage[1, 24:] = 100.0
    out2 = codec(garbage, lengths)
    assert torch.allclose(out.loss, out2.loss)


def test_residual_is_detached_between_stages_and_straight_through_reaches_encoder():
    codec = make_codec(n_codebooks=3, commitment_weight=0.0).train()
    seen = []
    for vq in codec.rvq.quantizers:
        vq.register_forward_pre_hook(lambda m, args: seen.append(args[0].requires_grad))
    out = codec(structured_mels(2, 32))
    assert seen == [True, False, False]
    # commitment_weight 0: the encoder's only gradient is the reconstruction loss through the straight-through path.
    out.loss.backward()
    assert codec.encoder.out.weight.grad is not None and codec.encoder.out.weight.grad.abs().sum() > 0
    assert all(b.grad is None for b in codec.buffers())


def test_only_first_stage_commitment_pulls_the_encoder():
    codec = make_codec(n_codebooks=2).train()
    z = torch.randn(40, 8, requires_grad=True)
    codec.rvq(z.detach(), torch.ones(40, dtype=torch.bool), update=True)  # init the codebooks
    _, _, commits, _ = codec.rvq(z * 1.5, torch.ones(40, dtype=torch.bool), update=True)
    first, second = (torch.autograd.grad(commits[k], z, retain_graph=True)[0] for k in range(2))
    assert first.abs().sum() > 0
    assert torch.equal(second, torch.zeros_like(z))
    assert commits[1] > 0  # the second stage still measures its (detached) residual's distance


def test_codebooks_are_buffers_updated_only_in_training():
    codec = make_codec()
    names = {n for n, _ in codec.named_parameters()}
    assert not any("codebook" in n for n in names)
    mel = structured_mels(2, 32)
    before = {k: v.clone() for k, v in codec.state_dict().items() if k.startswith("rvq.")}
    codec.eval()
    codec(mel)
    codec.encode(mel)
    assert all(torch.equal(before[k], v) for k, v in codec.state_dict().items() if k.startswith("rvq."))
    codec.train()
    codec.encode(mel)  # encode never updates, even in training mode
    assert all(torch.equal(before[k], v) for k, v in codec.state_dict().items() if k.startswith("rvq."))
    codec(mel)
    assert codec.rvq.quantizers[0].initialized
    assert not torch.equal(before["rvq.quantizers.0.codebook"], codec.rvq.quantizers[0].codebook)


def make_vq(**overrides) -> VectorQuantizer:
    kwargs = {"dim": 4, "codebook_size": 8, "decay": 0.9, "eps": 1e-5, "dead_code_steps": 2}
    return VectorQuantizer(**{**kwargs, **overrides})


def nearest_distance(codebook: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Distance of each code (N,) to its nearest point."""
    return torch.cdist(codebook, points).min(dim=1).values


def test_data_init_uses_only_valid_latents():
    vq = make_vq()
    x = torch.cat([torch.randn(10, 4), torch.full((10, 4), 50.0)])
    mask = torch.arange(20) < 10
    vq(x, mask, update=True)
    assert vq.initialized
    # After init (and one EMA step that can only shrink unused codes) every code lies near the valid latents.
    assert (vq.codebook.abs() < 10).all()


def test_dead_codes_are_restarted_with_current_latents():
    vq = make_vq(dead_code_steps=2)
    vq(torch.randn(64, 4), torch.ones(64, dtype=torch.bool), update=True)  # init from a first cloud
    shifted = torch.randn(3, 4) + 20.0  # far away: only the code nearest to it gets used from now on
    mask = torch.ones(3, dtype=torch.bool)
    for _ in range(2):
        vq(shifted, mask, update=True)
    dead = vq.unused_steps == 2
    assert dead.sum() >= 5 and (nearest_distance(vq.codebook[dead], shifted) > 5).all()  # still in the first cloud
    vq(shifted, mask, update=True)  # third update: codes unused for 2 updates are restarted first
    assert (nearest_distance(vq.codebook[dead], shifted) < 1e-3).all()
    assert (vq.unused_steps[dead] <= 1).all()
    never = make_vq(dead_code_steps=0)
    never(torch.randn(64, 4), torch.ones(64, dtype=torch.bool), update=True)
    for _ in range(3):
        never(shifted, mask, update=True)
    assert (nearest_distance(never.codebook, shifted) > 5).sum() >= 5


def test_ema_moves_codes_to_cluster_means():
    centers = torch.tensor([[4.0, 0, 0, 0], [-4.0, 0, 0, 0]])
    x = torch.cat([centers[0] + 0.3 * torch.randn(50, 4), centers[1] + 0.3 * torch.randn(50, 4)])
    vq = make_vq(codebook_size=2, decay=0.8, dead_code_steps=1)
    mask = torch.ones(100, dtype=torch.bool)
    for _ in range(40):
        vq(x, mask, update=True)
    means = torch.stack([x[:50].mean(0), x[50:].mean(0)])
    assert torch.allclose(nearest_distance(means, vq.codebook), torch.zeros(2), atol=1e-2)
    _, codes, commit, counts = vq(x, mask, update=False)
    assert counts.tolist() == [50, 50] and commit < 0.2


def test_usage_perplexity_counts_used_codes():
    assert torch.allclose(usage_perplexity(torch.tensor([5.0, 5, 5, 5, 0, 0])), torch.tensor(4.0))
    assert torch.allclose(usage_perplexity(torch.tensor([[7.0, 0, 0], [0, 0, 0]])), torch.tensor([1.0, 1.0]))
    codes = torch.randint(0, 32, (200,))
    counts = torch.bincount(codes, minlength=32)
    p = counts[counts > 0].double() / counts.sum()  # exp(entropy) in float64, for reference
    assert usage_perplexity(counts).item() == pytest.approx(torch.exp(-(p * p.log()).sum()).item(), rel=1e-5)
    # First training step: the 64 codes are initialised from the batch's 32 latents, distinct ones first, so every
    # latent finds itself in the codebook: 32 equally used codes. The second stage sees zero residuals.
    codec = make_codec(codebook_size=64).train()
    out = codec(torch.randn(4, 64, F_MELS) * 3 - 5)
    assert usage_perplexity(out.usage).tolist() == pytest.approx([32.0, 1.0], rel=1e-4)


def test_save_load_gives_identical_outputs():
    codec = make_codec().train()
    codec(structured_mels(2, 32))
    buf = io.BytesIO()
    torch.save(codec.state_dict(), buf)
    buf.seek(0)
    other = make_codec()
    other.load_state_dict(torch.load(buf, weights_only=True))
    mel = structured_mels(2, 24)
    codec.eval(), other.eval()
    assert torch.equal(codec.encode(mel), other.encode(mel))
    assert torch.equal(codec(mel).recon, other(mel).recon)


def test_short_overfit_reduces_reconstruction_loss():
    torch.manual_seed(0)
    codec = make_codec(channels=32, codebook_size=64, dead_code_steps=10).train()
    mel = structured_mels(4, 64)
    opt = torch.optim.Adam(codec.parameters(), lr=1e-2)
    first = None
    for _ in range(50):
        out = codec(mel)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = out.losses["recon"].item() if first is None else first
    assert torch.isfinite(out.loss)
    assert out.losses["recon"].item() < 0.7 * first


def test_config_validation_names_values():
    with pytest.raises(ValueError, match="frame_rate_hz=30"):
        CodecConfig(frame_rate_hz=30)
    with pytest.raises(ValueError, match="frame_rate_hz=37.5"):
        CodecConfig(frame_rate_hz=37.5)  # 100 / 37.5 is not an integer
    with pytest.raises(ValueError, match="codebook_size"):
        CodecConfig(codebook_size=0)
    with pytest.raises(ValueError, match="ema_decay=1"):
        CodecConfig(ema_decay=1.0)
    assert CodecConfig().downsample == 8 and CodecConfig(frame_rate_hz=25).downsample == 4
    with pytest.raises(ValueError, match=r"mel \(B, T, 16\)"):
        make_codec()(torch.randn(2, 8, 12))


def test_bf16_autocast_keeps_codebooks_float32():
    codec = make_codec().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = codec(structured_mels(2, 32))
    out.loss.backward()
    assert torch.isfinite(out.loss) and codec.encoder.stem.weight.grad is not None
    vq = codec.rvq.quantizers[0]
    assert vq.codebook.dtype == vq.embed_sum.dtype == vq.cluster_size.dtype == torch.float32
    assert torch.isfinite(vq.codebook).all()


def test_seeded_init_is_unchanged():
    """Built under one seed, the codec's weights and buffers are the ones it had before its constructors became
    keyword-only and lengths_mask moved to omni.layers (same draws in the same order: the demo is unchanged)."""
    from tests.test_layers import state_digest

    torch.manual_seed(1234)
    codec = Codec(CodecConfig(n_mels=16, frame_rate_hz=25, channels=16, latent_dim=8, codebook_size=32))
    assert state_digest(codec) == "a0836ec400c2368a"


def test_expected_latents_of_certain_codes_decode_like_the_codes():
    model = make_codec().eval()
    codes = torch.randint(0, 32, (2, 9, 2), generator=torch.Generator().manual_seed(0))
    certain = F.one_hot(codes, 32).float()  # (B, T', K, V)
    with torch.no_grad():
        torch.testing.assert_close(model.expected_latents(certain), model.rvq.lookup(codes))
        torch.testing.assert_close(model.decode_latents(model.expected_latents(certain)), model.decode(codes))
        # Halfway between two codes of codebook 0: the mean of their vectors (plus codebook 1's vector).
        mixed = certain.clone()
        mixed[0, 0, 0] = 0.5 * (F.one_hot(torch.tensor(3), 32) + F.one_hot(torch.tensor(5), 32)).float()
        book0, book1 = (vq.codebook for vq in model.rvq.quantizers)
        torch.testing.assert_close(model.expected_latents(mixed)[0, 0],
                                   0.5 * (book0[3] + book0[5]) + book1[codes[0, 0, 1]])
