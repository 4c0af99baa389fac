"""One synthetic training step per stage, for benchmarks and memory checks (scripts/bench.py, measure_memory.py).

`build_stage(key, config_dir, device)` reads the stage's `<config_dir>/*_tiny.json`, builds the stage's model and
AdamW with the stage script's own builder (omni.builders; same precision, gradient checkpointing
and torch.compile as its train section sets them) and returns a `StageStep` whose `step()` runs one full training
step (forward, loss, backward, optimizer step) on fixed random tensors of the shapes the stage trains on. Random
inputs measure the model and optimizer only; data loading is measured separately (scripts/bench.py, Stage A). What
a step leaves out: gradient clipping, the LR schedule and logging (cheap, and they live in omni.training.Run, which
owns checkpoints and run dirs a benchmark must not create).

Shapes that the configs do not fix follow the demo data (omni/synthetic): speech clips of about 2 s (200 mel
frames, 24 transcript characters), OCR lines at the config's static max_width, captions padded to
max_text_length, and for Stage E conversations of 160 tokens that each carry one image and one 2 s clip (a demo
conversation carries at most one of them, so this is an upper bound on the mix).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from omni import builders
from omni.chat import SPECIAL_TOKENS
from omni.config import load_config_file
from omni.text_frontend import N_CHAR_IDS
from omni.training.run import AMP_DTYPES

# Synthetic sizes the configs leave open (see the module docstring).
SPEECH_MEL_FRAMES = 200  # 2 s at 100 Hz
TRANSCRIPT_CHARS = 24
CTC_VOCAB = 29  # blank + a-z + apostrophe + space (the normalised transcripts' alphabet)
OCR_VOCAB = 80  # characters of printed English lines + blank
OCR_LABEL_CHARS = 16
TALKER_TEXT_UNITS = TRANSCRIPT_CHARS + 2  # the Talker reads <bos>, the characters, <eos> (omni.text_frontend)
SFT_SEQ_LEN = 160
SFT_ANSWER_TOKENS = 16

STAGES = ("A", "B", "C", "OCR", "D-codec", "D-talker", "vocoder", "E")


@dataclass
class StageStep:
    key: str  # one of STAGES
    name: str  # what is trained, for tables
    config: str  # the config file it was built from
    model: nn.Module
    batch: int  # samples per step
    step: Callable[[], torch.Tensor]  # one training step on the synthetic batch; returns the loss (detached)
    precision: str  # the config's train.precision (autocast dtype)
    tokens: int | None = None  # sequence positions per step (Thinker / Talker / Stage E)
    flops_per_token: float | None = None  # training FLOPs per token (Thinker: 6N + attention)
    shapes: dict = field(default_factory=dict)  # the synthetic input shapes, for the report

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def thinker_flops_per_token(n_params: int, n_layers: int, attn_width: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weight matmuls (forward 2N + backward 4N; N counts the tied
    embedding once, as the lm_head matmul is real compute) plus 12 * layers * (heads * head_dim) * seq_len for
    QK^T and attention x V, forward and backward (PaLM, Chowdhery et al. 2022, appendix B; causal masking is not
    subtracted, by that convention)."""
    return 6 * n_params + 12 * n_layers * attn_width * seq_len


def _train_step(model: nn.Module, optimizers: list[torch.optim.Optimizer], device: torch.device, precision: str,
                loss_fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """forward + backward + step under the stage's autocast, as omni.training.Run does it (no host sync)."""
    amp = AMP_DTYPES[precision]  # fp16 would also need a GradScaler; no tiny config uses it

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = loss_fn()
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.detach()  # a device tensor: reading it is the caller's choice (a host sync)

    model.train()
    return step


def _wrap(model: nn.Module, train) -> nn.Module:
    """What omni.training.Run.setup applies from train: gradient checkpointing and torch.compile. Returns the module
    to call (compiled or not); parameters and methods stay on `model`."""
    if train.grad_checkpointing:
        if not hasattr(model, "set_gradient_checkpointing"):
            raise ValueError(f"train.grad_checkpointing: {type(model).__name__} has no set_gradient_checkpointing")
        model.set_gradient_checkpointing(True)
    return torch.compile(model) if train.compile else model


def _cfg_path(config_dir: Path, name: str) -> str:
    return str(Path(config_dir) / name)


def _thinker(config_dir, device, batch_size, overrides):
    from omni.stages import TextStage

    path = _cfg_path(config_dir, "thinker_tiny.json")
    cfg = load_config_file(TextStage, path, overrides)
    built = builders.build_text(cfg)
    model = built.model.to(device)
    net = _wrap(model, cfg.train)
    opt = built.optimizer()
    B, T = batch_size or cfg.train.batch_size, cfg.data.seq_len
    tokens = torch.randint(0, cfg.model.vocab_size, (B, T + 1), device=device)
    step = _train_step(model, [opt], device, cfg.train.precision,
                       lambda: net(tokens[:, :-1], targets=tokens[:, 1:])[1])
    m = cfg.model
    attn_width = m.n_heads * (m.head_dim or m.d_model // m.n_heads)
    flops = thinker_flops_per_token(sum(p.numel() for p in model.parameters()), m.n_layers, attn_width, T)
    return StageStep("A", "thinker LM", path, model, B, step, cfg.train.precision, tokens=B * T,
                     flops_per_token=flops, shapes={"tokens": [B, T]})


def _audio_encoder(config_dir, device, batch_size, overrides):
    import dataclasses

    from omni.audio import spec_augment
    from omni.ctc import ctc_loss
    from omni.stages import AudioStage

    path = _cfg_path(config_dir, "audio_enc_tiny.json")
    cfg = load_config_file(AudioStage, path, overrides)
    built = builders.build_audio(cfg, vocab_size=CTC_VOCAB)
    model = built.model.to(device)
    net = _wrap(model, cfg.train)
    opt = built.optimizer()
    B, T = batch_size or cfg.train.batch_size, cfg.data.max_mel_length or SPEECH_MEL_FRAMES
    mel = torch.randn(B, T, cfg.model.encoder.n_mels, device=device)
    mel_lengths = torch.full((B,), T, dtype=torch.long, device=device)
    labels = torch.randint(1, CTC_VOCAB, (B, TRANSCRIPT_CHARS), device=device)
    label_lengths = torch.full((B,), TRANSCRIPT_CHARS, dtype=torch.long, device=device)
    augment = {k: v for k, v in dataclasses.asdict(cfg.data.spec_augment).items() if k != "enabled"}

    def loss():  # as train_audio_enc.py: SpecAugment in the step, CTC outside the model
        x = spec_augment(mel, mel_lengths, **augment) if cfg.data.spec_augment.enabled else mel
        log_probs, _ = net(x, mel_lengths)
        return ctc_loss(log_probs, model.output_lengths(mel_lengths), labels, label_lengths)

    return StageStep("B", "audio encoder + CTC", path, model, B, _train_step(model, [opt], device,
                     cfg.train.precision, loss), cfg.train.precision, shapes={"mel": [B, T, cfg.model.encoder.n_mels]})


def _vision(config_dir, device, batch_size, overrides):
    from omni.stages import VisionStage

    path = _cfg_path(config_dir, "vision_tiny.json")
    cfg = load_config_file(VisionStage, path, overrides)
    if cfg.model.use_thinker_for_text or cfg.model.objective != "contrastive":
        raise ValueError(f"{path}: the benchmark covers the default contrastive objective with its own text tower")
    if cfg.model.text.vocab_size == 0:  # 0 = the Stage-A tokenizer's size, which is the Thinker's vocabulary
        from omni.stages import TextStage
        thinker = load_config_file(TextStage, _cfg_path(config_dir, "thinker_tiny.json")).model
        cfg.model.text.vocab_size = thinker.vocab_size
    built = builders.build_vision(cfg)
    model = built.model.to(device)
    net = _wrap(model, cfg.train)
    opt = built.optimizer()
    B, S, L = batch_size or cfg.train.batch_size, cfg.model.vision.image_size, cfg.data.max_text_length
    images = torch.randn(B, 3, S, S, device=device)
    ids = torch.randint(len(SPECIAL_TOKENS), cfg.model.text.vocab_size, (B, L), device=device)
    mask = torch.ones(B, L, dtype=torch.bool, device=device)
    step = _train_step(model, [opt], device, cfg.train.precision, lambda: net(images, ids, text_mask=mask)[1])
    return StageStep("C", "ViT contrastive", path, model, B, step, cfg.train.precision,
                     shapes={"images": [B, 3, S, S], "captions": [B, L]})


def _ocr(config_dir, device, batch_size, overrides):
    from omni.ocr import OcrModel
    from omni.stages import OcrStage

    path = _cfg_path(config_dir, "ocr_tiny.json")
    cfg = load_config_file(OcrStage, path, overrides)
    if cfg.model.vocab_size == 0:  # 0 = taken from the training texts by train_ocr.py
        cfg.model.vocab_size = OCR_VOCAB
    built = builders.build_ocr(cfg)
    model = built.model.to(device)
    net = _wrap(model, cfg.train)
    opt = built.optimizer()
    B, H = batch_size or cfg.train.batch_size, cfg.model.height
    W = cfg.data.max_width or OcrModel.width_stride * cfg.model.max_frames
    images = torch.rand(B, 1, H, W, device=device)
    widths = torch.full((B,), W, dtype=torch.long, device=device)
    labels = torch.randint(1, cfg.model.vocab_size, (B, OCR_LABEL_CHARS), device=device)
    label_lengths = torch.full((B,), OCR_LABEL_CHARS, dtype=torch.long, device=device)
    step = _train_step(model, [opt], device, cfg.train.precision,
                       lambda: net(images, widths, labels, label_lengths)[1])
    return StageStep("OCR", "OCR line CTC", path, model, B, step, cfg.train.precision, shapes={"images": [B, 1, H, W]})


def _codec(config_dir, device, batch_size, overrides):
    from omni.stages import TalkerStage

    path = _cfg_path(config_dir, "talker_tiny.json")
    c = load_config_file(TalkerStage, path, overrides).codec
    built = builders.build_codec(c)
    model = built.model.to(device)
    net = _wrap(model, c.train)
    opt = built.optimizer()
    B, T = batch_size or c.train.batch_size, c.data.crop_frames
    mel = torch.randn(B, T, c.model.n_mels, device=device) * c.model.mel_std + c.model.mel_mean
    lengths = torch.full((B,), T, dtype=torch.long, device=device)
    step = _train_step(model, [opt], device, c.train.precision, lambda: net(mel, lengths).loss)
    return StageStep("D-codec", "RVQ codec", path, model, B, step, c.train.precision,
                     shapes={"mel": [B, T, c.model.n_mels]})


def _talker(config_dir, device, batch_size, overrides):
    from omni.stages import TalkerStage

    path = _cfg_path(config_dir, "talker_tiny.json")
    stage = load_config_file(TalkerStage, path, overrides)
    t = stage.talker
    built = builders.build_talker(t)
    model = built.model.to(device)
    net = _wrap(model, t.train)
    opt = built.optimizer()
    B, U = batch_size or t.train.batch_size, TALKER_TEXT_UNITS
    F = -(-SPEECH_MEL_FRAMES // stage.codec.model.downsample)  # code frames of a 2 s clip (Codec.code_lengths)
    chars = torch.randint(0, N_CHAR_IDS, (B, U), device=device)
    tokens = torch.randint(len(SPECIAL_TOKENS), t.model.text_vocab_size, (B, U), device=device)
    unit_lengths = torch.full((B,), U, dtype=torch.long, device=device)
    # Aligned durations: the F frames spread evenly over the units (each row sums to F, as the aligner's do).
    durations = torch.full((B, U), F // U, dtype=torch.long, device=device)
    durations[:, : F % U] += 1
    codes = torch.randint(0, t.model.codebook_size, (B, F, t.model.n_codebooks), device=device)
    code_lengths = torch.full((B,), F, dtype=torch.long, device=device)
    step = _train_step(model, [opt], device, t.train.precision,
                       lambda: net(chars, tokens, unit_lengths, durations, codes, code_lengths).loss)
    return StageStep("D-talker", "Talker text->codes", path, model, B, step, t.train.precision,
                     tokens=B * (U + F), shapes={"chars": [B, U], "tokens": [B, U], "durations": [B, U],
                                                 "codes": [B, F, t.model.n_codebooks]})


def _vocoder(config_dir, device, batch_size, overrides):
    from omni.audio import HOP_LENGTH
    from omni.stages import VocoderStage
    from omni.vocoder import discriminator_loss, feature_matching_loss, frozen, generator_adversarial_loss, mel_l1_loss

    path = _cfg_path(config_dir, "vocoder_tiny.json")
    cfg = load_config_file(VocoderStage, path, overrides)
    built = builders.build_vocoder(cfg)
    model = built.model.to(device)
    net = _wrap(model, cfg.train)
    t = cfg.train
    optimizers = built.optimizers()
    gen, disc = optimizers["gen"], optimizers["disc"]
    B, T = batch_size or t.batch_size, cfg.data.segment_frames
    mel = torch.randn(B, T, cfg.model.n_mels, device=device) - 5.0
    wav = torch.randn(B, T * HOP_LENGTH, device=device) * 0.1
    amp = AMP_DTYPES[t.precision]

    def step() -> torch.Tensor:  # as train_vocoder.py: discriminators on a detached fake, then the generator
        discs = (model.mpd, model.msd)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            fake = net(mel)
            d_loss = sum(discriminator_loss(d(wav)[0], d(fake.detach())[0]) for d in discs)
        d_loss.backward()
        disc.step()
        disc.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            g_loss = cfg.model.lambda_mel * mel_l1_loss(fake, mel)
            with frozen(*discs):
                for d in discs:
                    with torch.no_grad():
                        real_fmaps = d(wav)[1]
                    scores, fmaps = d(fake)
                    g_loss = g_loss + generator_adversarial_loss(scores)
                    g_loss = g_loss + cfg.model.lambda_fm * feature_matching_loss(real_fmaps, fmaps)
        g_loss.backward()
        gen.step()
        gen.zero_grad(set_to_none=True)
        return g_loss.detach()

    model.train()
    return StageStep("vocoder", "HiFi-GAN G + MPD/MSD", path, model, B, step, t.precision,
                     shapes={"mel": [B, T, cfg.model.n_mels], "wav": [B, T * HOP_LENGTH]})


def _omni_sft(config_dir, device, batch_size, overrides):
    from omni.audio_encoder import AudioEncoderConfig
    from omni.chat import AUDIO_TOKEN_ID, IGNORE_INDEX, IMAGE_TOKEN_ID
    from omni.omni_model import OmniModel
    from omni.stages import AudioStage, SftStage, TextStage, VisionStage

    path = _cfg_path(config_dir, "omni_sft_tiny.json")
    cfg = load_config_file(SftStage, path, overrides)
    # The component shapes are those the earlier stages' tiny configs train (sft_omni.py reads them from the
    # stage checkpoints, which a benchmark does not need).
    thinker = load_config_file(TextStage, _cfg_path(config_dir, "thinker_tiny.json")).model
    audio: AudioEncoderConfig = load_config_file(AudioStage, _cfg_path(config_dir, "audio_enc_tiny.json")).model.encoder
    vision = load_config_file(VisionStage, _cfg_path(config_dir, "vision_tiny.json")).model.vision
    built = builders.build_sft(cfg, thinker=thinker, audio=audio, vision=vision)
    model = built.model.to(device)
    net = _wrap(model, cfg.train)
    opt = built.optimizer()
    B, T = batch_size or cfg.train.batch_size, SFT_SEQ_LEN
    n_image, n_audio = model.image_token_count, OmniModel.audio_token_count(SPEECH_MEL_FRAMES)
    if 1 + n_image + n_audio + SFT_ANSWER_TOKENS > T:
        raise ValueError(f"{n_image} image + {n_audio} audio tokens do not fit the {T}-token synthetic conversation")
    ids = torch.randint(len(SPECIAL_TOKENS), thinker.vocab_size, (B, T))
    ids[:, 1:1 + n_image] = IMAGE_TOKEN_ID
    ids[:, 1 + n_image:1 + n_image + n_audio] = AUDIO_TOKEN_ID
    targets = torch.full((B, T), IGNORE_INDEX)
    targets[:, -SFT_ANSWER_TOKENS - 1:-1] = ids[:, -SFT_ANSWER_TOKENS:]
    ids, targets = ids.to(device), targets.to(device)
    images = torch.randn(B, 3, vision.image_size, vision.image_size, device=device)
    mel = torch.randn(B, SPEECH_MEL_FRAMES, audio.n_mels, device=device)
    mel_lengths = torch.full((B,), SPEECH_MEL_FRAMES, dtype=torch.long, device=device)
    step = _train_step(model, [opt], device, cfg.train.precision,
                       lambda: net(ids, targets=targets, images=images, mel=mel, mel_lengths=mel_lengths)[1])
    return StageStep("E", "omni SFT", path, model, B, step, cfg.train.precision, tokens=B * T,
                     shapes={"tokens": [B, T], "images": list(images.shape), "mel": list(mel.shape)})


_BUILDERS = {"A": _thinker, "B": _audio_encoder, "C": _vision, "OCR": _ocr, "D-codec": _codec,
             "D-talker": _talker, "vocoder": _vocoder, "E": _omni_sft}


def build_stage(key: str, config_dir: str | Path = "configs", device: torch.device | str = "cpu", *,
                batch_size: int | None = None, overrides: list[str] = ()) -> StageStep:
    """The StageStep of stage `key` (one of STAGES) at its tiny config; batch_size overrides the config's batch,
    `overrides` are `--set`-style "key=value" changes of the stage's own config (D-codec / D-talker: of
    talker_tiny.json, e.g. "codec.data.crop_frames=64"; tests use them to shrink shapes)."""
    if key not in _BUILDERS:
        raise ValueError(f"unknown stage {key!r}; choose from {', '.join(STAGES)}")
    return _BUILDERS[key](Path(config_dir), torch.device(device), batch_size, list(overrides))
