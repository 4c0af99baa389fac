"""Stage C and OCR data in the public layouts, read from fixtures in their exact on-disk layout (built from the
synthetic images): COCO captions, Flickr8k (token file, split lists), Flickr30k (results.csv), Kaggle's captions.txt,
an image folder with a captions CSV; MJSynth annotation files and a generic labels file; malformed rows named
file:line and skipped as bad samples; scripts/download_coco.py against a file:// mirror; scripts/make_ocr_lines.py
on corpus words; a few steps of train_vision.py on COCO and of train_ocr.py on MJSynth + rendered corpus lines, each
run then scored by scripts/evaluate.py on its val set in that layout (COCO annotations JSON, annotation_val.txt)."""

import json
import shutil
import subprocess
import sys
import zipfile

import pytest
from PIL import Image

from omni.data.image_layouts import load_image_records, load_ocr_records
from omni.data.images import ImageSource, OcrSource
from omni.data.manifest import DataError
from omni.data.resumable import BadSample
from omni.errors import MissingInput
from omni.synthetic.images import write_image_dataset
from tests.conftest import REPO, load_script
from tests.stage_data import stage_a_standin
from tests.test_text_sources import evaluate_like_the_run

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Synthetic images with captions: (folder, train records, val records)."""
    out = tmp_path_factory.mktemp("shapes")
    write_image_dataset(out, seed=2, n_train=24, n_val=8, image_size=32)
    read = lambda split: [json.loads(x) for x in (out / f"{split}.jsonl").read_text().splitlines()]  # noqa: E731
    return out, read("train"), read("val")


def coco_split(root, shapes_dir, records, split, first_id=1):
    """COCO layout: <root>/annotations/captions_<split>.json + <root>/<split>/<12-digit id>.jpg."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, r in enumerate(records):
        image_id = first_id + i
        name = f"{image_id:012d}.jpg"
        Image.open(shapes_dir / r["image"]).convert("RGB").save(root / split / name)
        images.append({"id": image_id, "file_name": name, "height": 32, "width": 32, "license": 1})
        annotations.append({"id": 1000 + image_id, "image_id": image_id, "caption": r["caption"] + " "})
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(
        {"info": {}, "licenses": [], "images": images, "annotations": annotations}))
    return root / "annotations" / f"captions_{split}.json"


@pytest.fixture(scope="module")
def coco(tmp_path_factory, shapes):
    out, train, val = shapes
    root = tmp_path_factory.mktemp("coco")
    return coco_split(root, out, train, "train2017"), coco_split(root, out, val, "val2017", first_id=500)


def copy_images(shapes_dir, records, folder, suffix=".jpg"):
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, r in enumerate(records):
        names.append(f"{1000268201 + i}_693b08cb0e{suffix}")
        Image.open(shapes_dir / r["image"]).convert("RGB").save(folder / names[-1])
    return names


# --------------------------------------------------------------------------------------------------- images


def test_coco_layout_finds_its_image_folder_by_convention(coco, shapes):
    train_json, _ = coco
    notes = []
    records = load_image_records(train_json, key="data.train_manifest", log=notes.append)
    assert len(records) == 24 and records[0]["caption"] == shapes[1][0]["caption"]
    assert records[0]["image"] == str(train_json.parent.parent / "train2017" / "000000000001.jpg")
    assert notes == [f"data.train_manifest: COCO captions {train_json}, 24 records of 24 images"]
    source = ImageSource(records, image_size=16)
    assert source[0]["image"].shape == (3, 16, 16)
    # an explicit folder wins over the convention; a missing one is named
    elsewhere = train_json.parent.parent / "train2017"
    assert load_image_records(train_json, elsewhere)[0]["image"] == str(elsewhere / "000000000001.jpg")
    with pytest.raises(MissingInput, match="nowhere"):
        load_image_records(train_json, train_json.parent / "nowhere")


def test_coco_layout_without_its_image_folder_says_what_to_set(tmp_path, coco):
    shutil.copytree(coco[0].parent, tmp_path / "annotations")
    with pytest.raises(MissingInput, match=r"train2017.*data.train_images"):
        load_image_records(tmp_path / "annotations" / "captions_train2017.json")


def test_flickr8k_token_file_and_split_lists(tmp_path, shapes):
    """Flickr8k's zips: Flickr8k_text/{Flickr8k.token.txt, Flickr_8k.trainImages.txt, ...} beside
    Flicker8k_Dataset/ [sic]; five captions per image as `<image>#<n>\\t<caption>`; one malformed line."""
    out, train, _ = shapes
    names = copy_images(out, train[:4], tmp_path / "Flicker8k_Dataset")
    text = tmp_path / "Flickr8k_text"
    text.mkdir()
    lines = [f"{name}#{n}\t{r['caption']} ." for name, r in zip(names, train) for n in range(2)]
    lines.insert(3, "a line without its tab")
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (text / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:3]) + "\n")
    (text / "Flickr_8k.devImages.txt").write_text(names[3] + "\n")
    notes = []
    records = load_image_records(text / "Flickr8k.token.txt", log=notes.append)
    assert len(records) == 9 and records[0] == {"image": str(tmp_path / "Flicker8k_Dataset" / names[0]),
                                                 "caption": f"{train[0]['caption']} .", "label": None}
    assert "Flickr captions tokens" in notes[0] and "9 records of 4 images" in notes[0]
    assert f"1 malformed rows (skipped as bad samples), first: {text / 'Flickr8k.token.txt'}:4:" in notes[0]
    with pytest.raises(BadSample, match=r"Flickr8k.token.txt:4: expected '<image>#<n>\\t<caption>'"):
        ImageSource(records, image_size=16)[3]
    train_split = load_image_records(text / "Flickr_8k.trainImages.txt")
    dev = load_image_records(text / "Flickr_8k.devImages.txt")
    assert {r["image"] for r in train_split if not r.get("error")} == {
        str(tmp_path / "Flicker8k_Dataset" / n) for n in names[:3]}
    assert [r["caption"] for r in dev if not r.get("error")] == [f"{train[3]['caption']} ."] * 2
    assert load_image_records(tmp_path / "Flickr8k_text")[0]["image"] == records[0]["image"]  # the folder


def test_flickr30k_results_csv_and_kaggle_captions_txt(tmp_path, shapes):
    """Flickr30k's Kaggle copy: flickr30k_images/results.csv (`image_name| comment_number| comment`, with its one
    known broken row) and the images in flickr30k_images/flickr30k_images/; Kaggle's Flickr8k: captions.txt
    (`image,caption`, commas in a caption unquoted or quoted) beside Images/."""
    out, train, _ = shapes
    root = tmp_path / "flickr30k_images"
    names = copy_images(out, train[:3], root / "flickr30k_images")
    rows = ["image_name| comment_number| comment"] + [f"{n}| {k}| {r['caption']} ." for n, r in zip(names, train)
                                                      for k in range(2)]
    rows.append(f"{names[0]}| 4 A dog runs across the grass .")
    (root / "results.csv").write_text("\n".join(rows) + "\n")
    records = load_image_records(root / "results.csv")
    assert len(records) == 7 and records[0]["image"] == str(root / "flickr30k_images" / names[0])
    assert records[0]["caption"] == f"{train[0]['caption']} ."
    assert records[6]["error"] == (f"{root / 'results.csv'}:8: expected 3 '|'-separated fields "
                                   "(image_name, comment_number, comment), got 2")

    kaggle = tmp_path / "flickr8k"
    names = copy_images(out, train[:2], kaggle / "Images")
    (kaggle / "captions.txt").write_text(f"image,caption\n{names[0]},A dog, brown, runs .\n"
                                         f'{names[1]},"A cat, asleep ."\n')
    notes = []
    records = load_image_records(kaggle, log=notes.append)  # the folder: its captions.txt
    assert [(r["image"], r["caption"]) for r in records] == [
        (str(kaggle / "Images" / names[0]), "A dog, brown, runs ."), (str(kaggle / "Images" / names[1]),
                                                                      "A cat, asleep .")]
    assert notes[0].startswith(f"images data: captions table {kaggle / 'captions.txt'}, 2 records of 2 images")


def test_image_folder_with_captions_csv_and_jsonl(tmp_path, shapes):
    out, train, _ = shapes
    folder = tmp_path / "photos"
    names = copy_images(out, train[:3], folder, suffix=".png")
    (folder / "captions.csv").write_text("file,caption\n" + "".join(f"{n},{r['caption']}\n"
                                                                     for n, r in zip(names, train)) + f"{names[0]},\n")
    records = load_image_records(folder / "captions.csv")
    assert [r["image"] for r in records[:3]] == [str(folder / n) for n in names]
    assert records[3]["error"] == f"{folder / 'captions.csv'}:5: empty 'caption'"
    # JSONL with paths relative to an explicit image folder (data.train_images)
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": names[1], "caption": "x"}) + "\n")
    assert load_image_records(tmp_path / "m.jsonl", folder)[0]["image"] == str(folder / names[1])
    with pytest.raises(DataError, match=r"bad.csv:1: expected a header with an image column"):
        (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
        load_image_records(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="cannot find its images"):
        (tmp_path / "lost.csv").write_text("image,caption\nnope.jpg,a cat\n")
        load_image_records(tmp_path / "lost.csv")


# ------------------------------------------------------------------------------------------------------ OCR


def render_words(out_dir, words, height=32):
    ocr = load_script("make_ocr_lines")
    import random

    import numpy as np
    rng, nprng = random.Random(0), np.random.default_rng(0)
    return [ocr.render_line(w, FONT, rng, nprng, height).save(out_dir / f"{i}.jpg") for i, w in enumerate(words)]


@pytest.fixture(scope="module")
def mjsynth(tmp_path_factory):
    """MJSynth's layout: mnt/ramdisk/max/90kDICT32px/{annotation_train.txt, annotation_val.txt, <n>/<n>/*.jpg},
    a line `./2425/1/115_Lube_45484.jpg 45484`, the label between the underscores."""
    root = tmp_path_factory.mktemp("mjsynth") / "mnt" / "ramdisk" / "max" / "90kDICT32px"
    words = ("Lube", "dog", "Zebra", "quiz", "BOX", "jazz", "pixel", "oxygen", "kiwi", "yolk") * 5
    tmp = root / "tmp"
    tmp.mkdir(parents=True)
    render_words(tmp, words)
    lines = {"train": [], "val": []}
    for i, word in enumerate(words):
        split = "val" if i >= 40 else "train"
        rel = f"./{2425 + i // 8}/{1 + i % 3}/{115 + i}_{word}_{45484 + i}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / f"{i}.jpg").rename(root / rel)
        lines[split].append(f"{rel} {45484 + i}")
    for split, rows in lines.items():
        (root / f"annotation_{split}.txt").write_text("\n".join(rows) + "\n")
    shutil.rmtree(tmp)
    return root


def test_mjsynth_labels_come_from_the_file_names(mjsynth):
    notes = []
    records = load_ocr_records(mjsynth / "annotation_train.txt", key="data.train_manifest", log=notes.append)
    assert records[0] == {"image": str(mjsynth / "./2425/1/115_Lube_45484.jpg"), "text": "Lube"}
    assert [r["text"] for r in records[:5]] == ["Lube", "dog", "Zebra", "quiz", "BOX"]
    assert notes == [f"data.train_manifest: MJSynth annotations {mjsynth / 'annotation_train.txt'}, 40 lines"]
    from omni.ctc import CharVocab
    source = OcrSource(records, vocab=CharVocab.from_texts(r["text"] for r in records), height=32)
    assert source[0]["text"] == "Lube" and source[0]["image"].shape[1] == 32


def test_generic_labels_file_and_bad_rows(tmp_path):
    (tmp_path / "crops").mkdir()
    render_words(tmp_path / "crops", ["hello world", "Gate 12"])
    (tmp_path / "gt.txt").write_text("crops/0.jpg\thello world\ncrops/1.jpg Gate 12\njust-a-path.jpg\n")
    notes = []
    records = load_ocr_records(tmp_path / "gt.txt", log=notes.append)
    assert records[:2] == [{"image": str(tmp_path / "crops/0.jpg"), "text": "hello world"},
                           {"image": str(tmp_path / "crops/1.jpg"), "text": "Gate 12"}]
    assert records[2]["error"].startswith(f"{tmp_path / 'gt.txt'}:3: expected '<image path>\\t<text>'")
    assert "labels file" in notes[0] and "1 malformed rows" in notes[0]
    from omni.ctc import CharVocab
    with pytest.raises(BadSample, match=r"gt.txt:3"):
        OcrSource(records, vocab=CharVocab.from_texts(["hello world Gate 12"]), height=32)[2]
    with pytest.raises(MissingInput, match="OCR data not found"):
        load_ocr_records(tmp_path / "nope.txt")


def test_make_ocr_lines_renders_corpus_words(tmp_path, text_corpus):
    ocr = load_script("make_ocr_lines")
    stats = ocr.write_ocr_lines(text_corpus / "train.txt", tmp_path, n_train=12, n_val=4, height=32, max_chars=16,
                                seed=1, fonts=[FONT, FONT.replace("Sans.ttf", "Serif.ttf")])
    assert stats["train"] == 12 and stats["val"] == 4 and stats["fonts"] == 2
    corpus_words = set((text_corpus / "train.txt").read_text().split())
    records = load_ocr_records(tmp_path / "train.jsonl")
    val = {r["text"] for r in load_ocr_records(tmp_path / "val.jsonl")}
    assert len(records) == 12 and not val & {r["text"] for r in records}
    for r in records:
        assert 1 <= len(r["text"]) <= 16 and set(r["text"].split()) <= corpus_words
        with Image.open(r["image"]) as img:
            assert img.height == 32 and img.mode == "RGB"
    again = tmp_path / "again"
    ocr.write_ocr_lines(text_corpus / "train.txt", again, n_train=12, n_val=4, height=32, max_chars=16, seed=1,
                        fonts=[FONT, FONT.replace("Sans.ttf", "Serif.ttf")])
    assert (again / "train.jsonl").read_text() == (tmp_path / "train.jsonl").read_text()  # seeded


def test_drawable_drops_characters_the_fonts_lack():
    ocr = load_script("make_ocr_lines")
    assert ocr.drawable([FONT], set("aZ9é漢\u200b")) == set("aZ9é")


# ------------------------------------------------------------------------------------------------ downloads


def test_download_coco_from_a_file_mirror(tmp_path, coco):
    """The documented archives (annotations_trainval2017.zip, val2017.zip) from a file:// mirror; the val2017 split
    into train.jsonl / val.jsonl by image; a rerun skips what is there."""
    train_json, val_json = coco
    mirror = tmp_path / "mirror"
    (mirror / "annotations").mkdir(parents=True)
    (mirror / "zips").mkdir()
    with zipfile.ZipFile(mirror / "annotations" / "annotations_trainval2017.zip", "w") as zf:
        for f in (train_json, val_json):
            zf.write(f, f"annotations/{f.name}")
    with zipfile.ZipFile(mirror / "zips" / "val2017.zip", "w") as zf:
        for f in sorted((val_json.parent.parent / "val2017").iterdir()):
            zf.write(f, f"val2017/{f.name}")
    download_coco = load_script("download_coco")
    out = tmp_path / "data"
    download_coco.main(["--out", str(out), "--val", "3", "--mirror", mirror.as_uri()])
    coco_dir = out / "coco"
    assert sorted(p.name for p in coco_dir.iterdir()) == ["annotations", "train.jsonl", "val.jsonl", "val2017"]
    train, val = load_image_records(coco_dir / "train.jsonl"), load_image_records(coco_dir / "val.jsonl")
    assert len(train) == 5 and len(val) == 3 and not {r["image"] for r in train} & {r["image"] for r in val}
    assert all(Image.open(r["image"]).size == (32, 32) for r in train + val)
    assert not list(coco_dir.glob("*.zip"))
    assert len(load_image_records(coco_dir / "annotations" / "captions_val2017.json")) == 8  # the COCO layout
    shutil.rmtree(mirror)  # the rerun must not need the network (here: the mirror)
    download_coco.main(["--out", str(out), "--val", "3", "--mirror", mirror.as_uri()])


# ---------------------------------------------------------------------------------------------- stage steps


def train_three_steps(script, tiny, tmp_path, save, sets, *, weights):
    """Run `script` with the `tiny` config (written to tmp_path/tiny.json) for 3 steps, evaluating and checkpointing
    at step 3, with `--set *sets` (which put the run in `save`); assert it finished with its `weights` file written,
    and return its training.log."""
    config = {**tiny, "train": {**tiny["train"], "max_steps": 3, "val_freq": 3, "checkpoint_freq": 3}}
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    result = subprocess.run([sys.executable, script, "--config", str(tmp_path / "tiny.json"), "--set", *sets],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((save / "summary.json").read_text())["step"] == 3 and (save / weights).is_file()
    return (save / "training.log").read_text()


def test_train_vision_on_coco(tmp_path, coco, text_corpus):
    from tests.test_train_vision import TINY

    (tmp_path / "thinker").mkdir()
    stage_a = stage_a_standin(tmp_path / "thinker", text_corpus)
    train_json, val_json = coco
    save = tmp_path / "run"
    sets = [f"train.save_dir={save}", f"data.train_manifest={train_json}", f"data.val_manifest={val_json}",
            f"data.tokenizer={stage_a / 'tokenizer.model'}"]
    log = train_three_steps("train_vision.py", TINY, tmp_path, save, sets, weights="vision.pt")
    assert f"data.train_manifest: COCO captions {train_json}, 24 records of 24 images" in log
    done = evaluate_like_the_run(save, tmp_path / "tiny.json", sets, "i2t_r1", tmp_path / "eval.json")
    assert f"data.val_manifest: COCO captions {val_json}, 8 records of 8 images" in done.stderr


@pytest.mark.parametrize("layout", ["MJSynth annotations", "rendered corpus lines"])
def test_train_ocr_on(layout, tmp_path, mjsynth, text_corpus):
    from tests.test_train_ocr import TINY

    if layout == "MJSynth annotations":
        train, val, n = mjsynth / "annotation_train.txt", mjsynth / "annotation_val.txt", 40
    else:
        load_script("make_ocr_lines").write_ocr_lines(text_corpus / "train.txt", tmp_path / "lines", n_train=24,
                                                      n_val=6, height=32, max_chars=12, seed=0, fonts=[FONT])
        train, val, n = tmp_path / "lines" / "train.jsonl", tmp_path / "lines" / "val.jsonl", 24
    save = tmp_path / "run"
    sets = [f"train.save_dir={save}", f"data.train_manifest={train}", f"data.val_manifest={val}"]
    log = train_three_steps("train_ocr.py", TINY, tmp_path, save, sets, weights="ocr.pt")
    assert f"data.train_manifest: {'JSONL manifest' if 'corpus' in layout else layout} {train}, {n} lines" in log
    done = evaluate_like_the_run(save, tmp_path / "tiny.json", sets, "val_cer", tmp_path / "eval.json")
    assert f"data.val_manifest: {'JSONL manifest' if 'corpus' in layout else layout} {val}" in done.stderr
