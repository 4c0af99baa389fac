"""Speech dataset layouts: the readers that turn a speech data path (or a list of them) into ASR records.

Readers return plain records `{"audio": absolute Path, "text": str, "where": "file:line"}` (plus `"duration"` in
seconds when the layout knows it without opening the audio), so any layout feeds the same source
(`omni.data.speech.AsrSource`):
- JSONL manifests `{"audio": "wavs/a.wav", "text": "...", "duration": 1.7}`, paths relative to the manifest;
- LibriSpeech split folders (`<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt` next to `.flac` files);
- LJSpeech folders (`metadata.csv` with `id|text|normalized_text`, no header, audio in `wavs/<id>.wav`);
- Common Voice split TSVs (`cv-corpus-*/<lang>/train.tsv`, dev/test/validated/...: tab-separated with a header that
  has `client_id`, `path` and `sentence`; audio in the `clips/` folder beside the TSV, usually MP3);
- transcript tables: a CSV (comma, quoted fields allowed), TSV or `|`-separated file with a header naming an audio
  column (TABLE_AUDIO_COLUMNS, e.g. `file_name` as in Hugging Face's audiofolder `metadata.csv`) and a text column
  (TABLE_TEXT_COLUMNS), optionally `duration` in seconds; audio paths relative to the table's folder. A folder
  holding such a `metadata.csv` (or `metadata.tsv`) can be given instead of the file.

`load_asr_records` takes one path or a list of them (the config keys are `str | list[str]`), detects each one's
layout (`speech_layout`), logs which layout it read and how many clips, and concatenates the records in order, so
e.g. a Common Voice split and a synthetic JSONL set train together. It is the one reader of the speech stages'
data keys.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from omni.data.manifest import (
    TABLE_DELIMITERS,
    DataError,
    check_fields,
    read_jsonl_lines,
    read_text_lines,
    resolve,
    table_header,
)


def read_asr_manifest(path: str | Path) -> list[dict]:
    """Records of a JSONL ASR manifest; each line needs "audio" and "text", "duration" (seconds) is optional."""
    path = Path(path)
    records = []
    for line_no, rec in read_jsonl_lines(path):
        where = f"{path}:{line_no}"
        check_fields(rec, where, required=("audio", "text"), optional=("duration",))
        out = {"audio": resolve(path, rec["audio"]).resolve(), "text": rec["text"], "where": where}
        if rec.get("duration") is not None:
            out["duration"] = float(rec["duration"])
        records.append(out)
    return records


def read_librispeech(root: str | Path) -> list[dict]:
    """Records of one LibriSpeech split folder (e.g. `LibriSpeech/train-clean-100`), sorted by utterance id."""
    root = Path(root)
    transcripts = sorted(root.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise DataError(f"{root}: no */*/*.trans.txt files; expected a LibriSpeech split folder")
    records = []
    for trans in transcripts:
        for line_no, line in enumerate(read_text_lines(trans), start=1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            if not text:
                raise DataError(f"{trans}:{line_no}: expected '<utterance-id> <TRANSCRIPT>', got {line!r}")
            records.append({"audio": (trans.parent / f"{utt_id}.flac").resolve(), "text": text,
                            "where": f"{trans}:{line_no}"})
    return records


def read_ljspeech(root: str | Path) -> list[dict]:
    """Records of an LJSpeech folder; uses the normalized_text column (numbers spelled out) when present."""
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise DataError(f"{root}: no metadata.csv; expected an LJSpeech folder")
    records = []
    # Split on "|" by hand: the transcripts contain quotes that would confuse a CSV parser.
    for line_no, line in enumerate(read_text_lines(meta), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 2 or not fields[0]:
            raise DataError(f"{meta}:{line_no}: expected 'id|text|normalized_text', got {line!r}")
        text = fields[2] if len(fields) > 2 and fields[2].strip() else fields[1]
        records.append({"audio": (root / "wavs" / f"{fields[0]}.wav").resolve(), "text": text,
                        "where": f"{meta}:{line_no}"})
    if not records:
        raise DataError(f"{meta} has no entries")
    return records


TABLE_AUDIO_COLUMNS = ("file_name", "file", "path", "audio", "filename", "audio_path", "wav")  # first found wins
TABLE_TEXT_COLUMNS = ("text", "transcription", "transcript", "sentence", "normalized_text")
COMMON_VOICE_COLUMNS = ("client_id", "path", "sentence")


def _table_header(line: str) -> tuple[str, list[str], list[str]] | None:
    """A transcript table's header (manifest.table_header): it names an audio and a text column."""
    return table_header(line, TABLE_AUDIO_COLUMNS, TABLE_TEXT_COLUMNS)


def _table_rows(path: Path, lines: list[str], delimiter: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank data row of a table's `lines` after the header. Commas follow CSV
    quoting (a text with a comma is quoted); tabs and pipes are split as they are, because Common Voice and LJSpeech
    do not quote and their sentences contain quote characters."""
    if delimiter == ",":
        reader = csv.reader(line + "\n" for line in lines[1:])
        rows, start = [], 2
        try:
            for fields in reader:
                rows.append((start, fields))
                start = reader.line_num + 2  # a quoted field may span lines: the next row starts after them
        except csv.Error as e:
            raise DataError(f"{path}:{start}: malformed CSV ({e})") from None
        return [(n, f) for n, f in rows if any(x.strip() for x in f)]
    return [(n, line.split(delimiter)) for n, line in enumerate(lines[1:], start=2) if line.strip()]


def _row_fields(path: Path, line_no: int, fields: list[str], columns: list[str], delimiter: str) -> dict:
    if len(fields) != len(columns):
        raise DataError(f"{path}:{line_no}: expected {len(columns)} {TABLE_DELIMITERS[delimiter]}-separated columns "
                        f"({', '.join(columns)}), got {len(fields)}")
    return dict(zip(columns, fields))


def read_transcript_table(path: str | Path) -> list[dict]:
    """Records of a transcript table (see the module docstring): the first of TABLE_AUDIO_COLUMNS and of
    TABLE_TEXT_COLUMNS in the header, optional `duration` (seconds); audio paths relative to the table's folder."""
    path = Path(path)
    lines = read_text_lines(path)  # UTF-8 checked per line, errors name file:line
    header = _table_header(lines[0]) if lines else None
    if header is None:
        raise DataError(
            f"{path}:1: not a transcript table header: expected a comma-, tab- or |-separated header with an audio "
            f"column (one of {', '.join(TABLE_AUDIO_COLUMNS)}) and a text column (one of "
            f"{', '.join(TABLE_TEXT_COLUMNS)}), got {(lines or [''])[0][:120]!r}")
    delimiter, columns, (audio_col, text_col) = header
    records = []
    for line_no, fields in _table_rows(path, lines, delimiter):
        where = f"{path}:{line_no}"
        row = _row_fields(path, line_no, fields, columns, delimiter)
        if not row[audio_col].strip():
            raise DataError(f"{where}: empty {audio_col!r} (the audio file)")
        record = {"audio": resolve(path, row[audio_col].strip()).resolve(), "text": row[text_col], "where": where}
        if row.get("duration", "").strip():
            record["duration"] = _seconds(row["duration"], where)
        records.append(record)
    if not records:
        raise DataError(f"{path} has no rows")
    return records


def _seconds(value: str, where: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise DataError(f"{where}: 'duration' must be a finite number of seconds > 0, got {value!r}")
    return seconds


def read_common_voice(tsv: str | Path) -> list[dict]:
    """Records of one Common Voice split TSV (train.tsv, dev.tsv, test.tsv, validated.tsv, ...): `path` names the
    clip in `clips/` beside the TSV, `sentence` is the transcript. Common Voice does not quote its fields, so the
    lines are split on tabs as they are."""
    tsv = Path(tsv)
    lines = read_text_lines(tsv)
    columns = lines[0].split("\t") if lines else []
    missing = [c for c in COMMON_VOICE_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"{tsv}:1: not a Common Voice TSV header: missing column(s) {missing}; got {columns}")
    records = []
    for line_no, fields in _table_rows(tsv, lines, "\t"):
        row = _row_fields(tsv, line_no, fields, columns, "\t")
        if not row["path"].strip():
            raise DataError(f"{tsv}:{line_no}: empty 'path' (the clip in clips/)")
        records.append({"audio": (tsv.parent / "clips" / row["path"].strip()).resolve(), "text": row["sentence"],
                        "where": f"{tsv}:{line_no}"})
    if not records:
        raise DataError(f"{tsv} has no clips")
    return records


def _first_line(path: Path) -> str:
    lines = read_text_lines(path)
    return lines[0] if lines else ""


def speech_layout(path: str | Path) -> tuple[str, Callable[[Path], list[dict]], Path]:
    """(layout name, reader, what the reader takes) of one speech data path; DataError naming the path when it is
    no layout omni reads. See the module docstring for the layouts."""
    path = Path(path)
    if path.is_file() and path.suffix == ".jsonl":
        return "JSONL manifest", read_asr_manifest, path
    if path.is_file() and path.suffix.lower() in (".tsv", ".csv"):
        head = _first_line(path)
        if all(c in head.split("\t") for c in COMMON_VOICE_COLUMNS):
            return "Common Voice TSV", read_common_voice, path
        if _table_header(head) is not None:
            return "transcript table", read_transcript_table, path
        if path.name == "metadata.csv" and "|" in head:
            return "LJSpeech folder", read_ljspeech, path.parent
        return "transcript table", read_transcript_table, path  # its reader names the header it expected
    if path.is_dir():
        for name in ("metadata.csv", "metadata.tsv"):
            table = path / name
            if table.is_file() and _table_header(_first_line(table)) is not None:
                return "transcript table", read_transcript_table, table
        if (path / "metadata.csv").is_file():
            return "LJSpeech folder", read_ljspeech, path
        if next(path.glob("*/*/*.trans.txt"), None) is not None:
            return "LibriSpeech split folder", read_librispeech, path
        if (path / "clips").is_dir() and next(path.glob("*.tsv"), None) is not None:
            raise DataError(f"{path}: a Common Voice folder; point at one split's TSV, e.g. {path / 'train.tsv'} "
                            "(or a list of them)")
    raise DataError(
        f"{path}: not an ASR dataset; expected a .jsonl manifest, a Common Voice split TSV (clips/ beside it), a "
        "transcript table (.csv/.tsv with a header naming an audio and a text column, or a folder with such a "
        "metadata.csv), a LibriSpeech split folder (*/*/*.trans.txt with .flac) or an LJSpeech folder "
        "(metadata.csv + wavs/)"
    )


def source_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """A speech data key's value as a list of paths: one path, or each path of a list, in order."""
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def source_name(paths: str | Path | Sequence[str | Path]) -> str:
    """A data key's value for messages: the path, or the paths of a list joined with ' + '."""
    return " + ".join(str(p) for p in source_paths(paths))


def load_asr_records(paths: str | Path | Sequence[str | Path], *, key: str | None = None,
                     log: Callable[[str], None] | None = None) -> list[dict]:
    """Records of one speech data path or of each path of a list (concatenated in order), whatever layout each is
    (speech_layout). `log` gets one line per path: `key`, the layout, the path and its clip count."""
    paths = source_paths(paths)
    if not paths:
        raise DataError(f"{key or 'speech data'}: an empty list of data paths")
    records = []
    for path in paths:
        layout, reader, target = speech_layout(path)
        got = reader(target)
        if log is not None:
            log(f"{key or 'speech data'}: {layout} {path}, {len(got):,} clips")
        records += got
    if log is not None and len(paths) > 1:
        log(f"{key or 'speech data'}: {len(records):,} clips from {len(paths)} sources")
    return records
