"""Download and unpack LJSpeech 1.1 (one speaker, 24 h, 2.6 GB; needs internet; never run by the tests or CI).

    python scripts/download_ljspeech.py [--out data]

Unpacks to <out>/LJSpeech-1.1/ (metadata.csv + wavs/), the layout train_audio_enc.py reads directly. An existing
folder is skipped; the download goes to a .part file renamed when complete. LJSpeech has no official validation
split: the script writes <out>/LJSpeech-1.1/train.jsonl and val.jsonl (the last --val utterances of metadata.csv
are held out), so the two never share an utterance.
"""

import argparse
import json
import sys
import tarfile
from pathlib import Path

from download_util import download  # scripts/ is on sys.path when a script there runs

URL = "https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2"


def write_splits(folder: Path, n_val: int) -> None:
    """train.jsonl / val.jsonl manifests over metadata.csv (normalized_text column, as the LJSpeech reader uses)."""
    lines = [line.split("|") for line in (folder / "metadata.csv").read_text(encoding="utf-8").splitlines() if line]
    records = [{"audio": f"wavs/{f[0]}.wav", "text": f[2] if len(f) > 2 and f[2].strip() else f[1]} for f in lines]
    for name, part in (("train", records[:-n_val]), ("val", records[-n_val:])):
        with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as out:
            out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
    print(f"wrote {folder / 'train.jsonl'} ({len(records) - n_val}) and {folder / 'val.jsonl'} ({n_val})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data", help="folder that receives LJSpeech-1.1/")
    parser.add_argument("--val", type=int, default=500, help="utterances held out for validation")
    parser.add_argument("--keep-archive", action="store_true", help="keep the .tar.bz2 after unpacking")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = out / "LJSpeech-1.1"
    if (folder / "metadata.csv").is_file():
        print(f"{folder} exists, skipped the download")
    else:
        archive = out / "LJSpeech-1.1.tar.bz2"
        if not archive.exists():
            download(URL, archive)
        print(f"unpacking {archive} into {out}")
        with tarfile.open(archive) as tar:
            tar.extractall(out, filter="data")  # refuses absolute paths, links out of the folder and device files
        if not args.keep_archive:
            archive.unlink()
    write_splits(folder, args.val)
    print("\nTrain Stage B on it with e.g.\n"
          f"  python train_audio_enc.py --config configs/audio_enc_tiny.json --set "
          f"data.train_manifest={folder / 'train.jsonl'} data.val_manifest={folder / 'val.jsonl'}")


if __name__ == "__main__":
    sys.exit(main())
