"""Fingerprints of input files: the one rule that says when derived data (a cache) is stale.

Every cache of derived data (the token memmaps of omni.data.text, the Talker's code cache of omni.data.tts, the
tokenizer train_text.py trains into its run dir) keeps beside it `<cache>.inputs.json`: what it was built from,

    {"files": {path: [size, mtime_ns], ...}, "params": {name: str, ...}, "content": sha256 of the cache file}

and is rebuilt when that no longer matches the inputs now. `stale_reason` says why in words, for the log.

Files are compared by size and modification time in nanoseconds, not by a hash of their content: hashing a
multi-GB corpus (or 28k LibriSpeech clips) on every start costs what tokenizing it costs, while a stat is free.
This is the rule make and ccache use; it misses only an edit that keeps both the size and the mtime (a deliberate
`touch -r`, or a copy that preserves times onto a file of equal size). An edit with an editor, a re-download, a
`cp` or a `mv` of another file over it all change the mtime. A touched but unchanged file only costs a rebuild.

`content` is the hash of the cache file itself, taken once when it is built (cheap next to building it). It names
the data a run trained on: `note_run_data` compares it with what the run saw before, so a resumed run whose data
changed under it says so in its log, and a file that was only touched (same tokens after the rebuild) does not.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from omni.atomic import atomic_write_text
from omni.errors import MissingInput, UserError

SUFFIX = ".inputs.json"
RUN_DATA_FILE = "data_fingerprints.json"


def file_stamp(path: str | Path, *, missing_ok: bool = False) -> list[int] | None:
    """[size, mtime_ns] of a file (what decides whether a cache built from it is still current). A file that cannot
    be read is an error naming it, or None with missing_ok (for caches that record such a file as a bad sample)."""
    try:
        st = os.stat(path)
    except OSError as e:
        if missing_ok:
            return None
        raise (MissingInput if isinstance(e, FileNotFoundError) else UserError)(
            f"cannot read {path}: {e.strerror}") from None
    return [st.st_size, st.st_mtime_ns]


def cache_inputs(files: Iterable[str | Path], *, missing_ok: bool = False, **params) -> dict:
    """The inputs of a cache: the stamp of every input file, and parameters (anything else the cache depends on,
    e.g. a tokenizer fingerprint) as strings."""
    return {"files": {str(p): file_stamp(p, missing_ok=missing_ok) for p in files},
            "params": {k: str(v) for k, v in params.items()}}


def sidecar(cache: str | Path) -> Path:
    cache = Path(cache)
    return cache.with_name(cache.name + SUFFIX)


def read_record(cache: str | Path) -> dict | None:
    """The stored inputs of `cache`, or None when it has none (never built, or a crash between writing the cache
    and its record, or a cache written before records existed)."""
    try:
        return json.loads(sidecar(cache).read_text())
    except (OSError, ValueError):
        return None


def stale_reason(cache: str | Path, inputs: dict) -> str | None:
    """None when `cache` exists and was built from exactly `inputs`; else why not, in words."""
    cache = Path(cache)
    if not cache.exists():
        return "no cache yet"
    old = read_record(cache)
    if old is None:
        return f"{sidecar(cache).name} is missing or unreadable, so its inputs are unknown"
    reasons = []
    params = [k for k in sorted({*old.get("params", {}), *inputs["params"]})
              if old.get("params", {}).get(k) != inputs["params"].get(k)]
    if params:
        reasons.append("changed: " + ", ".join(params))
    before, now = old.get("files", {}), inputs["files"]
    changed = [p for p in now if p in before and before[p] != now[p]]
    if changed:
        first = changed[0]
        reasons.append(f"{len(changed)} input file(s) changed since it was built, e.g. {first} ([size, mtime_ns] "
                       f"{before[first]} -> {now[first]})")
    added, removed = [p for p in now if p not in before], [p for p in before if p not in now]
    if added or removed:
        reasons.append(f"the input files differ: {len(added)} new (e.g. {(added or ['-'])[0]}), {len(removed)} "
                       f"gone (e.g. {(removed or ['-'])[0]})")
    return "; ".join(reasons) or None


def record_built(cache: str | Path, inputs: dict) -> str:
    """Store `inputs` and the hash of the finished cache beside it (call after the cache was written atomically:
    a crash in between leaves no record, so the next start rebuilds). Returns the content hash."""
    content = file_digest(cache)
    atomic_write_text(sidecar(cache), json.dumps({**inputs, "content": content}) + "\n")
    return content


def content_digest(cache: str | Path) -> str | None:
    """The content hash stored when `cache` was built (None when unknown)."""
    return (read_record(cache) or {}).get("content")


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()[:16]


def note_run_data(run_dir: str | Path, data: Mapping[str, str | None], *, resumed: bool, log) -> list[str]:
    """Record which data (name -> content hash, e.g. {"data.train_path": ...}) a run trains on, in
    `<run_dir>/data_fingerprints.json`, and when the run resumed from a checkpoint, log a WARNING for each input
    whose content changed since the run last started: the run goes on with the new data, so it is no longer the
    exact continuation of the run so far. Returns the names that changed. Call on the main process only.

    A warning, not a refusal: editing the data of a run in place is a deliberate act (a fixed corpus), and the
    checkpoint is still a good start; only the bitwise replay promise is lost, and the log now says so.
    """
    path = Path(run_dir) / RUN_DATA_FILE
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        before = {}
    changed = [k for k, v in data.items() if k in before and before[k] != v]
    if resumed:
        for name in changed:
            log(f"WARNING: {name} changed since this run last started (content {before[name]} -> {data[name]}): "
                "resuming from the checkpoint on the new data; the result is not the exact continuation of the "
                "run so far (use a new train.save_dir to start over on it)")
    if before != {**before, **data}:
        atomic_write_text(path, json.dumps({**before, **data}, indent=1) + "\n")
    return changed if resumed else []
