"""Image dataset layouts: the readers that turn an images / OCR data path into records for `omni.data.images`.

`load_image_records` / `load_ocr_records` turn a config path into records, detect the layout from the path
(`image_layout` / `ocr_layout`) and log which one they read; an explicit image folder, `data.train_images` /
`data.val_images`, overrides where the layout's convention looks for the images:
- images: our JSONL manifest {"image", "caption"?, "label"?}; COCO captions (`annotations/captions_<split>.json`,
  images in `<root>/<split>/`); Flickr8k / Flickr30k token files (`Flickr8k.token.txt`, `results_20130124.token`:
  `<image>#<n>\t<caption>`) and Flickr8k's split lists (`Flickr_8k.trainImages.txt`: image names, captions from the
  token file beside it); caption tables with a header naming an image and a caption column, comma / tab / `|`
  separated (Kaggle's Flickr8k / Flickr30k `captions.txt` `image,caption`, Flickr30k's `results.csv`
  `image_name| comment_number| comment`, or any image folder with a `captions.csv`); a folder holding one of these.
- OCR: our JSONL manifest {"image", "text"}; MJSynth annotation files (`./2425/1/115_Lube_45484.jpg 45484`: the label
  is the word between the underscores of the file name); a generic labels file (`labels.txt`, `gt.txt`:
  `<image path>\t<text>` per line, or a space where there is no tab).
Image paths are relative to the file that names them (or to the explicit image folder). A malformed row does not
stop the run: it becomes a record with an "error" naming file:line, which the source raises as a BadSample, so it is
counted, named and skipped like an unreadable image (and `require_usable` / the bad-sample log see it).
`label_names` gives the class list of labelled records.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from omni.data.manifest import DataError, check_fields, read_jsonl_lines, read_text_lines, resolve, table_header
from omni.errors import MissingInput


def read_image_manifest(path: str | Path, images_dir: str | Path | None = None) -> list[dict]:
    """Records of an images manifest ({"image", "caption"?, "label"?, ...}); "image" becomes an absolute-or-
    manifest-relative (or `images_dir`-relative) resolved path string, other keys pass through."""
    base = Path(images_dir) / "_" if images_dir is not None else path  # resolve() is relative to a file's folder
    records = []
    for line_no, rec in read_jsonl_lines(path):
        check_fields(rec, f"{path}:{line_no}", required=("image",), optional=("caption", "label"))
        records.append({**rec, "image": str(resolve(base, rec["image"])), "caption": rec.get("caption"),
                        "label": rec.get("label")})
    return records


def read_coco_captions(annotations_json: str | Path, images_dir: str | Path) -> list[dict]:
    """COCO captions layout ({"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}) -> one
    record per caption: {"image", "caption", "label": None, "image_id"} in annotation order."""
    try:
        data = json.loads(Path(annotations_json).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO annotations not found: {annotations_json}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{annotations_json}: invalid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
        raise DataError(f"{annotations_json}: expected a COCO captions object with 'images' and 'annotations'")
    files = {}
    for i, img in enumerate(_entries(data, "images", annotations_json)):
        check_fields(img, f"{annotations_json}: images[{i}]", required=("id", "file_name"))
        files[img["id"]] = str(Path(images_dir) / img["file_name"])
    records = []
    for i, ann in enumerate(_entries(data, "annotations", annotations_json)):
        where = f"{annotations_json}: annotations[{i}]"
        check_fields(ann, where, required=("image_id", "caption"))
        if ann["image_id"] not in files:
            raise DataError(f"{where}: refers to unknown image_id {ann['image_id']!r}")
        records.append({"image": files[ann["image_id"]], "caption": ann["caption"].strip(), "label": None,
                        "image_id": ann["image_id"]})
    if not records:
        raise DataError(f"{annotations_json}: no caption annotations")
    return records


def _entries(data: dict, key: str, path) -> list[dict]:
    """data[key] of a COCO file, checked to be a list of JSON objects."""
    entries = data[key]
    if not isinstance(entries, list):
        raise DataError(f"{path}: {key!r} must be a list, got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: {key}[{i}] must be a JSON object, got {type(entry).__name__}")
    return entries


def read_ocr_manifest(path: str | Path, images_dir: str | Path | None = None) -> list[dict]:
    """Records of an OCR manifest ({"image", "text"}) with "image" resolved against the manifest's folder (or
    `images_dir`)."""
    base = Path(images_dir) / "_" if images_dir is not None else path
    records = []
    for line_no, rec in read_jsonl_lines(path):
        check_fields(rec, f"{path}:{line_no}", required=("image", "text"))
        records.append({**rec, "image": str(resolve(base, rec["image"]))})
    return records


def label_names(records: Sequence[dict]) -> list[str]:
    """Sorted class names found in `records` (the class list of a classifier; sorted so data order is irrelevant)."""
    return sorted({r["label"] for r in records if r.get("label") is not None})


# ------------------------------------------------------------------------------------------- public layouts

IMAGE_COLUMNS = ("image", "image_name", "file_name", "filename", "file", "image_path", "path")  # first found wins
CAPTION_COLUMNS = ("caption", "comment", "text", "sentence", "description")
CAPTION_FILES = ("captions.txt", "captions.csv", "captions.tsv", "captions.jsonl", "results.csv",
                 "Flickr8k.token.txt", "Flickr8k_text/Flickr8k.token.txt", "results_20130124.token")
# Where the Flickr downloads put their images, relative to the captions file's folder or the one above it
# (Flickr8k's zips unpack to Flicker8k_Dataset/ [sic] beside Flickr8k_text/; Kaggle's copies use Images/).
IMAGE_FOLDERS = (".", "Images", "images", "Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k-images",
                 "flickr30k_images", "flickr30k_images/flickr30k_images")
_MJSYNTH_LINE = re.compile(r"^\S*?([^/\s]+)_([^/\s]+)_\d+\.\w+\s+\d+$")  # ./2425/1/115_Lube_45484.jpg 45484


def _bad(where: str, reason: str, **fields) -> dict:
    """A malformed row, kept as a record whose "error" the source raises as a BadSample (named and counted)."""
    return {"image": "", **fields, "error": f"{where}: {reason}"}


def coco_images_dir(annotations_json: str | Path) -> Path:
    """The COCO convention: `<root>/annotations/captions_<split>.json` has its images in `<root>/<split>/`."""
    path = Path(annotations_json)
    split = path.stem.removeprefix("captions_")
    root = path.parent.parent if path.parent.name == "annotations" else path.parent
    return root / split


def _read_coco_layout(path: Path, images_dir) -> list[dict]:
    folder = Path(images_dir) if images_dir is not None else coco_images_dir(path)
    if not folder.is_dir():
        raise MissingInput(f"COCO images folder not found: {folder} (for {path}; the COCO layout puts <split>/ "
                           "beside annotations/, else give data.train_images / data.val_images)")
    return read_coco_captions(path, folder)


def _find_images_dir(table: Path, records: list[dict], images_dir) -> Path:
    """The folder the image names of `table` are relative to: `images_dir` when given, else the first of
    IMAGE_FOLDERS (beside the table or one level up) holding one of the first rows' images."""
    if images_dir is not None:
        if not Path(images_dir).is_dir():
            raise MissingInput(f"image folder not found: {images_dir} (given for {table})")
        return Path(images_dir)
    names = [r["image"] for r in records if not r.get("error")][:20]
    candidates = [base / sub for base in (table.parent, table.parent.parent) for sub in IMAGE_FOLDERS]
    for folder in candidates:
        if any((folder / name).is_file() for name in names):
            return folder
    raise DataError(f"{table}: cannot find its images ({names[:1]} is in none of {', '.join(IMAGE_FOLDERS)} beside "
                    f"it or one level up); give the image folder (data.train_images / data.val_images)")


def _under(folder: Path, records: list[dict]) -> list[dict]:
    for r in records:
        if not r.get("error"):
            r["image"] = str(folder / r["image"])
    return records


def read_flickr_tokens(path: str | Path, images_dir=None, only: Sequence[str] | None = None) -> list[dict]:
    """Flickr8k / Flickr30k token file (`<image>#<n>\t<caption>` per line) -> one record per caption; `only`
    keeps the captions of those image names (a Flickr8k split list), in the token file's order."""
    path = Path(path)
    keep = set(only) if only is not None else None
    records = []
    for line_no, line in enumerate(read_text_lines(path), start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        image, hash_, n = key.strip().rpartition("#")[0], "#" in key, key.rpartition("#")[2]
        if not tab or not hash_ or not image or not n.strip().isdigit():
            records.append(_bad(f"{path}:{line_no}", f"expected '<image>#<n>\\t<caption>', got {line[:80]!r}"))
        elif keep is None or image in keep:
            records.append({"image": image, "caption": caption.strip(), "label": None})
    if not records:
        raise DataError(f"{path} has no captions" + (" of the listed images" if keep is not None else ""))
    return _under(_find_images_dir(path, records, images_dir), records)


def read_flickr8k_split(path: str | Path, images_dir=None) -> list[dict]:
    """Flickr8k split list (`Flickr_8k.trainImages.txt`: one image name per line) -> the captions of those images
    from `Flickr8k.token.txt` beside it."""
    path = Path(path)
    tokens = path.parent / "Flickr8k.token.txt"
    if not tokens.is_file():
        raise MissingInput(f"{path} is a Flickr8k split list, but its captions file {tokens} is missing")
    names = [line.strip() for line in read_text_lines(path) if line.strip()]
    return read_flickr_tokens(tokens, images_dir, only=names)


def read_caption_table(path: str | Path, images_dir=None) -> list[dict]:
    """A captions table (see the module docstring): comma (CSV quoting), tab or `|` separated, with a header
    naming an image column (IMAGE_COLUMNS) and a caption column (CAPTION_COLUMNS); other columns are ignored."""
    path = Path(path)
    lines = read_text_lines(path)
    header = table_header(lines[0], IMAGE_COLUMNS, CAPTION_COLUMNS) if lines else None
    if header is None:
        raise DataError(f"{path}:1: expected a header with an image column (one of {', '.join(IMAGE_COLUMNS)}) and a "
                        f"caption column (one of {', '.join(CAPTION_COLUMNS)}), comma-, tab- or |-separated; got "
                        f"{(lines[0] if lines else '')[:120]!r}")
    delimiter, columns, (image_col, caption_col) = header
    i_image, i_caption = columns.index(image_col), columns.index(caption_col)
    records = []
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = next(csv.reader([line], delimiter=delimiter)) if delimiter == "," else line.split(delimiter)
        if i_caption == len(columns) - 1 and len(fields) > len(columns):  # an unquoted delimiter in the caption
            fields = fields[: i_caption] + [delimiter.join(fields[i_caption:])]
        where = f"{path}:{line_no}"
        if len(fields) != len(columns):
            records.append(_bad(where, f"expected {len(columns)} {delimiter!r}-separated fields "
                                       f"({', '.join(columns)}), got {len(fields)}"))
        elif not fields[i_image].strip():
            records.append(_bad(where, f"empty {image_col!r}"))
        elif not fields[i_caption].strip():
            records.append(_bad(where, f"empty {caption_col!r}"))
        else:
            records.append({"image": fields[i_image].strip(), "caption": fields[i_caption].strip(), "label": None})
    if not records:
        raise DataError(f"{path} has no rows")
    return _under(_find_images_dir(path, records, images_dir), records)


def image_layout(path: str | Path) -> tuple[str, Callable, Path]:
    """(layout name, reader(path, images_dir), the file it reads) of an images data path; DataError naming the path
    when it is no layout omni reads."""
    path = Path(path)
    if path.is_dir():
        found = next((path / name for name in CAPTION_FILES if (path / name).is_file()), None)
        if found is None:
            raise DataError(f"{path}: a folder without a captions file; expected one of {', '.join(CAPTION_FILES)}")
        path = found
    if not path.is_file():
        raise MissingInput(f"images data not found: {path}")
    name = path.name
    if path.suffix == ".jsonl":
        return "JSONL manifest", read_image_manifest, path
    if path.suffix == ".json":
        return "COCO captions", _read_coco_layout, path
    if name.endswith((".token", ".token.txt")):
        return "Flickr captions tokens", read_flickr_tokens, path
    if name.startswith("Flickr_8k.") and name.endswith("Images.txt"):
        return "Flickr8k split list", read_flickr8k_split, path
    return "captions table", read_caption_table, path


def load_image_records(path: str | Path, images_dir: str | Path | None = None, *, key: str = "images data",
                       log: Callable[[str], None] | None = None) -> list[dict]:
    """Records {"image", "caption", "label"} (or {"error"} for a malformed row) of an images data path, whatever its
    layout (`image_layout`); `log` gets one line: `key`, the layout, the file, the counts and the first bad row."""
    layout, reader, target = image_layout(path)
    records = reader(target, images_dir)
    if log is not None:
        images = len({r["image"] for r in records if not r.get("error")})
        log(f"{key}: {layout} {target}, {len(records):,} records of {images:,} images" + _bad_rows(records))
    return records


def _bad_rows(records: list[dict]) -> str:
    bad = [r["error"] for r in records if r.get("error")]
    return f"; {len(bad)} malformed rows (skipped as bad samples), first: {bad[0]}" if bad else ""


def read_mjsynth(path: str | Path, images_dir=None) -> list[dict]:
    """MJSynth annotation file (annotation_train.txt: `./2425/1/115_Lube_45484.jpg 45484` per line) -> records
    {"image", "text"}, the text being the word between the underscores of the file name (the number after the
    path is a lexicon index, not needed). Paths are relative to the annotation file's folder."""
    def parse(line: str):
        match = _MJSYNTH_LINE.match(line.strip())
        if match is None:
            return None, f"expected './<dir>/<n>_<word>_<n>.jpg <n>', got {line[:80]!r}"
        return (line.split()[0], match.group(2)), None

    return _read_label_lines(path, images_dir, parse)


def read_ocr_labels(path: str | Path, images_dir=None) -> list[dict]:
    """Generic OCR labels file (labels.txt / gt.txt: `<image path>\t<text>` per line; a line without a tab splits
    at its first space) -> records {"image", "text"}; paths relative to the file's folder (or `images_dir`)."""
    def parse(line: str):
        image, sep, text = line.partition("\t") if "\t" in line else line.partition(" ")
        if not sep or not image.strip() or not text.strip():
            return None, f"expected '<image path>\\t<text>', got {line[:80]!r}"
        return (image.strip(), text), None

    return _read_label_lines(path, images_dir, parse)


def _read_label_lines(path: str | Path, images_dir, parse) -> list[dict]:
    """Records of a one-line-per-image labels file: `parse(line)` gives ((image path, text), None) or (None, why);
    a malformed line is kept as a bad record named file:line. Paths are relative to the file's folder or
    `images_dir`."""
    path = Path(path)
    root = Path(images_dir) if images_dir is not None else path.parent
    records = []
    for line_no, line in enumerate(read_text_lines(path), start=1):
        if not line.strip():
            continue
        parsed, why = parse(line)
        if parsed is None:
            records.append(_bad(f"{path}:{line_no}", why, text=""))
        else:
            records.append({"image": str(root / parsed[0]), "text": parsed[1]})
    if not records:
        raise DataError(f"{path} has no lines")
    return records


def ocr_layout(path: str | Path) -> tuple[str, Callable, Path]:
    """(layout name, reader(path, images_dir), path) of an OCR data path: a .jsonl manifest, an MJSynth annotation
    file (recognised by its first line) or a generic labels file."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"OCR data not found: {path}" + (" (a folder: give its labels file)" if path.is_dir()
                                                            else ""))
    if path.suffix == ".jsonl":
        return "JSONL manifest", read_ocr_manifest, path
    first = next((line.strip() for line in read_text_lines(path) if line.strip()), "")
    if _MJSYNTH_LINE.match(first):
        return "MJSynth annotations", read_mjsynth, path
    return "labels file", read_ocr_labels, path


def load_ocr_records(path: str | Path, images_dir: str | Path | None = None, *, key: str = "OCR data",
                     log: Callable[[str], None] | None = None) -> list[dict]:
    """Records {"image", "text"} (or {"error"} for a malformed row) of an OCR data path, whatever its layout
    (`ocr_layout`); `log` gets one line: `key`, the layout, the file, the count and the first bad row."""
    layout, reader, target = ocr_layout(path)
    records = reader(target, images_dir)
    if log is not None:
        log(f"{key}: {layout} {target}, {len(records):,} lines" + _bad_rows(records))
    return records
