"""Make the offline synthetic datasets every stage can train on (no downloads).

    python scripts/make_synthetic_datasets.py [--out data] [--only text,speech,images,ocr] [--seed 0]

Each part is written once: a part whose folder already has its manifests is skipped, so rerunning is cheap.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omni.synthetic.text import write_text_corpus  # noqa: E402


def make_text(out: Path, seed: int) -> dict:
    return write_text_corpus(out, seed=seed, n_train_docs=20000, n_val_docs=500)


# part name -> (folder, files that mark it complete, maker)
PARTS = {
    "text": ("text", ("train.txt", "val.txt"), make_text),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data", help="root folder of the datasets")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {list(PARTS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    wanted = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
    for part in wanted:
        folder, markers, maker = PARTS[part]
        out = Path(args.out) / folder
        if all((out / m).exists() for m in markers):
            print(f"{part}: {out} exists, skipped")
            continue
        start = time.perf_counter()
        stats = maker(out, args.seed)
        print(f"{part}: wrote {out} in {time.perf_counter() - start:.1f}s {json.dumps(stats, default=str)}")


if __name__ == "__main__":
    main()
