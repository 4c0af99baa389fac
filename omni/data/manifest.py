"""JSONL manifests: one JSON object per line, media paths relative to the manifest file.

Errors name the file and line, because a researcher with a 100k-line manifest needs to know where to look.
A UTF-8 byte-order mark and CRLF line endings are accepted; bytes that are not UTF-8 are an error naming file:line.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: str | Path) -> list[dict]:
    """All records of a JSONL file; blank lines are ignored, anything else must be a JSON object."""
    return [record for _, record in read_jsonl_lines(path)]


def read_jsonl_lines(path: str | Path, what: str = "manifest") -> list[tuple[int, dict]]:
    """(line number, record) of every non-blank line, so later errors can name file:line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    records = []
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            line = decode_line(raw, path, line_no)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            records.append((line_no, record))
    if not records:
        raise ValueError(f"{what} {path} has no records")
    return records


def decode_line(raw: bytes, path: str | Path, line_no: int) -> str:
    """One line of a UTF-8 text file (a byte-order mark on line 1 is dropped); ValueError naming file:line when the
    bytes are not UTF-8, instead of a bare UnicodeDecodeError that names neither."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start:e.start + 1]
        raise ValueError(f"{path}:{line_no}: not UTF-8 text (byte {bad!r} at column {e.start + 1})") from None
    return text.removeprefix("\ufeff") if line_no == 1 else text


def read_text_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file without line endings (LF or CRLF); errors name file:line (see decode_line)."""
    with Path(path).open("rb") as f:
        return [decode_line(raw, path, n).rstrip("\r\n") for n, raw in enumerate(f, start=1)]


def require_keys(record: dict, keys: tuple[str, ...], where: str) -> None:
    """Raise naming `where` (file:line or file) when a record lacks one of `keys`."""
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; record has {sorted(record)}")


def resolve(manifest_path: str | Path, relative: str | Path) -> Path:
    """A media path from a manifest, taken relative to the manifest's folder (absolute paths stay as they are)."""
    p = Path(relative)
    return p if p.is_absolute() else Path(manifest_path).parent / p


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
