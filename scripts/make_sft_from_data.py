"""Build a Stage-E (SFT) set from the data Stages A, B, C and OCR trained on, in the JSONL sft_omni.py reads.

    python scripts/make_sft_from_data.py --out data/sft_real \
        --from_config configs/thinker_tiny.json configs/audio_enc_tiny.json configs/vision_tiny.json \
                      configs/ocr_tiny.json [--per_task 2000] [--seed 0]
    # or name the sources (any layout the stage readers take), each as TRAIN VAL:
    python scripts/make_sft_from_data.py --out data/sft_real --captions data/coco/annotations/captions_train2017.json \
        data/coco/annotations/captions_val2017.json --speech data/LibriSpeech/train-clean-100 \
        data/LibriSpeech/dev-clean --ocr data/ocr/train.jsonl data/ocr/val.jsonl --text data/text/train.txt \
        data/text/val.txt

Each source is read with the stage's own reader (load_image_records, load_asr_records, load_ocr_records,
open_corpus), so every layout they detect works here; train conversations come from the training sources and val
conversations from the validation sources (disjoint media, as the stages split them). Tasks (the "task" of each
record, the group sft_omni.py reports exact match for):

    image_caption     "<image> Describe the image in one sentence."            -> the caption
    image_qa          "<image> Is there a <word> in the image? Answer yes or no." -> yes (a word of its caption) / no
                      (a word of another image's caption only), kind "yes" / "no"
    audio_transcribe  "<audio> What did the speaker say?"                       -> the normalised transcript
    audio_qa          "<audio> How many words did the speaker say?"             -> the count in words ("seven")
    ocr_read          "<image> What does the text in the image say?"            -> the line
    text              "Continue the text: <sentence>"                           -> the next sentence of the document

Records are a seeded sample of at most --per_task conversations per task and split; media paths are written
relative to --out. Rows the readers mark as malformed are left out and counted.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omni.chat import media_prefix  # noqa: E402
from omni.data.manifest import write_jsonl  # noqa: E402
from omni.errors import UserError  # noqa: E402
from omni.text_frontend import normalize_transcript  # noqa: E402

NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
           "seventeen eighteen nineteen twenty").split()
STOPWORDS = set("a an the and or of in on at to with is are was were be by for from it its this that these those "
                "there their his her he she they them as into over under near next some very".split())
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def content_words(caption: str) -> set[str]:
    return {w for w in words(caption) if len(w) > 2 and w not in STOPWORDS}


def chat(question: str, answer: str, *, image: bool = False, audio: bool = False) -> list[dict]:
    return [{"role": "user", "content": media_prefix(image=image, audio=audio) + question},
            {"role": "assistant", "content": answer}]


def rel(path, out: Path) -> str:
    return os.path.relpath(Path(path).resolve(), out.resolve())


def image_tasks(records: list[dict], out: Path, rng: random.Random) -> list[dict]:
    good = [r for r in records if not r.get("error") and isinstance(r.get("caption"), str) and r["caption"].strip()]
    vocabulary = sorted({w for r in good for w in content_words(r["caption"])})
    of_image = {}  # every content word of an image's captions (COCO has five): no "no" question may name one
    for r in good:
        of_image.setdefault(r["image"], set()).update(content_words(r["caption"]))
    convs = []
    for r in good:
        image = rel(r["image"], out)
        convs.append({"messages": chat("Describe the image in one sentence.", r["caption"].strip(), image=True),
                      "image": image, "task": "image_caption"})
        present = sorted(content_words(r["caption"]))
        # A random word of the other captions that none of this image's captions has (bounded tries: the
        # vocabulary of a real caption set is large and almost every draw succeeds)
        draws = (rng.choice(vocabulary) for _ in range(20 if vocabulary else 0))
        absent = [w for w in draws if w not in of_image[r["image"]]][:1]
        if present:
            word = rng.choice(present)
            convs.append({"messages": chat(f"Is there a {word} in the image? Answer yes or no.", "yes", image=True),
                          "image": image, "task": "image_qa", "kind": "yes"})
        if absent:
            word = absent[0]
            convs.append({"messages": chat(f"Is there a {word} in the image? Answer yes or no.", "no", image=True),
                          "image": image, "task": "image_qa", "kind": "no"})
    return convs


def speech_tasks(records: list[dict], out: Path) -> list[dict]:
    convs = []
    for r in records:
        text = normalize_transcript(r.get("text") or "")
        if not text or r.get("phrase"):  # one-word phrase clips (for the Talker) are no conversation
            continue
        extra = {"duration": r["duration"]} if isinstance(r.get("duration"), (int, float)) else {}
        audio = rel(r["audio"], out)
        convs.append({"messages": chat("What did the speaker say?", text, audio=True), "audio": audio,
                      "task": "audio_transcribe", **extra})
        n = len(text.split())
        if n < len(NUMBERS):
            convs.append({"messages": chat("How many words did the speaker say?", NUMBERS[n], audio=True),
                          "audio": audio, "task": "audio_qa", "kind": "word_count", **extra})
    return convs


def ocr_tasks(records: list[dict], out: Path) -> list[dict]:
    return [{"messages": chat("What does the text in the image say?", r["text"], image=True),
             "image": rel(r["image"], out), "task": "ocr_read"}
            for r in records if not r.get("error") and isinstance(r.get("text"), str) and r["text"].strip()]


def text_tasks(documents, limit: int) -> list[dict]:
    convs = []
    for doc in documents:
        sentences = [s.strip() for s in SENTENCE_END.split(" ".join(doc.split())) if s.strip()]
        for first, second in zip(sentences, sentences[1:]):
            convs.append({"messages": chat(f"Continue the text: {first}", second), "task": "text",
                          "kind": "continue"})
            break  # one per document: more documents, not more of one
        if len(convs) >= limit:
            break
    return convs


def read_sources(args) -> dict[str, tuple]:
    """modality -> (train path, val path), from --from_config configs and the explicit options (these win)."""
    from omni.evaluation import resolve_stage

    sources = {}
    for config in args.from_config or ():
        stage, cfg = resolve_stage(config)
        data = getattr(cfg, "data", None)
        if stage == "text":
            sources["text"] = (cfg.data.train_path, cfg.data.val_path)
        elif stage in ("audio", "ocr", "vision"):
            key = {"audio": "speech", "ocr": "ocr", "vision": "captions"}[stage]
            images = (getattr(data, "train_images", None), getattr(data, "val_images", None))
            sources[key] = (data.train_manifest, data.val_manifest, *images)
        else:
            raise UserError(f"--from_config {config}: a {stage} config; give the text, audio_enc, vision or ocr "
                            "config")
    for key in ("captions", "speech", "ocr", "text"):
        if getattr(args, key):
            sources[key] = tuple(getattr(args, key))
    if not sources:
        raise UserError("no sources: give --from_config CONFIG... or --captions/--speech/--ocr/--text TRAIN VAL")
    return sources


def build(sources: dict, out: Path, *, per_task: int, seed: int, log=print) -> dict[str, list[dict]]:
    from omni.data.image_layouts import load_image_records, load_ocr_records
    from omni.data.speech_layouts import load_asr_records
    from omni.data.text_sources import open_corpus

    splits = {"train": [], "val": []}
    for i, split in enumerate(splits):
        rng = random.Random(f"{seed}-{split}")
        convs = []
        if "captions" in sources:
            path, images = sources["captions"][i], (sources["captions"][2:] or (None, None))[i]
            convs += image_tasks(load_image_records(path, images, key=f"captions {split}", log=log), out, rng)
        if "speech" in sources:
            convs += speech_tasks(load_asr_records(sources["speech"][i], key=f"speech {split}", log=log), out)
        if "ocr" in sources:
            path, images = sources["ocr"][i], (sources["ocr"][2:] or (None, None))[i]
            convs += ocr_tasks(load_ocr_records(path, images, key=f"ocr {split}", log=log), out)
        if "text" in sources:
            corpus = open_corpus(sources["text"][i])
            log(f"text {split}: {corpus.describe()}")
            convs += text_tasks(corpus.documents(), per_task)
        by_task = {}
        for conv in convs:
            by_task.setdefault(conv["task"], []).append(conv)
        for _, items in sorted(by_task.items()):
            rng.shuffle(items)
            splits[split] += items[:per_task]
        rng.shuffle(splits[split])
    return splits


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for train.jsonl and val.jsonl")
    parser.add_argument("--from_config", nargs="*", help="stage configs whose data to use (text, audio_enc, vision, "
                                                         "ocr)")
    for key, what in (("captions", "image captions (COCO, Flickr, captions table, JSONL)"),
                      ("speech", "speech with transcripts (LibriSpeech, LJSpeech, Common Voice, table, JSONL)"),
                      ("ocr", "OCR lines (MJSynth, labels file, JSONL)"), ("text", "text corpus")):
        parser.add_argument(f"--{key}", nargs=2, metavar=("TRAIN", "VAL"), help=what)
    parser.add_argument("--per_task", type=int, default=2000, help="conversations per task and split at most")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = build(read_sources(args), out, per_task=args.per_task, seed=args.seed)
    for split, records in splits.items():
        if not records:
            raise UserError(f"no {split} conversation could be made from the sources")
        write_jsonl(out / f"{split}.jsonl", records)
        counts = Counter(r["task"] for r in records)
        print(f"{out / f'{split}.jsonl'}: {len(records)} conversations, "
              + ", ".join(f"{t} {n}" for t, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
