"""Synthetic image / OCR generators, image loading and preprocessing, manifest readers, ImageSource and OcrSource."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from omni.ctc import CharVocab
from omni.data.image_layouts import label_names, read_coco_captions, read_image_manifest, read_ocr_manifest
from omni.data.images import IMAGE_MEAN, IMAGE_STD, ImageSource, OcrSource, image_to_tensor, line_to_tensor, load_image
from omni.data.resumable import BadSample
from omni.synthetic.images import COLOURS, POSITIONS, SHAPES, SIZES, caption_for, label_for, write_image_dataset
from omni.synthetic.ocr_lines import write_ocr_dataset


class WordTokenizer:
    """Stand-in for the SentencePiece tokenizer: one id per known word, 1 = BOS, 0 = pad."""

    pad_id = 0

    def __init__(self, words):
        self.ids = {w: i + 2 for i, w in enumerate(words)}
        self.vocab_size = len(words) + 2

    def encode(self, text, bos=False, eos=False):
        return [1] * bos + [self.ids[w] for w in text.split()]


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def pixel_hash(path):
    return hashlib.sha1(np.asarray(Image.open(path)).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    stats = write_image_dataset(out, seed=3, n_train=24, n_val=8, image_size=32)
    return out, stats


@pytest.fixture(scope="module")
def ocr_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ocr")
    stats = write_ocr_dataset(out, seed=3, n_train=12, n_val=6, height=32)
    return out, stats


# ------------------------------------------------------------------------------------------- synthetic shapes


def test_image_dataset_manifests_are_complete(shapes_dir):
    out, stats = shapes_dir
    assert stats["train"] == 24 and stats["val"] == 8 and stats["bytes"] > 0
    for split, n in (("train", 24), ("val", 8)):
        records = read_lines(out / f"{split}.jsonl")
        assert len(records) == n
        for r in records:
            assert set(r) == {"image", "caption", "label", "attributes"}
            with Image.open(out / r["image"]) as img:
                assert img.size == (32, 32) and img.mode == "RGB"
            attrs = r["attributes"]
            assert attrs["count"] == len(attrs["shapes"]) and 1 <= attrs["count"] <= 3
            positions = [s["position"] for s in attrs["shapes"]]
            assert len(set(positions)) == len(positions)
            assert positions == sorted(positions, key=list(POSITIONS).index)  # reading order
            for s in attrs["shapes"]:
                assert s["shape"] in SHAPES and s["colour"] in COLOURS and s["size"] in SIZES
                assert s["colour"] in r["caption"] and s["shape"] in r["caption"]
            assert r["caption"] == caption_for(attrs["shapes"])
            assert r["label"] == label_for(attrs["shapes"])
            assert r["label"] == (attrs["shapes"][0]["shape"] if attrs["count"] == 1 else "multiple")


def test_single_shape_caption_and_pixels_agree(shapes_dir):
    out, _ = shapes_dir
    records = read_lines(out / "train.jsonl") + read_lines(out / "val.jsonl")
    singles = [r for r in records if r["attributes"]["count"] == 1]
    assert singles, "expected some single-shape images"
    for r in singles:
        s = r["attributes"]["shapes"][0]
        assert r["caption"] == f"a {s['size']} {s['colour']} {s['shape']} in the {s['position']}"
        # The shape's colour is at its centre pixel (all shapes are convex around the centre except the star,
        # whose centre is still inside).
        x, y = (round(v) for v in s["center"])
        pixel = np.asarray(Image.open(out / r["image"]))[y, x].astype(int)
        assert np.abs(pixel - np.array(COLOURS[s["colour"]])).max() <= 2


def test_image_dataset_is_deterministic_and_splits_are_disjoint(shapes_dir, tmp_path):
    out, _ = shapes_dir
    write_image_dataset(tmp_path / "again", seed=3, n_train=24, n_val=8, image_size=32)
    write_image_dataset(tmp_path / "other", seed=4, n_train=24, n_val=8, image_size=32)
    for split in ("train", "val"):
        assert (out / f"{split}.jsonl").read_bytes() == (tmp_path / "again" / f"{split}.jsonl").read_bytes()
        assert (out / f"{split}.jsonl").read_bytes() != (tmp_path / "other" / f"{split}.jsonl").read_bytes()
    first = read_lines(out / "train.jsonl")[0]["image"]
    assert (out / first).read_bytes() == (tmp_path / "again" / first).read_bytes()
    train = {pixel_hash(out / r["image"]) for r in read_lines(out / "train.jsonl")}
    val = {pixel_hash(out / r["image"]) for r in read_lines(out / "val.jsonl")}
    assert len(train) == 24 and len(val) == 8 and not train & val
    # The val split does not depend on n_train.
    write_image_dataset(tmp_path / "fewer", seed=3, n_train=2, n_val=8, image_size=32)
    assert (out / "val.jsonl").read_bytes() == (tmp_path / "fewer" / "val.jsonl").read_bytes()


def test_image_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_train=-1"):
        write_image_dataset(tmp_path, seed=0, n_train=-1, n_val=1)
    with pytest.raises(ValueError, match="image_size"):
        write_image_dataset(tmp_path, seed=0, n_train=1, n_val=1, image_size=8)


# ------------------------------------------------------------------------------------------- synthetic OCR


def test_ocr_dataset(ocr_dir, tmp_path):
    out, stats = ocr_dir
    assert stats["train"] == 12 and stats["val"] == 6
    train, val = read_lines(out / "train.jsonl"), read_lines(out / "val.jsonl")
    for r in train + val:
        assert set(r) == {"image", "text"}
        assert 3 <= len(r["text"]) <= 20 and r["text"] == r["text"].strip()
        with Image.open(out / r["image"]) as img:
            assert img.mode == "L" and img.height == 32 and img.width >= 16
    assert not {r["text"] for r in train} & {r["text"] for r in val}
    assert len({r["text"] for r in val}) == len(val)
    write_ocr_dataset(tmp_path, seed=3, n_train=12, n_val=6, height=32)
    assert (tmp_path / "train.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()
    assert (tmp_path / train[0]["image"]).read_bytes() == (out / train[0]["image"]).read_bytes()


# ------------------------------------------------------------------------------------------- loading


def test_load_image_converts_modes(tmp_path):
    Image.new("L", (5, 4), 77).save(tmp_path / "gray.png")
    img = load_image(tmp_path / "gray.png")
    assert img.mode == "RGB" and img.size == (5, 4) and img.getpixel((0, 0)) == (77, 77, 77)

    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent -> the white page, not black
    rgba.save(tmp_path / "rgba.png")
    img = load_image(tmp_path / "rgba.png")
    assert img.getpixel((0, 0)) == (10, 20, 30) and img.getpixel((1, 0)) == (255, 255, 255)

    Image.new("RGB", (3, 3), (200, 30, 40)).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "pal.png")
    assert load_image(tmp_path / "pal.png").getpixel((1, 1)) == (200, 30, 40)

    Image.fromarray(np.full((2, 2), 30000, dtype=np.uint16)).save(tmp_path / "deep.png")  # 16-bit gray
    assert load_image(tmp_path / "deep.png").getpixel((0, 0)) == (117, 117, 117)  # 30000 / 257

    Image.new("RGB", (1, 1), (255, 0, 0)).save(tmp_path / "one.png")
    x = image_to_tensor(load_image(tmp_path / "one.png"), 8)
    expected = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(IMAGE_MEAN)) / torch.tensor(IMAGE_STD)
    assert x.shape == (3, 8, 8) and torch.allclose(x, expected.view(3, 1, 1).expand(3, 8, 8), atol=1e-5)


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        load_image(tmp_path / "nothere.png")
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="junk.png"):
        load_image(tmp_path / "junk.png")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:60])
    with pytest.raises(ValueError, match="cut.png"):
        load_image(tmp_path / "cut.png")


def test_image_to_tensor_centre_crops_the_short_side():
    img = Image.new("RGB", (30, 10), (0, 0, 255))
    img.paste((255, 0, 0), (10, 0, 20, 10))  # the middle third is red
    x = image_to_tensor(img, 10)
    red = (1.0 - IMAGE_MEAN[0]) / IMAGE_STD[0]
    assert x.shape == (3, 10, 10) and torch.allclose(x[0], torch.full((10, 10), red), atol=1e-4)


def test_line_to_tensor_inverts_and_keeps_aspect():
    img = Image.new("L", (40, 20), 255)
    img.paste(0, (0, 0, 20, 20))
    x = line_to_tensor(img, 10)
    assert x.shape == (1, 10, 20)
    assert x[0, :, :9].min() == pytest.approx(1.0) and x[0, :, 11:].max() == pytest.approx(0.0)
    assert line_to_tensor(img, 10, max_width=12).shape == (1, 10, 12)


# ------------------------------------------------------------------------------------------- readers


def test_read_image_manifest_resolves_paths(shapes_dir, tmp_path):
    out, _ = shapes_dir
    records = read_image_manifest(out / "val.jsonl")
    assert len(records) == 8 and all(load_image(r["image"]).size == (32, 32) for r in records)
    assert "attributes" in records[0] and label_names(records) == sorted({r["label"] for r in records})
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png"}\n{"caption": "no image"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*'image'"):
        read_image_manifest(tmp_path / "bad.jsonl")


def test_read_coco_captions(tmp_path):
    coco = {
        "images": [{"id": 7, "file_name": "000007.jpg", "width": 4, "height": 4},
                   {"id": 9, "file_name": "000009.jpg"}],
        "annotations": [{"id": 1, "image_id": 9, "caption": "A dog on grass. "},
                        {"id": 2, "image_id": 7, "caption": "a cat"},
                        {"id": 3, "image_id": 9, "caption": "a brown dog"}],
    }
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    records = read_coco_captions(tmp_path / "captions.json", tmp_path / "imgs")
    assert [(r["image"], r["caption"], r["image_id"]) for r in records] == [
        (str(tmp_path / "imgs" / "000009.jpg"), "A dog on grass.", 9),
        (str(tmp_path / "imgs" / "000007.jpg"), "a cat", 7),
        (str(tmp_path / "imgs" / "000009.jpg"), "a brown dog", 9),
    ]
    coco["annotations"].append({"id": 4, "image_id": 5, "caption": "lost"})
    (tmp_path / "broken.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"broken.json.*image_id 5"):
        read_coco_captions(tmp_path / "broken.json", tmp_path)
    (tmp_path / "notjson.json").write_text("{oops")
    with pytest.raises(ValueError, match="notjson.json"):
        read_coco_captions(tmp_path / "notjson.json", tmp_path)


def test_read_ocr_manifest(ocr_dir, tmp_path):
    out, _ = ocr_dir
    records = read_ocr_manifest(out / "val.jsonl")
    assert len(records) == 6 and all(load_image(r["image"]).height == 32 for r in records)
    (tmp_path / "m.jsonl").write_text('{"image": "a.png", "text": 5}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:1: .*'text'"):
        read_ocr_manifest(tmp_path / "m.jsonl")


# ------------------------------------------------------------------------------------------- sources


def test_image_source_and_collate(shapes_dir):
    out, _ = shapes_dir
    records = read_image_manifest(out / "train.jsonl")
    words = sorted({w for r in records for w in r["caption"].split()})
    tok = WordTokenizer(words)
    source = ImageSource(records, image_size=16, caption_tokenizer=tok, labels=label_names(records))
    batch = source.collate([source[i] for i in range(4)])
    assert batch["images"].shape == (4, 3, 16, 16)
    lengths = [len(c.split()) + 1 for c in batch["captions"]]
    assert batch["caption_ids"].shape == (4, max(lengths))
    assert batch["caption_mask"].sum(1).tolist() == lengths
    assert (batch["caption_ids"][~batch["caption_mask"]] == tok.pad_id).all()
    assert (batch["caption_ids"][:, 0] == 1).all()  # BOS
    assert [source.labels[i] for i in batch["labels"]] == [r["label"] for r in records[:4]]
    static = ImageSource(records, image_size=16, caption_tokenizer=tok, max_caption_tokens=20, pad_captions=True)
    assert static.collate([static[0], static[1]])["caption_ids"].shape == (2, 20)
    assert "labels" not in static.collate([static[0]])


def test_image_source_bad_samples(shapes_dir, tmp_path):
    out, _ = shapes_dir
    good = read_image_manifest(out / "train.jsonl")[0]
    tok = WordTokenizer(good["caption"].split())
    records = [{**good, "image": str(tmp_path / "missing.png")}, {**good, "caption": " "},
               {**good, "label": "hexagon"}]
    source = ImageSource(records, image_size=16, caption_tokenizer=tok, labels=["circle", "multiple"])
    for i, pattern in enumerate(["missing.png", "empty caption", "hexagon"]):
        with pytest.raises(BadSample, match=pattern):
            source[i]


def test_ocr_source_and_collate(ocr_dir):
    out, _ = ocr_dir
    records = read_ocr_manifest(out / "train.jsonl")
    vocab = CharVocab.from_texts(r["text"] for r in records)
    source = OcrSource(records, vocab=vocab, height=32)
    samples = [source[i] for i in range(3)]
    batch = source.collate(samples)
    widths = [s["image"].shape[-1] for s in samples]
    assert batch["images"].shape == (3, 1, 32, max(widths))
    assert batch["widths"].tolist() == widths
    assert batch["label_lengths"].tolist() == [len(r["text"]) for r in records[:3]]
    assert [vocab.decode(row[:n].tolist()) for row, n in zip(batch["labels"], batch["label_lengths"])] == \
        batch["texts"] == [r["text"] for r in records[:3]]
    assert (batch["images"][0, :, :, widths[0]:] == 0).all()
    assert source.lengths == [len(r["text"]) for r in records]

    static = OcrSource(records, vocab=vocab, height=32, max_width=300)
    batch = static.collate([static[0]])
    assert batch["images"].shape == (1, 1, 32, 300) and batch["labels"].shape == (1, math.ceil(300 / 4))
    squeezed = OcrSource(records, vocab=vocab, height=32, max_width=max(widths) - 5)
    widest = widths.index(max(widths))
    assert squeezed[widest]["image"].shape[-1] == max(widths) - 5


def test_ocr_source_bad_samples(tmp_path):
    Image.new("L", (200, 32), 255).save(tmp_path / "wide.png")
    Image.new("L", (8, 32), 255).save(tmp_path / "narrow.png")
    (tmp_path / "junk.png").write_bytes(b"garbage")
    vocab = CharVocab.from_texts(["abcdef"])
    records = [{"image": str(tmp_path / "junk.png"), "text": "abc"},
               {"image": str(tmp_path / "wide.png"), "text": "  "},
               {"image": str(tmp_path / "narrow.png"), "text": "abcdef"},  # 2 frames for 6 characters
               {"image": str(tmp_path / "narrow.png"), "text": "aa"},  # needs 3 frames (blank between repeats)
               {"image": str(tmp_path / "wide.png"), "text": "xyz"},
               {"image": str(tmp_path / "narrow.png"), "text": "ab"}]
    source = OcrSource(records, vocab=vocab, height=32)
    for i, pattern in enumerate(["junk.png", "empty text", "needs 6 CTC frames", "needs 3 CTC frames",
                                 r"\['x', 'y', 'z'\]"]):
        with pytest.raises(BadSample, match=pattern):
            source[i]
    assert source[5]["image"].shape == (1, 32, 8)
