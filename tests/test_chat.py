"""omni.chat: one encoding of conversations + media for SFT data and inference alike.

The pinned ids below were produced by the code before omni/chat.py existed (SftSource for training items, the
inference prompt as infer_chat.py built it); a change to the chat template, the special ids, placeholder expansion
or the assistant-only targets shows up here as a diff.
"""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from omni.chat import NEW_TOKEN_IDS, ChatEncoder, image_token_count
from omni.data.sft import SftSource, read_sft_manifest
from omni.tokenizer import IM_END, IM_START
from tests.stage_data import chat_tokenizer

X = -100  # no loss
USER_IMAGE = "<image> What colour is the shape?"
USER_AUDIO = "<audio> Which word: red or blue?"
RECORDS = [
    {"messages": [{"role": "user", "content": USER_IMAGE}, {"role": "assistant", "content": "red"}], "image": "x.png"},
    {"messages": [{"role": "user", "content": USER_AUDIO}, {"role": "assistant", "content": "blue"}], "audio": "a.wav"},
    {"messages": [{"role": "system", "content": "say hello"}, {"role": "user", "content": "hello"},
                  {"role": "assistant", "content": "hello"}, {"role": "user", "content": "which shape"},
                  {"role": "assistant", "content": "circle"}]},
]
AUDIO_MEL_FRAMES = 51  # 0.5 s at 16 kHz -> 51 mel frames -> 7 encoder frames
USER, ASSISTANT = [4, 294, 283, 285, 293, 292, 18], [4, 294, 289, 285, 285, 286, 285, 282, 289, 279, 282, 18]
IMAGE_Q = [294, 95, 290, 289, 282, 265, 271, 294, 282, 290, 293, 274, 71, 5, 18]  # " What colour is the shape?"
AUDIO_Q = [294, 95, 290, 286, 287, 290, 264, 66, 273, 294, 288, 292, 269, 71, 5, 18]  # " Which word: red or blue?"
SFT_IDS = [
    [2, *USER, 294, 6, 6, 6, *IMAGE_Q, *ASSISTANT, 273, 5, 18],
    [2, *USER, 294, *[7] * 7, *AUDIO_Q, *ASSISTANT, 269, 5, 18],
    [2, 4, 294, 285, 278, 285, 282, 293, 117, 18, 267, 266, 5, 18, *USER, 266, 5, 18, *ASSISTANT, 266, 5, 18,
     *USER, 272, 274, 5, 18, *ASSISTANT, 268, 5, 18],
]
# Position t of the targets holds ids[t + 1] where that token is an answer token or its <|im_end|> (5).
SFT_TARGETS = [
    [X] * 38 + [273, 5, X, X],
    [X] * 43 + [269, 5, X, X],
    [X] * 35 + [266, 5] + [X] * 24 + [268, 5, X, X],
]
INFER = [  # (messages, image tokens, audio mel frames) -> prompt ids
    ([{"role": "user", "content": USER_IMAGE}], 3, None,
     [2, *USER, 294, 6, 6, 6, *IMAGE_Q, *ASSISTANT]),
    ([{"role": "user", "content": USER_AUDIO}, {"role": "assistant", "content": "blue"},
      {"role": "user", "content": "say hello"}], 0, AUDIO_MEL_FRAMES,
     [2, *USER, 294, *[7] * 7, *AUDIO_Q, *ASSISTANT, 269, 5, 18, *USER, 267, 266, 5, 18, *ASSISTANT]),
    ([{"role": "user", "content": "hello"}], 0, None, [2, *USER, 266, 5, 18, *ASSISTANT]),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("chat")
    tokenizer = chat_tokenizer(out)
    sf.write(out / "a.wav", np.full(8000, 0.1, np.float32), 16000)
    Image.new("RGB", (20, 20), (255, 0, 0)).save(out / "x.png")
    (out / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return out, tokenizer


def test_sft_items_keep_their_ids_and_targets(data):
    out, tokenizer = data
    source = SftSource(read_sft_manifest(out / "m.jsonl"), tokenizer=tokenizer, max_length=256, image_size=16,
                       image_tokens=3, n_mels=16)
    for i, (ids, targets) in enumerate(zip(SFT_IDS, SFT_TARGETS)):
        item = source[i]
        assert item["ids"].tolist() == ids
        assert item["targets"].tolist() == targets
    assert source[1]["mel"].shape[0] == AUDIO_MEL_FRAMES


@pytest.mark.parametrize("case", range(len(INFER)))
def test_inference_prompts_keep_their_ids(data, case):
    _, tokenizer = data
    messages, image_tokens, mel_frames, expected = INFER[case]
    image = torch.zeros(3, 16, 16) if image_tokens else None
    audio = torch.zeros(mel_frames, 16) if mel_frames else None
    chat = ChatEncoder(tokenizer, image_tokens=image_tokens)
    ids, mask = chat.encode_prompt(messages, image, audio, add_generation_prompt=True)
    assert ids == expected and len(mask) == len(ids)
    unchecked, _ = chat.encode_prompt(messages, image, audio, add_generation_prompt=True, check_placeholders=False)
    assert unchecked == expected


def test_placeholders_must_match_the_media(data):
    _, tokenizer = data
    chat = ChatEncoder(tokenizer, image_tokens=3)
    with pytest.raises(ValueError, match="exactly one <image> .* found 1 with 'image' absent"):
        chat.encode_prompt([{"role": "user", "content": USER_IMAGE}])
    with pytest.raises(ValueError, match="exactly one <audio> .* found 0 with 'audio' given"):
        chat.encode_prompt([{"role": "user", "content": "hello"}], audio=torch.zeros(51, 16))
    answer_placeholder = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<image>"}]
    with pytest.raises(ValueError, match="exactly one <image> .* found 1 with 'image' given"):
        chat.encode_prompt(answer_placeholder, torch.zeros(3, 16, 16))
    # Unchecked (inference keeps the user's text as typed): an <image> without an image expands to nothing.
    ids, _ = chat.encode_prompt([{"role": "user", "content": USER_IMAGE}], check_placeholders=False)
    assert ids == [2, *USER, 294, *IMAGE_Q]


def test_media_token_counts_and_new_tokens(data):
    _, tokenizer = data
    assert [image_token_count(m, image_size=32, patch_size=4, pool=2) for m in ("cls", "pooled", "patches")] == \
        [1, 16, 64]
    # The rows Stage E trains with a frozen Thinker: the chat and media tokens, not <pad>/<unk>/<bos>/<eos>.
    assert NEW_TOKEN_IDS == (4, 5, 6, 7) and tokenizer.token_id(IM_START) == 4 and tokenizer.token_id(IM_END) == 5
