"""Stage builders: each stage's model and optimizer parameter groups, built in one place.

The stage scripts (train_*.py, sft_omni.py), the synthetic benchmark step (omni/stage_bench.py) and the size
estimate (scripts/calculate_model_size.py) all call these, so what a stage trains - which modules, which parameters
are frozen, the per-group learning rates, the embedding rows Stage E trains alone - is written once. A builder
takes the stage config (plus what the script resolved from data or earlier stages: a vocabulary size, the frozen
Thinker, the component configs) and returns a `StageModel`: the model on the current default device, and the AdamW
parameter groups of each optimizer. Building consumes the global RNG exactly as the model constructors do (in
the same order), so a run started from a seed gets the same initial weights whoever builds it.

    built = build_text(cfg)
    optimizer = built.optimizer()          # one AdamW (omni.training.adamw); built.optimizers() for the vocoder's two

Optimizer state is restored group by group, so the groups' order and contents are part of the checkpoint format:
change them only together with a note on resuming older runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from omni.training import adamw

DEFAULT_BETAS = (0.9, 0.95)  # omni.training.adamw's default


@dataclass
class StageModel:
    model: nn.Module
    # optimizer name -> AdamW param groups ({"params": [...], optional "lr", "name", "weight_decay"}); frozen
    # parameters may be listed, adamw drops them.
    param_groups: dict[str, list[dict]]
    lr: float
    weight_decay: float
    betas: Sequence[float] = DEFAULT_BETAS  # passed to AdamW as given (a checkpoint's param groups record it)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One AdamW per optimizer name (ValueError when every parameter of one is frozen)."""
        return {name: adamw(groups, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)
                for name, groups in self.param_groups.items()}

    def optimizer(self) -> torch.optim.Optimizer:
        """The stage's single AdamW."""
        if len(self.param_groups) != 1:
            raise ValueError(f"this stage has {len(self.param_groups)} optimizers ({list(self.param_groups)})")
        return next(iter(self.optimizers().values()))

    def trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def _single(model: nn.Module, train) -> StageModel:
    """Every trainable parameter in one group at train.lr (what adamw(model, ...) does)."""
    return StageModel(model, {"main": [{"params": list(model.parameters())}]}, train.lr, train.weight_decay)


def build_text(cfg) -> StageModel:
    """Stage A (TextStage): the Thinker language model."""
    from omni.thinker import Thinker

    return _single(Thinker(cfg.model), cfg.train)


def build_audio(cfg, vocab_size: int) -> StageModel:
    """Stage B (AudioStage): the AuT encoder + CTC head over `vocab_size` ids (characters + blank)."""
    from omni.audio_encoder import AsrModel, AudioEncoder

    model = AsrModel(AudioEncoder(cfg.model.encoder), vocab_size=vocab_size, ctc_upsample=cfg.model.ctc_upsample)
    return _single(model, cfg.train)


def build_vision(cfg, thinker: nn.Module | None = None) -> StageModel:
    """Stage C (VisionStage): ViT + text tower (or classifier); `thinker` is the frozen Stage-A text tower when
    model.use_thinker_for_text (cfg.model.text.vocab_size must already be resolved otherwise)."""
    from omni.contrastive import ContrastiveModel

    return _single(ContrastiveModel(cfg.model, thinker=thinker), cfg.train)


def build_ocr(cfg) -> StageModel:
    """OCR (OcrStage, model.vocab_size resolved): the line recogniser."""
    from omni.ocr import OcrModel

    return _single(OcrModel(cfg.model), cfg.train)


def build_codec(c) -> StageModel:
    """Stage D, codec phase (TalkerStage.codec section): the RVQ codec."""
    from omni.codec import Codec

    return _single(Codec(c.model), c.train)


def build_talker(t) -> StageModel:
    """Stage D, Talker phase (TalkerStage.talker section): the Talker."""
    from omni.talker import Talker

    return _single(Talker(t.model), t.train)


def build_vocoder(cfg) -> StageModel:
    """Vocoder (VocoderStage): generator + MPD/MSD in one module, two players with one optimizer each ("gen",
    "disc"), both with cfg.adam_betas."""
    from omni.vocoder import HifiGanTrainModel

    model = HifiGanTrainModel(cfg.model)
    groups = {"gen": [{"params": list(model.generator.parameters())}],
              "disc": [{"params": [*model.mpd.parameters(), *model.msd.parameters()]}]}
    return StageModel(model, groups, cfg.train.lr, cfg.train.weight_decay, cfg.adam_betas)


def new_token_rows() -> list[int]:
    """The embedding rows Stage E trains with a frozen Thinker: omni.chat.NEW_TOKEN_IDS, the chat/media special
    tokens Stage A never used."""
    from omni.chat import NEW_TOKEN_IDS

    return list(NEW_TOKEN_IDS)


def build_sft(cfg, *, thinker, audio=None, vision=None) -> StageModel:
    """Stage E (SftStage): the OmniModel of the given component configs (ThinkerConfig, AudioEncoderConfig or None,
    VisionConfig or None), random (the script loads the stage weights into it), frozen as cfg's freeze_* flags
    say, with train_new_tokens' embedding rows; one param group per component (OmniModel.parameter_groups order),
    each at its group_lr (None = train.lr). The embeddings are never decayed: decoupled weight decay would shrink
    the frozen rows of a row-masked matrix."""
    from omni.omni_model import OmniModel

    model = OmniModel.from_configs(cfg.model, thinker=thinker, audio=audio, vision=vision)
    model.set_trainable(thinker=not cfg.freeze_thinker, audio_encoder=not cfg.freeze_audio_encoder,
                        vision_encoder=not cfg.freeze_vision_encoder, projectors=not cfg.freeze_projectors,
                        embedding_rows=new_token_rows() if cfg.train_new_tokens else ())
    groups = []
    for name, params in model.parameter_groups().items():
        lr = cfg.train.lr if getattr(cfg.group_lr, name) is None else getattr(cfg.group_lr, name)
        groups.append({"params": params, "lr": lr, "name": name,
                       **({"weight_decay": 0.0} if name == "embeddings" else {})})
    return StageModel(model, {"main": groups}, cfg.train.lr, cfg.train.weight_decay)

