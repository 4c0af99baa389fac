"""JSONL manifests: one JSON object per line, media paths relative to the manifest file.

Errors name the file and line, because a researcher with a 100k-line manifest needs to know where to look.
A UTF-8 byte-order mark and CRLF line endings are accepted; bytes that are not UTF-8 are an error naming file:line.
Field types are checked where a record is read (`check_fields`, one table `FIELD_KINDS` for every reader), so
`"image": 5` or `"duration": NaN` is one `DataError` naming file:line, not a crash deep inside a data worker.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from omni.errors import UserError


class DataError(UserError, ValueError):
    """A data file the user gave is malformed (bad JSON, not UTF-8, a missing key, a field of the wrong type); the
    message names file:line. A ValueError too, so callers that catch ValueError keep working."""


def read_jsonl(path: str | Path) -> list[dict]:
    """All records of a JSONL file; blank lines are ignored, anything else must be a JSON object."""
    return [record for _, record in read_jsonl_lines(path)]


def parse_json_object(line: str, where: str) -> dict:
    """One JSONL line -> its object; a DataError naming `where` (file:line) when it is not a JSON object."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


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
            records.append((line_no, parse_json_object(line, f"{path}:{line_no}")))
    if not records:
        raise DataError(f"{what} {path} has no records")
    return records


def decode_line(raw: bytes, path: str | Path, line_no: int) -> str:
    """One line of a UTF-8 text file (a byte-order mark on line 1 is dropped); ValueError naming file:line when the
    bytes are not UTF-8, instead of a bare UnicodeDecodeError that names neither."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start:e.start + 1]
        raise DataError(f"{path}:{line_no}: not UTF-8 text (byte {bad!r} at column {e.start + 1})") from None
    return text.removeprefix("\ufeff") if line_no == 1 else text


def read_text_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file without line endings (LF or CRLF); errors name file:line (see decode_line)."""
    with Path(path).open("rb") as f:
        return [decode_line(raw, path, n).rstrip("\r\n") for n, raw in enumerate(f, start=1)]


def require_keys(record: dict, keys: tuple[str, ...], where: str) -> None:
    """Raise naming `where` (file:line or file) when a record lacks one of `keys`."""
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing}; record has {sorted(record)}")


# What each manifest field must be, for every reader: media paths and texts are strings, a duration is a finite
# number of seconds > 0 (json reads NaN and Infinity, and "3" is a string), ids are ints or strings.
FIELD_KINDS = {
    "audio": "path", "image": "path", "file_name": "path",
    "text": "string", "caption": "string", "label": "string", "task": "string", "kind": "string",
    "duration": "seconds",
    "id": "id", "image_id": "id",
}


def check_fields(record: dict, where: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> None:
    """Raise DataError naming `where` when a `required` key is missing, or a required or present (non-null)
    `optional` key has the wrong JSON type for its kind in FIELD_KINDS."""
    require_keys(record, required, where)
    for key in (*required, *optional):
        value = record.get(key)
        if value is None and key in optional:
            continue
        problem = _kind_problem(FIELD_KINDS[key], value)
        if problem:
            raise DataError(f"{where}: {key!r} must be {problem}, got {type(value).__name__} {_short(value)}")


def _kind_problem(kind: str, value) -> str:
    """'' when `value` fits `kind`, else what it should have been."""
    if kind == "path":
        return "" if isinstance(value, str) and value else "a non-empty string (a file path)"
    if kind == "string":
        return "" if isinstance(value, str) else "a string"
    if kind == "seconds":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        return "" if ok else "a finite number of seconds > 0"
    if kind == "id":
        return "" if isinstance(value, int | str) and not isinstance(value, bool) else "an integer or a string"
    raise KeyError(kind)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Delimiters a table file (a transcript or caption table) may use, and their names for messages.
TABLE_DELIMITERS = {",": "comma", "\t": "tab", "|": "pipe"}


def table_header(line: str, *wanted: tuple[str, ...]) -> tuple[str, list[str], list[str]] | None:
    """(delimiter, column names, the first name of each `wanted` group found) when `line`, split by one of
    TABLE_DELIMITERS (tried in that order), names a column of every `wanted` group; None when no split does (e.g.
    LJSpeech's headerless `id|text|normalized_text`). Names are stripped and lower-cased."""
    for delimiter in TABLE_DELIMITERS:
        columns = [c.strip().lower() for c in line.split(delimiter)]
        found = [next((c for c in group if c in columns), None) for group in wanted]
        if None not in found:
            return delimiter, columns, found
    return None


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
