"""OmniModel: placeholder expansion, batched fusion, assistant-only loss, freezing, the new-token row mask."""

import pytest
import torch
import torch.nn.functional as F

from omni.audio_encoder import AsrModel, AudioEncoder, AudioEncoderConfig
from omni.chat import AUDIO_TOKEN_ID, IGNORE_INDEX, IMAGE_TOKEN_ID, expand_placeholders, sft_targets
from omni.components import vision_encoder_part
from omni.config import to_dict
from omni.omni_model import OmniConfig, OmniModel, greedy_exact_match
from omni.thinker import Thinker, ThinkerConfig
from omni.training import adamw
from omni.vision_encoder import VisionConfig, VisionEncoder

THINKER = ThinkerConfig(vocab_size=60, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=64, max_seq_len=96)
AUDIO = AudioEncoderConfig(n_mels=16, d_model=24, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=32, conv_channels=4,
                           dropout=0.2)
VISION = VisionConfig(image_size=16, patch_size=4, d_model=24, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=32,
                      dropout=0.2)
NEW_ROWS = [4, 5, 6, 7]


def model(**kwargs) -> OmniModel:
    torch.manual_seed(0)
    return OmniModel.from_configs(OmniConfig(**kwargs), thinker=THINKER, audio=AUDIO, vision=VISION)


def conversation(n_image: int, n_audio: list[int], answer=(20, 21)):
    """[bos, <|im_start|>, 10, <image>?, <audio>?, 11, <|im_end|>, <|im_start|>, 12, answer..., <|im_end|>]"""
    ids = [2, 4, 10] + [IMAGE_TOKEN_ID] * n_image + [AUDIO_TOKEN_ID] * len(n_audio) + [11, 5, 4, 12, *answer, 5]
    mask = [False] * (len(ids) - len(answer) - 1) + [True] * (len(answer) + 1)
    return expand_placeholders(ids, mask, image_tokens=model_tokens, audio_tokens=n_audio)


model_tokens = 4  # "pooled" with pool 2 on the 4x4 grid of VISION


def batch_of(samples):
    T = max(len(ids) for ids, _ in samples)
    ids = torch.zeros(len(samples), T, dtype=torch.long)
    mask = torch.zeros(len(samples), T, dtype=torch.bool)
    for i, (s_ids, s_mask) in enumerate(samples):
        ids[i, :len(s_ids)] = torch.tensor(s_ids)
        mask[i, :len(s_mask)] = torch.tensor(s_mask)
    return ids, sft_targets(ids, mask)


def test_image_token_counts_per_mode():
    assert model(image_tokens="cls").image_token_count == 1
    assert model(image_tokens="pooled", image_pool=2).image_token_count == 4
    assert model(image_tokens="patches").image_token_count == 16
    with pytest.raises(ValueError, match="image_pool=3"):
        model(image_tokens="pooled", image_pool=3)
    with pytest.raises(ValueError, match="image_tokens"):
        OmniConfig(image_tokens="all")
    assert OmniModel.audio_token_count(101) == 13  # 1.01 s at 100 Hz -> 12.5 Hz frames, rounded up by the convs


def test_expand_placeholders():
    ids, mask = expand_placeholders([2, IMAGE_TOKEN_ID, 9, AUDIO_TOKEN_ID, 5], [False, False, False, False, True],
                                    image_tokens=3, audio_tokens=[2])
    assert ids == [2, 6, 6, 6, 9, 7, 7, 5] and mask == [False] * 7 + [True]
    with pytest.raises(ValueError, match="1 <audio> placeholders but 0 audio clips"):
        expand_placeholders([AUDIO_TOKEN_ID], [False], image_tokens=1)


def test_fused_embeddings_match_a_per_sample_reference():
    m = model(image_tokens="pooled").eval()
    samples = [conversation(1, [7]), conversation(0, [3]), conversation(1, []), conversation(0, [])]
    ids, _ = batch_of(samples)
    images, mel = torch.randn(2, 3, 16, 16), torch.randn(2, 56, 16)
    mel_lengths = torch.tensor([56, 20])  # 56 mel frames -> 7 tokens, 20 -> 3
    fused = m.embed_inputs(ids, images=images, mel=mel, mel_lengths=mel_lengths)
    img_feats = m.encode_images(images)
    aud_feats, aud_len = m.encode_audio(mel, mel_lengths)
    assert aud_len.tolist() == [7, 3]
    text = m.thinker.embed(ids)
    expected = text.clone()
    expected[0, ids[0] == IMAGE_TOKEN_ID] = img_feats[0]
    expected[0, ids[0] == AUDIO_TOKEN_ID] = aud_feats[0, :7]
    expected[1, ids[1] == AUDIO_TOKEN_ID] = aud_feats[1, :3]
    expected[2, ids[2] == IMAGE_TOKEN_ID] = img_feats[1]
    torch.testing.assert_close(fused, expected)
    assert not torch.equal(fused, text)
    with pytest.raises(ValueError, match="placeholder slots"):
        m.embed_inputs(ids, images=images[:1], mel=mel, mel_lengths=mel_lengths)


def test_loss_is_on_assistant_tokens_only_and_padding_does_not_leak():
    m = model(image_tokens="pooled").eval()
    ids, targets = batch_of([conversation(1, [], answer=(20, 21, 22)), conversation(0, [])])
    images = torch.randn(1, 3, 16, 16)
    logits, loss = m(ids, targets=targets, images=images)
    # Exactly the answer tokens and <|im_end|> are targets, each predicted from the position before it.
    assert targets[0][targets[0] != IGNORE_INDEX].tolist() == [20, 21, 22, 5]
    assert targets[1][targets[1] != IGNORE_INDEX].tolist() == [20, 21, 5]
    keep = targets != IGNORE_INDEX
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], targets[keep]))
    # Row 1 is right-padded; alone it gives the same logits on its real tokens (causality hides the padding).
    n = int((ids[1] != 0).sum())
    alone, _ = m(ids[1:2, :n])
    torch.testing.assert_close(logits[1:2, :n], alone, atol=1e-5, rtol=1e-5)


def test_greedy_exact_match_equals_generation():
    m = model().eval()
    prompt = torch.tensor([[2, 4, 10, 11, 5, 4, 12]])
    generated = m.generate(prompt, max_new_tokens=5)
    full = torch.cat([prompt, generated], dim=1)
    loss_mask = torch.zeros_like(full, dtype=torch.bool)
    loss_mask[:, prompt.shape[1]:] = True
    targets = sft_targets(full, loss_mask)
    logits, _ = m(full, targets=targets)
    assert greedy_exact_match(logits, targets).tolist() == [True]
    wrong = full.clone()
    wrong[0, -2] = (wrong[0, -2] + 1) % THINKER.vocab_size
    assert greedy_exact_match(m(wrong)[0], sft_targets(wrong, loss_mask)).tolist() == [False]


def test_freeze_flags_grads_optimizer_and_eval_mode():
    m = model(image_tokens="pooled")
    m.set_trainable(thinker=False, audio_encoder=False, vision_encoder=True, projectors=True)
    m.train()
    assert not m.audio_encoder.training and m.vision_encoder.training and not m.thinker.training
    ids, targets = batch_of([conversation(1, [5])])
    _, loss = m(ids, targets=targets, images=torch.randn(1, 3, 16, 16), mel=torch.randn(1, 40, 16),
                mel_lengths=torch.tensor([40]))
    loss.backward()
    for name, p in m.named_parameters():
        trains = name.startswith(("vision_encoder.", "audio_projector.", "vision_projector."))
        assert p.requires_grad == trains, name
        assert (p.grad is not None) == trains, name
    groups = m.parameter_groups()
    assert list(groups) == ["projectors", "embeddings", "thinker", "audio_encoder", "vision_encoder"]
    opt = adamw([{"params": ps, "lr": 1e-3, "name": n} for n, ps in groups.items()], lr=1e-3, weight_decay=0.1)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in m.parameters() if p.requires_grad}
    assert len(opt.param_groups) == 10  # fixed layout whatever is frozen: state restores group by group
    m.set_trainable(thinker=True, audio_encoder=True, vision_encoder=True, projectors=True)
    assert all(p.requires_grad for p in m.parameters()) and m.audio_encoder.training


@pytest.mark.parametrize("tied", [True, False])
def test_new_token_rows_train_and_every_other_row_stays_bitwise(tied):
    torch.manual_seed(0)
    cfg = ThinkerConfig(**{**THINKER.__dict__, "tie_embeddings": tied})
    m = OmniModel.from_configs(OmniConfig(image_tokens="pooled"), thinker=cfg, audio=AUDIO, vision=VISION)
    before = [w.detach().clone() for w in m.embedding_matrices()]
    m.set_trainable(thinker=False, audio_encoder=False, vision_encoder=False, projectors=True,
                    embedding_rows=NEW_ROWS)
    groups = m.parameter_groups()
    opt = adamw([{"params": ps, "lr": 1e-2, "name": n} for n, ps in groups.items()], lr=1e-2, weight_decay=0.1)
    for g in opt.param_groups:  # what sft_omni.py does: no decoupled decay on the row-masked matrix
        if g["name"] == "embeddings":
            g["weight_decay"] = 0.0
    ids, targets = batch_of([conversation(1, [4]), conversation(0, [2])])
    for _ in range(5):
        _, loss = m(ids, targets=targets, images=torch.randn(1, 3, 16, 16), mel=torch.randn(2, 32, 16),
                    mel_lengths=torch.tensor([32, 16]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in m.parameters() if p.grad is not None], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    others = [i for i in range(cfg.vocab_size) if i not in NEW_ROWS]
    for w0, w in zip(before, m.embedding_matrices()):
        assert torch.equal(w0[others], w.detach()[others])
        assert not torch.equal(w0[[4, 5]], w.detach()[[4, 5]])  # <|im_start|> (input) and <|im_end|> (target)
    assert all(not p.requires_grad for p in groups["thinker"])
    # With decoupled weight decay the masked rows would move although their gradient is zero: the reason for wd 0.
    decayed = adamw([{"params": m.embedding_matrices()}], lr=1e-2, weight_decay=0.1)
    _, loss = m(ids, targets=targets, images=torch.randn(1, 3, 16, 16), mel=torch.randn(2, 32, 16),
                mel_lengths=torch.tensor([32, 16]))
    loss.backward()
    snapshot = m.thinker.embed_tokens.weight.detach().clone()
    decayed.step()
    assert not torch.equal(snapshot[others], m.thinker.embed_tokens.weight.detach()[others])
    # Unfreezing the Thinker removes the mask: every row gets its gradient.
    m.set_trainable(thinker=True, audio_encoder=False, vision_encoder=False, projectors=True)
    m.zero_grad(set_to_none=True)
    m(ids, targets=targets, images=torch.randn(1, 3, 16, 16), mel=torch.randn(2, 32, 16),
      mel_lengths=torch.tensor([32, 16]))[1].backward()
    assert m.thinker.embed_tokens.weight.grad[[10, 20]].abs().sum() > 0


def test_load_stage_weights_takes_the_encoder_parts():
    m = model()
    thinker = {k: torch.randn_like(v) for k, v in m.thinker.state_dict().items()}
    torch.manual_seed(1)
    asr = AsrModel(AudioEncoder(AUDIO), vocab_size=12).state_dict()  # encoder.* + head.*
    vit = {f"vision.{k}": v for k, v in VisionEncoder(VISION).state_dict().items()}  # Stage C ContrastiveModel
    vit["temperature"] = torch.tensor(1.0)
    bare, vit_cfg = vision_encoder_part(vit, {"vision": to_dict(VISION), "objective": "contrastive"})  # vision.pt
    assert vit_cfg == to_dict(VISION) and "temperature" not in bare
    m.load_stage_weights(thinker=thinker, audio=asr, vision=bare)
    assert torch.equal(m.audio_encoder.encoder.layers[0].mlp.gate_proj.weight,
                       asr["encoder.layers.0.mlp.gate_proj.weight"])
    assert torch.equal(m.vision_encoder.pos_embed, vit["vision.pos_embed"])
    assert torch.equal(m.thinker.norm.weight, thinker["norm.weight"])
    assert vision_encoder_part(bare, vit_cfg) == (bare, vit_cfg)  # a bare VisionEncoder file is taken as it is
    with pytest.raises(RuntimeError, match="Missing key"):
        m.load_stage_weights(thinker=thinker, audio={"head.proj.weight": torch.zeros(1)}, vision=bare)
    # Parameter names carry the export's component prefixes.
    assert {n.split(".")[0] for n, _ in m.named_parameters()} == {
        "thinker", "audio_encoder", "vision_encoder", "audio_projector", "vision_projector"}


def test_assembled_from_built_parts():
    """The parts given are the model's own modules (no random copy swapped out); only missing projectors are born."""
    thinker, vit = Thinker(THINKER), VisionEncoder(VISION)
    encoder = AudioEncoder(AUDIO)
    projector = OmniModel.new_projector(OmniConfig(), VISION.d_model, THINKER)
    m = OmniModel(OmniConfig(), thinker=thinker, audio_encoder=encoder, vision_encoder=vit, vision_projector=projector)
    assert m.thinker is thinker and m.audio_encoder.encoder is encoder and m.vision_encoder is vit
    assert m.vision_projector is projector and m.audio_projector.fc1.in_features == AUDIO.d_model
    with pytest.raises(ValueError, match="audio_projector given without its encoder"):
        OmniModel(OmniConfig(), thinker=thinker, audio_projector=projector)


def test_from_configs_keeps_the_seeded_init():
    """from_configs builds Thinker, audio encoder, its projector, ViT, its projector in this order from the RNG, the
    order Stage E's seeded start has always used."""
    m = model()  # seeds 0
    torch.manual_seed(0)
    parts = [Thinker(THINKER), AudioEncoder(AUDIO), OmniModel.new_projector(OmniConfig(), AUDIO.d_model, THINKER),
             VisionEncoder(VISION), OmniModel.new_projector(OmniConfig(), VISION.d_model, THINKER)]
    for name, part in zip(("thinker", "audio_encoder.encoder", "audio_projector", "vision_encoder",
                           "vision_projector"), parts):
        mine = m.get_submodule(name).state_dict()
        assert all(torch.equal(mine[k], v) for k, v in part.state_dict().items()), name
