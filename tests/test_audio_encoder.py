"""AuT audio encoder + CTC head: shapes, exact output lengths, padding invariance, CTC overfitting, checkpointing."""

import pytest
import torch

from omni.audio import encoder_frames
from omni.audio_encoder import AsrModel, AudioEncoder, AudioEncoderConfig
from omni.ctc import ctc_loss


def _config(**overrides):
    base = dict(n_mels=40, d_model=48, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=96, conv_channels=8, dropout=0.0)
    return AudioEncoderConfig(**{**base, **overrides})


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return AsrModel(AudioEncoder(_config(**overrides)), vocab_size=12, ctc_upsample=2)


@pytest.mark.parametrize("T", [1, 7, 8, 9, 15, 63, 64, 65, 101])
def test_output_shapes_and_exact_lengths(T):
    encoder = AudioEncoder(_config()).eval()
    features, lengths = encoder(torch.randn(1, T, 40), torch.tensor([T]))
    assert features.shape == (1, encoder_frames(T), 48)
    assert lengths.tolist() == [encoder_frames(T)] == AudioEncoder.output_lengths(torch.tensor([T])).tolist()


def test_padding_does_not_change_real_outputs():
    model = _model().eval()
    lengths = [101, 57, 9, 64]
    clips = [torch.randn(n, 40) for n in lengths]
    batch = torch.full((4, 101, 40), 50.0)  # deliberately loud padding
    for i, clip in enumerate(clips):
        batch[i, : len(clip)] = clip
    log_probs, _ = model(batch, torch.tensor(lengths))
    out_lengths = model.output_lengths(torch.tensor(lengths))
    assert log_probs.shape == (4, encoder_frames(101) * 2, 12)
    for i, clip in enumerate(clips):
        alone, _ = model(clip[None], torch.tensor([len(clip)]))
        n = out_lengths[i]
        assert alone.shape[1] == n
        torch.testing.assert_close(log_probs[i, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_log_probs_are_normalised_and_loss_is_finite():
    model = _model()
    log_probs, loss = model(
        torch.randn(2, 80, 40), torch.tensor([80, 50]), torch.randint(1, 12, (2, 6)), torch.tensor([6, 3])
    )
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 20))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert model(torch.randn(1, 80, 40), torch.tensor([80]))[1] is None


def test_impossible_alignment_gives_zero_not_inf():
    log_probs = torch.randn(1, 4, 5).log_softmax(-1)
    loss = ctc_loss(log_probs, torch.tensor([4]), torch.tensor([[1, 2, 3, 4, 1, 2]]), torch.tensor([6]))
    assert loss.item() == 0.0


def test_ctc_overfits_two_utterances():
    model = _model(seed=1)
    torch.manual_seed(2)
    mel = torch.randn(2, 96, 40)
    mel_lengths = torch.tensor([96, 80])
    labels = torch.tensor([[3, 4, 5, 6, 7, 3, 8], [9, 10, 11, 4, 0, 0, 0]])
    label_lengths = torch.tensor([7, 4])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        _, loss = model(mel, mel_lengths, labels, label_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.3 * losses[0], losses


def test_gradient_checkpointing_gives_the_same_grads():
    grads = []
    for enabled in (False, True):
        model = _model(seed=3, dropout=0.1).train()
        model.set_gradient_checkpointing(enabled)
        torch.manual_seed(4)
        mel = torch.randn(2, 64, 40)
        _, loss = model(mel, torch.tensor([64, 40]), torch.randint(1, 12, (2, 5)), torch.tensor([5, 2]))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=name)


def test_bad_configs_and_inputs_are_named():
    with pytest.raises(ValueError, match="d_model=50.*n_heads=3"):
        _config(d_model=50, n_heads=3)
    with pytest.raises(ValueError, match="conv_channels"):
        _config(conv_channels=0)
    encoder = AudioEncoder(_config(max_frames=4))
    with pytest.raises(ValueError, match="n_mels=40"):
        encoder(torch.randn(1, 16, 80))
    with pytest.raises(ValueError, match="max_frames=4"):
        encoder(torch.randn(1, 40, 40))
