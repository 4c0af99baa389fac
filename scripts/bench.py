"""Benchmarks: training throughput, peak memory and generation speed, measured (never asserted in tests).

    python scripts/bench.py [--config configs/thinker_tiny.json] [--steps 10] [--device auto] [--json out.json]

Stage A: training tokens/s at the config's batch and context with its precision, peak memory (CUDA: the
allocator's peak; CPU: the process's max RSS), and greedy generation tokens/s with and without the KV cache.
Random token ids stand in for data so only the model and optimizer are measured.
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omni.config import load_config_file  # noqa: E402
from omni.stages import TextStage  # noqa: E402
from omni.thinker import Thinker  # noqa: E402
from omni.training import adamw  # noqa: E402
from omni.training.distributed import local_device  # noqa: E402
from omni.training.run import AMP_DTYPES  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bench_thinker(config: str, steps: int, device: torch.device) -> dict:
    cfg = load_config_file(TextStage, config)
    model = Thinker(cfg.model).to(device)
    opt = adamw(model, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    amp = AMP_DTYPES[cfg.train.precision] if device.type == "cuda" else None
    if cfg.train.grad_checkpointing:
        model.set_gradient_checkpointing(True)
    B, T = cfg.train.batch_size, cfg.data.seq_len
    tokens = torch.randint(0, cfg.model.vocab_size, (B, T + 1), device=device)

    def train_step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            _, loss = model(tokens[:, :-1], targets=tokens[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):  # warm-up (allocator, kernels)
        train_step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync(device)
    step_s = (time.perf_counter() - start) / steps
    result = {
        "stage": "A thinker", "config": config, "device": str(device),
        "params": sum(p.numel() for p in model.parameters()),
        "batch": B, "seq_len": T, "train_step_s": step_s, "train_tokens_per_s": B * T / step_s,
        "peak_memory_mb": peak_memory_mb(device),
    }
    model.eval()
    prompt = tokens[:1, :16]
    new = min(128, cfg.model.max_seq_len - 16)
    for use_cache in (True, False):
        sync(device)
        start = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=new, use_cache=use_cache)
        sync(device)
        result[f"generate_tokens_per_s_{'kv_cache' if use_cache else 'no_cache'}"] = out.shape[1] / (
            time.perf_counter() - start)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/thinker_tiny.json")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    device = local_device(args.device)
    results = [bench_thinker(args.config, args.steps, device)]
    for r in results:
        print(f"\n{r['stage']} ({r['config']}, {r['device']}, {r['params']:,} params, "
              f"batch {r['batch']} x {r['seq_len']})")
        for key, value in r.items():
            if key not in ("stage", "config", "device", "params", "batch", "seq_len"):
                print(f"  {key:<34} {value:>14,.1f}" if isinstance(value, float) else f"  {key:<34} {value:>14}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
