"""Stage C training model: the ViT trained CLIP-style against captions, or as a classifier.

Design choices
- objective "contrastive": image embedding = projection of the ViT CLS token; text embedding = projection of a
  mean-pooled text tower; both L2-normalised; symmetric InfoNCE over the batch with a learned temperature
  (`logit_scale`, stored as a log like CLIP, initialised to log(1/0.07), and the scale exp(logit_scale) clamped to
  `logit_scale_max` = 100 so the logits cannot blow up).
- The text tower is either a small non-causal transformer over the Stage-A SentencePiece ids (`TextEncoder`) or the
  frozen Stage-A Thinker (`use_thinker_for_text`): its final hidden states are mean-pooled over real tokens, it is
  kept in eval mode (no dropout) and run without autograd, so only the projection on top of it learns.
- Mean pooling over real tokens (not a last / EOS token): it works the same for the causal Thinker and the
  non-causal encoder, and needs no special tokens.
- Identical captions in one batch (common in the synthetic data, where many images share a caption) are treated
  as positives of each other (`equal_captions_are_positives`): the target of a row is uniform over its positives,
  instead of pushing an image away from the correct caption text just because it sits in another column.
- objective "classify": a linear head on the CLS token, cross-entropy over `n_classes` labels.
- Retrieval evaluation (`caption_retrieval`) compares caption *texts*: candidates are the unique captions, and an
  image's hit is any caption text it was paired with, so duplicated captions do not count as misses.

References: Radford et al. 2021 (CLIP); van den Oord et al. 2018 (InfoNCE).

Shape legend: B batch, T tokens, S image side, D model width, E shared embedding width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from omni.layers import Transformer, check_rotary_heads
from omni.vision_encoder import VisionConfig, VisionEncoder

OBJECTIVES = ("contrastive", "classify")


@dataclass
class TextEncoderConfig:
    vocab_size: int = 0  # tokenizer vocabulary; 0 = not set yet (the stage script fills it from the tokenizer)
    pad_id: int = 0  # tokenizer pad id; only used to derive a mask when none is passed
    d_model: int = 128  # token width
    n_layers: int = 2  # non-causal transformer blocks
    n_heads: int = 2  # attention heads
    n_kv_heads: int = 2  # key/value heads (GQA); must divide n_heads
    d_ff: int = 512  # SwiGLU hidden width
    max_len: int = 64  # longest caption in tokens; sizes the rotary table
    rope_theta: float = 10_000.0  # rotary base (short sequences: the classic RoFormer value)
    dropout: float = 0.0  # attention and residual dropout
    norm_eps: float = 1e-6  # RMSNorm epsilon

    def __post_init__(self):
        for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"TextEncoderConfig.{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.vocab_size < 0:
            raise ValueError(f"TextEncoderConfig.vocab_size must be >= 0 (0 = the tokenizer's), got {self.vocab_size}")
        check_rotary_heads(self.d_model, self.n_heads, self.n_kv_heads, self.dropout)


@dataclass
class ContrastiveConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)  # the image tower that Stage C trains
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)  # small text tower (unless the Thinker is)
    objective: str = "contrastive"  # contrastive (image-caption InfoNCE) | classify (cross-entropy over labels)
    embed_dim: int = 128  # shared embedding width E of both projections
    use_thinker_for_text: bool = False  # text tower = the frozen Stage-A Thinker instead of TextEncoder
    n_classes: int = 0  # classify only: number of labels
    logit_scale_init: float = math.log(1 / 0.07)  # initial log of the similarity scale (CLIP)
    logit_scale_max: float = 100.0  # upper clamp of exp(logit_scale)
    equal_captions_are_positives: bool = True  # identical caption ids in a batch count as matches

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got objective={self.objective!r}")
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got embed_dim={self.embed_dim}")
        if self.objective == "classify" and self.n_classes < 2:
            raise ValueError(f"objective='classify' needs n_classes >= 2, got n_classes={self.n_classes}")
        if self.logit_scale_max <= 0 or self.logit_scale_init > math.log(self.logit_scale_max):
            raise ValueError(f"need 0 < exp(logit_scale_init) <= logit_scale_max, got logit_scale_init="
                             f"{self.logit_scale_init}, logit_scale_max={self.logit_scale_max}")


@dataclass
class ContrastiveOutput:
    logits: torch.Tensor | None  # contrastive: (B, B) image x text scaled similarities (None without captions);
    # classify: (B, n_classes)
    image_emb: torch.Tensor | None = None  # (B, E) L2-normalised (contrastive)
    text_emb: torch.Tensor | None = None  # (B, E) L2-normalised (contrastive, when captions are given)
    accuracy: torch.Tensor | None = None  # scalar, detached: in-batch image->text top-1 or label accuracy


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
             positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE: mean of image->text and text->image cross-entropy over scaled cosine similarities.

    image_emb, text_emb: (B, E) (normalised here); logit_scale: the multiplier exp(log-scale), already clamped;
    positives: optional (B, B) bool, True where image i matches text j (must include the diagonal); targets are
    then uniform over each row's / column's positives. Default: the diagonal.
    """
    logits = logit_scale * F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T
    if positives is None:
        targets = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    p = positives.float()
    return (F.cross_entropy(logits, p / p.sum(1, keepdim=True))
            + F.cross_entropy(logits.T, p.T / p.T.sum(1, keepdim=True))) / 2


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, D), mask (B, T) bool True = real -> (B, D) mean over real tokens."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def _recall(similarity: torch.Tensor, positives: torch.Tensor, k: int) -> float:
    """Fraction of query rows with a positive among their top-k columns."""
    top = similarity.topk(min(k, similarity.shape[1]), dim=1).indices
    return positives.gather(1, top).any(dim=1).float().mean().item()


def caption_retrieval(image_emb: torch.Tensor, text_emb: torch.Tensor, captions: list[str],
                      image_keys: list | None = None, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Retrieval R@k between images and the set of unique caption texts.

    image_emb, text_emb: (N, E) for N (image, caption) pairs (duplicates allowed on both sides); captions: the N
    caption strings; image_keys: N ids telling which pairs share an image (e.g. COCO image_id or the path;
    default: every pair its own image). image->text counts a hit when a retrieved caption TEXT is one the image
    was paired with; text->image when a retrieved image was paired with that text.
    Returns {"i2t_r{k}", "t2i_r{k}" for k in ks, "n_images", "n_captions"}.
    """
    if not (len(captions) == image_emb.shape[0] == text_emb.shape[0]):
        raise ValueError(f"got {image_emb.shape[0]} image and {text_emb.shape[0]} text embeddings "
                         f"for {len(captions)} captions")
    image_keys = list(range(len(captions))) if image_keys is None else list(image_keys)
    cap_index: dict[str, int] = {}
    img_index: dict = {}
    first_cap, first_img, pairs = [], [], []
    for n, (caption, key) in enumerate(zip(captions, image_keys)):
        if caption not in cap_index:
            cap_index[caption] = len(first_cap)
            first_cap.append(n)
        if key not in img_index:
            img_index[key] = len(first_img)
            first_img.append(n)
        pairs.append((img_index[key], cap_index[caption]))
    positives = torch.zeros(len(first_img), len(first_cap), dtype=torch.bool)
    for i, c in pairs:
        positives[i, c] = True
    img = F.normalize(image_emb[first_img].float(), dim=-1)
    txt = F.normalize(text_emb[first_cap].float(), dim=-1)
    sim = (img @ txt.T).cpu()
    out = {"n_images": float(len(first_img)), "n_captions": float(len(first_cap))}
    for k in ks:
        out[f"i2t_r{k}"] = _recall(sim, positives, k)
        out[f"t2i_r{k}"] = _recall(sim.T, positives.T, k)
    return out


class TextEncoder(Transformer):
    """Token embedding + the shared trunk (rotary, non-causal) + RMSNorm, mean-pooled over real tokens."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError(f"TextEncoderConfig.vocab_size must be set from the tokenizer, got {cfg.vocab_size}")
        if cfg.d_model % cfg.n_heads or (cfg.d_model // cfg.n_heads) % 2:
            raise ValueError(f"text d_model={cfg.d_model} must split into n_heads={cfg.n_heads} even head widths")
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.build_trunk(n_layers=cfg.n_layers, d_model=cfg.d_model, norm_eps=cfg.norm_eps, rotary_len=cfg.max_len,
                         rope_theta=cfg.rope_theta, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, d_ff=cfg.d_ff,
                         causal=False, dropout=cfg.dropout)
        self.init_weights()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, T), mask (B, T) bool True = real -> pooled (B, D)."""
        if ids.shape[1] > self.cfg.max_len:
            raise ValueError(f"captions of {ids.shape[1]} tokens exceed the text encoder's max_len={self.cfg.max_len}")
        return mean_pool(self.run_blocks(self.embed_tokens(ids), key_padding_mask=mask)[0], mask)


class ContrastiveModel(nn.Module):
    """ViT + (text tower + projections + temperature) or (classification head)."""

    def __init__(self, cfg: ContrastiveConfig, *, thinker: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg.vision)
        self.text_encoder: TextEncoder | None = None
        self.thinker = None
        if cfg.objective == "classify":
            self.classifier = nn.Linear(cfg.vision.d_model, cfg.n_classes)
            return
        if cfg.use_thinker_for_text:
            if thinker is None:
                raise ValueError("use_thinker_for_text=True needs the Stage-A Thinker passed as thinker=")
            self.thinker = thinker.requires_grad_(False).eval()
            text_width = thinker.cfg.d_model
        else:
            self.text_encoder = TextEncoder(cfg.text)
            text_width = cfg.text.d_model
        self.image_proj = nn.Linear(cfg.vision.d_model, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(text_width, cfg.embed_dim, bias=False)
        for proj in (self.image_proj, self.text_proj):
            nn.init.normal_(proj.weight, std=proj.in_features ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))

    def train(self, mode: bool = True) -> ContrastiveModel:
        """As nn.Module.train, but a frozen Thinker text tower stays in eval mode."""
        super().train(mode)
        if self.thinker is not None:
            self.thinker.eval()
        return self

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.vision.set_gradient_checkpointing(enabled)
        if self.text_encoder is not None:
            self.text_encoder.set_gradient_checkpointing(enabled)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped to logit_scale_max: the multiplier of the cosine similarities."""
        return self.logit_scale.exp().clamp(max=self.cfg.logit_scale_max)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) -> (B, E) L2-normalised."""
        return F.normalize(self.image_proj(self.vision(images)[0]), dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T), mask (B, T) bool True = real (default: ids != pad_id) -> (B, E) L2-normalised."""
        if mask is None:
            mask = ids != self.cfg.text.pad_id
        if self.thinker is not None:
            with torch.no_grad():
                pooled = mean_pool(self.thinker.hidden_states(ids, key_padding_mask=mask), mask)
        else:
            pooled = self.text_encoder(ids, mask)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def forward(self, images: torch.Tensor, text_ids: torch.Tensor | None = None, *,
                text_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                ) -> tuple[ContrastiveOutput, torch.Tensor | None]:
        """images (B, 3, S, S); contrastive: text_ids (B, T) + text_mask (B, T) bool; classify: labels (B,).
        -> (ContrastiveOutput, loss or None when no captions / labels are given)."""
        if self.cfg.objective == "classify":
            logits = self.classifier(self.vision(images)[0])
            if labels is None:
                return ContrastiveOutput(logits=logits), None
            acc = (logits.argmax(-1) == labels).float().mean().detach()
            return ContrastiveOutput(logits=logits, accuracy=acc), F.cross_entropy(logits.float(), labels)
        image_emb = self.encode_image(images)
        if text_ids is None:
            return ContrastiveOutput(logits=None, image_emb=image_emb), None
        text_emb = self.encode_text(text_ids, text_mask)
        scale = self.scale()
        logits = scale * image_emb.float() @ text_emb.float().T
        positives = None
        if self.cfg.equal_captions_are_positives:
            positives = (text_ids[:, None, :] == text_ids[None, :, :]).all(-1)
        loss = info_nce(image_emb, text_emb, scale, positives)
        target = torch.arange(len(images), device=images.device)
        hit = positives[target, logits.argmax(-1)] if positives is not None else logits.argmax(-1) == target
        acc = hit.float().mean().detach()
        return ContrastiveOutput(logits=logits, image_emb=image_emb, text_emb=text_emb, accuracy=acc), loss
