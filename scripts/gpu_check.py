"""Everything a GPU must show, in one command: the 12 GB promise, speed, a real training run with a kill and resume,
fp16 + GradScaler and a torchrun smoke. Writes <out>/gpu_check.json and <out>/gpu_check.md.

    python scripts/gpu_check.py --out gpu_report                  # on a CUDA machine: ~3-5 min on an H100/H200
    python scripts/gpu_check.py --out /tmp/dry --device cpu       # dry mode: the same checks, tiny, on CPU (~1 min)

Checks (each runs in its own try/except: a failure is named in the report with its error and the rest still run;
the exit status is 1 when any check failed, 0 otherwise, skipped checks included):

  memory_12gb       every configs/*_tiny.json stage (omni/stage_bench.py) under scripts/measure_memory.py's logic
                    with the CUDA allocator capped at --limit-gb (default 12): peak allocated / reserved MB, ok or
                    OOM per stage. The CUDA context (a few hundred MB) is outside the allocator and not counted.
  thinker_speed     Thinker tiny training tokens/s and MFU (6N + attention FLOPs / the GPU's peak dense bf16) in
                    bf16, eager and torch.compile'd.
  talker_speed, sft_speed
                    Talker (D) and omni SFT (E) training tokens/s at their tiny configs.
  train_resume      a real Stage A run (train_text.py in a subprocess, configs/thinker_tiny.json at the synthetic
                    corpus's 768-piece vocabulary, a few hundred steps): the loss falls, checkpoints are written; a
                    second run is SIGKILLed inside an optimizer step (OMNI_FAULT=step@N, omni/faults.py)
                    and rerun; the killed+resumed metrics.jsonl must continue the uninterrupted run's loss curve
                    (on CPU bitwise; on CUDA within --loss-tolerance, as GPU kernels are not bitwise deterministic).
  fp16_gradscaler   the same run for a few steps with train.precision=fp16: finishes, finite loss, the checkpoint
                    holds a GradScaler state. Needs CUDA (CPU fp16 autocast is refused / pathologically slow).
  torchrun_smoke    train_text.py under `torchrun --nproc_per_node 1` (NCCL on CUDA, gloo on CPU) for a few steps.

Data: the synthetic text corpus (omni/synthetic/text.py, as scripts/make_synthetic_datasets.py makes it) is written
into <out>/data, so a bare machine with only the repository needs no network and no data/ folder.

Dry mode (--device cpu): every check runs tiny (batch 1-2, short sequences, a few steps, a 2-layer model for the
training runs) so the plumbing is tested on any machine; torch.compile is skipped unless --compile is given (it
takes minutes on a small CPU), fp16 is reported "skipped: needs CUDA". Dry-mode numbers are not measurements.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))  # the sibling scripts whose logic is reused rather than copied

import bench  # noqa: E402
import measure_memory  # noqa: E402

from omni.stage_bench import STAGES, build_stage  # noqa: E402

# Dry mode (CPU): fp32 everywhere (CPU low-precision kernels are slow and not what a GPU runs) and shapes shrunk
# where one CPU step at batch 1 would take seconds (the vocoder's discriminators, 224 px images, 1024 px OCR lines).
DRY_STAGE_OVERRIDES = {
    "A": ["data.seq_len=64", "train.precision=fp32"],
    "B": ["train.precision=fp32"],
    "C": ["train.precision=fp32", "model.vision.image_size=32", "data.max_text_length=16"],
    "OCR": ["train.precision=fp32", "data.max_width=128"],
    "D-codec": ["codec.data.crop_frames=64", "codec.train.precision=fp32"],
    "D-talker": ["talker.train.precision=fp32"],
    "vocoder": ["data.segment_frames=8", "model.mpd_channels=[8,16,16,16]",
                "model.msd_channels=[16,16,32,32,32,32,32]"],
    "E": ["train.precision=fp32"],
}
TEXT_VOCAB = 768  # the synthetic corpus's tokenizer size (as configs/demo/thinker.json): 8000 pieces do not fit it
# Stage A run for the training checks: configs/thinker_tiny.json with these changes (+ the dry-mode ones).
# log_freq=1: every step's loss is compared. A logged value averages the steps since the last log, and that window
# is not checkpointed, so a resume from an epoch-end checkpoint between two logs would shift one average.
TRAIN_OVERRIDES = [f"model.vocab_size={TEXT_VOCAB}", "train.warmup_steps=20", "train.lr=1e-3", "train.log_freq=1",
                   "train.keep_last=2", "data.sample_tokens=8"]
DRY_TRAIN_OVERRIDES = ["model.vocab_size=400", "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
                       "model.n_kv_heads=1", "model.d_ff=64", "model.max_seq_len=64", "data.seq_len=32",
                       "train.batch_size=8", "train.precision=fp32", "train.num_workers=0", "train.lr=3e-3",
                       "train.warmup_steps=2", "train.threads=1", "data.val_batch_size=16",
                       "data.sample_tokens=4"]


class Checks:
    """Runs named checks, each in try/except, and keeps their results in order."""

    def __init__(self):
        self.results: dict[str, dict] = {}

    def run(self, name: str, fn, *args, **kwargs) -> dict:
        print(f"\n=== {name}", flush=True)
        start = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
            result.setdefault("status", "ok")
        except Skip as e:
            result = {"status": "skipped", "reason": str(e)}
        except BaseException as e:  # noqa: BLE001 - a failed check (even a SystemExit from a script) is reported
            if isinstance(e, KeyboardInterrupt):
                raise
            result = {"status": "failed", "error": f"{type(e).__name__}: {e}".strip(),
                      "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.perf_counter() - start, 1)
        self.results[name] = result
        print(f"--- {name}: {result['status']}" + (f" ({result.get('error') or result.get('reason')})"
                                                     if result["status"] != "ok" else ""), flush=True)
        _free(None)
        return result


class Skip(Exception):
    """A check that cannot run here (e.g. needs CUDA); reported as skipped with this reason."""


class CheckFailed(AssertionError):
    """A check ran but its result is wrong; the message says what."""


def _free(device) -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ memory
def check_memory(device: torch.device, limit_gb: float, dry: bool) -> dict:
    """scripts/measure_memory.py's per-stage measurement under its allocator cap (lifted again afterwards)."""
    overrides = DRY_STAGE_OVERRIDES if dry else None
    if device.type == "cuda":
        measure_memory.cap_allocator(device, limit_gb)
    try:
        rows, failed = measure_memory.measure_stages(STAGES, str(REPO / "configs"), device, 1 if dry else 3,
                                                     1 if dry else None, limit_gb if device.type == "cuda" else None,
                                                     overrides)
    finally:
        if device.type == "cuda":
            measure_memory.cap_allocator(device, None)
    bad = [r["stage"] for r in rows if r["status"] != "ok"]
    result = {"limit_gb": limit_gb if device.type == "cuda" else None, "stages": rows}
    if bad:
        result.update(status="failed", error=f"stage(s) {', '.join(bad)}: " + "; ".join(
            f"{r['stage']} {r['status']}" for r in rows if r["status"] != "ok"))
    return result


# ------------------------------------------------------------------------------------------------ speed
def stage_speed(key: str, device: torch.device, dry: bool, *, compile: bool = False, steps: int = 20) -> dict:
    overrides = list(DRY_STAGE_OVERRIDES.get(key, ())) if dry else []
    if compile:
        overrides.append("talker.train.compile=true" if key == "D-talker" else "train.compile=true")
    stage = build_stage(key, REPO / "configs", device, batch_size=2 if dry else None, overrides=overrides)
    if compile:  # compilation (forward and backward) happens in the first steps: not part of the timing
        start = time.perf_counter()
        for _ in range(2):
            stage.step()
        bench.sync(device)
        compile_s = time.perf_counter() - start
    step_s, timed = bench.time_steps(stage, device, 2 if dry else steps, 30.0)
    loss = stage.step()
    if not torch.isfinite(loss):
        raise CheckFailed(f"stage {key}: non-finite loss {loss.item()}")
    row = {"stage": key, "precision": stage.precision, "batch": stage.batch, "shapes": stage.shapes,
           "params": stage.params, "compile": compile, "step_ms": step_s * 1e3, "timed_steps": timed,
           "tokens_per_s": stage.tokens / step_s if stage.tokens else None}
    if compile:
        row["compile_s"] = compile_s
    if stage.flops_per_token:
        flops, name = bench.peak_flops(device)
        row.update(flops_per_token=stage.flops_per_token, device_peak_flops=flops,
                   mfu=stage.flops_per_token * row["tokens_per_s"] / flops if flops else None)
    del stage
    return row


def check_thinker_speed(device: torch.device, dry: bool, compile: bool) -> dict:
    rows = [stage_speed("A", device, dry)]
    result = {"rows": rows}
    if compile:
        try:
            rows.append(stage_speed("A", device, dry, compile=True))
        except Exception as e:  # eager numbers stay valid; the compile failure is this check's failure
            result.update(status="failed", error=f"torch.compile: {type(e).__name__}: {e}"[:2000],
                          traceback=traceback.format_exc()[-3000:])
    else:
        result["compile"] = "skipped: --no-compile (dry mode default; compiling takes minutes on a small CPU)"
    return result


# ------------------------------------------------------------------------------------------------ training runs
def text_corpus(out: Path, dry: bool) -> Path:
    """<out>/data/text/{train,val}.txt: the synthetic corpus at scripts/make_synthetic_datasets.py's size (20000
    documents, ~3 s to write), a tenth of it in dry mode."""
    from omni.synthetic.text import write_text_corpus

    folder = out / "data" / "text"
    if not (folder / "train.txt").exists() or not (folder / "val.txt").exists():
        write_text_corpus(folder, seed=0, n_train_docs=2000 if dry else 20000, n_val_docs=100 if dry else 500)
    return folder


def tokenizer_for(corpus: Path, out: Path, vocab_size: int) -> Path:
    """One tokenizer for every run, trained once (train_text.py would train one per run dir)."""
    from omni.tokenizer import TOKENIZER_FILE, train_tokenizer

    folder = out / f"tokenizer_{vocab_size}"
    if not (folder / TOKENIZER_FILE).exists():
        train_tokenizer([corpus / "train.txt"], folder, vocab_size=vocab_size)
    return folder / TOKENIZER_FILE


class StageA:
    """train_text.py command lines for the training checks, on the corpus and tokenizer in <out>."""

    def __init__(self, out: Path, device: torch.device, dry: bool):
        self.out, self.device, self.dry = out, device, dry
        corpus = text_corpus(out, dry)
        self.overrides = TRAIN_OVERRIDES + (DRY_TRAIN_OVERRIDES if dry else [])
        vocab = next(int(o.split("=")[1]) for o in reversed(self.overrides) if o.startswith("model.vocab_size="))
        self.base = [f"data.train_path={corpus / 'train.txt'}", f"data.val_path={corpus / 'val.txt'}",
                     f"data.tokenizer={tokenizer_for(corpus, out, vocab)}", f"train.device={device.type}"]

    def command(self, save_dir: Path, *extra: str, launcher: list[str] | None = None) -> list[str]:
        return [*(launcher or [sys.executable]), str(REPO / "train_text.py"),
                "--config", str(REPO / "configs" / "thinker_tiny.json"),
                "--set", f"train.save_dir={save_dir}", *self.base, *self.overrides, *extra]

    def run(self, save_dir: Path, *extra: str, env: dict | None = None, launcher: list[str] | None = None,
            expect_kill: bool = False) -> subprocess.CompletedProcess:
        timeout = 120 if self.dry else 240  # a hung run fails its check, leaving time for the others
        proc = subprocess.run(self.command(save_dir, *extra, launcher=launcher), cwd=REPO, capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, **(env or {})})
        (save_dir.parent / f"{save_dir.name}.stderr.log").write_text(proc.stderr)
        killed = proc.returncode == -9
        if expect_kill != killed or (not expect_kill and proc.returncode != 0):
            raise CheckFailed(f"{save_dir.name}: exit status {proc.returncode}"
                              f"{' (expected a SIGKILL)' if expect_kill else ''}; stderr ends: "
                              + proc.stderr.strip()[-1500:])
        return proc


def train_losses(save_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def check_train_resume(stage_a: StageA, dry: bool, tolerance: float) -> dict:
    steps, every, kill_at = (12, 4, 10) if dry else (300, 100, 250)
    extra = [f"train.max_steps={steps}", f"train.checkpoint_freq={every}", f"train.val_freq={every * 2}"]
    runs = stage_a.out / "runs"
    straight, killed = runs / "straight", runs / "killed"
    start = time.perf_counter()
    stage_a.run(straight, *extra)
    straight_s = time.perf_counter() - start
    stage_a.run(killed, *extra, env={"OMNI_FAULT": f"step@{kill_at}"}, expect_kill=True)
    killed_checkpoints = sorted(p.name for p in killed.glob("thinker_step_*.pt"))
    resumed = stage_a.run(killed, *extra)
    a, b = train_losses(straight), train_losses(killed)
    result = {"steps": steps, "checkpoint_freq": every, "killed_at_step": kill_at,
              "checkpoints_at_kill": killed_checkpoints, "straight_seconds": round(straight_s, 1),
              "loss_curve": a}
    summary = json.loads((straight / "summary.json").read_text())
    result["final_val_ppl"] = summary["metrics"]["val_ppl"]
    problems = []
    first, last = a[min(a)], a[max(a)]
    result.update(first_loss=first, last_loss=last)
    if not last < first * 0.9:
        problems.append(f"the loss did not fall: {first:.4f} at step {min(a)} -> {last:.4f} at step {max(a)}")
    if not killed_checkpoints:
        problems.append("no checkpoint was written before the kill")
    if not (straight / "thinker.pt").exists():
        problems.append("no final thinker.pt")
    resumed_from = next((line for line in resumed.stderr.splitlines() if "resumed at step" in line), None)
    result["resumed"] = resumed_from.split("] ")[-1] if resumed_from else None
    if resumed_from is None:
        problems.append("the rerun did not resume from a checkpoint")
    if sorted(a) != sorted(b):
        problems.append(f"logged steps differ: straight {sorted(a)}, killed+resumed {sorted(b)}")
    diffs = {s: abs(a[s] - b[s]) for s in a if s in b}
    result["max_loss_diff"] = max(diffs.values(), default=None)
    result["bitwise_equal_losses"] = all(a[s] == b[s] for s in diffs) and bool(diffs)
    limit = 0.0 if stage_a.device.type == "cpu" else tolerance
    worst = [s for s, d in diffs.items() if d > limit * max(1.0, abs(a[s]))]
    if worst:
        problems.append(f"killed+resumed loss curve leaves the uninterrupted one at steps {worst[:10]} "
                        f"(max |diff| {result['max_loss_diff']:.3g}, tolerance {limit})")
    if problems:
        result.update(status="failed", error="; ".join(problems))
    return result


def check_fp16(stage_a: StageA, device: torch.device, dry: bool) -> dict:
    if device.type != "cuda":
        raise Skip("needs CUDA (CPU fp16 autocast is refused: pathologically slow)")
    save = stage_a.out / "runs" / "fp16"
    stage_a.run(save, "train.precision=fp16", "train.max_steps=40", "train.checkpoint_freq=20", "train.val_freq=40")
    from omni.training import checkpoint as ckpt

    state = ckpt.load(save / "thinker_step_40.pt")
    losses = train_losses(save)
    result = {"losses": losses, "scaler": state[ckpt.SCALERS]}
    if not state[ckpt.SCALERS]:
        raise CheckFailed("the fp16 checkpoint holds no GradScaler state")
    if not all(map(lambda v: v == v and abs(v) != float("inf"), losses.values())):
        raise CheckFailed(f"non-finite fp16 losses: {losses}")
    return result


def check_torchrun(stage_a: StageA) -> dict:
    with socket.socket() as s:  # a free port, so a leftover rendezvous from another run can't collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(port)]
    save = stage_a.out / "runs" / "torchrun"
    stage_a.run(save, "train.max_steps=6", "train.checkpoint_freq=3", "train.val_freq=6", launcher=launcher)
    log = (save / "training.log").read_text()
    if "world size 1" not in log:
        raise CheckFailed("training.log does not show a torchrun world of size 1")
    return {"summary": json.loads((save / "summary.json").read_text())}


# ------------------------------------------------------------------------------------------------ report
def write_report(out: Path, report: dict) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    lines = [f"# gpu_check on {report['device_name']} ({report['device']})", "",
             f"torch {report['torch']}, {report['started']}, {report['seconds']:.0f} s"
             + (" — DRY MODE (CPU, tiny shapes: not measurements)" if report["dry"] else ""), "",
             "| check | status | seconds | note |", "|---|---|---|---|"]
    for name, r in report["checks"].items():
        note = r.get("error") or r.get("reason") or ""
        lines.append(f"| {name} | {r['status']} | {r['seconds']} | {note[:200].replace('|', '/')} |")
    memory = report["checks"].get("memory_12gb", {})
    if memory.get("stages"):
        lines += ["", f"## Peak training memory per stage (allocator cap {memory.get('limit_gb')} GB)", "",
                  "| stage | batch | precision | params | peak allocated MB | peak reserved MB | status |",
                  "|---|---|---|---|---|---|---|"]
        for r in memory["stages"]:
            cells = [f"{r['stage']} {r['name']}", r["batch"], r["precision"], f"{r['params'] / 1e6:.2f}M",
                     *(f"{r[k]:,.0f}" if k in r else "-" for k in ("peak_allocated_mb", "peak_reserved_mb")),
                     r["status"]]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    speed = [row for key in ("thinker_speed",) for row in report["checks"].get(key, {}).get("rows", [])]
    speed += [report["checks"][k] for k in ("talker_speed", "sft_speed")
              if "tokens_per_s" in report["checks"].get(k, {})]
    if speed:
        lines += ["", "## Training throughput", "",
                  "| stage | precision | compile | batch | step ms | tokens/s | MFU |", "|---|---|---|---|---|---|---|"]
        for r in speed:
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
            lines.append(f"| {r['stage']} | {r['precision']} | {'on' if r['compile'] else 'off'} | {r['batch']} | "
                         f"{r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {mfu} |")
    train = report["checks"].get("train_resume", {})
    if "first_loss" in train:
        lines += ["", "## Stage A run, SIGKILLed and resumed", "",
                  f"loss {train['first_loss']:.3f} -> {train['last_loss']:.3f} over {train['steps']} steps "
                  f"(val ppl {train['final_val_ppl']:.2f}); killed at step {train['killed_at_step']}, "
                  f"{train['resumed']}; max |loss diff| vs uninterrupted {train['max_loss_diff']}, "
                  f"bitwise equal: {train['bitwise_equal_losses']}"]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md, data and run dirs")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (dry mode: tiny, fast, not measured)")
    parser.add_argument("--limit-gb", type=float, default=12.0, help="allocator cap of the memory check")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the torch.compile'd Thinker (default: on with CUDA, off in dry mode)")
    parser.add_argument("--loss-tolerance", type=float, default=0.02,
                        help="CUDA: largest relative loss difference between the killed+resumed and the "
                             "uninterrupted run (CPU: must be bitwise equal)")
    parser.add_argument("--only", nargs="+", default=None,
                        help="run only these checks (memory_12gb thinker_speed talker_speed sft_speed train_resume "
                             "fp16_gradscaler torchrun_smoke)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dry = device.type == "cpu"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("gpu_check.py: CUDA is not available here; pass --device cpu for the dry mode", file=sys.stderr)
            return 2
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
    compile = (not dry) if args.compile is None else args.compile
    if dry:  # one thread: a shared small CPU makes multi-threaded tiny ops wait on each other
        torch.set_num_threads(1)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = {"device": str(device), "dry": dry, "torch": torch.__version__, "python": platform.python_version(),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
              or "cpu", "started": time.strftime("%Y-%m-%d %H:%M:%S"), "compile": compile, "checks": {}}
    checks = Checks()
    wanted = set(args.only or ())

    def run(name, fn, *a, **kw):
        if not wanted or name in wanted:
            checks.run(name, fn, *a, **kw)

    run("memory_12gb", check_memory, device, args.limit_gb, dry)
    run("thinker_speed", check_thinker_speed, device, dry, compile)
    run("talker_speed", stage_speed, "D-talker", device, dry)
    run("sft_speed", stage_speed, "E", device, dry)
    stage_a = None
    if not wanted or wanted & {"train_resume", "fp16_gradscaler", "torchrun_smoke"}:
        try:
            stage_a = StageA(out, device, dry)
        except Exception as e:  # noqa: BLE001 - the corpus/tokenizer failure is named on each training check
            error = f"preparing the corpus and tokenizer: {type(e).__name__}: {e}"
            for name in ("train_resume", "fp16_gradscaler", "torchrun_smoke"):
                checks.results[name] = {"status": "failed", "error": error, "seconds": 0.0}
    if stage_a is not None:
        run("train_resume", check_train_resume, stage_a, dry, args.loss_tolerance)
        run("fp16_gradscaler", check_fp16, stage_a, device, dry)
        run("torchrun_smoke", check_torchrun, stage_a)
    report["checks"] = checks.results
    report["seconds"] = time.perf_counter() - started
    write_report(out, report)
    failed = [n for n, r in checks.results.items() if r["status"] == "failed"]
    print(f"\n{out / 'gpu_check.md'}:\n" + (out / "gpu_check.md").read_text())
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
