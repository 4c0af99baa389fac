"""Stage E: multimodal SFT of the omni model (Thinker + AuT + ViT + MLP projectors) on chat conversations.

    python sft_omni.py --config configs/omni_sft_tiny.json [--set freeze_thinker=false train.max_steps=2000 ...]

The Thinker, audio encoder and ViT start from their stage weights (thinker_ckpt, audio_ckpt, vision_ckpt; a named
file that is missing is an error, never a random start), then from init_from (an earlier Stage-E run, e.g. E1 for
E2). freeze_* flags choose what trains; with the Thinker frozen, train_new_tokens trains only the embedding rows of
the chat/media special tokens (a gradient row mask; the other rows stay bitwise unchanged). Each parameter group
(projectors, embeddings, thinker, audio_encoder, vision_encoder) has its own peak LR (group_lr) on train's
warmup + cosine schedule. Checkpoints hold only trainable parameters and their optimizer state; rerunning resumes,
also with changed freeze flags (the log lists what changed). The loss covers assistant tokens only, each answer
ending in <|im_end|>, the token generation stops at.

Metrics on the held-out conversations: val_loss (per assistant token) and greedy exact match per task
(em_image_qa, em_audio_qa, em_ocr_qa, em_text), per question kind when the manifest names it
(em_image_qa/position, ...) and over all conversations (mixed_acc). Final weights:
<save_dir>/omni_final.pt = {"model": every parameter that differs from the stage weights (trained here or by the
init_from chain) plus the projectors, named "<component>.<parameter>", "config": per component model configs,
"tokenizer": the tokenizer file copied beside it, "stage_weights": the stage files the rest comes from}.
"""

import hashlib
import sys
from pathlib import Path

import torch

from omni import evaluation
from omni.builders import build_sft, new_token_rows
from omni.chat import IGNORE_INDEX
from omni.components import read_stage_weights, sft_weights, stage_config
from omni.config import load_config
from omni.data.resumable import BadSample, ResumableDataset, require_usable
from omni.data.sft import SftSource, read_sft_manifest
from omni.stages import SftStage
from omni.tokenizer import TOKENIZER_FILE, Tokenizer
from omni.training import Run

cfg, args = load_config(SftStage, description=__doc__)


# ---- stage weights: each named file must exist
def read_stage(path: str | None, key: str, component: str, script: str):
    """The component's StageWeights (vision.pt: its ViT part) and model config, unchecked: the model built below
    loads them strictly."""
    if path is None:
        return None, None
    if not Path(path).is_file():
        raise SystemExit(f"{key}={path}: no such checkpoint; train it with {script} or point {key} at its final "
                         f"weights ({key}=null leaves that encoder out)")
    weights = read_stage_weights(path, component, check=False)
    return weights, stage_config(weights)


thinker_file, thinker_cfg = read_stage(cfg.thinker_ckpt, "thinker_ckpt", "thinker", "train_text.py")
audio_file, audio_cfg = read_stage(cfg.audio_ckpt, "audio_ckpt", "audio_encoder", "train_audio_enc.py")
vision_file, vision_cfg = read_stage(cfg.vision_ckpt, "vision_ckpt", "vision_encoder", "train_vision.py")
tokenizer = Tokenizer.load(cfg.data.tokenizer or thinker_file.tokenizer or thinker_file.source.parent / TOKENIZER_FILE)
if tokenizer.vocab_size != thinker_cfg.vocab_size:
    raise SystemExit(f"{tokenizer.model_path} has {tokenizer.vocab_size} pieces, the Thinker {thinker_cfg.vocab_size}")
if cfg.data.max_length > thinker_cfg.max_seq_len:
    raise SystemExit(f"data.max_length ({cfg.data.max_length}) exceeds the Thinker's max_seq_len "
                     f"({thinker_cfg.max_seq_len})")

# ---- model: built with its freeze flags and parameter groups (omni.builders), then the stage weights
# The projectors start random and the model is built before Run seeds: seed here, so that two fresh runs (or one
# process and several under torchrun, where DDP copies rank 0's start) begin from the same projectors.
torch.manual_seed(cfg.train.seed)
built = build_sft(cfg, thinker=thinker_cfg, audio=audio_cfg, vision=vision_cfg)
model = built.model
try:
    model.load_stage_weights(thinker=thinker_file.state, audio=audio_file and audio_file.state,
                             vision=vision_file and vision_file.state)
except RuntimeError as e:
    raise SystemExit(f"stage weights do not fit their configs ({cfg.thinker_ckpt}, {cfg.audio_ckpt}, "
                     f"{cfg.vision_ckpt}): {e}") from None


def tensor_digest(p: torch.Tensor) -> bytes:
    """sha256 of a tensor's bytes: equal digests mean bitwise equal values."""
    return hashlib.sha256(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).digest()


# What the stages gave, to tell which parameters Stage E changed when writing omni_final.pt (a frozen tensor can
# still differ, loaded from init_from): 32 bytes per tensor, not a copy of the model held for the whole run.
stage_digests = {n: tensor_digest(p) for n, p in model.named_parameters()}
del thinker_file, audio_file, vision_file

# ---- data
formats = []  # one line per file: the format read (LLaVA, ShareGPT, OpenAI messages, ours), logged once Run is up
records = {split: read_sft_manifest(path, log=formats.append) for split, path in (("train", cfg.data.train_manifest),
                                                                                  ("val", cfg.data.val_manifest))}
for key, encoder in (("audio", audio_cfg), ("image", vision_cfg)):
    uses = [r["where"] for rs in records.values() for r in rs if r.get(key) is not None]
    if uses and encoder is None:
        raise SystemExit(f"{len(uses)} conversations have {key} (first: {uses[0]}) but {key}'s stage checkpoint "
                         "is null: give it, or use manifests without that medium")


def source(split: str) -> SftSource:
    return SftSource(records[split], tokenizer=tokenizer, max_length=cfg.data.max_length,
                     image_size=vision_cfg and vision_cfg.image_size,
                     image_tokens=model.image_token_count if vision_cfg else 0,
                     n_mels=audio_cfg and audio_cfg.n_mels, max_mel_frames=cfg.data.max_mel_frames,
                     max_encoder_frames=audio_cfg and audio_cfg.max_frames)


train_set = ResumableDataset(source("train"), batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                             bucket_batches=cfg.data.bucket_batches)
val_source = source("val")
require_usable(val_source, name=cfg.data.val_manifest)  # before any step, not at the first evaluation

# ---- optimizer: one group per component, each with its own peak LR
run = Run(cfg, name="omni_sft", metric="mixed_acc", mode="max", force=args.force, trainable_only=True)
for line in formats:
    run.info(line)
try:
    optimizer = built.optimizer()
except ValueError as e:
    raise SystemExit(f"{e}: unfreeze something (freeze_projectors=false, train_new_tokens=true, ...)") from None
for group in built.param_groups["main"]:
    name, n = group["name"], sum(p.numel() for p in group["params"] if p.requires_grad)
    rows = f" (rows {new_token_rows()} only)" if name == "embeddings" and n and cfg.freeze_thinker else ""
    run.info(f"group {name}: {n:,} trainable parameters{rows}" + (f", peak lr {group['lr']:g}" if n else " (frozen)"))
run.info(f"media: {model.image_token_count if vision_cfg else 0} tokens per image ({cfg.model.image_tokens}), "
         f"audio at 12.5 tokens/s; val tasks {val_source.tasks}")
# A micro-batch without images (or audio) leaves that encoder and projector without gradients, which DDP must be
# told to expect (a graph walk per step): needed only while a projector or an encoder trains.
media_trains = not (cfg.freeze_projectors and cfg.freeze_audio_encoder and cfg.freeze_vision_encoder)
model = run.setup(model, optimizer, train_set, find_unused_parameters=media_trains)


media = evaluation.sft_media


def log_samples() -> None:
    """Greedy answers to the first val conversations, generated token by token until <|im_end|>."""
    for i in range(min(cfg.data.sample_conversations, len(val_source))):
        try:
            sample = val_source[i]
        except BadSample:
            continue
        first = int((sample["targets"] != IGNORE_INDEX).nonzero()[0])  # last prompt token: "assistant\n"
        prompt = {**val_source.collate([sample]), "input_ids": sample["ids"][None, :first + 1]}
        prompt = {k: v.to(run.device) if torch.is_tensor(v) else v for k, v in prompt.items()}
        budget = min(32, thinker_cfg.max_seq_len - first - 1)
        out = run.raw_model.generate(prompt["input_ids"], **media(prompt), max_new_tokens=budget,
                                     eos_id=tokenizer.im_end_id)
        question = records["val"][i]["messages"][0]["content"]
        run.info(f"sample [{sample['task']}] {question!r} -> {tokenizer.decode(out[0].tolist())!r} "
                 f"(reference {sample['answer']!r})")


def evaluate() -> dict:
    return evaluation.sft_metrics(run, val_source, batch_size=cfg.data.val_batch_size, log_samples=log_samples)


# ---- loop
for batch in run.batches(train_set):
    with run.micro_step():
        _, loss = model(batch["input_ids"], targets=batch["targets"], **media(batch))
        run.backward(loss)
    if run.optimizer_step():
        run.log(loss=loss)
        run.maybe_evaluate(evaluate)
        run.maybe_checkpoint()

if run.stopped:  # SIGTERM / Ctrl-C: the last step is checkpointed; rerunning the same command resumes
    sys.exit(0)

# ---- save: what Stage E changed, keyed by component, plus what it takes to rebuild the model
raw = run.raw_model
changed = {n: p.detach() for n, p in raw.named_parameters()
           if p.requires_grad or "_projector." in n or tensor_digest(p) != stage_digests[n]}
metrics = run.finish(evaluate, final_weights=sft_weights(raw, changed, stage_weights={
    "thinker": cfg.thinker_ckpt, "audio_encoder": cfg.audio_ckpt, "vision_encoder": cfg.vision_ckpt}))
if run.is_main:
    tokenizer.save(run.run_dir)
print(" ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
