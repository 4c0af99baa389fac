"""Checkpoint files: atomic writes, safe loads, discovery with fallback, keep-last-K, RNG and optimizer state.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so `torch.load(weights_only=True)` can
read it without unpickling arbitrary objects. Writes go to a temporary file in the same folder, are fsynced and then
renamed over the target, so a crash at any moment leaves the previous file intact.
"""

from __future__ import annotations

import errno
import random
import re
from pathlib import Path

import numpy as np
import torch

from omni.atomic import atomic_file
from omni.training import faults

# Keys of a training checkpoint.
MODEL = "model"  # state of the raw (uncompiled, unwrapped) module: everything, or only trainable parameters
TRAINABLE_ONLY = "trainable_only"  # True when MODEL holds only the parameters that were trainable
OPTIMIZERS = "optimizers"  # name -> optimizer state keyed by parameter name (see optimizer_state_by_name)
SCHEDULERS = "schedulers"  # name -> LR scheduler state
SCALERS = "scalers"  # name -> GradScaler state (fp16 only)
STEP = "step"  # optimizer steps completed
EPOCH = "epoch"  # current epoch (0-based)
SAMPLES_IN_EPOCH = "samples_in_epoch"  # global samples of the current epoch already consumed
BEST = "best_metric"  # best validation value so far (None before the first evaluation)
LAST_EVAL = "last_eval"  # {"step": N, "metrics": {...}} of the newest evaluation
RNG = "rng"  # python / numpy / torch CPU / CUDA generator states
CONFIG = "config"  # the resolved stage config as a dict
WORLD_SIZE = "world_size"  # processes of the run that wrote it
ELAPSED = "elapsed_seconds"  # training wall time summed over all resumes
COUNTERS = "counters"  # bad samples, skipped non-finite steps, ...

STEP_FILE = re.compile(r"^(?P<name>.+)_step_(?P<step>\d+)\.pt$")


def atomic_save(obj, path: str | Path) -> None:
    """torch.save through omni.atomic: readers see the old or the new file, never a torn one."""
    with atomic_file(path) as f:
        torch.save(obj, f)
        if isinstance(obj, dict) and STEP in obj:
            faults.point("checkpoint")  # no-op unless OMNI_FAULT=checkpoint@n (crash tests)


def write_error(path: str | Path, e: OSError) -> str:
    """Why writing `path` failed, in words: a full disk and a read-only folder are the usual causes."""
    path = Path(path)
    if e.errno == errno.ENOSPC:
        return f"could not write {path}: the disk is full (no space left on device); free space and rerun"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"could not write {path}: permission denied, {path.parent} is not writable ({e.strerror})"
    return f"could not write {path} ({type(e).__name__}: {e})"


def load(path: str | Path, map_location="cpu") -> dict:
    """Safe load (no arbitrary unpickling). Raises with the path named when the file is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise RuntimeError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from e


def step_checkpoints(folder: str | Path, name: str) -> list[tuple[int, Path]]:
    """(step, path) of `<name>_step_<N>.pt` files in `folder`, oldest first."""
    folder = Path(folder)
    found = []
    for p in folder.glob(f"{name}_step_*.pt") if folder.is_dir() else ():
        m = STEP_FILE.match(p.name)
        if m and m["name"] == name:
            found.append((int(m["step"]), p))
    return sorted(found)


def load_newest_valid(folder: str | Path, name: str, log=print) -> tuple[dict, Path] | None:
    """The newest step checkpoint that loads; unreadable newer ones are reported and skipped."""
    for _, path in reversed(step_checkpoints(folder, name)):
        try:
            state = load(path)
            if STEP not in state or MODEL not in state:
                raise RuntimeError(f"checkpoint {path} lacks {STEP!r}/{MODEL!r}: not a training checkpoint")
            return state, path
        except RuntimeError as e:
            log(f"WARNING: {e}; falling back to the next older checkpoint")
    return None


def prune(folder: str | Path, name: str, keep_last: int, up_to_step: int | None = None) -> None:
    """Delete all but the newest `keep_last` step checkpoints up to `up_to_step` (the best checkpoint has its own
    name). Newer ones can only be unreadable files a resume skipped: they are neither counted (they would push out
    the good ones) nor deleted (the run overwrites each when it reaches its step)."""
    found = [(s, p) for s, p in step_checkpoints(folder, name) if up_to_step is None or s <= up_to_step]
    for _, path in found[:-keep_last]:
        path.unlink(missing_ok=True)


def capture_rng() -> dict:
    """All generator states as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        "python": list(_to_lists(random.getstate())),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


def optimizer_state_by_name(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict:
    """Optimizer state keyed by parameter *name* instead of position, so it survives a change in which
    parameters are trainable (freeze settings may differ between the run that saved and the run that resumes)."""
    sd = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    index_to_name = {i: names[id(p)] for i, p in enumerate(params)}
    return {
        "state": {index_to_name[i]: s for i, s in sd["state"].items()},
        "param_groups": [
            {**{k: v for k, v in g.items() if k != "params"}, "params": [index_to_name[i] for i in g["params"]]}
            for g in sd["param_groups"]
        ],
    }


def load_optimizer_state_by_name(optimizer: torch.optim.Optimizer, saved: dict, names: dict[int, str]) -> list[str]:
    """Restore the state of every current parameter that has saved state; others start fresh.

    Group hyper-parameters are restored group by group when the number of groups matches. Returns the names of
    trainable parameters that start with fresh optimizer state.
    """
    current = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    name_to_index = {names[id(p)]: i for i, p in enumerate(params)}
    state = {name_to_index[n]: s for n, s in saved["state"].items() if n in name_to_index}
    groups = current["param_groups"]
    if len(saved["param_groups"]) == len(groups):
        groups = [{**{k: v for k, v in sg.items() if k != "params"}, "params": g["params"]}
                  for sg, g in zip(saved["param_groups"], groups)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return sorted(n for n, i in name_to_index.items() if i not in state)
