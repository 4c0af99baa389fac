"""Stage B: train the AuT audio encoder with a CTC character head (ASR) on speech with transcripts.

    python train_audio_enc.py --config configs/audio_enc_tiny.json [--set train.max_steps=2000 ...]

Data: data.train_manifest / data.val_manifest are JSONL manifests {"audio", "text"[, "duration"]}, Common Voice split
TSVs, transcript CSV/TSV tables, LibriSpeech split folders or LJSpeech folders, or lists of these
(omni.data.speech_layouts; the log names the layout read). Transcripts are normalised to lowercase a-z, apostrophe
and space; the character vocabulary is the sorted set of characters of the normalised training transcripts (blank =
id 0). It is written to <save_dir>/vocab.json on the first run and that file is the run's alphabet from then on (the
CTC head's size depends on it). Unusable clips (unreadable audio, empty transcripts, transcripts with more
characters than the audio has CTC frames, clips over data.max_mel_length) are skipped, counted and named in
training.log at each epoch end.

Batches are bucketed by clip length (data.bucket_batches) to cut padding; data.max_mel_length pads every batch to a
static length instead (required by train.compile; scripts/check_mel_lengths.py recommends a value). SpecAugment
masking runs in the training step with the checkpointed RNG, so resuming stays exact. Metrics on the validation set
(greedy CTC decoding): CER and WER, summed over utterances; sample transcriptions go to the log.

Rerunning the same command resumes from the newest checkpoint in train.save_dir. Final weights:
<save_dir>/audio_enc.pt = {"model": AsrModel state dict (encoder + head), "config": AudioEncoderConfig,
"vocab": the character list (CharVocab.to_list()), "ctc_upsample": int, "n_mels": int}.
"""

import dataclasses
import sys

from omni import evaluation
from omni.audio import spec_augment
from omni.builders import build_audio
from omni.components import audio_encoder_weights
from omni.config import load_config
from omni.ctc import VOCAB_FILE, CharVocab, ctc_loss, load_vocab, pin_vocab
from omni.data.resumable import ResumableDataset, require_usable
from omni.data.speech import AsrSource
from omni.data.speech_layouts import load_asr_records, source_name
from omni.stages import AudioStage
from omni.text_frontend import normalize_transcript
from omni.training import Run
from omni.training.distributed import barrier

cfg, args = load_config(AudioStage, description=__doc__)
run = Run(cfg, name="audio_enc", metric="val_cer", mode="min", force=args.force)

# ---- vocabulary: from the training transcripts; the first run's vocab.json stays the run's alphabet
train_records = load_asr_records(cfg.data.train_manifest, key="data.train_manifest", log=run.info)
val_records = load_asr_records(cfg.data.val_manifest, key="data.val_manifest", log=run.info)
vocab = CharVocab.from_texts(normalize_transcript(r["text"]) for r in train_records)
vocab_file = run.run_dir / VOCAB_FILE
if run.is_main:
    pin_vocab(vocab, vocab_file, force=args.force, source=source_name(cfg.data.train_manifest), log=run.info)
barrier()
vocab = load_vocab(vocab_file)


# ---- data
def asr_source(records) -> AsrSource:
    return AsrSource(records, vocab=vocab, n_mels=cfg.model.encoder.n_mels, max_mel_length=cfg.data.max_mel_length,
                     ctc_upsample=cfg.model.ctc_upsample, max_encoder_frames=cfg.model.encoder.max_frames)


train_set = ResumableDataset(asr_source(train_records), batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                             bucket_batches=cfg.data.bucket_batches)
val_source = asr_source(val_records)
require_usable(val_source, name=source_name(cfg.data.val_manifest))  # before any step, not at the first evaluation
run.info(f"data: {len(train_records)} training utterances, {len(val_records)} validation utterances, "
         f"{len(vocab) - 1} characters: {''.join(vocab.to_list())!r}")
for split, source in (("training", train_set.source), ("validation", val_source)):
    if source.normalization_summary:
        run.info(f"WARNING: {split} data: {source.normalization_summary}")
unscorable = [r["audio"].name for r in val_records if vocab.unknown_chars(normalize_transcript(r["text"]))]
if unscorable:
    run.info(f"WARNING: {len(unscorable)} validation utterances use characters never seen in training and are not "
             f"scored, e.g. {unscorable[0]}")
augment = {k: v for k, v in dataclasses.asdict(cfg.data.spec_augment).items() if k != "enabled"}

# ---- model
built = build_audio(cfg, vocab_size=len(vocab))
model = run.setup(built.model, built.optimizer(), train_set)


def evaluate() -> dict:
    return evaluation.asr_metrics(run, val_source, vocab=vocab, batch_size=cfg.data.val_batch_size,
                                  samples=cfg.data.sample_transcriptions)


# ---- loop. The loss is computed outside the (possibly compiled) model, so the compiled graph only ever sees the
# static (B, max_mel_length, n_mels) input and not the per-batch transcript length.
for batch in run.batches(train_set):
    mel, mel_lengths = batch["mel"], batch["mel_lengths"]
    if cfg.data.spec_augment.enabled:
        mel = spec_augment(mel, mel_lengths, **augment)
    with run.micro_step():
        log_probs, _ = model(mel, mel_lengths)
        loss = ctc_loss(log_probs, run.raw_model.output_lengths(mel_lengths), batch["labels"], batch["label_lengths"])
        run.backward(loss)
    if run.optimizer_step():
        run.log(loss=loss, padding=1 - mel_lengths.sum() / mel_lengths.new_tensor(mel.shape[0] * mel.shape[1]))
        run.maybe_evaluate(evaluate)
        run.maybe_checkpoint()

if run.stopped:  # SIGTERM / Ctrl-C: the last step is checkpointed; rerunning the same command resumes
    sys.exit(0)

# ---- save
metrics = run.finish(evaluate, final_weights=audio_encoder_weights(
    run.raw_model, cfg.model.encoder, vocab=vocab.to_list(), ctc_upsample=cfg.model.ctc_upsample))
print(f"val_cer {metrics['val_cer']:.4f} val_wer {metrics['val_wer']:.4f}")
