"""Read every sample a stage config points at, exactly as training would, and say whether the run would start.

    python scripts/check_data.py --config configs/audio_enc_tiny.json [--set data.train_manifest=... ] [--stage audio]

The same readers and sources as the stage scripts (load_asr_records + AsrSource, load_image_records + ImageSource,
load_ocr_records + OcrSource, read_sft_manifest + SftSource, open_corpus + TokenWindows, SpeechClips for the codec
and vocoder): each sample is loaded through the source's own __getitem__, so a sample is bad here exactly when the
run would skip it, for the reason the run would log. Prints per split: samples, usable / bad (each bad one named
with its reason), durations or sizes, the longest sample against the config's limits; and what the config implies:
steps per epoch, epochs for train.max_steps, vocabulary coverage of the validation set.

Exit 0 when the run would start (and not stop on its data: bad training samples within train.max_bad_fraction,
at least one usable validation sample, at least one full batch); exit 1 naming each reason otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omni.config import missing_data_paths  # noqa: E402
from omni.data.resumable import BadSample, ResumableDataset  # noqa: E402
from omni.errors import UserError  # noqa: E402
from omni.evaluation import resolve_stage  # noqa: E402

SHOW_BAD = 20  # bad samples named per split (all are counted)


class Report:
    def __init__(self):
        self.problems: list[str] = []

    def line(self, text: str) -> None:
        print(text, flush=True)

    def problem(self, text: str) -> None:
        self.problems.append(text)


def scan(report: Report, split: str, source, *, size, unit: str) -> list[dict]:
    """Load every item of `source` as training does; returns the good items' stats, names the bad ones."""
    good, bad = [], []
    for i in range(len(source)):
        try:
            item = source[i]
        except BadSample as e:
            bad.append(str(e))
            continue
        good.append({"size": size(item), "item": item})
    sizes = [g["size"] for g in good]
    text = f"{split}: {len(source):,} samples, {len(good):,} usable, {len(bad):,} bad"
    if sizes:
        text += f"; {unit}: total {sum(sizes):,.1f}, mean {sum(sizes) / len(sizes):,.1f}, max {max(sizes):,.1f}"
    report.line(text)
    for message in bad[:SHOW_BAD]:
        report.line(f"  bad: {message}")
    if len(bad) > SHOW_BAD:
        report.line(f"  ... and {len(bad) - SHOW_BAD} more bad samples")
    return good, bad


def check_splits(report: Report, cfg, sources: dict, *, size, unit: str, bucket: int = 0) -> dict:
    """Scan train and val; the run's own limits decide: train.max_bad_fraction, a usable val sample, one batch."""
    results = {}
    for split, (source, name) in sources.items():
        good, bad = scan(report, split, source, size=size, unit=unit)
        results[split] = good
        if not len(source):
            report.problem(f"{name}: the {split} set is empty")
        elif not good:
            report.problem(f"{name}: no usable {split} sample (all {len(bad)} are bad; first: {bad[0]})")
        elif split == "train" and len(bad) > cfg.train.max_bad_fraction * len(source):
            report.problem(f"{name}: {len(bad)} of {len(source)} training samples are bad (> train.max_bad_fraction="
                           f"{cfg.train.max_bad_fraction}: the run would stop at the end of its first epoch)")
    train_source = sources["train"][0]
    if len(train_source):
        dataset = ResumableDataset(train_source, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                                   bucket_batches=bucket)
        per_epoch = dataset.num_batches()
        accum = max(1, (cfg.train.effective_batch or cfg.train.batch_size) // cfg.train.batch_size)
        steps = per_epoch // accum
        report.line(f"implies: {per_epoch} batches of {cfg.train.batch_size} per epoch = {steps} optimizer steps "
                    f"(accumulation {accum}); {schedule(cfg.train, steps)}")
        if per_epoch == 0:
            report.problem(f"{sources['train'][1]}: {len(train_source)} training samples make no full batch of "
                           f"train.batch_size={cfg.train.batch_size}")
    return results


def schedule(train, steps_per_epoch: int) -> str:
    """What train.max_steps / max_epochs come to with this many optimizer steps per epoch."""
    if train.max_steps is None:
        return f"train.max_epochs {train.max_epochs} = {train.max_epochs * steps_per_epoch} steps"
    return f"train.max_steps {train.max_steps} = {train.max_steps / max(1, steps_per_epoch):.1f} epochs"


def coverage(report: Report, what: str, train_chars: set, val_texts: list[str]) -> None:
    unseen = Counter(c for t in val_texts for c in t if c not in train_chars)
    total = sum(len(t) for t in val_texts)
    if total:
        report.line(f"vocabulary: {len(train_chars)} {what} in training; validation coverage "
                    f"{1 - sum(unseen.values()) / total:.2%}" + (f", unseen: {''.join(sorted(unseen))!r}" if unseen
                                                                else ""))


# ---- per stage: the sources as the stage script builds them
def text(report: Report, cfg, args) -> None:
    from omni.data.text import TokenWindows, build_token_cache, open_tokens
    from omni.data.text_sources import open_corpus
    from omni.tokenizer import TOKENIZER_FILE, Tokenizer

    corpora = {split: open_corpus(path) for split, path in (("train", cfg.data.train_path),
                                                            ("val", cfg.data.val_path))}
    for split, corpus in corpora.items():
        report.line(f"{split}: {corpus.describe()}")
    tokenizer_path = Path(cfg.data.tokenizer or Path(cfg.train.save_dir) / TOKENIZER_FILE)
    if not tokenizer_path.exists():
        for split, corpus in corpora.items():
            chars = sum(len(doc) for doc in corpus.documents())
            report.line(f"{split}: {corpus.summary()}, {chars:,} characters")
            if not corpus.counts.get("documents"):
                report.problem(f"data.{split}_path={corpus.spec}: no document")
        report.line(f"tokenizer: none yet ({tokenizer_path}); train_text.py trains a {cfg.model.vocab_size}-piece "
                    "one: token counts and steps per epoch come once it exists")
        return
    tokenizer = Tokenizer.load(tokenizer_path)
    windows = {}
    for split, corpus in corpora.items():
        tokens = open_tokens(build_token_cache(corpus, tokenizer, log=report.line), tokenizer.vocab_size)
        unk = int((tokens == tokenizer.unk_id).sum())
        report.line(f"{split}: {len(tokens):,} tokens, {unk / max(1, len(tokens)):.3%} <unk> (vocabulary coverage "
                    f"{1 - unk / max(1, len(tokens)):.2%})")
        try:
            windows[split] = TokenWindows(tokens, cfg.data.seq_len, name=corpus.spec)
        except (ValueError, UserError) as e:
            report.problem(str(e))
    if "train" in windows:
        per_epoch = len(windows["train"]) // cfg.train.batch_size
        report.line(f"implies: {len(windows['train']):,} windows of {cfg.data.seq_len} tokens, {per_epoch} batches "
                    f"per epoch; {schedule(cfg.train, per_epoch)}")
        if per_epoch == 0:
            report.problem(f"data.train_path: {len(windows['train'])} windows make no batch of "
                           f"train.batch_size={cfg.train.batch_size}")


def audio(report: Report, cfg, args) -> None:
    from omni.ctc import CharVocab
    from omni.data.speech import AsrSource
    from omni.data.speech_layouts import load_asr_records
    from omni.text_frontend import normalize_transcript

    records = {split: load_asr_records(getattr(cfg.data, f"{split}_manifest"), key=f"data.{split}_manifest",
                                       log=report.line) for split in ("train", "val")}
    vocab = CharVocab.from_texts(normalize_transcript(r["text"]) for r in records["train"])

    def source(recs):
        return AsrSource(recs, vocab=vocab, n_mels=cfg.model.encoder.n_mels, max_mel_length=cfg.data.max_mel_length,
                         ctc_upsample=cfg.model.ctc_upsample, max_encoder_frames=cfg.model.encoder.max_frames)

    results = check_splits(report, cfg, {s: (source(r), f"data.{s}_manifest") for s, r in records.items()},
                           size=lambda item: item["mel"].shape[0] / 100, unit="seconds",
                           bucket=cfg.data.bucket_batches)
    longest = max((g["item"]["mel"].shape[0] for g in results["train"]), default=0)
    report.line(f"longest training clip: {longest} mel frames (data.max_mel_length {cfg.data.max_mel_length}, "
                f"encoder max_frames {cfg.model.encoder.max_frames})")
    coverage(report, "characters", set(vocab.to_list()),
             [normalize_transcript(r["text"]) for r in records["val"]])


def ocr(report: Report, cfg, args) -> None:
    from omni.ctc import CharVocab
    from omni.data.image_layouts import load_ocr_records
    from omni.data.images import OcrSource
    from omni.ocr import OcrModel

    records = {split: load_ocr_records(getattr(cfg.data, f"{split}_manifest"), getattr(cfg.data, f"{split}_images"),
                                       key=f"data.{split}_manifest", log=report.line) for split in ("train", "val")}
    vocab = CharVocab.from_texts(r["text"] for r in records["train"] if not r.get("error"))

    def source(recs):
        return OcrSource(recs, vocab=vocab, height=cfg.model.height, max_width=cfg.data.max_width,
                         width_stride=OcrModel.width_stride, max_frames=cfg.model.max_frames)

    results = check_splits(report, cfg, {s: (source(r), f"data.{s}_manifest") for s, r in records.items()},
                           size=lambda item: float(item["image"].shape[-1]), unit="pixels wide",
                           bucket=cfg.data.bucket_batches)
    widest = max((g["size"] for g in results["train"]), default=0)
    report.line(f"widest training line: {widest:.0f} px (data.max_width {cfg.data.max_width}, model.max_frames "
                f"{cfg.model.max_frames} x stride {OcrModel.width_stride})")
    coverage(report, "characters", set(vocab.to_list()),
             [r["text"] for r in records["val"] if not r.get("error")])


def vision(report: Report, cfg, args) -> None:
    from omni.data.image_layouts import label_names, load_image_records
    from omni.data.images import ImageSource
    from omni.tokenizer import Tokenizer

    records = {split: load_image_records(getattr(cfg.data, f"{split}_manifest"),
                                         getattr(cfg.data, f"{split}_images"), key=f"data.{split}_manifest",
                                         log=report.line) for split in ("train", "val")}
    contrastive = cfg.model.objective == "contrastive"
    labels = None if contrastive else label_names(records["train"])
    tokenizer = None
    if contrastive:
        if cfg.data.tokenizer is None or not Path(cfg.data.tokenizer).exists():
            report.problem(f"data.tokenizer={cfg.data.tokenizer}: the contrastive objective needs the Stage-A "
                           "tokenizer (train_text.py)")
            return
        tokenizer = Tokenizer.load(cfg.data.tokenizer)
    elif len(labels) != cfg.model.n_classes:
        report.problem(f"model.n_classes is {cfg.model.n_classes} but data.train_manifest has {len(labels)} labels")

    def source(recs):
        return ImageSource(recs, image_size=cfg.model.vision.image_size, caption_tokenizer=tokenizer, labels=labels,
                           max_caption_tokens=cfg.data.max_text_length, pad_captions=cfg.train.compile)

    results = check_splits(report, cfg, {s: (source(r), f"data.{s}_manifest") for s, r in records.items()},
                           size=lambda item: float(len(item.get("caption_ids", ()))), unit="caption tokens")
    if contrastive:
        cut = sum(g["size"] >= cfg.data.max_text_length for g in results["train"])
        report.line(f"captions cut at data.max_text_length={cfg.data.max_text_length}: {cut} of "
                    f"{len(results['train'])}")
        pieces = [t for r in records["val"] if r.get("caption") for t in tokenizer.encode(r["caption"])]
        unk = sum(t == tokenizer.unk_id for t in pieces)
        report.line(f"vocabulary: validation captions {1 - unk / max(1, len(pieces)):.2%} known pieces")


def sft(report: Report, cfg, args) -> None:
    from omni.chat import image_token_count
    from omni.components import read_stage_weights, stage_config
    from omni.data.sft import SftSource, read_sft_manifest
    from omni.tokenizer import TOKENIZER_FILE, Tokenizer

    configs = {}
    for key, component in (("thinker_ckpt", "thinker"), ("audio_ckpt", "audio_encoder"),
                           ("vision_ckpt", "vision_encoder")):
        path = getattr(cfg, key)
        if path is None:
            configs[component] = None
        elif not Path(path).exists():
            report.problem(f"{key}={path}: no such checkpoint (train its stage first)")
        else:
            weights = read_stage_weights(path, component, check=False)
            configs[component] = (stage_config(weights), weights)
    if report.problems:
        return
    thinker_cfg, thinker_weights = configs["thinker"]
    tokenizer = Tokenizer.load(cfg.data.tokenizer or thinker_weights.tokenizer
                               or thinker_weights.source.parent / TOKENIZER_FILE)
    vision_cfg = configs["vision_encoder"] and configs["vision_encoder"][0]
    audio_cfg = configs["audio_encoder"] and configs["audio_encoder"][0]
    image_tokens = image_token_count(cfg.model.image_tokens, image_size=vision_cfg.image_size,
                                     patch_size=vision_cfg.patch_size, pool=cfg.model.image_pool) if vision_cfg else 0
    records = {split: read_sft_manifest(getattr(cfg.data, f"{split}_manifest"), log=report.line)
               for split in ("train", "val")}

    def source(recs):
        return SftSource(recs, tokenizer=tokenizer, max_length=cfg.data.max_length,
                         image_size=vision_cfg and vision_cfg.image_size, image_tokens=image_tokens,
                         n_mels=audio_cfg and audio_cfg.n_mels, max_mel_frames=cfg.data.max_mel_frames,
                         max_encoder_frames=audio_cfg and audio_cfg.max_frames)

    results = check_splits(report, cfg, {s: (source(r), f"data.{s}_manifest") for s, r in records.items()},
                           size=lambda item: float(len(item["ids"])), unit="tokens (media expanded)",
                           bucket=cfg.data.bucket_batches)
    for split, recs in records.items():
        report.line(f"{split} tasks: " + ", ".join(f"{t} {n}" for t, n in sorted(Counter(r["task"] for r in recs)
                                                                               .items())))
    longest = max((g["size"] for g in results["train"]), default=0)
    report.line(f"longest training conversation: {longest:.0f} tokens (data.max_length {cfg.data.max_length}, "
                f"Thinker max_seq_len {thinker_cfg.max_seq_len})")
    if cfg.data.max_length > thinker_cfg.max_seq_len:
        report.problem(f"data.max_length ({cfg.data.max_length}) exceeds the Thinker's max_seq_len "
                       f"({thinker_cfg.max_seq_len})")


def speech_clips(report: Report, cfg, key: str, *, n_mels: int, with_wav: bool) -> None:
    from omni.data.speech_layouts import load_asr_records
    from omni.data.tts import SpeechClips

    records = {split: load_asr_records(getattr(cfg.data, f"{split}_manifest"), key=f"{key}data.{split}_manifest",
                                       log=report.line) for split in ("train", "val")}
    check_splits(report, cfg, {s: (SpeechClips(r, n_mels=n_mels, with_wav=with_wav and s == "train"),
                                   f"{key}data.{s}_manifest") for s, r in records.items()},
                 size=lambda item: item["mel"].shape[0] / 100, unit="seconds",
                 bucket=getattr(cfg.data, "bucket_batches", 0))


def talker(report: Report, cfg, args) -> None:
    # The codec phase reads the clips; the Talker phase reads the same speech records with their transcripts.
    for phase in ("codec", "talker"):
        if cfg.phase in ("all", phase):
            report.line(f"-- {phase} phase")
            part = getattr(cfg, phase)
            n_mels = part.model.n_mels if phase == "codec" else cfg.codec.model.n_mels
            speech_clips(report, part, f"{phase}.", n_mels=n_mels, with_wav=False)
    if cfg.phase in ("all", "talker"):  # the models the Talker phase reads besides the speech
        model_inputs(report, {"talker.data.tokenizer": cfg.talker.data.tokenizer,
                              "talker.data.aligner": cfg.talker.data.aligner})


def model_inputs(report: Report, paths: dict[str, str]) -> None:
    """Trained models a stage reads (a tokenizer, the Stage-B aligner or judge): a missing one stops the run."""
    for key, path in paths.items():
        if path and not Path(path).exists():
            report.problem(f"{key}={path} does not exist (train that stage first)")
        elif path:
            report.line(f"{key}: {path}")


def vocoder(report: Report, cfg, args) -> None:
    speech_clips(report, cfg, "", n_mels=cfg.model.n_mels, with_wav=True)
    model_inputs(report, {"data.asr": cfg.data.asr})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the stage's JSON config")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides")
    parser.add_argument("--stage", help="default: inferred from the config")
    args = parser.parse_args(argv)
    stage, cfg = resolve_stage(args.config, args.set, args.stage)
    report = Report()
    report.line(f"check_data: {args.config} as stage {stage}")
    missing = missing_data_paths(cfg)
    if missing:
        report.problem("data not found: " + ", ".join(missing))
    else:
        globals()[stage](report, cfg, args)
    if report.problems:
        report.line(f"the run would not start or would stop on its data ({len(report.problems)} reason(s)):")
        for problem in report.problems:
            report.line(f"  - {problem}")
        return 1
    report.line("ok: the run would start")
    return 0


if __name__ == "__main__":
    sys.exit(main())
