"""Plot a run's metrics.jsonl as a PNG (one panel per metric), with Pillow only.

    python scripts/plot_metrics.py checkpoints/thinker_tiny/metrics.jsonl [--out curves.png] [--keys loss val_ppl]
"""

import argparse
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

PANEL_W, PANEL_H, MARGIN = 480, 220, 50
COLOURS = {"train": (31, 119, 180), "eval": (214, 39, 40)}


def read_series(path: Path) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(kind, metric) -> [(step, value)], numeric values only."""
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise SystemExit(f"{path}:{line_no}: invalid JSON") from None
        for key, value in record.items():
            if key in ("step", "kind", "time") or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            series.setdefault((record.get("kind", "train"), key), []).append((record["step"], float(value)))
    return series


def draw_panel(draw: ImageDraw.ImageDraw, x0: int, y0: int, title: str, points: list[tuple[int, float]], colour):
    draw.rectangle([x0 + MARGIN, y0 + 20, x0 + PANEL_W - 10, y0 + PANEL_H - 30], outline=(0, 0, 0))
    draw.text((x0 + MARGIN, y0 + 4), title, fill=(0, 0, 0))
    steps, values = [p[0] for p in points], [p[1] for p in points]
    lo, hi = min(values), max(values)
    s_lo, s_hi = min(steps), max(steps)
    span_v, span_s = (hi - lo) or 1.0, (s_hi - s_lo) or 1

    def xy(step, value):
        x = x0 + MARGIN + (step - s_lo) / span_s * (PANEL_W - MARGIN - 10)
        y = y0 + PANEL_H - 30 - (value - lo) / span_v * (PANEL_H - 50)
        return x, y

    draw.line([xy(s, v) for s, v in points], fill=colour, width=2) if len(points) > 1 else None
    for s, v in points:
        x, y = xy(s, v)
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    draw.text((x0 + 2, y0 + 20), f"{hi:.4g}", fill=(0, 0, 0))
    draw.text((x0 + 2, y0 + PANEL_H - 40), f"{lo:.4g}", fill=(0, 0, 0))
    draw.text((x0 + MARGIN, y0 + PANEL_H - 25), f"step {s_lo}", fill=(0, 0, 0))
    draw.text((x0 + PANEL_W - 90, y0 + PANEL_H - 25), f"step {s_hi}", fill=(0, 0, 0))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: beside metrics.jsonl)")
    parser.add_argument("--keys", nargs="*", default=None, help="metrics to plot (default: all except lr/epoch)")
    args = parser.parse_args(argv)
    if not args.metrics.is_file():
        raise SystemExit(f"not found: {args.metrics}")
    series = read_series(args.metrics)
    wanted = (lambda m: m in args.keys) if args.keys else (lambda m: m not in ("lr", "epoch"))
    keys = [k for k in series if wanted(k[1])]
    if not keys:
        raise SystemExit(f"{args.metrics}: no numeric metrics to plot")
    cols = 2
    rows = math.ceil(len(keys) / cols)
    image = Image.new("RGB", (cols * PANEL_W, rows * PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    for i, (kind, metric) in enumerate(sorted(keys)):
        draw_panel(draw, (i % cols) * PANEL_W, (i // cols) * PANEL_H, f"{kind}: {metric}", series[(kind, metric)],
                   COLOURS.get(kind, (0, 0, 0)))
    out = args.out or args.metrics.with_suffix(".png")
    image.save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
