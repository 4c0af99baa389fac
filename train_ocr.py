"""OCR: train a text-line recogniser (conv frontend + transformer, CTC over characters).

    python train_ocr.py --config configs/ocr_tiny.json [--set train.max_steps=2000 ...]

The character vocabulary is the sorted set of characters of the training texts (blank = id 0); model.vocab_size 0
takes its size from there. Lines are batched by length (data.bucket_batches) to keep padding low; data.max_width
squeezes wider lines and pads every batch to that width (static shapes; required by train.compile). Metrics on the
validation lines: CER (character edits / reference characters, greedy CTC decoding) and exact-line accuracy.

Rerunning the same command resumes from the newest checkpoint in train.save_dir. Final weights: <save_dir>/ocr.pt =
{"model": OcrModel state dict, "config": OcrConfig, "vocab": the character list (CharVocab.to_list()),
"max_width": data.max_width (inference squeezes lines the same way)}.
"""

import sys
from pathlib import Path

from omni import evaluation
from omni.builders import build_ocr
from omni.components import ocr_weights
from omni.config import load_config
from omni.ctc import VOCAB_FILE, CharVocab, pin_vocab
from omni.data.image_layouts import load_ocr_records
from omni.data.images import OcrSource
from omni.data.resumable import ResumableDataset, require_usable
from omni.errors import UserError
from omni.ocr import OcrModel
from omni.stages import OcrStage
from omni.training import Run

cfg, args = load_config(OcrStage, description=__doc__)

# ---- vocabulary: from the training texts; the first run's vocab.json stays the run's alphabet. Read (and checked)
# before Run, so that the config it records holds the real vocab_size; written once the run dir is locked.
vocab_file, notes = Path(cfg.train.save_dir) / VOCAB_FILE, []
train_records = load_ocr_records(cfg.data.train_manifest, cfg.data.train_images, key="data.train_manifest",
                                 log=notes.append)
val_records = load_ocr_records(cfg.data.val_manifest, cfg.data.val_images, key="data.val_manifest", log=notes.append)
vocab = pin_vocab(CharVocab.from_texts(r["text"] for r in train_records), vocab_file, force=args.force,
                  source=cfg.data.train_manifest, log=notes.append, write=False)
if cfg.model.vocab_size == 0:
    cfg.model.vocab_size = len(vocab)
elif cfg.model.vocab_size != len(vocab):
    raise UserError(f"model.vocab_size is {cfg.model.vocab_size} but the texts of {cfg.data.train_manifest} give "
                    f"{len(vocab)} ids ({len(vocab) - 1} characters + blank); set it to 0 or {len(vocab)}")

run = Run(cfg, name="ocr", metric="val_cer", mode="min", force=args.force)
for note in notes:
    run.info(note)
if run.is_main:
    pin_vocab(vocab, vocab_file, force=args.force, source=cfg.data.train_manifest, log=run.info)

# ---- data
def ocr_source(records) -> OcrSource:
    return OcrSource(records, vocab=vocab, height=cfg.model.height, max_width=cfg.data.max_width,
                     width_stride=OcrModel.width_stride, max_frames=cfg.model.max_frames)


train_set = ResumableDataset(ocr_source(train_records), batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                             bucket_batches=cfg.data.bucket_batches)
val_source = ocr_source(val_records)
require_usable(val_source, name=cfg.data.val_manifest)  # before any step, not at the first evaluation
run.info(f"data: {len(train_records)} training lines, {len(val_records)} validation lines, "
         f"{len(vocab) - 1} characters: {''.join(vocab.to_list())!r}")

# ---- model
built = build_ocr(cfg)
model = run.setup(built.model, built.optimizer(), train_set)


def evaluate() -> dict:
    return evaluation.ocr_metrics(run, val_source, vocab=vocab, batch_size=cfg.data.val_batch_size,
                                  samples=cfg.data.sample_lines)


# ---- loop
for batch in run.batches(train_set):
    with run.micro_step():
        _, loss = model(batch["images"], batch["widths"], batch["labels"], batch["label_lengths"])
        run.backward(loss)
    if run.optimizer_step():
        run.log(loss=loss)
        run.maybe_evaluate(evaluate)
        run.maybe_checkpoint()

if run.stopped:  # SIGTERM / Ctrl-C: the last step is checkpointed; rerunning the same command resumes
    sys.exit(0)

# ---- save
metrics = run.finish(evaluate, final_weights=ocr_weights(run.raw_model, cfg.model, vocab=vocab.to_list(),
                                                            max_width=cfg.data.max_width))
print(f"val_cer {metrics['val_cer']:.4f} val_exact_line_acc {metrics['val_exact_line_acc']:.4f}")
