"""The run directory (train.save_dir): one process at a time, and no leftovers of interrupted writes."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from omni.atomic import atomic_write_text
from omni.errors import UserError
from omni.torch_io import save, write_error

_HELD_LOCKS: dict[Path, object] = {}  # run dir -> lock file handle held by this process


def lock(run_dir: Path):
    """Hold an exclusive lock on the run dir for the life of the process, so that two runs can never interleave
    checkpoints in one folder. The OS drops the lock when the process dies, kill -9 included. Within one process
    the lock is reused (a later Run in the same process, as in tests, follows the earlier one; it can't overlap)."""
    key = run_dir.resolve()
    if key in _HELD_LOCKS:
        return _HELD_LOCKS[key]
    handle = (run_dir / ".lock").open("a+")
    try:
        # lockf (POSIX) rather than flock: forked DataLoader workers don't inherit it, so a killed run's
        # lingering workers can't keep the rerun locked out.
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        raise UserError(f"{run_dir} is in use by another running process (pid {owner}); wait for it or stop it") \
            from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _HELD_LOCKS[key] = handle
    return handle


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_final_files(run_dir: Path, final_weights: dict[str, dict], summary: dict) -> None:
    """A finished run's final weights files (filename -> payload) and summary.json. A failed write is a UserError:
    the training checkpoints are intact, and rerunning the finished run writes these files again."""
    try:
        for filename, payload in final_weights.items():
            target = run_dir / filename
            save(payload, target)
        target = run_dir / "summary.json"  # read by scripts/evaluate.py and the tests: never half a file
        atomic_write_text(target, json.dumps(summary, indent=2) + "\n")
    except OSError as e:
        raise UserError(f"{write_error(target, e)}; the training checkpoints are intact: rerun to write the final "
                        "weights again") from e


def remove_interrupted_writes(run_dir: Path) -> list[str]:
    """Delete the temporary files (omni.atomic's `.<name>.*.tmp`) of writes a crash cut off; returns their names.
    Only with the lock held: then no write is in flight, so every such file is a leftover."""
    stale = list(run_dir.glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return [p.name for p in stale]
