"""Training checkpoint files: their keys, discovery with fallback, fit to a model, keep-last-K, RNG and optimizer
state.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, written and read through omni.torch_io
(atomic writes, `torch.load(weights_only=True)`), so a crash at any moment leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import random
import re
from pathlib import Path

import numpy as np
import torch

from omni import faults, torch_io
from omni.torch_io import UnreadableCheckpoint, load, write_error  # noqa: F401 (re-exported)

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
LOG_WINDOW = "log_window"  # training metrics summed since the last log line (older checkpoints lack it)

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / torch.compile wrappers' state-dict prefixes
STEP_FILE = re.compile(r"^(?P<name>.+)_step_(?P<step>\d+)\.pt$")


def atomic_save(obj, path: str | Path) -> None:
    """omni.torch_io.save; a training checkpoint (a dict with STEP) passes the crash tests' "checkpoint" fault point
    with its temporary file written and not yet renamed."""
    is_checkpoint = isinstance(obj, dict) and STEP in obj
    torch_io.save(obj, path, before_rename=(lambda: faults.point("checkpoint")) if is_checkpoint else None)


def misfit(model: torch.nn.Module, weights: dict, *, partial: bool = False) -> str | None:
    """Why the state dict `weights` does not fit `model` (keys it lacks or the model lacks, shapes), or None.

    `partial`: `weights` may hold only some of the model's tensors (trainable-only checkpoints, init_from an earlier
    stage); keys the model lacks and wrong shapes still don't fit."""
    expected = model.state_dict()
    extra = [k for k in weights if k not in expected]
    lacking = [] if partial else [k for k in expected if k not in weights]
    shapes = [f"{k} {tuple(v.shape)} in the file, {tuple(expected[k].shape)} in the model"
              for k, v in weights.items() if k in expected and getattr(v, "shape", None) != expected[k].shape]
    problems = []
    if lacking:
        problems.append(f"{len(lacking)} tensor(s) of the model missing: {short_list(lacking)}")
    if extra:
        problems.append(f"{len(extra)} tensor(s) the model lacks: {short_list(extra)}")
        wrapped = sorted({p for k in extra for p in WRAPPER_PREFIXES if k.startswith(p)})
        if wrapped:
            problems[-1] += (f" (the {'/'.join(repr(p) for p in wrapped)} prefix: saved from a DDP or torch.compile "
                             "wrapper instead of the plain model)")
    if shapes:
        problems.append(f"{len(shapes)} wrong shape(s): {short_list(shapes, 4)}")
    return "; ".join(problems) or None


def all_finite(tensors) -> bool:
    """No NaN/Inf in any of the floating-point `tensors`: one host sync.

    Checks each tensor's sum, which NaN and Inf make non-finite: one cheap reduction per tensor (on a 6M-parameter
    model on one CPU thread 0.6 ms, against 16 ms for a max-|w| norm and 10 ms for AdamW's step). A finite tensor
    whose sum overflows (mean |w| above ~1e38 / numel) also counts as non-finite: such weights are ruined anyway."""
    sums = [t.detach().sum(dtype=torch.float32) for t in tensors if t.is_floating_point()]  # fp16 would overflow
    return not sums or bool(torch.isfinite(torch.stack(sums)).all())


def nonfinite_tensors(weights: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict holding NaN or Inf (one host sync when all are finite)."""
    floats = {k: v for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point()}
    if all_finite(floats.values()):
        return []
    return [k for k, v in floats.items() if not torch.isfinite(v).all()]


def short_list(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def step_checkpoints(folder: str | Path, name: str) -> list[tuple[int, Path]]:
    """(step, path) of `<name>_step_<N>.pt` files in `folder`, oldest first."""
    folder = Path(folder)
    found = []
    for p in folder.glob(f"{name}_step_*.pt") if folder.is_dir() else ():
        m = STEP_FILE.match(p.name)
        if m and m["name"] == name:
            found.append((int(m["step"]), p))
    return sorted(found)


def load_newest_valid(folder: str | Path, name: str, log=print, fits=None) -> tuple[dict, Path] | None:
    """The newest step checkpoint that loads (and, given `fits(state)` -> None or why not, fits); unreadable or
    misfitting newer ones are reported and skipped."""
    for _, path in reversed(step_checkpoints(folder, name)):
        try:
            state = load(path)
            if STEP not in state or MODEL not in state:
                raise UnreadableCheckpoint(f"checkpoint {path} lacks {STEP!r}/{MODEL!r}: not a training checkpoint")
            problem = fits(state) if fits else None
            if problem:
                raise UnreadableCheckpoint(f"checkpoint {path} does not fit this model: {problem}")
            return state, path
        except UnreadableCheckpoint as e:
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


@contextlib.contextmanager
def forked_rng(device: torch.device):
    """Python, numpy, torch CPU (and this CUDA device's) generators are back where they were after the block."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
    random.setstate(py_state)
    np.random.set_state(np_state)


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
