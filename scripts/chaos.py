"""Fault injection for every stage script: crash it at chosen and at random moments, rerun, compare bitwise.

For each stage (on the stage tests' tiny configs and generated data, see tests/stage_data.py), per training command:
  1. the uninterrupted reference run;
  2. SIGKILL inside an optimizer step, inside an evaluation and inside a checkpoint write (the OMNI_FAULT hook of
     omni/faults.py makes the process kill itself exactly there), then --kills SIGKILLs at random moments
     (tests/stage_helpers.kill_and_rerun_until_done), rerunning until the run finishes;
  3. SIGTERM inside an optimizer step: it must finish the step, write a checkpoint and exit 0; the rerun resumes there;
and both interrupted runs must end bitwise identical to the reference: the final weights file, and the last step
checkpoint's model, optimizer, scheduler, RNG and data position (everything but the config and the wall time).

    python scripts/chaos.py                                  # every stage (make chaos)
    python scripts/chaos.py --stages text,ocr --kills 1 --seed 3
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from omni.faults import POINTS  # noqa: E402
from tests import stage_data  # noqa: E402
from tests.stage_helpers import kill_and_rerun_until_done, newest_step  # noqa: E402

STAGES = ("text", "audio", "vision", "ocr", "talker", "vocoder", "sft")
UNCOMPARED = {"config", "elapsed_seconds"}  # checkpoint keys that legitimately differ (save_dir, wall time)


@dataclass
class Job:
    """One training command of a stage: `command(save)` trains into `watch(save)` and writes `weights(save)`."""
    label: str
    command: Callable[[Path], list[str]]
    watch: Callable[[Path], Path]
    weights: Callable[[Path], Path]


@dataclass
class Result:
    label: str
    landed: dict = field(default_factory=dict)  # fault point -> the kill landed there
    torn_write: bool = False  # the checkpoint kill left a half-done temporary file (cleaned up by the rerun)
    random_kills: int = 0
    sigterm: bool = False  # exit 0, checkpoint at the stopped step, rerun resumed there
    identical_kill: bool = False
    identical_term: bool = False
    seconds: float = 0.0
    notes: list = field(default_factory=list)

    @property
    def kills(self) -> int:
        return sum(self.landed.values()) + self.random_kills

    @property
    def ok(self) -> bool:
        return all(self.landed.get(p) for p in POINTS) and self.sigterm and self.identical_kill and self.identical_term


# ---------------------------------------------------------------------------------------------- the stages' jobs
def stage_jobs(stage: str, work: Path) -> list[Job]:
    """Generate the stage's tiny data under work/data and return its training commands (the stage tests' own)."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    if stage == "text":
        from tests.test_train_text import command
        corpus = stage_data.text_corpus(data / "text")
        return [Job("A text", lambda s: command(work, corpus, s, "train.threads=1"), _same, _in("thinker.pt"))]
    if stage == "audio":
        from tests.test_train_audio_enc import command
        speech = stage_data.asr_speech(data / "speech")
        return [Job("B audio", lambda s: command(work, speech, s), _same, _in("audio_enc.pt"))]
    if stage == "vision":
        from omni.synthetic.images import write_image_dataset
        from tests.test_train_vision import command
        images = data / "images"
        write_image_dataset(images, seed=1, n_train=40, n_val=12, image_size=32)
        stage_a = stage_data.stage_a_standin(data / "thinker", stage_data.text_corpus(data / "text"))
        return [Job("C vision", lambda s: command(work, images, stage_a, s), _same, _in("vision.pt"))]
    if stage == "ocr":
        from omni.synthetic.ocr_lines import write_ocr_dataset
        from tests.test_train_ocr import command
        lines = data / "ocr"
        write_ocr_dataset(lines, seed=1, n_train=40, n_val=10, height=32)
        return [Job("OCR", lambda s: command(work, lines, s), _same, _in("ocr.pt"))]
    if stage == "talker":
        from omni.tokenizer import train_tokenizer
        from tests.test_train_talker import command, speech_dataset, tiny
        speech = speech_dataset(data / "speech", n_train=16, n_val=4)
        corpus = stage_data.text_corpus(data / "text")
        tokenizer = train_tokenizer([corpus / "train.txt"], data / "tok", vocab_size=400).model_path
        return [Job("D codec", lambda s: command(work, tiny(speech, tokenizer, s), "phase=codec"),
                    lambda s: s / "codec", _in("codec/rvq_codec.pt")),
                Job("D talker", lambda s: command(work, tiny(speech, tokenizer, s), "phase=talker"), _same,
                    _in("talker.pt"))]
    if stage == "vocoder":
        from tests.test_train_talker import speech_dataset
        from tests.test_train_vocoder import command
        speech = speech_dataset(data / "speech", n_train=8, n_val=2)
        return [Job("vocoder", lambda s: command(work, speech, s, max_steps=12), _same, _in("hifigan.pt"))]
    if stage == "sft":
        from tests.test_sft_omni import command
        stages = stage_data.sft_standins(data / "stages", stage_data.text_corpus(data / "text"))
        return [Job("E sft", lambda s: command(work, stages, s), _same, _in("omni_final.pt"))]
    raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")


def _same(save: Path) -> Path:
    return save


def _in(name: str) -> Callable[[Path], Path]:
    return lambda save: save / name


# ---------------------------------------------------------------------------------------------- the faults
def run_stage(stage: str, work: Path, *, kills: int, seed: int, log=print) -> list[Result]:
    """Reference, killed and SIGTERMed runs of every job of the stage, in three sibling save dirs under `work`."""
    rng = random.Random(f"{seed}:{stage}")
    jobs = stage_jobs(stage, work)
    ref, killed, termed = work / "reference", work / "killed", work / "sigterm"
    results = []
    for job in jobs:
        start = time.perf_counter()
        result = Result(job.label)
        _run_ok(job.command(ref))
        # SIGKILL inside a step, an evaluation and a checkpoint write (the n-th time each is reached), then at random.
        for point in POINTS:  # the n-th step, the 1st evaluation / checkpoint write after resuming
            nth = rng.randint(1, 3) if point == "step" else 1
            proc = subprocess.run(job.command(killed), cwd=REPO, env={**os.environ, "OMNI_FAULT": f"{point}@{nth}"},
                                  capture_output=True, text=True, timeout=600)
            if proc.returncode == -signal.SIGKILL:
                result.landed[point] = True
                if point == "checkpoint":
                    result.torn_write = any(job.watch(killed).glob(".*.tmp"))
            elif proc.returncode == 0:
                result.landed[point] = False
                result.notes.append(f"{point}@{nth} not reached: the run had finished")
            else:
                raise RuntimeError(f"{job.label}: run with OMNI_FAULT={point}@{nth} failed:\n{proc.stderr[-3000:]}")
        result.random_kills = kill_and_rerun_until_done(job.command(killed), job.watch(killed), faults=(),
                                                        seed=rng.randrange(2**31), random_kills=kills)
        killed_log = (job.watch(killed) / "training.log").read_text()
        if result.torn_write and "temporary file(s) left by a write that was interrupted" not in killed_log:
            result.notes.append("the torn temporary file was not cleaned up")
        result.identical_kill = _identical(job, ref, killed, result.notes, "killed")
        # SIGTERM inside a step: finish the step, checkpoint, exit 0; then resume.
        result.sigterm = _sigterm_then_resume(job, termed, result.notes, nth=rng.randint(1, 3))
        result.identical_term = _identical(job, ref, termed, result.notes, "sigterm")
        result.seconds = time.perf_counter() - start
        log(f"{job.label}: kills landed {result.landed}, random kills {result.random_kills}, "
            f"SIGTERM ok {result.sigterm}, identical {result.identical_kill}/{result.identical_term} "
            f"({result.seconds:.0f}s){'; ' + '; '.join(result.notes) if result.notes else ''}")
        results.append(result)
    return results


def _sigterm_then_resume(job: Job, save: Path, notes: list, nth: int) -> bool:
    watch = job.watch(save)
    # The process SIGTERMs itself inside its nth optimizer step (OMNI_FAULT=...:term), so the signal lands while
    # training runs on any machine, however fast.
    proc = subprocess.run(job.command(save), cwd=REPO, env={**os.environ, "OMNI_FAULT": f"step@{nth}:term"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    err = proc.stderr
    stopped = re.search(r"stopped at step (\d+); rerun the same command to resume", err)
    if proc.returncode != 0 or "SIGTERM received" not in err or not stopped:
        notes.append(f"SIGTERM: exit {proc.returncode}, {'no ' if not stopped else ''}'stopped at step' line:\n"
                     + err[-1500:])
        _run_ok(job.command(save))
        return False
    step = int(stopped.group(1))
    has_checkpoint = newest_step(watch) == step
    resumed = f"resumed at step {step}" in _run_ok(job.command(save)).stderr
    if not (has_checkpoint and resumed):
        notes.append(f"SIGTERM: checkpoint at step {step}: {has_checkpoint}, rerun resumed there: {resumed}")
    return has_checkpoint and resumed


def _identical(job: Job, ref: Path, other: Path, notes: list, what: str) -> bool:
    """Final weights and the newest step checkpoint (all but config and wall time) bitwise equal."""
    diffs = _diff(torch.load(job.weights(ref), weights_only=True)["model"],
                  torch.load(job.weights(other), weights_only=True)["model"], "weights")
    a, b = (_newest_checkpoint(job.watch(d)) for d in (ref, other))
    if a.name != b.name:
        diffs.append(f"newest checkpoint {a.name} vs {b.name}")
    else:
        sa, sb = (torch.load(p, weights_only=True) for p in (a, b))
        for key in sorted((set(sa) | set(sb)) - UNCOMPARED):
            diffs += _diff(sa.get(key), sb.get(key), f"{a.name}[{key}]")
    if diffs:
        notes.append(f"{what} run differs: " + "; ".join(diffs[:5]))
    return not diffs


def _newest_checkpoint(folder: Path) -> Path:
    return max(folder.glob("*_step_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))


def _diff(a, b, where: str) -> list[str]:
    if torch.is_tensor(a) or torch.is_tensor(b):
        same = torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape \
            and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys differ"]
        return [d for k in a for d in _diff(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: lengths differ"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def _run_ok(cmd) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:2]))} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


# ---------------------------------------------------------------------------------------------- report
def table(results: list[Result]) -> str:
    head = ("stage", "kills survived", "in step/eval/ckpt write", "random", "SIGTERMs", "runs identical", "seconds")
    rows = [head]
    for r in results:
        landed = "/".join("yes" if r.landed.get(p) else "NO" for p in POINTS) + (" (torn file)" if r.torn_write else "")
        rows.append((r.label, str(r.kills), landed, str(r.random_kills), "1 ok" if r.sigterm else "FAILED",
                     "yes" if r.identical_kill and r.identical_term else "NO", f"{r.seconds:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--kills", type=int, default=2, help="random-moment SIGKILLs per training command "
                                                             "(on top of the three placed ones)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault moments")
    parser.add_argument("--work", type=Path, help="keep the runs in this folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    root = args.work or Path(tempfile.mkdtemp(prefix="omni_chaos_"))
    start = time.perf_counter()
    results = []
    try:
        for stage in stages:
            print(f"== {stage}", flush=True)
            work = root / stage
            shutil.rmtree(work, ignore_errors=True)
            results += run_stage(stage, work, kills=args.kills, seed=args.seed,
                                 log=lambda m: print(m, flush=True))
    finally:
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)
        if results:
            print("\n" + table(results))
            print(f"\n{sum(r.kills for r in results)} kills survived, {sum(r.sigterm for r in results)} SIGTERMs, "
                  f"{sum(r.ok for r in results)}/{len(results)} runs fully identical, "
                  f"{time.perf_counter() - start:.0f}s")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
