"""Download COCO 2017 captions and the val2017 images (5,000 images, 25,014 captions, ~1.2 GB; needs internet; never
run by the tests or CI), optionally the train2017 images (118,287 images, 18 GB).

    python scripts/download_coco.py [--out data] [--val 500] [--train2017] [--mirror URL]

Unpacks the archives of https://cocodataset.org/#download to the COCO layout under <out>/coco/:
annotations/captions_{train,val}2017.json, val2017/*.jpg (and train2017/*.jpg with --train2017), the layout
train_vision.py reads directly (data.train_manifest=<out>/coco/annotations/captions_train2017.json finds train2017/
by the COCO convention). Without train2017 the script also splits val2017 by image into <out>/coco/train.jsonl and
val.jsonl (the last --val images, by id, held out), so the two never share an image. Rerunning skips every archive
already downloaded and unpacked; an interrupted download restarts from its .part file's start (download_util).
"""

import argparse
import json
import sys
import zipfile
from pathlib import Path

from download_util import download  # scripts/ is on sys.path when a script there runs

BASE_URL = "http://images.cocodataset.org"
ARCHIVES = {  # archive path under BASE_URL -> what it unpacks to under <out>/coco
    "annotations/annotations_trainval2017.zip": "annotations/captions_val2017.json",
    "zips/val2017.zip": "val2017",
    "zips/train2017.zip": "train2017",
}


def fetch(archive: str, coco: Path, base_url: str, keep: bool) -> None:
    """Download and unpack one archive unless what it unpacks to is there already."""
    if (coco / ARCHIVES[archive]).exists():
        print(f"{coco / ARCHIVES[archive]} exists, skipped {archive}")
        return
    target = coco / Path(archive).name
    if not target.exists():
        download(f"{base_url.rstrip('/')}/{archive}", target)
    print(f"unpacking {target} into {coco}")
    with zipfile.ZipFile(target) as zf:
        zf.extractall(coco)  # zipfile drops absolute paths and '..' parts of member names
    if not keep:
        target.unlink()


def write_splits(coco: Path, n_val: int) -> None:
    """train.jsonl / val.jsonl over captions_val2017.json, split by image id (every caption of an image on one
    side), image paths relative to the manifests."""
    data = json.loads((coco / "annotations" / "captions_val2017.json").read_text(encoding="utf-8"))
    files = {img["id"]: img["file_name"] for img in data["images"]}
    ids = sorted(files)
    if not 0 < n_val < len(ids):
        raise SystemExit(f"--val must be between 1 and {len(ids) - 1} (val2017 has {len(ids)} images), got {n_val}")
    held_out = set(ids[-n_val:])
    splits = {"train": [], "val": []}
    for ann in data["annotations"]:
        split = "val" if ann["image_id"] in held_out else "train"
        splits[split].append({"image": f"val2017/{files[ann['image_id']]}", "caption": ann["caption"].strip()})
    for name, records in splits.items():
        with (coco / f"{name}.jsonl").open("w", encoding="utf-8") as out:
            out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    print(f"wrote {coco / 'train.jsonl'} ({len(splits['train'])} captions of {len(ids) - n_val} images) and "
          f"{coco / 'val.jsonl'} ({len(splits['val'])} captions of {n_val} images)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data", help="folder that receives coco/")
    parser.add_argument("--val", type=int, default=500, help="val2017 images held out when splitting val2017")
    parser.add_argument("--train2017", action="store_true", help="also download train2017 (18 GB)")
    parser.add_argument("--mirror", default=BASE_URL, help=f"base URL of the archives (default {BASE_URL})")
    parser.add_argument("--keep-archives", action="store_true", help="keep the .zip files after unpacking")
    args = parser.parse_args(argv)
    coco = Path(args.out) / "coco"
    coco.mkdir(parents=True, exist_ok=True)
    archives = [a for a in ARCHIVES if args.train2017 or "train2017.zip" not in a]
    for archive in archives:
        fetch(archive, coco, args.mirror, args.keep_archives)
    ann = coco / "annotations"
    if args.train2017:
        print("\nTrain Stage C on it with e.g.\n  python train_vision.py --config configs/vision_tiny.json --set "
              f"data.train_manifest={ann / 'captions_train2017.json'} "
              f"data.val_manifest={ann / 'captions_val2017.json'}")
    else:
        write_splits(coco, args.val)
        print("\nTrain Stage C on it with e.g.\n  python train_vision.py --config configs/vision_tiny.json --set "
              f"data.train_manifest={coco / 'train.jsonl'} data.val_manifest={coco / 'val.jsonl'}")


if __name__ == "__main__":
    sys.exit(main())
