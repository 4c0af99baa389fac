"""The whole pipeline at CPU scale: synthetic data, every stage with configs/demo/, then a summary table.

    make demo          (or: .venv/bin/python scripts/demo.py [--only text])

Every stage resumes, so rerunning after an interruption (or after it finished) continues instead of starting over.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (stage, script, demo config, the summary metrics to show: key -> label)
STAGES = [
    ("A text", "train_text.py", "configs/demo/thinker.json", {"val_ppl": "val perplexity"}),
]


def run(cmd: list[str]) -> float:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.perf_counter() - start


def save_dir(config: str) -> Path:
    return REPO / json.loads((REPO / config).read_text())["train"]["save_dir"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated stage letters/names to run (default: all)")
    args = parser.parse_args(argv)
    total = time.perf_counter()
    rows = [("data", "synthetic datasets", "", run([sys.executable, "scripts/make_synthetic_datasets.py"]))]
    for stage, script, config, metrics in STAGES:
        if args.only and not any(w.strip().lower() in stage.lower() for w in args.only.split(",")):
            continue
        wall = run([sys.executable, script, "--config", config])
        summary = json.loads((save_dir(config) / "summary.json").read_text())
        for key, label in metrics.items():
            rows.append((stage, label, summary["metrics"][key], wall))
        rows.append((stage, "training seconds (all resumes)", summary["train_seconds"], wall))
    print("\n" + table(rows))
    print(f"total {time.perf_counter() - total:.0f}s")


def table(rows) -> str:
    lines = [f"{'stage':<10} {'metric':<34} {'value':>12} {'wall s':>8}", "-" * 67]
    for stage, label, value, wall in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{stage:<10} {label:<34} {shown:>12} {wall:>8.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
