"""Peak training memory of every stage at its *_tiny.json defaults: does each fit a 12 GB card?

    python scripts/measure_memory.py [--steps 3] [--limit-gb 12] [--stages A B ...] [--json out.json]
    python scripts/measure_memory.py --device cpu --steps 1     # no GPU: max RSS instead (a smoke test)

Each stage runs `--steps` synthetic training steps (omni/stage_bench.py: the stage's own model, AdamW, precision
and batch size on random tensors of its shapes), then reports the CUDA allocator's peak allocated and reserved
memory for that stage alone (weights + gradients + optimizer state + activations; the CUDA context, a few hundred
MB more, is outside the allocator). `--limit-gb N` caps this process's allocator at N GB with
torch.cuda.set_per_process_memory_fraction, so a stage that would not fit an N GB card runs out of memory here:
it is named, the other stages still run, and the exit status is 1.

Without CUDA the script exits with status 2, unless `--device cpu` is given: then it runs the same steps and
reports the process's max RSS after each stage, which is process-wide and only grows (a stage's number includes
every stage before it), so it is a smoke test rather than a per-stage measurement.
"""

import argparse
import gc
import json
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omni.stage_bench import STAGES, build_stage  # noqa: E402

GB = 1024**3


def measure_stage(key: str, config_dir: str, device: torch.device, steps: int, batch_size: int | None,
                  overrides: list[str] = ()) -> dict:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    stage = build_stage(key, config_dir, device, batch_size=batch_size, overrides=overrides)
    row = {"stage": key, "name": stage.name, "config": stage.config, "batch": stage.batch,
           "precision": stage.precision, "params": stage.params, "shapes": stage.shapes}
    try:
        for _ in range(steps):
            loss = stage.step()
        row["loss_finite"] = bool(torch.isfinite(loss))  # one host sync, after the steps
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            row["peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            row["peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
        else:
            row["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    finally:
        del stage
        gc.collect()
    return row


def cap_allocator(device: torch.device, limit_gb: float | None) -> None:
    """Cap this process's CUDA allocator at limit_gb (None: lift the cap), so a stage that would not fit a
    limit_gb card runs out of memory here."""
    total_gb = torch.cuda.get_device_properties(device).total_memory / GB
    torch.cuda.set_per_process_memory_fraction(min(1.0, (limit_gb or total_gb) / total_gb), device)
    if limit_gb is not None:
        print(f"allocator capped at {limit_gb:g} GB of {total_gb:.1f} GB ({torch.cuda.get_device_name(device)})")


def measure_stages(stages, config_dir: str, device: torch.device, steps: int, batch_size: int | None,
                   limit_gb: float | None, overrides: dict[str, list[str]] | None = None) -> tuple[list[dict], list]:
    """One row per stage (measure_stage, or an OOM row naming the limit) and the stages that ran out of memory.
    `overrides` maps a stage key to its --set-style config changes (smoke tests shrink shapes with them)."""
    rows, failed = [], []
    for key in stages:
        print(f"measuring {key} ({steps} steps) ...", flush=True)
        try:
            row = measure_stage(key, config_dir, device, steps, batch_size, (overrides or {}).get(key, ()))
            row["status"] = "ok" if row["loss_finite"] else "non-finite loss"
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            # cuBLAS/cuDNN report a failed workspace allocation as a RuntimeError: also out of memory.
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            if not isinstance(e, torch.cuda.OutOfMemoryError) and "ALLOC_FAILED" not in first_line \
                    and "out of memory" not in first_line:
                raise
            # Report and go on: one table shows every stage that does not fit.
            print(f"OUT OF MEMORY in stage {key} (limit {limit_gb} GB): {first_line}", file=sys.stderr)
            row = {"stage": key, "name": key, "batch": "-", "precision": "-", "params": 0,
                   "status": f"OOM at {limit_gb} GB" if limit_gb else "OOM"}
            failed.append(key)
        rows.append(row)
        if device.type == "cuda":  # here, not in the except block, whose exception still holds the stage's tensors
            gc.collect()
            torch.cuda.empty_cache()
    return rows, failed


def print_table(rows: list[dict], device: torch.device) -> None:
    if device.type == "cuda":
        header = ("stage", "batch", "precision", "params", "peak allocated MB", "peak reserved MB", "status")
        cells = [(f"{r['stage']} {r['name']}", str(r["batch"]), r["precision"], f"{r['params'] / 1e6:.2f}M",
                  f"{r['peak_allocated_mb']:,.0f}" if "peak_allocated_mb" in r else "-",
                  f"{r['peak_reserved_mb']:,.0f}" if "peak_reserved_mb" in r else "-", r["status"]) for r in rows]
    else:
        header = ("stage", "batch", "precision", "params", "max RSS MB (process-wide)", "status")
        cells = [(f"{r['stage']} {r['name']}", str(r["batch"]), r["precision"], f"{r['params'] / 1e6:.2f}M",
                  f"{r['max_rss_mb']:,.0f}" if "max_rss_mb" in r else "-", r["status"]) for r in rows]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    for i, line in enumerate([header, *cells]):
        print(" | ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(line, widths))))
        if i == 0:
            print("-+-".join("-" * w for w in widths))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-dir", default="configs", help="folder with the stages' *_tiny.json")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--steps", type=int, default=3, help="training steps per stage")
    parser.add_argument("--limit-gb", type=float, default=None, help="cap the CUDA allocator at this many GB")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (max RSS; a smoke test)")
    parser.add_argument("--batch-size", type=int, default=None, help="override every stage's batch (smoke tests)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("measure_memory.py: CUDA is not available on this machine; run it on a GPU, or pass --device cpu "
                  "for a max-RSS smoke test", file=sys.stderr)
            return 2
        if device.index is None:
            device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    elif args.limit_gb is not None:
        parser.error("--limit-gb needs a CUDA device")
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    total_gb = torch.cuda.get_device_properties(device).total_memory / GB if device.type == "cuda" else None
    if args.limit_gb is not None:
        if args.limit_gb > total_gb:
            print(f"measure_memory.py: --limit-gb {args.limit_gb} exceeds this GPU's {total_gb:.1f} GB",
                  file=sys.stderr)
            return 2
        cap_allocator(device, args.limit_gb)

    rows, failed = measure_stages(args.stages, args.config_dir, device, args.steps, args.batch_size, args.limit_gb)
    print()
    print_table(rows, device)
    if device.type == "cpu":
        print("max RSS is process-wide and only grows: each number includes the stages above it")
    if args.json:
        out = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if total_gb else "cpu",
               "total_gb": total_gb, "limit_gb": args.limit_gb, "steps": args.steps, "stages": rows}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    if failed:
        where = f"{args.limit_gb:g} GB" if args.limit_gb else f"this GPU's {total_gb:.1f} GB"
        print(f"FAILED: stage(s) {', '.join(failed)} do not fit in {where}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
