"""Download and unpack LibriSpeech subsets from openslr.org (needs internet; never run by the tests or CI).

    python scripts/download_librispeech.py [--out data] [--subsets train-clean-100,dev-clean]

Each subset is a .tar.gz (dev-clean 337 MB, train-clean-100 6.3 GB, train-clean-360 23 GB) unpacked to
<out>/LibriSpeech/<subset>/, the split-folder layout train_audio_enc.py reads directly (*.trans.txt + .flac). A
subset already unpacked is skipped; downloads go to a .part file that is renamed when complete, so an interrupted
download never passes for a whole archive (rerun to start it again).
"""

import argparse
import shutil
import sys
import tarfile
from pathlib import Path

from download_util import download  # scripts/ is on sys.path when a script there runs

URL = "https://www.openslr.org/resources/12/{subset}.tar.gz"
SUBSETS = ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100", "train-clean-360",
           "train-other-500")


def extract(archive: Path, out: Path) -> None:
    print(f"unpacking {archive} into {out}")
    with tarfile.open(archive) as tar:
        # The "data" filter refuses absolute paths, links out of the folder and device files.
        tar.extractall(out, filter="data")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data", help="folder that receives LibriSpeech/<subset>/")
    parser.add_argument("--subsets", default="train-clean-100,dev-clean", help=f"comma-separated, of {SUBSETS}")
    parser.add_argument("--keep-archives", action="store_true", help="keep the .tar.gz files after unpacking")
    args = parser.parse_args(argv)
    subsets = [s.strip() for s in args.subsets.split(",") if s.strip()]
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown:
        parser.error(f"unknown subset(s) {unknown}; choose from {list(SUBSETS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for subset in subsets:
        folder = out / "LibriSpeech" / subset
        if folder.is_dir() and next(folder.glob("*/*/*.trans.txt"), None) is not None:
            print(f"{subset}: {folder} exists, skipped")
            continue
        archive = out / f"{subset}.tar.gz"
        if not archive.exists():
            download(URL.format(subset=subset), archive)
        extract(archive, out)
        if not args.keep_archives:
            archive.unlink()
        free = shutil.disk_usage(out).free / 1e9
        print(f"{subset}: ready in {folder} ({free:.0f} GB free)")
    train = next((s for s in subsets if s.startswith("train")), subsets[0])
    val = next((s for s in subsets if s.startswith("dev")), subsets[-1])
    print("\nTrain Stage B on it with e.g.\n"
          f"  python train_audio_enc.py --config configs/audio_enc_tiny.json --set "
          f"data.train_manifest={out / 'LibriSpeech' / train} data.val_manifest={out / 'LibriSpeech' / val}\n"
          f"and pick data.max_mel_length with: python scripts/check_mel_lengths.py {out / 'LibriSpeech' / train}")


if __name__ == "__main__":
    sys.exit(main())
