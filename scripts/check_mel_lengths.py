"""Length statistics of an ASR dataset, and the data.max_mel_length to pad to (static shapes for train.compile).

    python scripts/check_mel_lengths.py data/speech/train.jsonl [more paths...] [--keep 99.5] [--ctc-upsample 2]

Accepts whatever train_audio_enc.py reads (a JSONL manifest, a Common Voice split TSV, a transcript CSV/TSV, a
LibriSpeech split folder, an LJSpeech folder), and several of them as data.train_manifest's list does.
Durations come from the manifest's "duration" field when present, else from the audio file headers (no samples are
read). Prints percentiles of the clip length in seconds, 100 Hz mel frames and 12.5 Hz encoder frames, the
transcript lengths, how many transcripts are too long for CTC to align, and a recommended max_mel_length: the
--keep percentile rounded up to a whole encoder frame (8 mel frames), with the clips it would skip and the padding
it would cost.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omni.audio import ENCODER_SUBSAMPLING, MEL_FRAME_RATE, SAMPLE_RATE, encoder_frames, mel_frames  # noqa: E402
from omni.ctc import min_ctc_frames  # noqa: E402
from omni.data.speech_layouts import load_asr_records, source_name  # noqa: E402
from omni.text_frontend import normalize_transcript  # noqa: E402

PERCENTILES = (50, 90, 95, 99, 99.9, 100)


def duration_seconds(record: dict) -> float | None:
    """The clip's length in seconds from the record or the file header; None when the file is unreadable."""
    if record.get("duration") is not None:
        return record["duration"]
    try:
        return sf.info(str(record["audio"])).duration
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None


def recommend(frames: np.ndarray, keep: float) -> int:
    """The --keep percentile of mel frames, rounded up to a multiple of the encoder subsampling (8), so that padded
    batches end on a whole encoder frame."""
    target = int(np.ceil(np.percentile(frames, keep)))
    return -(-target // ENCODER_SUBSAMPLING) * ENCODER_SUBSAMPLING


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", nargs="+", help="speech data path(s), as data.train_manifest takes them")
    parser.add_argument("--keep", type=float, default=99.5, help="percent of clips max_mel_length should keep")
    parser.add_argument("--ctc-upsample", type=int, default=2, help="model.ctc_upsample (CTC frames per encoder "
                        "frame) for the alignability check")
    args = parser.parse_args(argv)
    if not 0 < args.keep <= 100:
        parser.error(f"--keep must be in (0, 100], got {args.keep}")

    records = load_asr_records(args.manifest, key="data", log=print)
    name = source_name(args.manifest)
    seconds, unreadable, too_long, label_lengths = [], [], 0, []
    for r in records:
        d = duration_seconds(r)
        if d is None:
            unreadable.append(r["audio"].name)
            continue
        seconds.append(d)
        text = normalize_transcript(r["text"])
        label_lengths.append(len(text))
        frames = mel_frames(round(d * SAMPLE_RATE))
        too_long += min_ctc_frames(text) > encoder_frames(frames) * args.ctc_upsample
    if not seconds:
        raise SystemExit(f"{name}: none of the {len(records)} audio files is readable")
    seconds = np.asarray(seconds)
    frames = np.asarray([mel_frames(round(s * SAMPLE_RATE)) for s in seconds])

    print(f"{name}: {len(records)} utterances, {seconds.sum() / 3600:.2f} h of audio")
    print(f"{'percentile':>10} {'seconds':>9} {'mel frames':>11} {'enc frames':>11} {'characters':>11}")
    for p in PERCENTILES:
        f = int(np.ceil(np.percentile(frames, p)))
        print(f"{p:>10} {np.percentile(seconds, p):>9.2f} {f:>11} {encoder_frames(f):>11} "
              f"{int(np.ceil(np.percentile(label_lengths, p))):>11}")
    if unreadable:
        print(f"unreadable audio: {len(unreadable)} files, e.g. {', '.join(unreadable[:5])}")
    print(f"transcripts with more characters than CTC frames at ctc_upsample={args.ctc_upsample}: {too_long} "
          f"({100 * too_long / len(seconds):.2f}%; these are skipped in training)")
    best = recommend(frames, args.keep)
    skipped = int((frames > best).sum())
    padding = 1 - frames[frames <= best].mean() / best
    print(f"recommended data.max_mel_length: {best} ({best / MEL_FRAME_RATE:.2f} s, {encoder_frames(best)} encoder "
          f"frames): keeps {args.keep}% of clips, skips {skipped}; padding every batch to it wastes "
          f"{100 * padding:.0f}% of the frames (without max_mel_length, length bucketing pads each batch to its "
          "longest clip)")


if __name__ == "__main__":
    main()
