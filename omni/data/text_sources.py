"""Text corpora for Stage A in the layouts public datasets ship in, read as one stream of documents.

`open_corpus(spec)` looks at the path (as `omni.data.speech_layouts.load_asr_records` does for ASR) and reads:
- a plain-text file (`.txt`, or any file of another name): documents are paragraphs separated by blank lines;
- a JSONL file (`.jsonl`): one document per line, in its "text" field;
- a parquet shard (`.parquet`, needs pyarrow): one document per row of its "text" column (FineWeb-Edu, TinyStories,
  Wikipedia and most Hugging Face text datasets are published as such shards);
- `.txt.gz` / `.jsonl.gz`: the same, gzip-compressed;
- a folder: every file of those formats directly inside it (not in subfolders), in name order;
- a glob (`data/text/tinystories/data/train-*.parquet`, `**` for subfolders): every matching file of those formats.

Documents are streamed shard by shard (parquet: a batch of rows at a time), never the whole corpus in memory, so a
multi-GB corpus tokenizes into its memmap cache (omni.data.text) and feeds the tokenizer's bounded sample
(`sample_documents`) with memory that does not grow with it.

A document is yielded as its raw text (newlines kept: the tokenizer trains on its non-blank lines, as it always did
on a plain-text file); `normalize_document` is what gets tokenized. Errors name the file and line (or parquet row):
malformed JSON, a missing or non-string "text", bytes that are not UTF-8, an unreadable gzip or parquet file. An
empty or null "text" is no document: it is counted and the first one named (`TextCorpus.summary`), not an error, as
public dumps have a few.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import heapq
import random
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from omni.data.manifest import DataError, check_fields, decode_line, parse_json_object, require_keys
from omni.errors import MissingInput

# File name ending -> format; the compressed forms first, so "a.txt.gz" is not taken for something else.
FORMATS = {".txt.gz": "txt", ".jsonl.gz": "jsonl", ".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
FORMAT_NAMES = {"txt": "plain text", "jsonl": "JSONL", "parquet": "parquet"}
TEXT_FIELD = "text"  # the JSONL field / parquet column every supported public corpus uses
_PARQUET_BATCH_ROWS = 1024
_GLOB_MAGIC = re.compile(r"[*?[]")


def shard_format(path: str | Path) -> str | None:
    """'txt', 'jsonl' or 'parquet' from a file name's ending; None when it is none of the formats."""
    name = Path(path).name.lower()
    return next((fmt for end, fmt in FORMATS.items() if name.endswith(end)), None)


def is_glob(spec: str | Path) -> bool:
    return bool(_GLOB_MAGIC.search(str(spec)))


def cache_stem(spec: str | Path) -> Path:
    """Where files derived from the corpus `spec` (its token caches) go, named from this: a file or a folder gets
    `<path>.*` beside it; a glob gets `<its first folder without wildcards>/<the pattern, made a file name>-<hash>.*`
    (the hash tells apart patterns that the file name makes alike). Needs no file system access."""
    if not is_glob(spec):
        return Path(spec)
    parts = Path(spec).parts
    fixed = next(i for i, p in enumerate(parts) if is_glob(p))
    pattern = "/".join(parts[fixed:])
    safe = re.sub(r"[^\w.-]+", "_", pattern)
    return Path(*parts[:fixed]) / f"{safe}-{hashlib.sha256(str(spec).encode()).hexdigest()[:8]}"


def normalize_document(doc: str) -> str:
    """The text of a document as tokenized: runs of whitespace (newlines included) become one space."""
    return " ".join(doc.split())


@dataclass
class TextCorpus:
    """The shards of a corpus and how they were found; `documents()` streams them."""

    spec: str  # the path or glob as the user gave it
    layout: str  # "file", "folder" or "glob"
    shards: tuple[Path, ...]
    ignored: tuple[Path, ...] = ()  # files in the folder / glob that are not in a text format
    counts: dict = field(default_factory=dict)  # of the last full pass of documents(): documents, empty, first_empty

    def describe(self) -> str:
        """One log line: which layout was read, how many shards of which format, their size."""
        kinds = {}
        for s in self.shards:
            fmt = shard_format(s) or "txt"
            kinds[fmt] = kinds.get(fmt, 0) + 1
        size = sum(s.stat().st_size for s in self.shards)
        what = ", ".join(f"{n} {FORMAT_NAMES[k]} shard{'s' * (n != 1)}" for k, n in kinds.items())
        if self.layout == "file":
            what = f"{FORMAT_NAMES[next(iter(kinds))]} file"
        zipped = sum(s.name.lower().endswith(".gz") for s in self.shards)
        line = f"{self.spec}: {self.layout}, {what}{f' ({zipped} gzip)' if zipped else ''}, {_size(size)}"
        if self.ignored:
            line += f"; {len(self.ignored)} other file(s) ignored (not .txt/.jsonl/.parquet[.gz]), e.g. " \
                    f"{self.ignored[0].name}"
        return line

    def summary(self) -> str:
        """What the last full pass read: documents, and the empty records skipped (the first one named)."""
        n, empty = self.counts.get("documents", 0), self.counts.get("empty", 0)
        text = f"{n:,} documents from {len(self.shards)} shard{'s' * (len(self.shards) != 1)}"
        if empty:
            text += f"; {empty:,} empty or null '{TEXT_FIELD}' record(s) skipped, first: {self.counts['first_empty']}"
        return text

    def documents(self) -> Iterator[str]:
        """Every document of every shard, in order, as raw text (never blank)."""
        self.counts = {"documents": 0, "empty": 0, "first_empty": None}
        for shard in self.shards:
            for where, doc in _READERS[shard_format(shard) or "txt"](shard):
                if doc is None or not doc.strip():
                    if where is not None:  # a record without text (plain text has no records, only blank lines)
                        self.counts["empty"] += 1
                        self.counts["first_empty"] = self.counts["first_empty"] or where
                    continue
                self.counts["documents"] += 1
                yield doc


def open_corpus(spec: str | Path | TextCorpus) -> TextCorpus:
    """The corpus at `spec` (a file, a folder of shards, or a glob; an opened corpus is returned as it is);
    MissingInput when nothing is there, DataError when a folder or glob holds no file in a text format."""
    if isinstance(spec, TextCorpus):
        return spec
    spec = str(spec)
    if is_glob(spec):
        matches = [Path(p) for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_file()]
        if not matches:
            raise MissingInput(f"text corpus not found: no file matches {spec}")
        return _of_files(spec, "glob", matches)
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        return _of_files(spec, "folder", files)
    if not path.is_file():
        raise MissingInput(f"text corpus not found: {path}")
    return TextCorpus(spec, "file", (path,))  # any other file name is read as plain text, as it always was


def _of_files(spec: str, layout: str, files: list[Path]) -> TextCorpus:
    shards = tuple(p for p in files if shard_format(p))
    if not shards:
        found = ", ".join(p.name for p in files[:5]) or "nothing"
        hint = f" (for shards in subfolders use a glob, e.g. {spec}/**/*.parquet)" if layout == "folder" else ""
        raise DataError(f"{spec}: no text shards (*.txt, *.jsonl, *.parquet, *.txt.gz, *.jsonl.gz) in this "
                        f"{layout}; found: {found}{hint}")
    return TextCorpus(spec, layout, shards, tuple(p for p in files if not shard_format(p)))


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


# ---- one reader per format: each yields (where, text); `where` is None for plain text (no records to name)

def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, decoded line without its ending) of a text file, gunzipped when it ends in .gz. A corrupt or
    cut gzip stream is a DataError naming the file (a download that stopped short is the usual cause)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                yield line_no, decode_line(raw, path, line_no).rstrip("\r\n")
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: not a complete gzip file ({e}); download it again") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def _read_txt(path: Path) -> Iterator[tuple[None, str]]:
    """Paragraphs: runs of lines between empty lines, joined by newlines."""
    block = []
    for _, line in _lines(path):
        if line:
            block.append(line)
        elif block:
            yield None, "\n".join(block)
            block = []
    if block:
        yield None, "\n".join(block)


def _read_jsonl(path: Path) -> Iterator[tuple[str, str | None]]:
    for line_no, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        record = parse_json_object(line, where)
        require_keys(record, (TEXT_FIELD,), where)
        if record[TEXT_FIELD] is not None:
            check_fields(record, where, required=(TEXT_FIELD,))
        yield where, record[TEXT_FIELD]


def _read_parquet(path: Path) -> Iterator[tuple[str, str | None]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install -r requirements.txt)") from None
    try:
        shard = pq.ParquetFile(path)
        schema = shard.schema_arrow
        if TEXT_FIELD not in schema.names:
            raise DataError(f"{path}: no '{TEXT_FIELD}' column; the columns are {schema.names}")
        kind = schema.field(TEXT_FIELD).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise DataError(f"{path}: column '{TEXT_FIELD}' holds {kind}, not strings")
        row = 0
        for batch in shard.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[TEXT_FIELD]):
            for text in batch.column(0).to_pylist():
                yield f"{path}:row {row}", text
                row += 1
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None


_READERS = {"txt": _read_txt, "jsonl": _read_jsonl, "parquet": _read_parquet}


# ---- bounded sample (the tokenizer's training text)

@dataclass
class DocumentSample:
    documents: list[str]  # in corpus order
    seen: int  # documents read
    seen_bytes: int
    kept_bytes: int

    def describe(self) -> str:
        return (f"{len(self.documents):,} of {self.seen:,} documents ({_size(self.kept_bytes)} of "
                f"{_size(self.seen_bytes)})")


def sample_documents(docs: Iterable[str], *, max_docs: int = 0, max_bytes: int = 0, seed: int = 0) -> DocumentSample:
    """A uniform random sample of `docs` of at most `max_docs` documents and `max_bytes` UTF-8 bytes (0: no bound),
    read in one streaming pass with memory bounded by the sample: each document draws a key from a generator seeded
    with `seed` and the sample is the documents of the smallest keys that fit both bounds (a bottom-k sample). The
    same docs and seed give the same sample; when everything fits, it is every document. Kept in corpus order."""
    rng = random.Random(seed)  # its own generator: sampling never moves the global RNG state
    heap = []  # (-key, index, doc, bytes): the largest key on top, dropped first when over a bound
    seen = seen_bytes = kept_bytes = 0
    for i, doc in enumerate(docs):
        size = len(doc.encode("utf-8"))
        seen, seen_bytes = seen + 1, seen_bytes + size
        heapq.heappush(heap, (-rng.random(), i, doc, size))
        kept_bytes += size
        while (max_docs and len(heap) > max_docs) or (max_bytes and kept_bytes > max_bytes):
            kept_bytes -= heapq.heappop(heap)[3]
    kept = sorted(heap, key=lambda item: item[1])
    return DocumentSample([item[2] for item in kept], seen, seen_bytes, kept_bytes)
