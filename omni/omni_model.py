"""Omni model: the Thinker reading text with images and audio spliced in (Stage E, multimodal SFT).

Design choices
- Placeholders are expanded on the data side: a chat's single `<image>` id becomes `image_tokens` copies and a
  single `<audio>` id one copy per 12.5 Hz encoder frame (omni.chat), as Hugging Face processors do.
  The model then only overwrites those slots: the k-th slot of the batch (row-major) receives the k-th valid
  feature row, with the indices computed by cumsum/searchsorted and the result merged by `torch.where`. No
  Python loop over tokens or samples and no boolean indexing, so no host sync on a GPU (there the slot count is
  checked by an asynchronous device assert; on CPU by an ordinary error).
- Image tokens (`OmniConfig.image_tokens`): "cls" = 1 token, "pooled" = the patch grid average-pooled over
  `image_pool` x `image_pool` windows, "patches" = every patch. Audio: one token per AuT frame (80 ms).
- Projectors are 2-layer MLPs (Linear -> GELU -> Linear), as in LLaVA-1.5; they are the only modules born here.
- Parameter names are the export's component prefixes: `thinker.`, `audio_encoder.`, `vision_encoder.`,
  `audio_projector.`, `vision_projector.`. The audio tower keeps Stage B's `AsrModel` names (`encoder.*`) without
  the CTC head, which SFT never uses, so audio_enc.pt loads by name and Stage-E tensors override it by name.
- Freezing (`set_trainable`): a frozen component has requires_grad False, runs without autograd and stays in eval
  mode (no dropout) even when the whole model is put in train mode. With the Thinker frozen, `embedding_rows` can
  still train a few rows of the token embedding (the chat/media special tokens Stage A never used): the matrix
  is trainable but a gradient hook zeroes every other row, so with weight decay 0 on that matrix AdamW leaves
  those rows bitwise unchanged (zero gradient -> zero moments -> zero update). With tied embeddings the same
  matrix is the output layer, so the new rows are also the logit vectors of those tokens: that is how the model
  learns to emit `<|im_end|>` (and to keep `<image>`/`<audio>` improbable) while every other logit stays as
  Stage A trained it. Untied, the same rows of `lm_head` train under the same mask.
- Loss: cross-entropy on assistant tokens only (omni.chat.sft_targets), including each answer's closing
  `<|im_end|>`, the token generation stops at. Batches are right-padded, so causal attention alone keeps padding
  out of every real position and no key padding mask (which would disable SDPA's causal fast path) is needed.
- Exact match under greedy decoding equals "every answer token is the argmax given the reference prefix"
  (`greedy_exact_match`), so evaluation needs one batched forward pass instead of a generation loop.

References: Liu et al. 2023/2024 (LLaVA, LLaVA-1.5: MLP projector, two-stage training); Qwen2-Audio / Qwen3-Omni
technical reports (audio features at the encoder frame rate spliced into the LM).

Shape legend: B batch, T tokens, D Thinker width, E encoder width, N images or clips in the batch, L tokens per
image or clip, S image side, F mel bins, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.audio_encoder import AudioEncoder, AudioEncoderConfig
from omni.chat import AUDIO_TOKEN_ID, IGNORE_INDEX, IMAGE_TOKEN_ID, audio_token_count, image_token_count
from omni.thinker import Thinker, ThinkerConfig
from omni.vision_encoder import VisionConfig, VisionEncoder

IMAGE_TOKEN_MODES = ("cls", "pooled", "patches")
COMPONENTS = ("thinker", "audio_encoder", "vision_encoder", "audio_projector", "vision_projector")


@dataclass
class OmniConfig:
    image_tokens: str = "patches"  # per image: "cls" (1 token) | "pooled" (pooled patch grid) | "patches" (all)
    image_pool: int = 2  # "pooled": average over image_pool x image_pool patch windows (must divide the grid)
    projector_hidden: int | None = None  # hidden width of both MLP projectors; None = the Thinker's d_model

    def __post_init__(self):
        if self.image_tokens not in IMAGE_TOKEN_MODES:
            raise ValueError(f"image_tokens must be one of {IMAGE_TOKEN_MODES}, got {self.image_tokens!r}")
        if self.image_pool < 1 or (self.projector_hidden is not None and self.projector_hidden < 1):
            raise ValueError(f"need image_pool >= 1 and projector_hidden >= 1 (or None), got "
                             f"image_pool={self.image_pool}, projector_hidden={self.projector_hidden}")


@dataclass
class ProjectorConfig:
    in_dim: int  # encoder width E
    out_dim: int  # Thinker width D
    hidden_dim: int  # MLP hidden width


class Projector(nn.Module):
    """Encoder features (..., E) -> Thinker embeddings (..., D): Linear -> GELU -> Linear."""

    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.cfg = cfg
        self.fc1 = nn.Linear(cfg.in_dim, cfg.hidden_dim)
        self.fc2 = nn.Linear(cfg.hidden_dim, cfg.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class AudioTower(nn.Module):
    """The AuT encoder under Stage B's parameter names (`encoder.*` of `AsrModel`), without the CTC head."""

    def __init__(self, encoder: AudioEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (N, T_mel, F), mel_lengths (N,) -> (features (N, L, E) at 12.5 Hz, lengths (N,))."""
        return self.encoder(mel, mel_lengths)


def scatter_features(embeds: torch.Tensor, slots: torch.Tensor, feats: torch.Tensor,
                     lengths: torch.Tensor) -> torch.Tensor:
    """Put media features into their placeholder slots.

    embeds (B, T, D); slots (B, T) bool; feats (N, L, D); lengths (N,) valid rows per item. The k-th True slot in
    row-major order receives the k-th valid feature row (item 0's rows first), so a batch lists its media in the
    order their placeholders appear. Returns (B, T, D); gradients flow into `feats`.
    """
    B, T, D = embeds.shape
    N, L, _ = feats.shape
    flat = slots.reshape(-1)
    if flat.device.type == "cpu":
        if int(flat.sum()) != int(lengths.sum()):
            raise ValueError(f"{int(flat.sum())} placeholder slots but {int(lengths.sum())} media tokens: expand the "
                             "placeholders with the model's image_token_count / audio_token_count")
    else:  # no host sync on an accelerator; a mismatch fails at a later kernel launch
        torch._assert_async(flat.sum() == lengths.sum())
    k = torch.cumsum(flat.long(), 0) - 1  # rank of each slot among all slots (-1 before the first)
    ends = torch.cumsum(lengths, 0)
    item = torch.searchsorted(ends, k, right=True).clamp(max=N - 1)
    row = (k - (ends - lengths)[item]).clamp(0, L - 1)
    gathered = feats[item, row].to(embeds.dtype)  # (B*T, D): junk where there is no slot, dropped by where
    return torch.where(flat[:, None], gathered, embeds.reshape(B * T, D)).view(B, T, D)


def greedy_exact_match(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V), targets (B, T) -> (B,) bool: every target token is the argmax given the reference
    prefix, i.e. greedy decoding reproduces each answer and its <|im_end|> exactly."""
    hit = (logits.argmax(-1) == targets) | (targets == IGNORE_INDEX)
    return hit.all(dim=1)


def check_image_pool(cfg: OmniConfig, vision: VisionConfig) -> None:
    grid = vision.image_size // vision.patch_size
    if cfg.image_tokens == "pooled" and grid % cfg.image_pool:
        raise ValueError(f"image_pool={cfg.image_pool} does not divide the {grid}x{grid} patch grid "
                         f"(image_size={vision.image_size}, patch_size={vision.patch_size})")


class OmniModel(nn.Module):
    """Thinker + optional AuT audio tower and ViT, each encoder with its MLP projector into the Thinker."""

    def __init__(self, cfg: OmniConfig, *, thinker: Thinker, audio_encoder: AudioEncoder | None = None,
                 vision_encoder: VisionEncoder | None = None, audio_projector: Projector | None = None,
                 vision_projector: Projector | None = None):
        """Assembled from built parts (e.g. loaded from their stage files); a missing projector of a given encoder
        is born here (random). `from_configs` builds every part from its config instead."""
        super().__init__()
        self.cfg = cfg
        self.thinker = thinker
        self.audio_encoder = self.audio_projector = self.vision_encoder = self.vision_projector = None
        if audio_encoder is not None:
            self.audio_encoder = AudioTower(audio_encoder)
            self.audio_projector = audio_projector or self.new_projector(cfg, audio_encoder.cfg.d_model, thinker.cfg)
        if vision_encoder is not None:
            check_image_pool(cfg, vision_encoder.cfg)
            self.vision_encoder = vision_encoder
            self.vision_projector = vision_projector or self.new_projector(cfg, vision_encoder.cfg.d_model,
                                                                           thinker.cfg)
        for name, projector in (("audio_projector", audio_projector), ("vision_projector", vision_projector)):
            if projector is not None and getattr(self, name) is None:
                raise ValueError(f"{name} given without its encoder")
        # Rows of the token embedding that train while the Thinker is frozen (1.0) - see set_trainable.
        self.register_buffer("embedding_row_mask", torch.ones(thinker.cfg.vocab_size, 1), persistent=False)
        self._mask_hooks: list = []

    @classmethod
    def from_configs(cls, cfg: OmniConfig, *, thinker: ThinkerConfig, audio: AudioEncoderConfig | None = None,
                     vision: VisionConfig | None = None) -> OmniModel:
        """Every part built randomly from its config, in a fixed order (Thinker, audio encoder, its projector, ViT,
        its projector), so a seeded build always gives the same weights."""
        parts = {"thinker": Thinker(thinker)}
        if audio is not None:
            parts["audio_encoder"] = AudioEncoder(audio)
            parts["audio_projector"] = cls.new_projector(cfg, audio.d_model, thinker)
        if vision is not None:
            check_image_pool(cfg, vision)
            parts["vision_encoder"] = VisionEncoder(vision)
            parts["vision_projector"] = cls.new_projector(cfg, vision.d_model, thinker)
        return cls(cfg, **parts)

    @staticmethod
    def new_projector(cfg: OmniConfig, encoder_width: int, thinker: ThinkerConfig) -> Projector:
        """A random projector from an encoder's width to the Thinker's (hidden: cfg.projector_hidden or D)."""
        return Projector(ProjectorConfig(encoder_width, thinker.d_model, cfg.projector_hidden or thinker.d_model))

    # ------------------------------------------------------------------ media
    @property
    def image_token_count(self) -> int:
        """Thinker tokens per image (omni.chat.image_token_count of this model's configs)."""
        if self.vision_encoder is None:
            raise ValueError("this OmniModel has no vision encoder")
        vision = self.vision_encoder.cfg
        return image_token_count(self.cfg.image_tokens, image_size=vision.image_size, patch_size=vision.patch_size,
                                 pool=self.cfg.image_pool)

    audio_token_count = staticmethod(audio_token_count)  # omni.chat's: Thinker tokens per clip of mel_frames

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, S, S) -> Thinker embeddings (N, L, D), L = image_token_count."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and _trains(self.vision_encoder)):
            cls, patches = self.vision_encoder(images)
        if self.cfg.image_tokens == "cls":
            feats = cls[:, None]
        elif self.cfg.image_tokens == "pooled":
            N, P, E = patches.shape
            grid = round(P ** 0.5)
            pooled = F.avg_pool2d(patches.transpose(1, 2).reshape(N, E, grid, grid), self.cfg.image_pool)
            feats = pooled.flatten(2).transpose(1, 2)
        else:
            feats = patches
        return self.vision_projector(feats)

    def encode_audio(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (N, T_mel, F), mel_lengths (N,) -> (Thinker embeddings (N, L, D), valid lengths (N,))."""
        if self.audio_encoder is None:
            raise ValueError("this OmniModel has no audio encoder")
        with torch.set_grad_enabled(torch.is_grad_enabled() and _trains(self.audio_encoder)):
            feats, lengths = self.audio_encoder(mel, mel_lengths)
        return self.audio_projector(feats), lengths

    def embed_inputs(self, input_ids: torch.Tensor, *, images: torch.Tensor | None = None,
                     mel: torch.Tensor | None = None, mel_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) with expanded placeholders -> fused embeddings (B, T, D)."""
        x = self.thinker.embed(input_ids)
        if images is not None and images.shape[0]:
            feats = self.encode_images(images)
            lengths = torch.full((feats.shape[0],), feats.shape[1], device=feats.device)
            x = scatter_features(x, input_ids == IMAGE_TOKEN_ID, feats, lengths)
        if mel is not None and mel.shape[0]:
            feats, lengths = self.encode_audio(mel, mel_lengths)
            x = scatter_features(x, input_ids == AUDIO_TOKEN_ID, feats, lengths)
        return x

    def forward(self, input_ids: torch.Tensor, *, targets: torch.Tensor | None = None,
                images: torch.Tensor | None = None, mel: torch.Tensor | None = None,
                mel_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """input_ids (B, T) right-padded, placeholders expanded; targets (B, T) from `omni.chat.sft_targets`;
        images (N, 3, S, S) and mel (N, T_mel, F) + mel_lengths (N,) in placeholder order
        -> (logits (B, T, V), loss over assistant tokens or None)."""
        embeds = self.embed_inputs(input_ids, images=images, mel=mel, mel_lengths=mel_lengths)
        return self.thinker(inputs_embeds=embeds, targets=targets, ignore_index=IGNORE_INDEX)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, *, images: torch.Tensor | None = None,
                 mel: torch.Tensor | None = None, mel_lengths: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Prompt input_ids (B, T) (same length per row) -> new tokens (B, N); kwargs go to `Thinker.generate`
        (pass eos_id=<|im_end|> id to stop at the end of the answer)."""
        embeds = self.embed_inputs(input_ids, images=images, mel=mel, mel_lengths=mel_lengths)
        return self.thinker.generate(inputs_embeds=embeds, **kwargs)

    # ------------------------------------------------------------------ weights and freezing
    def load_stage_weights(self, *, thinker: dict, audio: dict | None = None, vision: dict | None = None) -> None:
        """Load the earlier stages' state dicts strictly: thinker.pt's, audio_enc.pt's (AsrModel: the `encoder.*`
        part is taken, the CTC head left out) and a bare VisionEncoder's (omni.components reads vision.pt's ViT
        part)."""
        self.thinker.load_state_dict(thinker)
        if (audio is None) != (self.audio_encoder is None) or (vision is None) != (self.vision_encoder is None):
            raise ValueError("give stage weights for exactly the encoders this model has")
        if audio is not None:
            self.audio_encoder.load_state_dict({k: v for k, v in audio.items() if k.startswith("encoder.")})
        if vision is not None:
            self.vision_encoder.load_state_dict(vision)

    def set_trainable(self, *, thinker: bool, audio_encoder: bool, vision_encoder: bool, projectors: bool,
                      embedding_rows: Sequence[int] = ()) -> None:
        """Freeze or unfreeze each component. With thinker=False, `embedding_rows` of the token embedding (and of
        an untied lm_head) still train, every other row receiving an exactly zero gradient."""
        for module, flag in ((self.thinker, thinker), (self.audio_encoder, audio_encoder),
                             (self.vision_encoder, vision_encoder), (self.audio_projector, projectors),
                             (self.vision_projector, projectors)):
            if module is not None:
                module.requires_grad_(flag)
        for handle in self._mask_hooks:
            handle.remove()
        self._mask_hooks = []
        self.embedding_row_mask.fill_(1.0)
        if not thinker and embedding_rows:
            self.embedding_row_mask.zero_()
            self.embedding_row_mask[list(embedding_rows)] = 1.0
            for weight in self.embedding_matrices():
                weight.requires_grad_(True)
                self._mask_hooks.append(weight.register_hook(lambda g: g * self.embedding_row_mask.to(g.dtype)))
        self.train(self.training)  # re-apply eval mode to what is now frozen

    def embedding_matrices(self) -> list[nn.Parameter]:
        """The token embedding and, when untied, the lm_head weight."""
        t = self.thinker
        return [t.embed_tokens.weight] + ([] if t.lm_head.weight is t.embed_tokens.weight else [t.lm_head.weight])

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter in one of five named groups, always in this order (optimizer state is restored group by
        group): projectors, embeddings (token embedding + untied lm_head), the rest of the thinker, audio_encoder,
        vision_encoder. Frozen parameters are included; the optimizer helper drops them."""
        embeddings = self.embedding_matrices()
        taken = {id(p) for p in embeddings}
        groups = {"projectors": [], "embeddings": embeddings, "thinker": [], "audio_encoder": [],
                  "vision_encoder": []}
        for name, p in self.named_parameters():
            component = name.split(".", 1)[0]
            if id(p) not in taken:
                groups["projectors" if component.endswith("_projector") else component].append(p)
        return groups

    def train(self, mode: bool = True) -> OmniModel:
        super().train(mode)
        for module in (self.thinker, self.audio_encoder, self.vision_encoder):
            if module is not None and not _trains(module):
                module.eval()  # frozen: no dropout, whatever the mode of the whole model
        return self


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())
