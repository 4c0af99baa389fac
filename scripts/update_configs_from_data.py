"""Fit a stage config's schedule to its data: count the data, then set max_steps, warmup, eval and checkpoint cadence.

    python scripts/update_configs_from_data.py configs/thinker_tiny.json [--epochs 3] [--data-dir /data/omni]
                                               [--world-size 2] [--dry-run]

Counts what the config's training data path points at, read by the stage's own reader, so every layout the stage
reads is counted: Stage A's corpus (.txt/.jsonl/parquet shards, .gz, folders, globs; streamed through
omni.data.text_sources.open_corpus, never held in memory) in seq_len windows of its tokens (exact with the run's
tokenizer when it exists, else estimated); speech clips (JSONL, LibriSpeech, LJSpeech, Common Voice, transcript
tables, lists of these) and their audio seconds (the record's "duration" or the file header via soundfile.info, no
samples read); Stage C captions and OCR lines (COCO, Flickr, captions tables, MJSynth, labels files, JSONL); Stage
E conversations (ours, LLaVA, ShareGPT, OpenAI messages; per task). Then, per training part (Stage D
has two: codec and talker):

    steps/epoch     = ceil(floor(samples / (batch_size x world_size)) / grad_accum)   (as omni.training.Run counts)
    max_steps       = epochs x steps/epoch
    warmup_steps    = round(warmup_frac x max_steps)
    val_freq        = max(1, max_steps // evals)
    checkpoint_freq = max(1, max_steps // checkpoints)

--data-dir D moves every data path (train_path/val_path, train_manifest/val_manifest, train_images/val_images when
set) from data/ to D, before counting: a path under data/ keeps its sub-path (data/LibriSpeech/dev-clean ->
D/LibriSpeech/dev-clean, data/text/train.txt -> D/text/train.txt), any other becomes D/<folder>/<file>.
The changes are printed as a diff of dotted keys; --dry-run stops there. Otherwise the file is rewritten atomically
(omni/atomic.py) as indented JSON, after the new values passed the stage's strict loader.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from collections import Counter
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omni.atomic import atomic_write_text  # noqa: E402
from omni.config import DATA_PATH_KEYS, from_dict  # noqa: E402
from omni.data.image_layouts import load_image_records, load_ocr_records  # noqa: E402
from omni.data.sft import read_sft_manifest  # noqa: E402
from omni.data.speech_layouts import load_asr_records  # noqa: E402
from omni.data.text_sources import normalize_document, open_corpus  # noqa: E402
from omni.errors import InvalidInput  # noqa: E402
from omni.stages import STAGE_CLASSES, detect_stage  # noqa: E402
from omni.tokenizer import TOKENIZER_FILE, Tokenizer  # noqa: E402

MOVED_KEYS = (*DATA_PATH_KEYS, "train_images", "val_images")  # what --data-dir moves (image folders when set)
SPEECH_STAGES = ("audio", "talker", "vocoder")


def parts(stage: str, cfg, raw: dict) -> dict[str, tuple]:
    """Each separately trained part: prefix of its keys in the JSON -> (its raw dict, its resolved config)."""
    if stage == "talker":
        return {"codec.": (raw.setdefault("codec", {}), cfg.codec), "talker.": (raw.setdefault("talker", {}),
                                                                                cfg.talker)}
    return {"": (raw, cfg)}


def audio_seconds(records: list[dict]) -> tuple[float, int]:
    """Total seconds of the clips and how many could not be read (left out of the total)."""
    total, unreadable = 0.0, 0
    for r in records:
        if r.get("duration") is not None:
            total += r["duration"]
            continue
        try:
            total += sf.info(str(r["audio"])).duration
        except (sf.LibsndfileError, RuntimeError, OSError):
            unreadable += 1
    return total, unreadable


def count_data(stage: str, part_cfg, tokenizer: str | None) -> dict:
    """Samples (and tokens / audio seconds where they apply) of one part's training data."""
    data = part_cfg.data
    if stage == "text":  # streamed shard by shard (any layout train_text.py reads), never all in memory
        corpus = open_corpus(data.train_path)
        print(f"data.train_path: text corpus {corpus.describe()}")
        tok_path = Path(tokenizer or data.tokenizer or Path(part_cfg.train.save_dir) / TOKENIZER_FILE)
        tok = Tokenizer.load(tok_path) if tok_path.is_file() else None
        documents = tokens = 0
        for doc in corpus.documents():
            text = normalize_document(doc)  # as train_text.py tokenizes it
            # with the tokenizer: the exact count train_text.py will see, BOS + pieces + EOS per document; before
            # Stage A trained it: ~1.3 pieces per word is typical of a small unigram vocab
            tokens += len(tok.encode(text, bos=True, eos=True)) if tok is not None else 1.3 * (len(text.split()) + 2)
            documents += 1
        if not documents:
            raise InvalidInput(f"text corpus {data.train_path} is empty (no non-blank text)")
        tokens = round(tokens)
        how = (f"tokenized with {tok_path}" if tok is not None else
               f"ESTIMATED at 1.3 tokens/word (no tokenizer at {tok_path} yet; rerun after Stage A for exact)")
        return {"documents": documents, "tokens": tokens, "samples": max(0, (tokens - 1) // data.seq_len),
                "note": how}
    if stage in SPEECH_STAGES:  # any speech layout, or a list of them; prints which layout each path is
        records = load_asr_records(data.train_manifest, key="train_manifest", log=print)
        seconds, unreadable = audio_seconds(records)
        out = {"samples": len(records), "audio_seconds": round(seconds, 1), "audio_hours": round(seconds / 3600, 3)}
        if unreadable:
            out["unreadable_audio"] = unreadable
        return out
    if stage in ("vision", "ocr"):  # any layout train_vision.py / train_ocr.py read, through the same reader
        load = load_image_records if stage == "vision" else load_ocr_records
        records = load(data.train_manifest, data.train_images, key="data.train_manifest", log=print)
        out = {"samples": len(records)}
        if stage == "vision":
            out["images"] = len({r["image"] for r in records if not r.get("error")})
        bad = sum(bool(r.get("error")) for r in records)
        if bad:
            out["malformed_rows"] = bad
        return out
    # Stage E: any SFT format sft_omni.py reads (ours, LLaVA, ShareGPT, OpenAI messages), through its reader
    records = read_sft_manifest(data.train_manifest, log=print)
    out = {"samples": len(records), "tasks": dict(Counter(r["task"] for r in records))}
    bad = sum(bool(r.get("error")) for r in records)
    if bad:
        out["unusable"] = bad
    return out


def schedule(train, samples: int, args) -> dict:
    """The new train.* values for `samples` training samples (see the module docstring for the formulas)."""
    per_step = train.batch_size * args.world_size
    if train.effective_batch is not None:
        accum = max(1, train.effective_batch // per_step)
    else:
        accum = train.grad_accum_steps
    batches = samples // per_step  # Run drops the last partial global batch
    if batches == 0:
        raise SystemExit(f"{samples} training samples do not fill one global batch of {per_step}")
    max_steps = max(1, round(args.epochs * math.ceil(batches / accum)))
    return {"max_steps": max_steps, "warmup_steps": round(args.warmup_frac * max_steps),
            "val_freq": max(1, max_steps // args.evals), "checkpoint_freq": max(1, max_steps // args.checkpoints)}


def rewrite_paths(data: dict, data_dir: Path) -> None:
    """Each data path (each path of a list too) moved to data_dir: a path under data/ keeps what follows data/
    (data/text/tinystories/data/train-*.parquet -> D/text/tinystories/data/train-*.parquet, data/LibriSpeech/
    dev-clean -> D/LibriSpeech/dev-clean), any other path becomes data_dir/<folder>/<file>."""
    def moved(old: str) -> str:
        parts = Path(old).parts
        if not Path(old).is_absolute() and len(parts) > 1 and parts[0] == "data":
            return str(data_dir.joinpath(*parts[1:]))
        return str(data_dir / Path(old).parent.name / Path(old).name)

    for key in MOVED_KEYS:
        if data.get(key) is not None:
            data[key] = [moved(p) for p in data[key]] if isinstance(data[key], list) else moved(data[key])


def diff(old, new, prefix: str = "") -> list[str]:
    """Dotted-key lines `key: old -> new` for every leaf that changed or appeared."""
    lines = []
    for key in sorted(set(old) | set(new)) if isinstance(new, dict) else ():
        a, b = old.get(key) if isinstance(old, dict) else None, new.get(key)
        if isinstance(b, dict):
            lines += diff(a if isinstance(a, dict) else {}, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return lines


def update(path: Path, args) -> tuple[dict, list[str]]:
    """The new JSON of the config at `path` and its diff; prints the data counts."""
    raw = json.loads(path.read_text())
    stage = args.stage or detect_stage(raw, path.name)
    cls = STAGE_CLASSES[stage]
    new = copy.deepcopy(raw)
    if args.data_dir is not None:  # the resolved paths, so defaults the JSON did not name are rewritten too
        for part_raw, part_cfg in parts(stage, from_dict(cls, raw, str(path)), new).values():
            paths = {k: getattr(part_cfg.data, k) for k in MOVED_KEYS if getattr(part_cfg.data, k, None) is not None}
            rewrite_paths(paths, args.data_dir)
            part_raw.setdefault("data", {}).update(paths)
    cfg = from_dict(cls, new, str(path))  # counting reads the resolved config, with the rewritten paths
    for prefix, (part_raw, part_cfg) in parts(stage, cfg, new).items():
        counts = count_data(stage, part_cfg, args.tokenizer)
        print(f"{path} [{prefix or stage}] " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        part_raw.setdefault("train", {}).update(schedule(part_cfg.train, counts["samples"], args))
    from_dict(cls, new, str(path))  # what is written must load
    return new, diff(raw, new)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", type=Path, help="stage config files to update")
    parser.add_argument("--stage", choices=sorted(STAGE_CLASSES), help="the stage (default: detected from the keys)")
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over the training data (default 1)")
    parser.add_argument("--warmup-frac", type=float, default=0.05, help="warmup as a fraction of max_steps")
    parser.add_argument("--evals", type=int, default=10, help="evaluations per run (sets val_freq)")
    parser.add_argument("--checkpoints", type=int, default=20, help="checkpoints per run (sets checkpoint_freq)")
    parser.add_argument("--world-size", type=int, default=1, help="processes the run will use (torchrun)")
    parser.add_argument("--data-dir", type=Path, help="move data paths from data/ to DATA_DIR (see above)")
    parser.add_argument("--tokenizer", help="Stage A: tokenizer.model to count tokens with")
    parser.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    args = parser.parse_args(argv)
    if args.epochs <= 0 or args.evals < 1 or args.checkpoints < 1 or args.world_size < 1:
        parser.error("--epochs must be > 0 and --evals, --checkpoints, --world-size >= 1")
    if not 0.0 <= args.warmup_frac < 1.0:
        parser.error("--warmup-frac must be in [0, 1)")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    for path in args.configs:
        new, lines = update(path, args)
        print("\n".join(f"  {line}" for line in lines) or "  (no changes)")
        if lines and not args.dry_run:
            atomic_write_text(path, json.dumps(new, indent=2) + "\n")
            print(f"  wrote {path}")


if __name__ == "__main__":
    main()
