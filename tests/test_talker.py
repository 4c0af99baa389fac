"""Tests for the Talker: shapes, targets and loss masking, causality, padding, KV cache, learning to stop."""

import pytest
import torch
import torch.nn.functional as F

from omni.talker import IGNORE_INDEX, Talker, TalkerConfig, code_accuracy, talker_targets

TEXT_V, V, K = 50, 16, 2



def make_talker(seed=0, **overrides) -> Talker:
    torch.manual_seed(seed)
    sizes = {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64, "max_text_len": 16}
    sizes["max_frames"] = 12
    cfg = TalkerConfig(text_vocab_size=TEXT_V, n_codebooks=K, codebook_size=V, **{**sizes, **overrides})
    return Talker(cfg).eval()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(4, TEXT_V, (2, 5), generator=g)
    codes = torch.randint(0, V, (2, 6, K), generator=g)
    return text, torch.tensor([5, 3]), codes, torch.tensor([6, 4])


def test_targets_put_end_after_the_last_frame_and_ignore_padding():
    codes = torch.arange(12).view(2, 3, 2)
    targets = talker_targets(codes, torch.tensor([3, 1]), codebook_size=V)
    assert targets.shape == (2, 4, 2)
    assert targets[0, :3].tolist() == codes[0].tolist() and targets[0, 3].tolist() == [V, V]
    assert targets[1, 0].tolist() == codes[1, 0].tolist() and targets[1, 1].tolist() == [V, V]
    assert (targets[1, 2:] == IGNORE_INDEX).all()


def test_shapes_and_loss_is_cross_entropy_over_speech_targets_only():
    model = make_talker()
    text, text_lengths, codes, code_lengths = batch()
    logits, loss = model(text, text_lengths, codes, code_lengths)
    assert logits.shape == (2, 7, K, V + 1)
    targets = talker_targets(codes, code_lengths, V)
    keep = targets != IGNORE_INDEX
    assert keep.sum() == (6 + 1 + 4 + 1) * K
    assert torch.allclose(loss, F.cross_entropy(logits[keep], targets[keep]))
    correct, counted = code_accuracy(logits, targets)
    assert counted == keep.sum() and 0 <= correct <= counted
    # Padding (codes past the length, text past text_lengths) changes neither the loss nor the real logits.
    codes2, text2 = codes.clone(), text.clone()
    codes2[1, 4:] = (codes2[1, 4:] + 3) % V
    text2[1, 3:] = 7
    logits2, loss2 = model(text2, text_lengths, codes2, code_lengths)
    assert torch.allclose(loss, loss2, atol=1e-6)
    assert torch.allclose(logits[1, :5], logits2[1, :5], atol=1e-5)
    # The text is conditioning, not a target: a different real text changes the logits but is never predicted.
    text3 = text.clone()
    text3[0, 0] = (text3[0, 0] + 1) % TEXT_V
    assert not torch.allclose(model(text3, text_lengths, codes, code_lengths)[0][0], logits[0])


def test_future_frames_do_not_change_past_logits():
    model = make_talker()
    text, _, codes, _ = batch()
    changed = codes.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % V
    a, _ = model(text, None, codes)
    b, _ = model(text, None, changed)
    # Logits at position j see the codes of frames < j.
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_padded_batch_equals_rows_alone():
    model = make_talker()
    text, text_lengths, codes, code_lengths = batch()
    logits, _ = model(text, text_lengths, codes, code_lengths)
    for i in range(2):
        n, f = text_lengths[i], code_lengths[i]
        alone, _ = model(text[i : i + 1, :n], None, codes[i : i + 1, :f])
        assert torch.allclose(logits[i, : f + 1], alone[0], atol=1e-5)


def test_kv_cache_generation_equals_uncached():
    model = make_talker()
    text, text_lengths, _, _ = batch()
    cached, lengths = model.generate(text, text_lengths=text_lengths, max_frames=10)
    uncached, lengths2 = model.generate(text, text_lengths=text_lengths, max_frames=10, use_cache=False)
    assert cached.shape == (2, 10, K) and torch.equal(cached, uncached) and torch.equal(lengths, lengths2)
    assert ((cached >= 0) & (cached < V)).all()
    sample = {"text_lengths": text_lengths, "max_frames": 10, "temperature": 1.0, "top_k": 5}
    sampled = [
        model.generate(text, **sample, use_cache=c, generator=torch.Generator().manual_seed(3))[0]
        for c in (True, False)
    ]
    assert torch.equal(*sampled)
    # A padded row generates what it generates alone.
    alone, alone_lengths = model.generate(text[1:, :3], max_frames=10)
    assert alone_lengths[0] == lengths[1] and torch.equal(alone[0], cached[1, : lengths[1]])


def test_overfit_then_generate_the_training_codes_and_stop():
    model = make_talker().train()
    text, text_lengths, codes, code_lengths = batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(100):
        logits, loss = model(text, text_lengths, codes, code_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2
    model.eval()
    out, lengths = model.generate(text, text_lengths=text_lengths, max_frames=12)
    # Stopped by END: 6 frames, not max_frames; the shorter row ended at 4 and is padded with 0.
    assert out.shape == (2, 6, K) and lengths.tolist() == [6, 4]
    assert torch.equal(out[0], codes[0]) and torch.equal(out[1, :4], codes[1, :4])
    assert (out[1, 4:] == 0).all()
    logits, _ = model(text, text_lengths, codes, code_lengths)
    correct, counted = code_accuracy(logits, talker_targets(codes, code_lengths, V))
    assert correct == counted


def test_gradient_checkpointing_gives_the_same_gradients():
    text, text_lengths, codes, code_lengths = batch()
    grads = []
    for enabled in (False, True):
        model = make_talker().train()
        model.set_gradient_checkpointing(enabled)
        model(text, text_lengths, codes, code_lengths)[1].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(*grads, atol=1e-6)


def test_validation_names_values():
    with pytest.raises(ValueError, match="d_model=30"):
        TalkerConfig(text_vocab_size=TEXT_V, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="n_kv_heads=2"):
        TalkerConfig(text_vocab_size=TEXT_V, n_heads=3, n_kv_heads=2)
    with pytest.raises(ValueError, match="codebook_size"):
        TalkerConfig(text_vocab_size=TEXT_V, codebook_size=0)
    with pytest.raises(ValueError, match="frame_dropout=1"):
        TalkerConfig(text_vocab_size=TEXT_V, frame_dropout=1.0)
    model = make_talker()
    with pytest.raises(ValueError, match="max_frames=13"):
        model.generate(batch()[0], max_frames=13)
    with pytest.raises(ValueError, match="text length 17"):
        model(torch.zeros(1, 17, dtype=torch.long), None, torch.zeros(1, 2, K, dtype=torch.long))


def test_frame_dropout_hides_previous_codes_in_training_only():
    text, text_lengths, codes, code_lengths = batch()
    plain, dropping = make_talker(), make_talker(frame_dropout=0.5)
    assert torch.equal(plain(text, text_lengths, codes, code_lengths)[0],
                       dropping(text, text_lengths, codes, code_lengths)[0])  # eval: nothing hidden

    dropping.train()  # dropout is 0, so frame dropout is the only randomness
    torch.manual_seed(3)
    logits, _ = dropping(text, text_lengths, codes, code_lengths)
    torch.manual_seed(3)
    hidden = torch.rand(codes.shape[0], codes.shape[1] + 1) < 0.5  # the draw forward makes: one per input frame
    assert hidden[:, 1:].any() and not hidden[:, 1:].all()
    # Input j is frame j-1's codes; hiding it is feeding START there instead.
    shown = codes.masked_fill(hidden[:, 1:, None], V)
    assert torch.allclose(logits, plain(text, text_lengths, shown, code_lengths)[0], atol=1e-6)
    assert not torch.allclose(logits, plain(text, text_lengths, codes, code_lengths)[0], atol=1e-3)
