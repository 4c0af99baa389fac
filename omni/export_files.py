"""The files of an export folder: written so that nothing half-done or foreign is lost, checked when read.

Writing (`write_folder`)
- Every file is first written into a temporary folder beside the target (`.<name>.export-tmp-*`: the same
  filesystem, so moves are renames). A new or empty target is that folder renamed: it appears whole or not at all.
  An existing export is updated file by file (each rename is atomic), the manifest last, so files the user added
  (notes, evaluation results) stay; files of our own previous export that this one no longer writes (e.g. the
  tokenizer of an export that had a Thinker) are removed, as the previous manifest lists them.
- The manifest records each file's size and sha256 under "files". A torn update (killed between two renames) or a
  file damaged later (bad copy, disk, hand edit) is then caught at load, instead of giving a silently wrong model.
- The writer holds an flock on its temporary folder while it works; the OS drops it when the process dies. The next
  export of the same target removes the temporary folders nobody holds (left by an interrupted export) and logs it.

Reading (`verify`): each listed file's size, then its sha256 streamed in 1 MiB chunks (a large file is never read
into memory at once); a mismatch is a UserError naming the file. A manifest without "files" (exported before they
were recorded) is accepted with a logged warning.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from omni.components import ExportError
from omni.errors import UserError

log = logging.getLogger(__name__)

FILES_KEY = "files"  # manifest key: {file name: {"sha256": hex digest, "bytes": size}}
CHUNK_BYTES = 1 << 20
_TMP_TAG = "export-tmp-"
_DAMAGED = "the file was changed or damaged after export; re-export it"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    try:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                digest.update(view[:n])
    except OSError as e:
        raise UserError(f"{path}: unreadable ({e.strerror or e})") from None
    return digest.hexdigest()


def describe(folder: Path, names: Iterable[str]) -> dict[str, dict]:
    """The manifest's "files" entry for the named files of `folder`."""
    return {name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
            for name in sorted(names)}


def _plain_name(name) -> bool:
    """A file directly in the folder: the manifest can never make us read or delete anything elsewhere."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name


def verify(folder: str | Path, manifest: dict, manifest_path: Path) -> None:
    """Check every file that `manifest` (read from `manifest_path`) lists against its recorded size and sha256."""
    folder = Path(folder)
    files = manifest.get(FILES_KEY)
    if files is None:
        log.warning("%s: exported before omni recorded checksums (%s has no %r): its files cannot be verified; "
                    "re-export it to add them", folder, manifest_path, FILES_KEY)
        return
    if not isinstance(files, dict) or not all(
            _plain_name(name) and isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("bytes"), int) for name, entry in files.items()):
        raise UserError(f"{manifest_path}: {FILES_KEY!r} is not {{file name: {{'sha256': ..., 'bytes': ...}}}}; "
                        "re-export the folder")
    for name, entry in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise UserError(f"{path}: missing, but {manifest_path} lists it; re-export the folder") from None
        except OSError as e:
            raise UserError(f"{path}: unreadable ({e.strerror or e})") from None
        if size != entry["bytes"]:  # cheap first: a truncated copy is named without hashing anything
            raise UserError(f"{path}: size mismatch (expected {entry['bytes']} bytes, got {size}): {_DAMAGED}")
        got = sha256_file(path)
        if got != entry["sha256"]:
            raise UserError(f"{path}: sha256 mismatch (expected {entry['sha256']}, got {got}): {_DAMAGED}")


def write_folder(out_dir: str | Path, write: Callable[[Path], None], *, manifest: str, content: dict,
                 marker: Callable[[Path], bool], known_files: Iterable[str]) -> dict:
    """Write an export into out_dir (see the module doc); returns the manifest written.

    write(folder) writes every file but the manifest; the manifest `manifest` is `content` plus "files" (the
    checksums of those files), as JSON. A non-empty out_dir is only written into when marker(out_dir) says it holds
    a previous export of the same kind. known_files: the names this writer may have written, which stand for the
    previous export's files when its manifest predates "files".
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not marker(out_dir))):
        raise ExportError(f"{out_dir} exists and is not a previous export; choose an empty or new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{_TMP_TAG}", dir=out_dir.parent))
    held = _hold(tmp)
    try:
        write(tmp)
        names = sorted(p.name for p in tmp.iterdir())
        if manifest in names:
            raise AssertionError(f"write() must leave {manifest} to write_folder")
        data = {**content, FILES_KEY: describe(tmp, names)}
        (tmp / manifest).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        for name in [*names, manifest]:
            _fsync(tmp / name)  # on disk before the rename makes it visible
        _share(tmp)
        if out_dir.is_dir() and any(out_dir.iterdir()):
            previous = _own_files(out_dir, manifest, known_files)
            for name in [*names, manifest]:  # the manifest last: until then the old one stands (see module doc)
                os.replace(tmp / name, out_dir / name)
            for name in sorted(previous - {*names, manifest}):
                (out_dir / name).unlink(missing_ok=True)
            _fsync(out_dir)
        else:
            os.replace(tmp, out_dir)  # rename(2) replaces an empty directory
            _fsync(out_dir.parent)
    finally:
        os.close(held)
        shutil.rmtree(tmp, ignore_errors=True)
    return data


def remove_leftovers(out_dir: Path) -> list[Path]:
    """Remove the temporary folders of interrupted exports of out_dir (those no running export holds)."""
    removed = []
    for path in sorted(out_dir.parent.glob(f".{glob.escape(out_dir.name)}.{_TMP_TAG}*")):
        if path.is_symlink() or not path.is_dir():
            continue
        try:
            held = _hold(path)
        except OSError:  # held: an export of the same target is running right now
            continue
        try:
            shutil.rmtree(path)
        finally:
            os.close(held)
        removed.append(path)
    if removed:
        log.warning("removed %d temporary folder(s) left by an interrupted export of %s: %s", len(removed), out_dir,
                    ", ".join(p.name for p in removed))
    return removed


def _hold(folder: Path) -> int:
    """An fd holding an exclusive flock on folder (raises OSError when another process holds it)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _own_files(out_dir: Path, manifest: str, known_files: Iterable[str]) -> set[str]:
    """The files our previous export in out_dir wrote: its manifest's list, else every name we may write."""
    try:
        files = json.loads((out_dir / manifest).read_text(encoding="utf-8")).get(FILES_KEY)
    except (OSError, ValueError, AttributeError):
        files = None
    if not isinstance(files, dict):
        return set(known_files)
    return {name for name in files if _plain_name(name)}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _share(folder: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; give the export the permissions of ordinary files."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for p in folder.iterdir():
        p.chmod(0o666 & ~umask)
