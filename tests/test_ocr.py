"""OCR model: exact output lengths, padding invariance, CTC overfitting on two rendered lines."""

import math
import random

import numpy as np
import pytest
import torch

from omni.ctc import CharVocab, ctc_transcripts
from omni.data.images import OcrSource, line_to_tensor
from omni.ocr import OcrConfig, OcrModel
from omni.synthetic.ocr_lines import find_fonts, render_line


def tiny_ocr(**kw) -> OcrModel:
    cfg = OcrConfig(**{"vocab_size": 12, "height": 16, "conv_channels": 8, "d_model": 32, "n_layers": 1,
                       "n_heads": 2, "n_kv_heads": 1, "d_ff": 64, **kw})
    return OcrModel(cfg).eval()


def test_output_lengths_are_exact():
    torch.manual_seed(0)
    model = tiny_ocr()
    assert model.width_stride == 4
    for width in [1, 2, 3, 4, 5, 7, 8, 9, 31, 32, 33, 50]:
        log_probs, _ = model(torch.rand(1, 1, 16, width), torch.tensor([width]))
        assert log_probs.shape == (1, math.ceil(width / 4), 12)
        assert model.output_lengths(torch.tensor([width])).item() == math.ceil(width / 4)
    # The source's alignment check uses the same stride.
    assert OcrSource([], vocab=CharVocab("ab"), height=16).width_stride == model.width_stride


def test_log_probs_are_normalised():
    log_probs, loss = tiny_ocr()(torch.rand(2, 1, 16, 20), torch.tensor([20, 13]))
    assert loss is None and log_probs.dtype == torch.float32
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 5), atol=1e-5)


def test_padding_does_not_change_valid_frames():
    torch.manual_seed(0)
    model = tiny_ocr()
    a, b = torch.rand(1, 1, 16, 37), torch.rand(1, 1, 16, 64)
    alone, _ = model(a, torch.tensor([37]))
    batch = torch.zeros(2, 1, 16, 64)
    batch[0, :, :, :37], batch[1] = a[0], b[0]
    together, _ = model(batch, torch.tensor([37, 64]))
    frames = model.output_lengths(torch.tensor([37])).item()
    assert torch.allclose(alone[0], together[0, :frames], atol=1e-5)
    # Junk in the padded area is masked out as well.
    batch[0, :, :, 37:] = 1.0
    junk, _ = model(batch, torch.tensor([37, 64]))
    assert torch.allclose(alone[0], junk[0, :frames], atol=1e-5)


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="vocab_size"):
        OcrModel(OcrConfig())
    with pytest.raises(ValueError, match="height=4"):
        OcrConfig(vocab_size=5, height=4)
    with pytest.raises(ValueError, match=r"d_model=30 .*n_heads=4"):
        OcrConfig(vocab_size=5, d_model=30, n_heads=4, n_kv_heads=4)
    with pytest.raises(ValueError, match=r"\(B, 1, 16, W\)"):
        tiny_ocr()(torch.rand(1, 1, 32, 40), torch.tensor([40]))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = tiny_ocr().train()
    images, widths = torch.rand(2, 1, 16, 40), torch.tensor([40, 30])
    labels, label_lengths = torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2])
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(enabled)
        model(images, widths, labels, label_lengths)[1].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_ctc_overfits_two_lines():
    torch.manual_seed(0)
    texts = ["hello 42", "Quiz, box!"]
    rng, nprng = random.Random(0), np.random.default_rng(0)
    images = [line_to_tensor(render_line(t, rng, nprng, find_fonts(), 16), 16) for t in texts]
    vocab = CharVocab.from_texts(texts)
    widths = torch.tensor([img.shape[-1] for img in images])
    batch = torch.zeros(2, 1, 16, int(widths.max()))
    for i, img in enumerate(images):
        batch[i, :, :, : img.shape[-1]] = img
    labels = torch.zeros(2, 10, dtype=torch.long)
    for i, t in enumerate(texts):
        labels[i, : len(t)] = torch.tensor(vocab.encode(t))
    label_lengths = torch.tensor([len(t) for t in texts])
    model = tiny_ocr(vocab_size=len(vocab), conv_channels=16).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        _, loss = model(batch, widths, labels, label_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    model.eval()
    log_probs, _ = model(batch, widths)
    decoded = ctc_transcripts(log_probs, model.output_lengths(widths), vocab)
    assert decoded == texts
