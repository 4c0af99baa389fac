"""Chat encoding: the special tokens, and one object (`ChatEncoder`) that turns messages + media into Thinker inputs,
for SFT data (omni.data.sft) and inference (infer_chat.py) alike.

Design choices
- Special tokens have fixed ids equal to their index in `SPECIAL_TOKENS`: <pad>=0, <unk>=1, <bos>=2, <eos>=3 are
  SentencePiece's control/unknown pieces; the rest are user-defined symbols (omni.tokenizer reserves them when it
  trains SentencePiece), which SentencePiece always emits as one piece, also inside ordinary text ("<image> What
  colour?" -> one <image> id). New symbols go at the end of `SPECIAL_TOKENS` only, so existing ids never move.
- `NEW_TOKEN_IDS` are the user-defined symbols: pretraining text never contains them, so Stage E trains their
  embedding rows (`train_new_tokens`) while the rest of a frozen Thinker stays as Stage A left it.
- The chat template itself is `Tokenizer.encode_chat` (Qwen layout, assistant mask). `ChatEncoder.encode_prompt`
  adds the media: a single `<image>` id becomes `image_tokens` copies and a single `<audio>` id one copy per 12.5 Hz
  encoder frame of the clip (`expand_placeholders`), as Hugging Face processors do; the model then only overwrites
  those slots (omni.omni_model.scatter_features).
- The media token counts come from the configs alone (`image_token_count`, `audio_token_count`), so the data side
  never needs the model.
- Loss: cross-entropy on assistant tokens only (`sft_targets`), including each answer's closing `<|im_end|>`, the
  token generation stops at; every other position's target is `IGNORE_INDEX`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omni.audio import encoder_frames

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
IM_START, IM_END, IMAGE, AUDIO = "<|im_start|>", "<|im_end|>", "<image>", "<audio>"
# Every special token; its id is its index. The first N_CONTROL are SentencePiece's own pad/unk/bos/eos pieces,
# the others user-defined symbols. Append new symbols at the end (retraining the tokenizer) so old ids stay.
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IM_START, IM_END, IMAGE, AUDIO)
N_CONTROL = 4
NEW_TOKEN_IDS = tuple(range(N_CONTROL, len(SPECIAL_TOKENS)))  # the chat/media tokens Stage A never saw
IMAGE_TOKEN_ID = SPECIAL_TOKENS.index(IMAGE)
AUDIO_TOKEN_ID = SPECIAL_TOKENS.index(AUDIO)
IGNORE_INDEX = -100  # target of positions without loss (F.cross_entropy's default ignore_index)
MEDIA = (("image", IMAGE_TOKEN_ID), ("audio", AUDIO_TOKEN_ID))


def media_prefix(*, image: bool = False, audio: bool = False) -> str:
    """What opens the first user turn of a conversation with media, as the SFT data writes it: "<image> " and/or
    "<audio> " before the question."""
    return (f"{IMAGE} " if image else "") + (f"{AUDIO} " if audio else "")


def image_token_count(mode: str, *, image_size: int, patch_size: int, pool: int) -> int:
    """Thinker tokens per image: mode "cls" = 1, "pooled" = the patch grid average-pooled over pool x pool
    windows, "patches" = every patch (OmniConfig.image_tokens / image_pool, VisionConfig.image_size / patch_size)."""
    grid = image_size // patch_size
    return {"cls": 1, "pooled": (grid // pool) ** 2, "patches": grid * grid}[mode]


def audio_token_count(mel_frames: int) -> int:
    """Thinker tokens for a clip of `mel_frames` 100 Hz frames: one per 12.5 Hz encoder frame."""
    return int(encoder_frames(mel_frames))


def expand_placeholders(ids: Sequence[int], mask: Sequence[bool], *, image_tokens: int,
                        audio_tokens: Sequence[int] = ()) -> tuple[list[int], list[bool]]:
    """Repeat each `<image>` id image_tokens times and the i-th `<audio>` id audio_tokens[i] times (no loss on
    them). ids/mask as from `Tokenizer.encode_chat`; returns the expanded (ids, mask)."""
    n_audio = sum(1 for t in ids if t == AUDIO_TOKEN_ID)
    if n_audio != len(audio_tokens):
        raise ValueError(f"{n_audio} <audio> placeholders but {len(audio_tokens)} audio clips")
    clips = iter(audio_tokens)
    out_ids: list[int] = []
    out_mask: list[bool] = []
    for t, m in zip(ids, mask):
        n = image_tokens if t == IMAGE_TOKEN_ID else next(clips) if t == AUDIO_TOKEN_ID else 1
        out_ids += [t] * n
        out_mask += [m and t not in (IMAGE_TOKEN_ID, AUDIO_TOKEN_ID)] * n
    return out_ids, out_mask


def sft_targets(ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """ids (..., T), loss_mask (..., T) bool -> aligned targets (..., T): position t predicts ids[t + 1] where
    loss_mask[t + 1] (assistant tokens and their <|im_end|>), IGNORE_INDEX elsewhere."""
    nxt = torch.full_like(ids, IGNORE_INDEX)
    nxt[..., :-1] = torch.where(loss_mask[..., 1:], ids[..., 1:], IGNORE_INDEX)
    return nxt


class ChatEncoder:
    """messages + media -> (token ids, assistant loss mask) with the media placeholders expanded.

    tokenizer: an omni.tokenizer.Tokenizer; image_tokens: Thinker tokens per image (`image_token_count`, 0 when
    the model has no vision encoder).
    """

    def __init__(self, tokenizer, *, image_tokens: int = 0):
        self.tokenizer, self.image_tokens = tokenizer, image_tokens

    def encode_prompt(self, messages: Sequence[dict], image: torch.Tensor | None = None,
                      audio: torch.Tensor | None = None, *, add_generation_prompt: bool = False,
                      check_placeholders: bool = True) -> tuple[list[int], list[bool]]:
        """The chat template of `messages` with the media placeholders expanded: `image` (3, S, S) or None,
        `audio` the clip's log-mel (T_mel, F) or None (only its length is read). add_generation_prompt appends
        `<|im_start|>assistant\\n` for inference. check_placeholders: exactly one `<image>` / `<audio>` in a user
        turn per medium given and none otherwise (a ValueError naming what was found); without the check a
        placeholder of an absent image expands to nothing and one of absent audio is a ValueError.
        """
        ids, mask = self.tokenizer.encode_chat(messages, add_generation_prompt=add_generation_prompt)
        if check_placeholders:
            for key, token_id in MEDIA:
                n, has = ids.count(token_id), (image if key == "image" else audio) is not None
                if n != int(has) or any(m for t, m in zip(ids, mask) if t == token_id):
                    raise ValueError(f"needs exactly one <{key}> in a user turn when {key!r} is given and none "
                                     f"otherwise; found {n} with {key!r} {'given' if has else 'absent'}")
        return expand_placeholders(ids, mask, image_tokens=self.image_tokens if image is not None else 0,
                                   audio_tokens=[audio_token_count(audio.shape[0])] if audio is not None else [])
