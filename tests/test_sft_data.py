"""Synthetic SFT conversations (omni.synthetic.sft) and the SFT source (omni.data.sft): placeholder expansion,
assistant-only targets, media tensors, bad samples named by manifest line."""

import json
import random

import numpy as np
import pytest
import soundfile as sf
import torch

from omni.audio import SAMPLE_RATE, encoder_frames, mel_frames
from omni.chat import AUDIO_TOKEN_ID, IGNORE_INDEX, IMAGE_TOKEN_ID
from omni.data.manifest import read_jsonl
from omni.data.resumable import BadSample
from omni.data.sft import SftSource, read_sft_manifest
from omni.synthetic import speech
from omni.synthetic.images import COUNT_WORDS, write_image_dataset
from omni.synthetic.sft import OCR_WORDS, audio_question, image_question, write_sft_dataset
from omni.tokenizer import Tokenizer, train_tokenizer


def write_fake_speech(out, *, n_train, n_val, seed=0):
    """A speech folder laid out like omni.synthetic.speech's, with noise bursts instead of espeak-ng (fast)."""
    (out / "wavs").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    train, val = speech.split_sentences(seed=seed, n_train=n_train, n_val=n_val)
    for split, texts in (("train", train), ("val", val)):
        records = []
        for i, text in enumerate(texts):
            name = f"wavs/{split}_{i:05d}.wav"
            wav = 0.2 * rng.standard_normal(int(SAMPLE_RATE * rng.uniform(0.3, 0.8)))
            sf.write(out / name, wav.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
            records.append({"audio": name, "text": text})
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def make_sft_data(root, *, n_train, n_val, image_size=32, seed=0):
    """images/, speech/ and sft/ under root, as scripts/make_synthetic_datasets.py lays them out."""
    write_image_dataset(root / "images", seed=seed, n_train=24, n_val=8, image_size=image_size)
    write_fake_speech(root / "speech", n_train=12, n_val=6, seed=seed)
    stats = write_sft_dataset(root / "sft", images_dir=root / "images", speech_dir=root / "speech", seed=seed,
                              n_train=n_train, n_val=n_val, image_size=image_size)
    return root / "sft", stats


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    return make_sft_data(tmp_path_factory.mktemp("sftdata"), n_train=60, n_val=20)


def test_conversations_ignore_phrase_clips(tmp_path):
    """Phrase clips (one word, for the ASR and the Talker) leave the SFT set exactly as it was."""
    plain, _ = make_sft_data(tmp_path, n_train=30, n_val=10)
    speech_dir = write_fake_speech(tmp_path / "speech_phrases", n_train=12, n_val=6)
    phrases = [{"audio": "wavs/train_00000.wav", "text": "black", "phrase": True}] * 5
    with open(speech_dir / "train.jsonl", "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in phrases))
    write_sft_dataset(tmp_path / "sft_phrases", images_dir=tmp_path / "images", speech_dir=speech_dir, seed=0,
                      n_train=30, n_val=10, image_size=32)
    for split in ("train", "val"):
        # The same clips, from the other speech folder.
        with_phrases = (tmp_path / "sft_phrases" / f"{split}.jsonl").read_text().replace("speech_phrases", "speech")
        assert with_phrases == (plain / f"{split}.jsonl").read_text()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, text_corpus):
    return train_tokenizer([text_corpus / "train.txt"], tmp_path_factory.mktemp("tok"), vocab_size=400)


def test_dataset_layout_mix_and_disjoint_media(sft_data, tmp_path):
    sft, stats = sft_data
    assert stats["val"] == {"image_qa": 9, "audio_qa": 5, "ocr_qa": 3, "text": 3}  # TASK_MIX of 20
    train, val = read_jsonl(sft / "train.jsonl"), read_jsonl(sft / "val.jsonl")
    assert len(train) == 60 and len(val) == 20
    media = {split: {r.get("image") or r.get("audio") for r in recs} - {None} for split, recs in
             (("train", train), ("val", val))}
    assert media["train"] and media["val"] and not media["train"] & media["val"]
    assert all((sft / m).is_file() for m in media["train"] | media["val"])
    assert not {r["messages"][0]["content"] for r in val if r["task"] == "text"} & \
        {r["messages"][0]["content"] for r in train if r["task"] == "text"}
    for r in train + val:
        messages = r["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        assert all(m["content"] for m in messages)
        assert messages[0]["content"].startswith("<image> ") == ("image" in r)
        assert messages[0]["content"].startswith("<audio> ") == ("audio" in r)
        assert not any("<image>" in m["content"] or "<audio>" in m["content"] for m in messages[1:])
    # Val asks one question per conversation (so exact match scores one answer); train up to three about a medium,
    # of distinct kinds.
    assert all(len(r["messages"]) == 2 for r in val)
    multi = [r for r in train if len(r["messages"]) > 2]
    assert multi and max(len(r["messages"]) for r in train) == 6
    assert all(len({m["content"] for m in r["messages"][::2]}) == len(r["messages"]) // 2 for r in multi)
    # The val set does not depend on n_train, and the whole thing is deterministic.
    root = tmp_path / "again"
    again, _ = make_sft_data(root, n_train=30, n_val=20)
    assert (again / "val.jsonl").read_text() == (sft / "val.jsonl").read_text()


def test_image_questions_need_the_image():
    rng = random.Random(0)
    shapes = [{"shape": "circle", "colour": "red", "position": "top left"},
              {"shape": "circle", "colour": "blue", "position": "centre"},
              {"shape": "star", "colour": "green", "position": "bottom right"}]
    seen = set()
    for _ in range(200):
        q, a, kind = image_question({"count": 3, "shapes": shapes}, rng)
        seen.add(kind)
        if kind == "colour":  # only the unique shape is asked about: "the circle" would be ambiguous
            assert q.endswith("the star?") and a == "green"
        elif kind == "position":
            assert "star" in q and a == "bottom right"
        elif kind == "count":
            assert a == COUNT_WORDS[3]
        else:
            assert a == {s["position"]: s["shape"] for s in shapes}[q.split(" in the ")[1][:-1]]
    assert seen == {"colour", "position", "count", "shape"}


def test_audio_questions_need_the_audio():
    rng = random.Random(1)
    kinds = set()
    for _ in range(200):
        q, a, kind = audio_question("the red dog is under the blue box", rng)
        kinds.add(kind)
        if kind == "word":
            a_or_b = q.removeprefix("Which word was spoken: ").removesuffix("?").split(" or ")
            assert a in a_or_b and a in "the red dog is under the blue box".split()
            assert [w for w in a_or_b if w != a][0] not in "the red dog is under the blue box".split()
        elif kind == "transcribe":
            assert a == "the red dog is under the blue box"
    assert kinds == {"transcribe", "word"}  # two colours: "which colour" would be ambiguous
    assert audio_question("three green stars", random.Random(0))[1] in ("three green stars", "green", "three")


def test_source_expands_placeholders_and_masks_the_loss(sft_data, tokenizer):
    sft, _ = sft_data
    records = read_sft_manifest(sft / "val.jsonl")
    assert all(r["where"].startswith(str(sft / "val.jsonl") + ":") for r in records)
    source = SftSource(records, tokenizer=tokenizer, max_length=256, image_size=16, image_tokens=5, n_mels=16)
    assert source.tasks == ["audio_qa", "image_qa", "ocr_qa", "text"]
    for i, rec in enumerate(records):
        item = source[i]
        ids = item["ids"].tolist()
        assert ids.count(IMAGE_TOKEN_ID) == (5 if "image" in rec else 0)
        if "audio" in rec:
            assert ids.count(AUDIO_TOKEN_ID) == encoder_frames(item["mel"].shape[0]) > 0
            assert item["mel"].shape[1] == 16 and item["image"] is None
        if "image" in rec:
            assert item["image"].shape == (3, 16, 16)
        # The loss covers the answer and its closing <|im_end|>, and nothing else.
        labels = item["targets"][item["targets"] != IGNORE_INDEX].tolist()
        assert labels[-1] == tokenizer.im_end_id
        assert tokenizer.decode(labels).strip() == rec["messages"][1]["content"]
        positions = (item["targets"] != IGNORE_INDEX).nonzero().flatten()
        assert torch.equal(item["ids"][positions + 1], item["targets"][positions])
    # A multi-turn conversation carries the loss on every answer (each closed by <|im_end|>), on nothing else.
    multi = next(r for r in read_sft_manifest(sft / "train.jsonl") if len(r["messages"]) == 6)
    item = SftSource([multi], tokenizer=tokenizer, max_length=256, image_size=16, image_tokens=5, n_mels=16)[0]
    labels = item["targets"][item["targets"] != IGNORE_INDEX].tolist()
    assert labels.count(tokenizer.im_end_id) == 3
    assert tokenizer.decode(labels).split() == " ".join(m["content"] for m in multi["messages"][1::2]).split()
    batch = source.collate([source[i] for i in range(len(records))])
    B, T = batch["input_ids"].shape
    n_img, n_aud = sum("image" in r for r in records), sum("audio" in r for r in records)
    assert batch["images"].shape == (n_img, 3, 16, 16) and batch["mel"].shape[0] == n_aud == len(batch["mel_lengths"])
    assert (batch["input_ids"] == IMAGE_TOKEN_ID).sum() == 5 * n_img
    assert (batch["input_ids"] == AUDIO_TOKEN_ID).sum() == encoder_frames(batch["mel_lengths"]).sum()
    assert batch["targets"].shape == (B, T) and batch["tasks"] == [r["task"] for r in records]


def _manifest(tmp_path, lines, wav_seconds=0.5):
    sf.write(tmp_path / "a.wav", (0.2 * np.random.default_rng(0).standard_normal(int(SAMPLE_RATE * wav_seconds)))
             .astype(np.float32), SAMPLE_RATE)
    (tmp_path / "silent.wav").write_bytes(b"RIFF not a wav")
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def chat(user, answer="red"):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def test_bad_samples_name_manifest_and_line(tmp_path, tokenizer, sft_data):
    image = str(next((sft_data[0] / "ocr_imgs").glob("*.png")))
    path = _manifest(tmp_path, [
        {"messages": chat("<image> Which colour?"), "image": image},  # 1: fine
        {"messages": chat("<image> Which colour?"), "image": "missing.png"},  # 2
        {"messages": chat("Which colour?"), "image": image},  # 3: image without placeholder
        {"messages": chat("<audio> Which word?")},  # 4: placeholder without audio
        {"messages": chat("<audio> Which word?"), "audio": "silent.wav"},  # 5: unreadable audio
        {"messages": [{"role": "user", "content": "hi"}]},  # 6: no assistant turn
        {"messages": chat("<audio> Which word?", "word " * 200), "audio": "a.wav"},  # 7: too long
        {"messages": chat("x", "<image>"), "image": image},  # 8: placeholder in the answer
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},  # 9: bad role
        {"messages": chat("<audio> Which word?"), "audio": "a.wav"},  # 10: fine
    ])
    source = SftSource(read_sft_manifest(path), tokenizer=tokenizer, max_length=128, image_size=16,
                       image_tokens=4, n_mels=16)
    assert source[0]["task"] == "image_qa" and source[9]["task"] == "audio_qa"
    expected = {2: "missing.png", 3: "exactly one <image>", 4: "exactly one <audio>", 5: "silent.wav",
                6: "assistant turn", 7: "max_length=128", 8: "exactly one <image>", 9: "robot"}
    for line, reason in expected.items():
        with pytest.raises(BadSample, match=rf"m\.jsonl:{line}: .*{reason}"):
            source[line - 1]
    no_audio = SftSource(read_sft_manifest(path), tokenizer=tokenizer, max_length=128, image_size=16, image_tokens=4)
    with pytest.raises(BadSample, match="no audio encoder"):
        no_audio[9]
    short = SftSource(read_sft_manifest(path), tokenizer=tokenizer, max_length=128, image_size=16, image_tokens=4,
                      n_mels=16, max_mel_frames=mel_frames(SAMPLE_RATE // 4))
    with pytest.raises(BadSample, match="max_mel_frames"):
        short[9]


def test_invalid_manifest_line_is_an_error(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"messages": chat("x")}) + "\n\n{not json\n")
    with pytest.raises(ValueError, match=r"m\.jsonl:3: invalid JSON"):
        read_sft_manifest(path)


def test_ocr_words_are_rendered_legibly_sized(sft_data):
    sft, _ = sft_data
    recs = [r for r in read_jsonl(sft / "train.jsonl") if r["task"] == "ocr_qa"]
    assert recs and all(r["messages"][1]["content"] in OCR_WORDS for r in recs)
    from PIL import Image
    img = np.asarray(Image.open(sft / recs[0]["image"]).convert("L"), dtype=np.float32)
    assert img.shape == (32, 32) and img.std() > 10  # the word is visible against its background


def test_placeholder_ids_are_the_tokenizers(tokenizer):
    assert isinstance(tokenizer, Tokenizer)
    assert (tokenizer.token_id("<image>"), tokenizer.token_id("<audio>")) == (IMAGE_TOKEN_ID, AUDIO_TOKEN_ID)
    ids, _ = tokenizer.encode_chat([{"role": "user", "content": "<image> <audio> What?"}])
    assert ids.count(IMAGE_TOKEN_ID) == ids.count(AUDIO_TOKEN_ID) == 1  # one id each, also inside text
