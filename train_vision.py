"""Stage C: train the ViT vision encoder, CLIP-style against captions (default) or as an image classifier.

    python train_vision.py --config configs/vision_tiny.json [--set train.max_steps=2000 ...]

model.objective "contrastive": symmetric InfoNCE with a learned temperature between the ViT's CLS embedding and a
caption embedding. The text tower is a small text encoder over the Stage-A tokenizer (data.tokenizer), or with
model.use_thinker_for_text the frozen Stage-A Thinker (data.thinker_ckpt), mean-pooled; then only the projections
learn on the text side and checkpoints hold only the trainable weights (the Thinker is reloaded from its file).
Metrics: image->text and text->image R@1 / R@5 on the validation set, ranked against its unique caption texts.
model.objective "classify": cross-entropy over the manifest labels (model.n_classes must match them); metric val_acc.

Rerunning the same command resumes from the newest checkpoint in train.save_dir. Final weights: <save_dir>/vision.pt
= {"model": ContrastiveModel state dict without the frozen Thinker (the ViT is "vision.*"), "config": the
ContrastiveConfig (the ViT's is config["vision"]), "labels": class names (classify), "tokenizer": the tokenizer file
copied beside it (contrastive), "thinker": the Thinker checkpoint the text side needs (use_thinker_for_text)}.
"""

import sys
from pathlib import Path

from omni import evaluation
from omni.builders import build_vision
from omni.components import load_stage_model, vision_weights
from omni.config import load_config
from omni.data.image_layouts import label_names, load_image_records
from omni.data.images import ImageSource
from omni.data.resumable import ResumableDataset, require_usable
from omni.stages import VisionStage
from omni.tokenizer import TOKENIZER_FILE, Tokenizer
from omni.training import Run

cfg, args = load_config(VisionStage, description=__doc__)
contrastive = cfg.model.objective == "contrastive"
use_thinker = contrastive and cfg.model.use_thinker_for_text

# ---- classes, tokenizer and Thinker: resolved before Run, so the config it records holds the real sizes
data_notes = []  # which layout each path was read as, logged once the run exists
train_records = load_image_records(cfg.data.train_manifest, cfg.data.train_images, key="data.train_manifest",
                                   log=data_notes.append)
val_records = load_image_records(cfg.data.val_manifest, cfg.data.val_images, key="data.val_manifest",
                                 log=data_notes.append)
labels = tokenizer = thinker = None
if not contrastive:
    labels = label_names(train_records)
    if len(labels) != cfg.model.n_classes:
        raise SystemExit(f"model.n_classes is {cfg.model.n_classes} but {cfg.data.train_manifest} has "
                         f"{len(labels)} labels: {labels}")
tokenizer_path = cfg.data.tokenizer
if use_thinker:
    thinker_path = Path(cfg.data.thinker_ckpt)
    if not thinker_path.is_file():  # never a silent random text tower
        raise SystemExit(f"model.use_thinker_for_text: no Stage-A Thinker at data.thinker_ckpt={thinker_path}; "
                         "train it with train_text.py or point data.thinker_ckpt at its thinker.pt")
    thinker, saved = load_stage_model(thinker_path, "thinker")  # frozen and kept in eval mode by ContrastiveModel
    if cfg.data.max_text_length > thinker.cfg.max_seq_len:
        raise SystemExit(f"data.max_text_length ({cfg.data.max_text_length}) exceeds the Thinker's max_seq_len "
                         f"({thinker.cfg.max_seq_len})")
    thinker_tokenizer = saved.tokenizer or thinker_path.parent / TOKENIZER_FILE
    tokenizer_path = tokenizer_path or thinker_tokenizer
if contrastive:
    if tokenizer_path is None:
        raise SystemExit("objective 'contrastive' needs data.tokenizer: the Stage-A tokenizer.model (train_text.py)")
    try:
        tokenizer = Tokenizer.load(tokenizer_path)
    except FileNotFoundError as e:
        raise SystemExit(f"data.tokenizer: {e}; train Stage A first (python train_text.py --config ...)") from None
    if use_thinker:
        # Captions in another tokenizer's ids would feed the Thinker garbage without any error: check.
        if thinker_tokenizer.is_file() and Tokenizer.load(thinker_tokenizer).fingerprint != tokenizer.fingerprint:
            raise SystemExit(f"data.tokenizer={tokenizer_path} is not the tokenizer of the Thinker "
                             f"({thinker_tokenizer})")
        if tokenizer.vocab_size != thinker.cfg.vocab_size:
            raise SystemExit(f"{tokenizer_path} has {tokenizer.vocab_size} pieces, the Thinker "
                             f"{thinker.cfg.vocab_size}")
    elif cfg.model.text.vocab_size == 0:  # 0 = take it from the tokenizer
        cfg.model.text.vocab_size = tokenizer.vocab_size
    elif cfg.model.text.vocab_size != tokenizer.vocab_size:
        raise SystemExit(f"{tokenizer_path} has {tokenizer.vocab_size} pieces, model.text.vocab_size is "
                         f"{cfg.model.text.vocab_size}")

run = Run(cfg, name="vision", metric="i2t_r1" if contrastive else "val_acc", mode="max", force=args.force,
          trainable_only=use_thinker)
for note in data_notes:
    run.info(note)

# ---- data
def image_source(records) -> ImageSource:
    # train.compile pads captions to max_text_length so every batch has the same shape
    return ImageSource(records, image_size=cfg.model.vision.image_size, caption_tokenizer=tokenizer, labels=labels,
                       max_caption_tokens=cfg.data.max_text_length, pad_captions=cfg.train.compile)


train_set = ResumableDataset(image_source(train_records), batch_size=cfg.train.batch_size, seed=cfg.train.seed)
val_source = image_source(val_records)
require_usable(val_source, name=cfg.data.val_manifest)  # before any step, not at the first evaluation
run.info(f"data: {len(train_records)} training images, {len(val_records)} validation images, objective "
         f"{cfg.model.objective}" + (f", classes {labels}" if labels else f", tokenizer {tokenizer_path}"))
if use_thinker:
    run.info(f"text tower: the frozen Thinker of {cfg.data.thinker_ckpt} ({thinker.cfg.d_model} wide, "
             f"{thinker.cfg.n_layers} layers); checkpoints hold only the trainable weights")

# ---- model
built = build_vision(cfg, thinker=thinker)
model = run.setup(built.model, built.optimizer(), train_set)


def evaluate_retrieval() -> dict:
    return evaluation.retrieval_metrics(run, val_source, batch_size=cfg.data.val_batch_size,
                                        samples=cfg.data.sample_images)


def evaluate_classes() -> dict:
    return evaluation.classify_metrics(run, val_source, labels=labels, batch_size=cfg.data.val_batch_size,
                                       samples=cfg.data.sample_images)


# ---- loop
evaluate = evaluate_retrieval if contrastive else evaluate_classes
for batch in run.batches(train_set):
    with run.micro_step():
        if contrastive:
            out, loss = model(batch["images"], batch["caption_ids"], text_mask=batch["caption_mask"])
        else:
            out, loss = model(batch["images"], labels=batch["labels"])
        run.backward(loss)
    if run.optimizer_step():
        extra = {"logit_scale": run.raw_model.scale().detach()} if contrastive else {}
        run.log(loss=loss, batch_acc=out.accuracy, **extra)
        run.maybe_evaluate(evaluate)
        run.maybe_checkpoint()

if run.stopped:  # SIGTERM / Ctrl-C: the last step is checkpointed; rerunning the same command resumes
    sys.exit(0)

# ---- save
metrics = run.finish(evaluate, final_weights=vision_weights(
    run.raw_model, cfg.model, labels=labels, tokenizer=contrastive,
    thinker=str(cfg.data.thinker_ckpt) if use_thinker else None))
if run.is_main and tokenizer is not None:
    tokenizer.save(run.run_dir)
print(" ".join(f"{k} {metrics[k]:.3f}" for k in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "val_acc") if k in metrics))
