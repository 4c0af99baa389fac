"""Torch files (training checkpoints, stage weights, data caches): written atomically, read safely.

`save` is torch.save through omni.atomic (readers, and a rerun after a crash, see the old file or the complete new
one, never a torn one) and reports any failed write as an OSError; `write_error` says why in words. `load` never
unpickles arbitrary objects (`weights_only=True`: a saved file is a plain dict of tensors, numbers, strings, lists
and dicts) and names the file when it is missing or unreadable. One owner for the data layer, the training loop and
inference alike, so that the data layer needs nothing from omni.training.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import torch

from omni.atomic import atomic_file
from omni.errors import UserError


class CheckpointNotFound(UserError, FileNotFoundError):
    """A checkpoint file the user named does not exist."""


class UnreadableCheckpoint(UserError, RuntimeError):
    """A checkpoint file that torch.load can't read (torn, garbage, empty, not a checkpoint), or one that loads but
    does not fit the model; the message names the file."""


def save(obj, path: str | Path, *, before_rename: Callable[[], None] | None = None) -> None:
    """torch.save through omni.atomic: readers see the old or the new file, never a torn one.

    A failed write (full disk, file size limit, I/O error) raises OSError, whatever layer it failed in.
    before_rename: called once the temporary file is complete, before it replaces `path` (the crash tests' hook)."""
    with atomic_file(path) as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            cause = _os_error_behind(e)
            if cause is None:
                raise
            raise cause from e
        if before_rename is not None:
            before_rename()


def _os_error_behind(e: RuntimeError) -> OSError | None:
    """The OSError behind a failed torch.save, or None when `e` is not a write failure.

    torch's zip writer turns a failed write into `RuntimeError: [enforce fail at inline_container.cc...]`: on a Python
    file object the OSError the file raised is its __context__; when torch writes the file itself there is none,
    only "PytorchStreamWriter failed writing file ...", and the cause is not known."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    if "inline_container.cc" in str(e) or "PytorchStreamWriter" in str(e):
        return OSError(errno.EIO, f"torch could not write the file ({e})")
    return None


def write_error(path: str | Path, e: OSError) -> str:
    """Why writing `path` failed, in words: a full disk and a read-only folder are the usual causes."""
    path = Path(path)
    if e.errno == errno.ENOSPC:
        return f"could not write {path}: the disk is full (no space left on device); free space and rerun"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"could not write {path}: permission denied, {path.parent} is not writable ({e.strerror})"
    if e.errno == errno.EFBIG:
        return (f"could not write {path}: the file exceeds the file size limit of the file system or of this process "
                f"(ulimit -f)")
    return f"could not write {path} ({type(e).__name__}: {e})"


def load(path: str | Path, map_location="cpu") -> dict:
    """Safe load (no arbitrary unpickling). Raises with the path named when the file is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFound(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise UnreadableCheckpoint(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from e
