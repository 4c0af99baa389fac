"""Tests for the non-autoregressive, duration-guided Talker: shapes and loss masking, padding, the length regulator,
duration prediction (cap, zero frames, pace), overfitting two utterances, determinism."""

import math

import pytest
import torch
import torch.nn.functional as F

from omni.talker import Talker, TalkerConfig, code_accuracy, regulate_lengths
from omni.text_frontend import N_CHAR_IDS

TEXT_V, V, K = 50, 16, 2


def make_talker(seed=0, frames_per_unit=None, **overrides) -> Talker:
    """A small Talker in eval mode; frames_per_unit sets the duration head's bias so that every unit is predicted
    about that many frames (a fresh model predicts ~0: no speech to compare)."""
    torch.manual_seed(seed)
    sizes = {"d_model": 32, "n_layers": 2, "n_decoder_layers": 2, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64,
             "max_text_len": 16, "max_frames": 24, "max_unit_frames": 4}
    model = Talker(TalkerConfig(text_vocab_size=TEXT_V, n_codebooks=K, codebook_size=V, **{**sizes, **overrides}))
    if frames_per_unit is not None:
        with torch.no_grad():
            model.duration.out.bias.fill_(math.log1p(frames_per_unit))
    return model.eval()


def batch(seed=1):
    """Two utterances: 5 units / 7 frames and 3 units / 4 frames (zero-frame units in both), right-padded."""
    g = torch.Generator().manual_seed(seed)
    chars = torch.randint(0, N_CHAR_IDS, (2, 5), generator=g)
    tokens = torch.randint(4, TEXT_V, (2, 5), generator=g)
    durations = torch.tensor([[1, 2, 0, 3, 1], [2, 0, 2, 0, 0]])
    codes = torch.randint(0, V, (2, 7, K), generator=g)
    return chars, tokens, torch.tensor([5, 3]), durations, codes, torch.tensor([7, 4])


def test_shapes_and_loss_cover_valid_frames_and_units_only():
    model = make_talker()
    chars, tokens, unit_lengths, durations, codes, code_lengths = batch()
    out = model(chars, tokens, unit_lengths, durations, codes, code_lengths)
    assert out.logits.shape == (2, 7, K, V) and out.log_durations.shape == (2, 5)
    valid = torch.arange(7)[None] < code_lengths[:, None]
    assert torch.allclose(out.code_loss, F.cross_entropy(out.logits[valid].flatten(0, 1), codes[valid].flatten()))
    units = torch.arange(5)[None] < unit_lengths[:, None]
    mse = ((out.log_durations - torch.log1p(durations.float())) ** 2)[units].mean()
    assert torch.allclose(out.duration_loss, mse)
    assert torch.allclose(out.loss, out.code_loss + mse)
    correct, counted = code_accuracy(out.logits, codes, code_lengths)
    assert counted == 7 + 4 and correct.shape == (K,) and (correct <= counted).all()
    # Padding (codes past the length, units past unit_lengths) changes neither the losses nor the real outputs.
    codes2, chars2, tokens2 = codes.clone(), chars.clone(), tokens.clone()
    codes2[1, 4:] = (codes2[1, 4:] + 3) % V
    chars2[1, 3:], tokens2[1, 3:] = 7, 9
    out2 = model(chars2, tokens2, unit_lengths, durations, codes2, code_lengths)
    assert torch.allclose(out.loss, out2.loss, atol=1e-6)
    assert torch.allclose(out.logits[1, :4], out2.logits[1, :4], atol=1e-5)
    assert torch.allclose(out.log_durations[1, :3], out2.log_durations[1, :3], atol=1e-5)
    # A different real character changes the outputs; the duration weight scales the duration loss only.
    chars3 = chars.clone()
    chars3[0, 1] = (chars3[0, 1] + 1) % N_CHAR_IDS
    assert not torch.allclose(model(chars3, tokens, unit_lengths, durations, codes, code_lengths).logits[0],
                              out.logits[0])
    heavy = make_talker(duration_loss_weight=3.0)(chars, tokens, unit_lengths, durations, codes, code_lengths)
    assert torch.allclose(heavy.loss, heavy.code_loss + 3 * heavy.duration_loss)


def test_padded_batch_computes_what_each_row_computes_alone():
    model = make_talker(frames_per_unit=3)
    chars, tokens, unit_lengths, durations, codes, code_lengths = batch()
    out = model(chars, tokens, unit_lengths, durations, codes, code_lengths)
    gen, lengths = model.generate(chars, tokens, unit_lengths=unit_lengths)
    assert lengths.tolist()[1] > 0 and lengths[0] != lengths[1]  # the rows speak different lengths
    assert gen.shape == (2, int(lengths.max()), K) and (gen[1, lengths[1]:] == 0).all()
    for i in range(2):
        n, f = unit_lengths[i], code_lengths[i]
        alone = model(chars[i:i + 1, :n], tokens[i:i + 1, :n], None, durations[i:i + 1, :n], codes[i:i + 1, :f])
        assert torch.allclose(out.logits[i, :f], alone.logits[0], atol=1e-5)
        assert torch.allclose(out.log_durations[i, :n], alone.log_durations[0], atol=1e-5)
        gen_alone, length_alone = model.generate(chars[i:i + 1, :n], tokens[i:i + 1, :n])
        assert length_alone[0] == lengths[i] and torch.equal(gen_alone[0], gen[i, : lengths[i]])


def test_regulate_lengths_on_hand_made_durations():
    durations = torch.tensor([[2, 0, 1, 0], [0, 3, 0, 0], [0, 0, 0, 0]])
    unit, in_unit, valid = regulate_lengths(durations, 4)
    assert valid.tolist() == [[True, True, True, False], [True, True, True, False], [False] * 4]
    # Zero-duration units (leading, inner, trailing) own no frame; each frame counts up inside its unit.
    assert unit[0, :3].tolist() == [0, 0, 2] and in_unit[0, :3].tolist() == [0, 1, 0]
    assert unit[1, :3].tolist() == [1, 1, 1] and in_unit[1, :3].tolist() == [0, 1, 2]
    # Invalid frames still index a real unit (the gather stays in range).
    assert ((unit >= 0) & (unit < 4)).all() and (in_unit >= 0).all()


def test_predicted_durations_round_scale_by_pace_and_are_capped_at_max_frames():
    model = make_talker()  # max_frames 24
    log_dur = torch.log1p(torch.tensor([[5.0, 5.0, 5.0, 5.0, 5.0, 5.0], [2.0, 0.4, 0.6, -0.5, 9.0, 9.0]]))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    d = model.predict_durations(log_dur, mask)
    assert d.tolist() == [[5, 5, 5, 5, 4, 0], [2, 0, 1, 0, 0, 0]]  # cut at 24 in total; padding speaks nothing
    assert model.predict_durations(log_dur, mask, pace=2.0)[1].tolist() == [4, 1, 1, 0, 0, 0]
    huge = torch.full((1, 3), 1e4)  # expm1 overflows to inf: still a finite count, cut at max_frames
    assert model.predict_durations(huge, torch.ones(1, 3, dtype=torch.bool)).tolist() == [[24, 0, 0]]
    # generate obeys the cap: a Talker predicting ~20 frames per unit speaks exactly max_frames.
    chars, tokens, unit_lengths, *_ = batch()
    codes, lengths = make_talker(frames_per_unit=20).generate(chars, tokens, unit_lengths=unit_lengths)
    assert lengths.tolist() == [24, 24] and codes.shape == (2, 24, K)


def test_zero_predicted_frames_give_empty_codes():
    model = make_talker(frames_per_unit=0)
    with torch.no_grad():
        model.duration.out.bias.fill_(-10.0)  # expm1 -> -1: every unit rounds to 0 frames
    chars, tokens, unit_lengths, *_ = batch()
    codes, lengths = model.generate(chars, tokens, unit_lengths=unit_lengths)
    assert codes.shape == (2, 0, K) and lengths.tolist() == [0, 0]


def test_temperature_zero_is_deterministic_and_sampling_follows_the_generator():
    model = make_talker(frames_per_unit=3)
    chars, tokens, unit_lengths, *_ = batch()
    a, la = model.generate(chars, tokens, unit_lengths=unit_lengths)
    b, lb = model.generate(chars, tokens, unit_lengths=unit_lengths, temperature=0.0)
    assert torch.equal(a, b) and torch.equal(la, lb) and ((a >= 0) & (a < V)).all()

    def sample(seed):
        return model.generate(chars, tokens, unit_lengths=unit_lengths, temperature=1.0,
                              generator=torch.Generator().manual_seed(seed))[0]

    assert torch.equal(sample(3), sample(3)) and not torch.equal(sample(3), a)


def test_overfit_two_utterances_then_generate_their_codes_and_lengths():
    model = make_talker(dropout=0.0).train()
    chars, tokens, unit_lengths, durations, codes, code_lengths = batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        out = model(chars, tokens, unit_lengths, durations, codes, code_lengths)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.05 * losses[0]
    model.eval()
    gen, lengths = model.generate(chars, tokens, unit_lengths=unit_lengths)
    assert lengths.tolist() == [7, 4] and gen.shape == (2, 7, K)
    assert torch.equal(gen[0], codes[0]) and torch.equal(gen[1, :4], codes[1, :4]) and (gen[1, 4:] == 0).all()
    unit_mask = torch.arange(5)[None] < unit_lengths[:, None]
    log_dur = model(chars, tokens, unit_lengths, durations, codes, code_lengths).log_durations
    assert torch.equal(model.predict_durations(log_dur, unit_mask), durations)  # zero-frame units included
    correct, counted = code_accuracy(model(chars, tokens, unit_lengths, durations, codes, code_lengths).logits,
                                     codes, code_lengths)
    assert (correct == counted).all()


def test_gradient_checkpointing_covers_both_transformers_and_gives_the_same_gradients():
    chars, tokens, unit_lengths, durations, codes, code_lengths = batch()
    grads = []
    for enabled in (False, True):
        model = make_talker().train()
        model.set_gradient_checkpointing(enabled)
        # The frame decoder (the longer sequence) must recompute too, not only the text encoder.
        assert model.gradient_checkpointing == model.decoder.gradient_checkpointing == enabled
        model(chars, tokens, unit_lengths, durations, codes, code_lengths).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(*grads, atol=1e-6)


def test_validation_names_values():
    with pytest.raises(ValueError, match="d_model=30"):
        TalkerConfig(text_vocab_size=TEXT_V, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="n_kv_heads=2"):
        TalkerConfig(text_vocab_size=TEXT_V, n_heads=3, n_kv_heads=2)
    with pytest.raises(ValueError, match="n_decoder_layers"):
        TalkerConfig(text_vocab_size=TEXT_V, n_decoder_layers=0)
    with pytest.raises(ValueError, match="duration_loss_weight"):
        TalkerConfig(text_vocab_size=TEXT_V, duration_loss_weight=-1.0)
    model = make_talker()
    long = torch.zeros(1, 17, dtype=torch.long)
    with pytest.raises(ValueError, match="max_text_len=16"):
        model.generate(long, long)
    with pytest.raises(ValueError, match="max_frames=24"):
        model(long[:, :3], long[:, :3], None, torch.tensor([[0, 25, 0]]), torch.zeros(1, 25, K, dtype=torch.long))


def test_returned_probabilities_are_the_distributions_the_codes_were_chosen_from():
    model = make_talker(frames_per_unit=2)
    chars, tokens, unit_lengths, *_ = batch()
    codes, lengths = model.generate(chars, tokens, unit_lengths=unit_lengths)
    again, lengths_again, probs = model.generate(chars, tokens, unit_lengths=unit_lengths, return_probs=True)
    assert torch.equal(codes, again) and torch.equal(lengths, lengths_again)
    assert probs.shape == (*codes.shape, V)
    torch.testing.assert_close(probs.sum(-1), torch.ones(codes.shape))
    for row, n in enumerate(lengths.tolist()):  # greedy: each code is its distribution's argmax
        assert torch.equal(probs[row, :n].argmax(-1), codes[row, :n])
