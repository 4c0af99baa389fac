"""ViT encoder, InfoNCE, caption retrieval and the Stage-C contrastive / classification model."""

import math

import pytest
import torch

from omni.contrastive import (
    ContrastiveConfig,
    ContrastiveModel,
    TextEncoderConfig,
    caption_retrieval,
    info_nce,
    mean_pool,
)
from omni.thinker import Thinker, ThinkerConfig
from omni.vision_encoder import VisionConfig, VisionEncoder


def tiny_vision(**kw) -> VisionConfig:
    return VisionConfig(**{"image_size": 16, "patch_size": 4, "d_model": 32, "n_layers": 2, "n_heads": 2,
                           "n_kv_heads": 1, "d_ff": 64, **kw})


def tiny_contrastive(**kw) -> ContrastiveConfig:
    text = TextEncoderConfig(vocab_size=40, pad_id=0, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
                             max_len=16)
    return ContrastiveConfig(**{"vision": tiny_vision(), "text": text, "embed_dim": 16, **kw})


@pytest.mark.parametrize("image_size,patch_size", [(16, 4), (32, 8), (24, 8), (16, 16)])
def test_vit_shapes_and_patch_count(image_size, patch_size):
    torch.manual_seed(0)
    cfg = tiny_vision(image_size=image_size, patch_size=patch_size)
    assert cfg.n_patches == (image_size // patch_size) ** 2
    cls, patches = VisionEncoder(cfg)(torch.randn(3, 3, image_size, image_size))
    assert cls.shape == (3, 32)
    assert patches.shape == (3, (image_size // patch_size) ** 2, 32)
    assert torch.isfinite(cls).all() and torch.isfinite(patches).all()


def test_vision_config_errors_name_the_values():
    with pytest.raises(ValueError, match=r"image_size=30 .*patch_size=8"):
        VisionConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match=r"d_model=30 .*n_heads=4"):
        VisionConfig(d_model=30, n_heads=4, n_kv_heads=4)
    with pytest.raises(ValueError, match="patch_size"):
        VisionConfig(patch_size=0)
    model = VisionEncoder(tiny_vision())
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\).*\(2, 3, 32, 32\)"):
        model(torch.randn(2, 3, 32, 32))


def test_patch_tokens_follow_their_patch():
    """Changing one patch changes only that patch's token: non-overlapping patches, row-major grid."""
    torch.manual_seed(0)
    embed = VisionEncoder(tiny_vision()).patch_embed
    images = torch.randn(1, 3, 16, 16)
    edited = images.clone()
    edited[:, :, 4:8, 8:12] += 1.0  # row 1, column 2 of the 4x4 grid -> patch index 6
    a, b = embed(images), embed(edited)
    assert a.shape == (1, 16, 32)
    changed = (a - b).abs().amax(dim=-1)[0] > 1e-6
    assert changed.nonzero().flatten().tolist() == [6]


def test_info_nce_matches_hand_computation():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # Scaled cosine logits: [[2, 1.2], [0, 1.6]]; targets on the diagonal, both directions.
    i2t = (-math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) - math.log(math.exp(1.6) / (1 + math.exp(1.6)))) / 2
    t2i = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))) / 2
    assert info_nce(image, text, 2.0).item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    # Normalisation happens inside: scaling the inputs does not change the loss.
    assert info_nce(3 * image, 0.5 * text, 2.0).item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    assert info_nce(image, text, 2.0, positives=torch.eye(2, dtype=torch.bool)).item() == pytest.approx(
        (i2t + t2i) / 2, rel=1e-6)


def test_info_nce_with_duplicate_captions_as_positives():
    image = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # the same caption twice
    both = torch.ones(2, 2, dtype=torch.bool)
    # image->text rows are constant ([1, 1] and [0.6, 0.6]) with uniform targets -> log 2 each;
    # text->image rows are [1, 0.6] with targets (0.5, 0.5).
    t2i = -0.5 * (math.log(math.exp(1) / (math.exp(1) + math.exp(0.6))) + math.log(
        math.exp(0.6) / (math.exp(1) + math.exp(0.6))))
    assert info_nce(image, text, 1.0, positives=both).item() == pytest.approx((math.log(2) + t2i) / 2, rel=1e-6)


def test_caption_retrieval_counts_equal_caption_text_as_hit():
    e = torch.eye(3)
    text = torch.stack([e[0], e[0], e[1], e[2]])
    image = torch.stack([e[0], e[0] + 0.1 * e[2], e[2] + 0.5 * e[1], e[2]])
    captions = ["a red circle", "a red circle", "a blue square", "a green star"]
    out = caption_retrieval(image, text, captions, ks=(1, 2))
    assert out["n_captions"] == 3 and out["n_images"] == 4
    # image 1 retrieves "a red circle" (text of image 0 too): a hit; image 2 retrieves the star caption: a miss.
    assert out["i2t_r1"] == pytest.approx(0.75)
    assert out["i2t_r2"] == pytest.approx(1.0)
    assert out["t2i_r1"] == pytest.approx(1.0)


def test_caption_retrieval_groups_captions_of_one_image():
    e = torch.eye(2)
    # Two captions of image "x" (COCO-style), one of image "y"; x's embedding is closest to its second caption.
    image = torch.stack([e[0], e[0], e[1]])
    text = torch.stack([e[1] * 0.9 + e[0] * 0.1, e[0], e[1]])
    out = caption_retrieval(image, text, ["c1", "c2", "c3"], image_keys=["x", "x", "y"], ks=(1,))
    assert out["n_images"] == 2 and out["n_captions"] == 3
    assert out["i2t_r1"] == pytest.approx(1.0)
    assert out["t2i_r1"] == pytest.approx(2 / 3)  # "c1" retrieves image y
    with pytest.raises(ValueError, match="3 captions"):
        caption_retrieval(image[:2], text, ["c1", "c2", "c3"])


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert mean_pool(hidden, torch.tensor([[True, True, False]])).item() == pytest.approx(2.0)


def test_contrastive_model_with_text_encoder_trains_everything():
    torch.manual_seed(0)
    model = ContrastiveModel(tiny_contrastive())
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    ids = torch.tensor([[1, 5, 6, 0], [1, 7, 0, 0], [1, 8, 9, 10]])
    mask = ids != 0
    out, loss = model(torch.randn(3, 3, 16, 16), ids, text_mask=mask)
    assert out.logits.shape == (3, 3) and out.image_emb.shape == (3, 16) and out.text_emb.shape == (3, 16)
    assert torch.allclose(out.image_emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert 0.0 <= out.accuracy.item() <= 1.0
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    # Padding tokens do not change a caption's embedding.
    model.eval()
    longer = torch.cat([ids, torch.zeros(3, 3, dtype=torch.long)], dim=1)
    assert torch.allclose(model.encode_text(ids, mask), model.encode_text(longer, longer != 0), atol=1e-5)


def test_logit_scale_is_clamped():
    model = ContrastiveModel(tiny_contrastive())
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0)


def test_contrastive_with_frozen_thinker_text_tower():
    torch.manual_seed(0)
    thinker = Thinker(ThinkerConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
                                    max_seq_len=16))
    before = {k: v.clone() for k, v in thinker.state_dict().items()}
    with pytest.raises(ValueError, match="thinker="):
        ContrastiveModel(tiny_contrastive(use_thinker_for_text=True))
    model = ContrastiveModel(tiny_contrastive(use_thinker_for_text=True), thinker=thinker)
    assert model.text_encoder is None
    model.train()
    assert model.vision.training and not model.thinker.training
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([[1, 5, 6], [1, 7, 8]])
    _, loss = model(torch.randn(2, 3, 16, 16), ids, text_mask=ids != 0)
    loss.backward()
    assert all(p.grad is None for p in model.thinker.parameters())
    assert model.text_proj.weight.grad is not None and model.vision.patch_embed.proj.weight.grad is not None
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in thinker.state_dict().items())


def test_classification_objective():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="n_classes"):
        ContrastiveConfig(objective="classify", n_classes=1)
    with pytest.raises(ValueError, match="objective"):
        ContrastiveConfig(objective="clip")
    model = ContrastiveModel(ContrastiveConfig(vision=tiny_vision(), objective="classify", n_classes=5))
    labels = torch.tensor([0, 4, 2, 2])
    out, loss = model(torch.randn(4, 3, 16, 16), labels=labels)
    assert out.logits.shape == (4, 5)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits, labels).item())
    assert out.accuracy.item() == pytest.approx((out.logits.argmax(-1) == labels).float().mean().item())
    assert model(torch.randn(4, 3, 16, 16))[1] is None


def test_image_only_forward_has_no_loss():
    model = ContrastiveModel(tiny_contrastive())
    out, loss = model(torch.randn(2, 3, 16, 16))
    assert loss is None and out.logits is None and out.image_emb.shape == (2, 16)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = ContrastiveModel(tiny_contrastive())
    images, ids = torch.randn(3, 3, 16, 16), torch.randint(1, 40, (3, 5))
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(enabled)
        model(images, ids)[1].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize("objective", ["contrastive", "classify"])
def test_a_few_steps_overfit_a_small_batch(objective):
    torch.manual_seed(0)
    cfg = tiny_contrastive(objective=objective, n_classes=4 if objective == "classify" else 0)
    model = ContrastiveModel(cfg)
    images = torch.randn(8, 3, 16, 16)
    ids = torch.randint(1, 40, (8, 6))
    labels = torch.arange(8) % 4
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        if objective == "classify":
            _, loss = model(images, labels=labels)
        else:
            _, loss = model(images, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
