"""The shared run machinery: one Run object per training script (see run.py for the loop it expects).

    run.py          Run: the loop helper (setup, batches, micro_step, backward, optimizer_step, log, evaluate, finish)
    train_state.py  what a training checkpoint holds; resume, restore, init_from, the config and fit checks
    checkpoint.py   checkpoint files: keys, discovery with fallback, keep-last-K, RNG and optimizer state by name
    run_dir.py      the run dir: one process at a time (lock), leftovers of interrupted writes, final files
    loader.py       the DataLoader: workers leave stop signals to the main process and never outlive the loop
    nonfinite.py    NaN/Inf steps skipped or undone; too many in a row stop the run
    stop.py         SIGTERM / Ctrl-C: finish the step, checkpoint, end the loop (the script exits 0)
    schedule.py     AdamW, warmup + cosine, accumulation steps;  log.py: training.log, metrics.jsonl, the bar
    distributed.py  torchrun / DDP plumbing (the crash tests' fault points: omni/faults.py)
"""

from omni.training.run import Run
from omni.training.schedule import adamw

__all__ = ["Run", "adamw"]
