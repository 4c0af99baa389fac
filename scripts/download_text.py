"""Download a public text corpus for Stage A as parquet shards (needs internet; never run by the tests or CI).

    python scripts/download_text.py tinystories [--out data/text]
    python scripts/download_text.py fineweb-edu [--shards 1] [--val-docs 5000] [--out data/text]

tinystories: TinyStories (Eldan & Li 2023; 2.1M short stories, about 1 GB), the four train shards and the validation
shard of huggingface.co/datasets/roneneldan/TinyStories, kept in its layout:

    data/text/tinystories/data/train-0000{0..3}-of-00004-<hash>.parquet
    data/text/tinystories/data/validation-00000-of-00001-<hash>.parquet
    -> data.train_path = data/text/tinystories/data/train-*.parquet
       data.val_path   = data/text/tinystories/data/validation-*.parquet

fineweb-edu: the first --shards shards (about 2.2 GB each, roughly 0.7M documents) of the 10B-token sample of
huggingface.co/datasets/HuggingFaceFW/fineweb-edu (sample/10BT/000_00000.parquet, ...). It has no validation split,
so the first --val-docs documents of the first shard are held out: each downloaded shard is rewritten with its
"text" column only (the other columns are metadata Stage A does not read), the held-out documents to val.parquet
and the rest to train/, and the download is deleted:

    data/text/fineweb-edu/train/000_00000.parquet ...
    data/text/fineweb-edu/val.parquet
    -> data.train_path = data/text/fineweb-edu/train     data.val_path = data/text/fineweb-edu/val.parquet

Rerunning resumes: a finished shard is skipped, a download goes to a .part file renamed only when complete (an
interrupted one starts over), and outputs are written to temporary files and renamed. Every path the script
prints is read directly by train_text.py (omni.data.text_sources). --mirror replaces https://huggingface.co (a
mirror with the same paths, or a file:// folder for offline tests).
"""

import argparse
import os
import sys
from pathlib import Path

from download_util import download  # scripts/ is on sys.path when a script there runs

HF = "https://huggingface.co"
TINYSTORIES = "datasets/roneneldan/TinyStories/resolve/main/data"
TINYSTORIES_FILES = (
    "train-00000-of-00004-2d5a1467fff1081b.parquet",
    "train-00001-of-00004-5852b56a2bd28fd9.parquet",
    "train-00002-of-00004-a26307300439e943.parquet",
    "train-00003-of-00004-d243063613e5a057.parquet",
    "validation-00000-of-00001-869c898b519ad725.parquet",
)
FINEWEB_EDU = "datasets/HuggingFaceFW/fineweb-edu/resolve/main/sample/10BT"
FINEWEB_EDU_SHARDS = 14  # 000_00000.parquet ... 013_00000.parquet
TEXT = "text"


def fetch(url: str, target: Path) -> None:
    """`url` -> `target` unless it is already there (complete: download() renames its .part only when done)."""
    if target.exists():
        print(f"{target}: already there")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    download(url, target)


def tinystories(out: Path, mirror: str) -> tuple[str, str]:
    folder = out / "tinystories" / "data"
    for name in TINYSTORIES_FILES:
        fetch(f"{mirror}/{TINYSTORIES}/{name}", folder / name)
    return str(folder / "train-*.parquet"), str(folder / "validation-*.parquet")


def fineweb_edu(out: Path, mirror: str, shards: int, val_docs: int) -> tuple[str, str]:
    if not 1 <= shards <= FINEWEB_EDU_SHARDS:
        raise SystemExit(f"--shards must be 1..{FINEWEB_EDU_SHARDS}, got {shards}")
    root = out / "fineweb-edu"
    val = root / "val.parquet"
    for i in range(shards):
        name = f"{i:03d}_00000.parquet"
        train = root / "train" / name
        if train.exists() and (i > 0 or val.exists()):
            print(f"{train}: already there")
            continue
        raw = root / "download" / name
        fetch(f"{mirror}/{FINEWEB_EDU}/{name}", raw)
        held_out = split_text_column(raw, train, val if i == 0 else None, val_docs if i == 0 else 0)
        print(f"wrote {train}" + (f" and {val} ({held_out} documents held out)" if i == 0 else ""))
        raw.unlink()
    return str(root / "train"), str(val)


def split_text_column(raw: Path, train: Path, val: Path | None, n_val: int) -> int:
    """Write the "text" column of the parquet shard `raw`: its first `n_val` rows to `val`, the rest to `train` (each
    via a temporary file renamed when complete). Returns the number of rows held out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard = pq.ParquetFile(raw)
    if TEXT not in shard.schema_arrow.names:
        raise SystemExit(f"{raw}: no '{TEXT}' column; the columns are {shard.schema_arrow.names}")
    schema = pa.schema([shard.schema_arrow.field(TEXT)])
    writers = {"train": pq.ParquetWriter(_part(train), schema)}
    if val is not None:
        writers["val"] = pq.ParquetWriter(_part(val), schema)
    held = 0
    for batch in shard.iter_batches(batch_size=4096, columns=[TEXT]):
        if val is not None and held < n_val:
            take = min(n_val - held, batch.num_rows)
            writers["val"].write_batch(batch.slice(0, take))
            held, batch = held + take, batch.slice(take)
        if batch.num_rows:
            writers["train"].write_batch(batch)
    for key, path in (("val", val), ("train", train)):  # train last: its presence marks the shard done
        if key in writers:
            writers[key].close()
            os.replace(_part(path), path)
    return held


def _part(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + ".part")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", choices=("tinystories", "fineweb-edu"))
    parser.add_argument("--out", default="data/text", help="folder that receives tinystories/ or fineweb-edu/")
    parser.add_argument("--shards", type=int, default=1,
                        help=f"fineweb-edu: shards to download (1..{FINEWEB_EDU_SHARDS}, about 2.2 GB each)")
    parser.add_argument("--val-docs", type=int, default=5000, help="fineweb-edu: documents held out for validation")
    parser.add_argument("--mirror", default=HF, help="base URL instead of https://huggingface.co (same paths)")
    args = parser.parse_args(argv)
    out, mirror = Path(args.out), args.mirror.rstrip("/")
    if args.corpus == "tinystories":
        train, val = tinystories(out, mirror)
    else:
        train, val = fineweb_edu(out, mirror, args.shards, args.val_docs)
    print(f"done. Stage A reads it with\n  python train_text.py --config configs/thinker_tiny.json --set "
          f"'data.train_path={train}' 'data.val_path={val}'")


if __name__ == "__main__":
    sys.exit(main())
