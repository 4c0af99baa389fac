"""Tests for the HiFi-GAN vocoder (lengths, discriminators, losses and their gradients) and Griffin-Lim."""

import io
import math

import pytest
import torch
from torch.nn.utils import parametrize

from omni.audio import HOP_LENGTH, LogMel
from omni.vocoder import (
    HifiGanTrainModel,
    VocoderConfig,
    discriminator_loss,
    feature_matching_loss,
    frozen,
    generator_adversarial_loss,
    griffin_lim,
    inverse_mel_scale,
    mel_l1_loss,
)

N_MELS = 32



def tiny_config(**overrides) -> VocoderConfig:
    sizes = {
        "n_mels": N_MELS,
        "upsample_initial_channels": 32,
        "resblock_kernel_sizes": (3, 7),
        "resblock_dilations": ((1, 3), (1, 3)),
        "mpd_channels": (8, 16, 32, 32),
        "msd_channels": (16, 16, 32, 32, 32, 32, 32),
    }
    return VocoderConfig(**{**sizes, **overrides})


def tone(seconds: float, f0: float = 200.0, sweep: float = 1500.0, partial: float = 0.2) -> torch.Tensor:
    """A chirp from f0 (sweeping by `sweep` Hz/s) plus a steady 440 Hz partial of amplitude `partial`: (N,) at
    16 kHz."""
    t = torch.arange(int(16000 * seconds)) / 16000
    return 0.3 * torch.sin(2 * math.pi * (f0 + sweep * t) * t) + partial * torch.sin(2 * math.pi * 440 * t)


@pytest.mark.parametrize(
    ("rates", "kernels"), [((8, 5, 4), (16, 10, 8)), ((5, 4, 4, 2), (10, 8, 8, 4)), ((10, 4, 4), (15, 8, 8))]
)
def test_generator_output_is_frames_times_hop(rates, kernels):
    gen = HifiGanTrainModel(tiny_config(upsample_rates=rates, upsample_kernel_sizes=kernels)).generator
    for frames in (1, 5, 13):
        wav = gen(torch.randn(2, frames, N_MELS))
        assert wav.shape == (2, frames * HOP_LENGTH)
        assert wav.abs().max() <= 1.0  # tanh output


def test_config_validation_names_values():
    with pytest.raises(ValueError, match=r"upsample_rates=\(8, 5, 2\)"):
        tiny_config(upsample_rates=(8, 5, 2), upsample_kernel_sizes=(16, 10, 4))
    with pytest.raises(ValueError, match=r"upsample_kernel_sizes=\(16, 4, 8\)"):
        tiny_config(upsample_kernel_sizes=(16, 4, 8))
    with pytest.raises(ValueError, match="upsample_initial_channels=36"):
        tiny_config(upsample_initial_channels=36)
    with pytest.raises(ValueError, match="msd_channels"):
        tiny_config(msd_channels=(16, 16, 24, 32, 32, 32, 32))
    assert tiny_config(upsample_rates=[8, 5, 4], resblock_dilations=[[1, 3], [1, 3]]).upsample_rates == (8, 5, 4)


def test_normalisations_are_parametrizations():
    model = HifiGanTrainModel(tiny_config())
    assert parametrize.is_parametrized(model.generator.conv_pre, "weight")
    assert parametrize.is_parametrized(model.generator.ups[0], "weight")
    assert parametrize.is_parametrized(model.mpd.discriminators[0].convs[0], "weight")
    first, second = model.msd.discriminators[0].convs[0], model.msd.discriminators[1].convs[0]
    assert type(first.parametrizations.weight[0]).__name__ == "_SpectralNorm"
    assert type(second.parametrizations.weight[0]).__name__ == "_WeightNorm"


def test_discriminator_outputs_and_feature_maps():
    model = HifiGanTrainModel(tiny_config())
    wav = torch.randn(2, 1601)  # odd length: every period needs reflection padding
    scores, fmaps = model.mpd(wav)
    assert len(scores) == len(fmaps) == 5
    for period, s, f in zip((2, 3, 5, 7, 11), scores, fmaps):
        assert s.shape[0] == 2 and s.dim() == 2
        assert len(f) == 6  # 4 strided convs, 1 stride-1 conv, the output conv
        assert all(x.shape[0] == 2 and x.shape[-1] == period for x in f)
        assert [x.shape[1] for x in f] == [8, 16, 32, 32, 32, 1]
        assert f[0].shape[2] == math.ceil(math.ceil(1601 / period) / 3)
    scores, fmaps = model.msd(wav)
    assert len(scores) == len(fmaps) == 3
    assert all(len(f) == 8 and f[-1].shape[1] == 1 for f in fmaps)
    first_layer = [f[0].shape[2] for f in fmaps]  # raw, x2 and x4 pooled (stride-1 first conv)
    assert first_layer == [1601, 801, 401]


def test_lsgan_and_feature_matching_values():
    ones, zeros = [torch.ones(2, 5)] * 3, [torch.zeros(2, 5)] * 3
    assert discriminator_loss(ones, zeros) == 0 and discriminator_loss(zeros, ones) == 6
    assert generator_adversarial_loss(ones) == 0 and generator_adversarial_loss(zeros) == 3
    fm = [[torch.ones(2, 3), torch.zeros(2, 4)], [torch.full((1, 2), 2.0)]]
    assert feature_matching_loss(fm, fm) == 0
    shifted = [[x + 0.5 for x in f] for f in fm]
    assert feature_matching_loss(fm, shifted) == pytest.approx(1.5)


def test_mel_loss_uses_the_logmel_frontend_aligned_to_the_frames():
    wav = tone(0.2)[None]  # 3200 samples = 20 frames x hop
    mel = LogMel(N_MELS)(wav)
    assert mel.shape[1] == 21  # center padding: one frame more than frames x hop
    assert mel_l1_loss(wav, mel[:, :20]).item() < 1e-5
    assert mel_l1_loss(wav, mel[:, 1:21]).item() > 0.05  # misaligned by one frame


def test_gan_losses_send_gradients_to_the_right_parts():
    """The two players as train_vocoder.py writes them: discriminators on real vs the detached fake, then the
    generator through `frozen` discriminators."""
    model = HifiGanTrainModel(tiny_config())
    wav_real = tone(0.1)[None].repeat(2, 1)
    mel = LogMel(N_MELS)(wav_real)[:, :10]
    wav_fake = model(mel)
    discs = (model.mpd, model.msd)
    d_loss = sum(discriminator_loss(d(wav_real)[0], d(wav_fake.detach())[0]) for d in discs)
    assert torch.isfinite(d_loss)
    d_loss.backward()
    assert all(p.grad is None for p in model.generator.parameters())
    assert all(p.grad is not None for p in [*model.mpd.parameters(), *model.msd.parameters()])
    model.zero_grad(set_to_none=True)
    with frozen(*discs):
        assert not any(p.requires_grad for d in discs for p in d.parameters())
        g_loss = sum(generator_adversarial_loss(d(wav_fake)[0]) + feature_matching_loss(d(wav_real)[1], d(wav_fake)[1])
                     for d in discs)
    g_loss = g_loss + 45.0 * mel_l1_loss(wav_fake, mel)
    assert torch.isfinite(g_loss)
    g_loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.generator.parameters())
    disc_params = [*model.mpd.parameters(), *model.msd.parameters()]
    assert all(p.grad is None and p.requires_grad for p in disc_params)  # frozen during the step, trainable again
    assert model.generator.conv_pre.parametrizations.weight.original1.grad.abs().sum() > 0


def test_frozen_restores_trainability_after_an_error_and_leaves_frozen_parameters_frozen():
    model = HifiGanTrainModel(tiny_config())
    model.msd.discriminators[0].conv_post.requires_grad_(False)  # frozen before: must stay frozen
    with pytest.raises(RuntimeError, match="boom"), frozen(model.mpd, model.msd):
        raise RuntimeError("boom")
    assert all(p.requires_grad for p in model.mpd.parameters())
    assert not any(p.requires_grad for p in model.msd.discriminators[0].conv_post.parameters())
    assert all(p.requires_grad for p in model.msd.discriminators[1].parameters())


def test_remove_weight_norm_keeps_the_output_and_leaves_plain_weights():
    torch.manual_seed(0)
    gen = HifiGanTrainModel(tiny_config()).generator.eval()
    mel = torch.randn(1, 6, N_MELS) - 5
    with torch.no_grad():
        before = gen(mel)
        assert gen.remove_weight_norm() is gen
        after = gen(mel)
    assert torch.equal(before, after)
    assert not any(parametrize.is_parametrized(m) for m in gen.modules())
    assert not any("parametrizations" in k for k in gen.state_dict())


def test_generator_learns_from_the_mel_loss():
    torch.manual_seed(0)
    gen = HifiGanTrainModel(tiny_config()).generator
    wav = tone(0.1)[None]
    mel = LogMel(N_MELS)(wav)[:, :10]
    opt = torch.optim.Adam(gen.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = mel_l1_loss(gen(mel), mel)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_state_dict_holds_all_three_and_reloads():
    model = HifiGanTrainModel(tiny_config())
    prefixes = {k.split(".")[0] for k in model.state_dict()}
    assert prefixes == {"generator", "mpd", "msd"}
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = HifiGanTrainModel(tiny_config())
    other.load_state_dict(torch.load(buf, weights_only=True))
    mel = torch.randn(1, 4, N_MELS)
    assert torch.equal(model.eval()(mel), other.eval()(mel))


def test_griffin_lim_inverts_the_same_mel_definition():
    frontend = LogMel()  # the default 128-bin frontend
    assert torch.equal(inverse_mel_scale().fb, frontend.spec.mel_scale.fb)
    mel = frontend(tone(0.5))  # (51, 128)
    wav = griffin_lim(mel)
    assert wav.shape == (mel.shape[0] * HOP_LENGTH,)
    again = frontend(wav)[: mel.shape[0]]

    def centred_cosine(a, b):
        a, b = a - a.mean(), b - b.mean()
        return (a * b).sum() / (a.norm() * b.norm())

    assert centred_cosine(mel, again) > 0.8
    other = frontend(tone(0.5, f0=3000.0, sweep=-2000.0, partial=0.0))
    assert centred_cosine(mel, other) < 0.5  # the similarity above is not a property of any two tones
    batch = griffin_lim(torch.stack([mel, other]), n_iter=4)
    assert batch.shape == (2, mel.shape[0] * HOP_LENGTH)
    # Deterministic and row-independent (up to the batched least-squares rounding that the iterations amplify).
    assert torch.allclose(batch[1], griffin_lim(other, n_iter=4), atol=1e-2)


def test_seeded_init_is_unchanged():
    """Built under one seed, generator and discriminators hold the weights they had before the constructors became
    keyword-only and the GAN step moved to train_vocoder.py (same draws in the same order)."""
    from tests.test_layers import state_digest

    torch.manual_seed(1234)
    model = HifiGanTrainModel(VocoderConfig(n_mels=16, upsample_initial_channels=16, mpd_channels=(4, 8),
                                            msd_channels=(16,) * 7))
    assert state_digest(model) == "9affc1883745a512"
