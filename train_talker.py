"""Stage D: train the RVQ speech codec, then the text-conditioned Talker on the frozen codec's codes.

    python train_talker.py --config configs/talker_tiny.json [--set phase=codec talker.train.max_steps=4000 ...]

Two phases, each a resumable run of its own with its own model/data/train section of the config:
- phase "codec": the codec learns to reconstruct 100 Hz log-mels through K residual-VQ codebooks. Runs in
  codec.train.save_dir (checkpoints `codec_step_N.pt`); final weights `rvq_codec.pt` there. Metrics on the held-out
  clips: reconstruction error of the normalised log-mel ((mel - mel_mean) / mel_std) as L1 and MSE, and the
  perplexity of each codebook's usage (codebook_size at best, 1 = collapsed).
- phase "talker": the Talker learns text -> durations and codes. Runs in talker.train.save_dir (checkpoints
  `talker_step_N.pt`). At its start the trained codec is copied beside it (`rvq_codec.pt`, the codec this Talker
  speaks) and every utterance is encoded once into a code cache and aligned with its text by the Stage-B ASR model
  (talker.data.aligner; CTC forced alignment, omni/alignment.py) into frames per character. The cache is rebuilt
  when the codec, the aligner, the tokenizer, the manifest or an audio file changes (the log says reused or
  rebuilt, and why), so the Talker's data loading reads no audio; a clip that cannot be aligned is a bad sample.
  If the codec run changes after the Talker run started, the Talker stops instead of mixing codes of two codecs
  (--force keeps the codec it started with). Metrics on the held-out utterances: code cross entropy and accuracy
  (all codebooks and per codebook), duration loss and error in frames; sample sentences are spoken at each
  evaluation.
  Final weights `talker.pt`, with `rvq_codec.pt` and `tokenizer.model` (Stage A's) beside it.
- phase "all" (default) runs both in sequence. Rerunning the same command resumes whichever phase was interrupted;
  a finished phase only rewrites its final files.

Codec training clips longer than codec.data.crop_frames get a random crop, drawn in the training step from the
checkpointed global RNG, so resuming stays exact.
"""

import sys
from pathlib import Path

import torch

from omni import evaluation
from omni.alignment import CtcAligner
from omni.builders import build_codec, build_talker
from omni.codec import usage_perplexity
from omni.components import CODEC_FILE, codec_weights, load_stage_model, talker_weights
from omni.config import load_config
from omni.data import fingerprint
from omni.data.resumable import ResumableDataset, require_usable
from omni.data.speech_layouts import load_asr_records, source_name
from omni.data.tts import SpeechClips, TalkerCodes, build_code_cache, code_cache_path, random_segments
from omni.errors import MissingInput
from omni.stages import TalkerStage
from omni.talker import code_accuracy
from omni.tokenizer import Tokenizer
from omni.training import Run
from omni.training import checkpoint as ckpt
from omni.training.distributed import barrier

cfg, args = load_config(TalkerStage, description=__doc__)


def train_codec(c) -> None:
    run = Run(c, name="codec", metric="val_recon_l1", mode="min", force=args.force)
    n_mels, K = c.model.n_mels, c.model.n_codebooks
    train_records = load_asr_records(c.data.train_manifest, key="codec.data.train_manifest", log=run.info)
    train_set = ResumableDataset(SpeechClips(train_records, n_mels=n_mels), batch_size=c.train.batch_size,
                                 seed=c.train.seed, bucket_batches=c.data.bucket_batches)
    val_source = SpeechClips(load_asr_records(c.data.val_manifest, key="codec.data.val_manifest", log=run.info),
                             n_mels=n_mels)
    run.info(f"data: {len(train_set)} training clips, {len(val_source)} validation clips")
    require_usable(val_source, name=source_name(c.data.val_manifest))
    built = build_codec(c)
    model = run.setup(built.model, built.optimizer(), train_set)

    def evaluate() -> dict:
        return evaluation.codec_metrics(run, val_source, batch_size=c.data.val_batch_size)

    for batch in run.batches(train_set):
        mel, lengths, _ = random_segments(batch["mel"], batch["mel_lengths"], c.data.crop_frames)
        with run.micro_step():
            out = model(mel, lengths)
            run.backward(out.loss)
        if run.optimizer_step():
            ppl = usage_perplexity(out.usage)  # of this batch only; the val perplexity counts every held-out frame
            run.log(loss=out.loss, **out.losses, **{f"batch_ppl_cb{k}": ppl[k] for k in range(K)})
            run.maybe_evaluate(evaluate)
            run.maybe_checkpoint()

    if run.stopped:  # SIGTERM / Ctrl-C: the last step is checkpointed; rerunning the same command resumes
        sys.exit(0)
    metrics = run.finish(evaluate, final_weights=codec_weights(run.raw_model, c.model))
    print(f"codec val_recon_l1 {metrics['val_recon_l1']:.4f} val_recon_mse {metrics['val_recon_mse']:.4f} "
          + " ".join(f"val_ppl_cb{k} {metrics[f'val_ppl_cb{k}']:.1f}" for k in range(K)), flush=True)


def same_weights(a, b) -> bool:
    sa, sb = ckpt.load(a)["model"], ckpt.load(b)["model"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def train_talker(t, codec_dir) -> None:
    run = Run(t, name="talker", metric="val_loss", mode="min", force=args.force)
    # ---- the codec this Talker speaks: a copy beside it, refreshed only while the Talker has no checkpoint
    codec_file, trained = run.run_dir / CODEC_FILE, codec_dir / CODEC_FILE
    if run.is_main:
        started = bool(ckpt.step_checkpoints(run.run_dir, "talker"))
        if not trained.exists() and not codec_file.exists():
            raise SystemExit(f"no trained codec: {trained} does not exist; run the codec phase first (--set phase="
                             "codec or phase=all)")
        if trained.exists() and (not codec_file.exists() or not started):
            ckpt.atomic_save(ckpt.load(trained), codec_file)
        elif trained.exists() and not same_weights(trained, codec_file):
            message = f"{trained} changed after this Talker run started on the codec in {codec_file}"
            if not args.force:
                raise SystemExit(f"{message}; use a new talker.train.save_dir, or --force to keep training on the "
                                 "codec the run started with")
            run.info(f"WARNING (--force): {message}; keeping the codec the run started with")
    barrier()
    codec, weights = load_stage_model(codec_file, "codec", run.device)
    for key in ("n_codebooks", "codebook_size"):
        if weights.config[key] != getattr(t.model, key):
            raise SystemExit(f"{codec_file} has {key}={weights.config[key]}, but talker.model.{key}="
                             f"{getattr(t.model, key)}")
    tokenizer = Tokenizer.load(t.data.tokenizer)
    if tokenizer.vocab_size != t.model.text_vocab_size:
        raise SystemExit(f"{t.data.tokenizer} has {tokenizer.vocab_size} pieces, talker.model.text_vocab_size is "
                         f"{t.model.text_vocab_size}")

    aligner_path = Path(t.data.aligner)
    if not aligner_path.exists():
        raise MissingInput(f"talker.data.aligner: {aligner_path} does not exist; it names the Stage-B run dir (or its "
                           "audio_enc.pt) whose CTC model aligns the speech with its text: train Stage B first")
    aligner = CtcAligner.load(aligner_path, run.device)

    # ---- data: text units, their durations and codes, made once by the frozen codec and the aligner (rank 0
    # builds, the others wait)
    def codes(paths, name) -> TalkerCodes:
        kwargs = dict(codec=codec, codec_file=codec_file, aligner=aligner, tokenizer=tokenizer,
                      max_text_len=t.model.max_text_len,
                      max_frames=t.model.max_frames, cache_dir=run.run_dir, name=name, device=run.device, log=run.info)
        if run.is_main:
            build_code_cache(load_asr_records(paths, key=f"talker.data.{name}_manifest", log=run.info), **kwargs)
        barrier()
        return TalkerCodes(code_cache_path(run.run_dir, name))

    train_set = ResumableDataset(codes(t.data.train_manifest, "train"), batch_size=t.train.batch_size,
                                 seed=t.train.seed, bucket_batches=t.data.bucket_batches)
    val_codes = codes(t.data.val_manifest, "val")
    unusable = sum(bool(b) for b in val_codes.bad)
    run.info(f"data: {len(train_set)} training utterances, {len(val_codes)} validation utterances "
             f"({unusable} unusable, not scored)")
    require_usable(val_codes, name=source_name(t.data.val_manifest))

    # ---- model
    built = build_talker(t)
    model = run.setup(built.model, built.optimizer(), train_set)
    if run.is_main:  # a resumed run whose data changed under it says so
        fingerprint.note_run_data(run.run_dir, {f"talker.data.{split}_manifest": fingerprint.content_digest(
            code_cache_path(run.run_dir, split)) for split in ("train", "val")}, resumed=run.step > 0, log=run.info)

    def evaluate() -> dict:
        return evaluation.talker_metrics(run, val_codes, batch_size=t.data.val_batch_size,
                                         sample_sentences=t.data.sample_sentences)

    # ---- loop
    for batch in run.batches(train_set):
        with run.micro_step():
            out = model(batch["chars"], batch["tokens"], batch["unit_lengths"], batch["durations"], batch["codes"],
                        batch["code_lengths"])
            run.backward(out.loss)
        if run.optimizer_step():
            correct, counted = code_accuracy(out.logits.detach(), batch["codes"], batch["code_lengths"])
            run.log(loss=out.loss, code_loss=out.code_loss, duration_loss=out.duration_loss,
                    acc=correct.sum() / (counted * len(correct)))
            run.maybe_evaluate(evaluate)
            run.maybe_checkpoint()

    if run.stopped:  # SIGTERM / Ctrl-C: the last step is checkpointed; rerunning the same command resumes
        sys.exit(0)

    # ---- save
    metrics = run.finish(evaluate, final_weights=talker_weights(run.raw_model, t.model))
    if run.is_main:
        tokenizer.save(run.run_dir)
    print(f"talker val_loss {metrics['val_loss']:.4f} val_code_loss {metrics['val_code_loss']:.4f} val_acc "
          f"{metrics['val_acc']:.4f} val_duration_mae {metrics['val_duration_mae']:.3f} frames", flush=True)


if cfg.phase in ("codec", "all"):
    train_codec(cfg.codec)
if cfg.phase in ("talker", "all"):
    train_talker(cfg.talker, Path(cfg.codec.train.save_dir))
