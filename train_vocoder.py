"""Train the HiFi-GAN vocoder (log-mel -> 16 kHz waveform) against MPD + MSD discriminators.

    python train_vocoder.py --config configs/vocoder_tiny.json [--set train.max_steps=20000 ...]

Two players, two optimizers: "gen" (the generator) and "disc" (MPD + MSD), each with its own warmup+cosine
schedule (and GradScaler under fp16), all in every checkpoint. One step: the discriminators step on real vs
generated audio (LSGAN), then the generator steps on adversarial + feature-matching + lambda_mel x mel-L1
(Kong et al. 2020). The first `mel_warmup_steps` steps train the generator on the mel loss alone and leave the
discriminators untouched (Parallel WaveGAN-style pre-training, Yamamoto et al. 2020): a GAN step costs several
generator steps, and on a CPU budget the mel loss is what makes speech out of noise.

Training sees random crops of data.segment_frames mel frames and the matching waveform samples. The crops are drawn
in the training step from the checkpointed global RNG, so a killed-and-rerun run draws the same crops.

Judged on the held-out clips (whole utterances), HiFi-GAN and the Griffin-Lim fallback on the same real mels
(omni.evaluation.vocoder_metrics): mel-L1 (the run's best-checkpoint metric; it favours Griffin-Lim by
construction), the multi-resolution STFT distance to the real waveform, the CER of a Stage-B ASR model on the
vocoded audio when `data.asr` names one, and the real-time factor (logged). At the end the verdict
(omni.vocoder.judge_vocoders: ASR CER when measured, else MR-STFT) goes into hifigan.pt (key "judge", which the
export copies and omni.speech.Vocoder.load follows) and, with every number, into vocoder_judge.json beside it.

Single process only: the discriminators run outside the model's (DDP) forward, so DDP would not synchronise
their gradients. Rerunning the same command resumes. Final weights: <save_dir>/hifigan.pt =
{"model": generator state dict, "config": VocoderConfig, "judge": {"choice", "criterion", "reason"}} (generator
only; the discriminators and both optimizers stay in the step checkpoints).
"""

import json
import sys

import torch

from omni import evaluation
from omni.atomic import atomic_write_text
from omni.builders import build_vocoder
from omni.components import vocoder_weights
from omni.config import load_config
from omni.data.resumable import ResumableDataset, require_usable
from omni.data.speech_layouts import load_asr_records, source_name
from omni.data.tts import SpeechClips, random_segments
from omni.errors import UserError
from omni.stages import VocoderStage
from omni.torch_io import write_error
from omni.training import Run
from omni.training.checkpoint import forked_rng
from omni.vocoder import (
    discriminator_loss,
    feature_matching_loss,
    frozen,
    generator_adversarial_loss,
    judge_vocoders,
    mel_l1_loss,
)

cfg, args = load_config(VocoderStage, description=__doc__)
run = Run(cfg, name="hifigan", metric="val_mel_l1", mode="min", force=args.force)
if run.world_size > 1:
    raise SystemExit("train_vocoder.py runs as a single process (see its docstring); launch it without torchrun")

# ---- data
val_records = load_asr_records(cfg.data.val_manifest, key="data.val_manifest", log=run.info)
val_records = val_records[: cfg.data.val_utterances]
train_records = load_asr_records(cfg.data.train_manifest, key="data.train_manifest", log=run.info)
train_set = ResumableDataset(SpeechClips(train_records, n_mels=cfg.model.n_mels, with_wav=True),
                             batch_size=cfg.train.batch_size, seed=cfg.train.seed)
val_source = SpeechClips(val_records, n_mels=cfg.model.n_mels, with_wav=True)  # the waveform: MR-STFT, ASR ceiling
require_usable(val_source, name=source_name(cfg.data.val_manifest))  # before any step, not at the first evaluation
run.info(f"data: {len(train_set)} training clips (random {cfg.data.segment_frames}-frame crops), "
         f"{len(val_source)} validation clips")

# ---- model: one module holds generator + discriminators; one optimizer per player
built = build_vocoder(cfg)
model = run.setup(built.model, built.optimizers(), train_set)
asr = None
if cfg.data.asr:  # before any step: a bad path fails now, not at the first evaluation
    from omni.asr import Transcriber

    with forked_rng(run.device):  # building the model draws from the RNG that a resume restored: leave it be
        asr = Transcriber.load(cfg.data.asr, run.device)
    run.info(f"asr: {cfg.data.asr} transcribes the vocoded held-out clips (ASR CER judges the vocoders)")
else:
    run.info("asr: none (data.asr): the vocoders are judged by MR-STFT distance, not by what an ASR hears")
griffin_lim_scores: dict[str, dict] = {}  # per validation clip; deterministic, so computed once per process
timing: dict = {}  # the newest evaluation's real-time factors (wall clock: kept out of the metrics)


def evaluate() -> dict:
    return evaluation.vocoder_metrics(run, val_source, griffin_lim_iters=cfg.data.griffin_lim_iters,
                                      griffin_lim_cache=griffin_lim_scores, asr=asr, timing=timing)


# ---- loop: one GAN step as in HiFi-GAN's train.py: the discriminators step on real vs the detached fake, then
# the generator steps against the updated discriminators. The discriminators always see the real clip before
# the fake one: MSD's spectral norm updates its power-iteration state at every call, so the order is part of
# the run (and of its exact resume).
discriminators = {"mpd": run.raw_model.mpd, "msd": run.raw_model.msd}
for batch in run.batches(train_set):
    mel, _, wav = random_segments(batch["mel"], batch["mel_lengths"], cfg.data.segment_frames, wav=batch["wav"])
    adversarial = run.step >= cfg.mel_warmup_steps
    with run.micro_step():
        fake = model(mel)
        if adversarial:  # discriminator step (LSGAN); the fake is detached, so only MPD and MSD get gradients
            d_parts = {f"d_{name}": discriminator_loss(disc(wav)[0], disc(fake.detach())[0])
                       for name, disc in discriminators.items()}
            d_loss = d_parts["d_mpd"] + d_parts["d_msd"]
            run.backward(d_loss, optimizer="disc")
    if adversarial:
        run.optimizer_step("disc")
    with run.micro_step():
        if adversarial:  # generator step: adversarial + feature matching (real features are fixed targets) + mel
            adv = fm = 0.0
            with frozen(*discriminators.values()):
                for disc in discriminators.values():
                    with torch.no_grad():
                        _, real_fmaps = disc(wav)
                    fake_scores, fake_fmaps = disc(fake)
                    adv = adv + generator_adversarial_loss(fake_scores)
                    fm = fm + feature_matching_loss(real_fmaps, fake_fmaps)
            mel_loss = mel_l1_loss(fake, mel)
            g_loss = adv + cfg.model.lambda_fm * fm + cfg.model.lambda_mel * mel_loss
            g_parts = {"g_adv": adv, "g_fm": fm, "g_mel": mel_loss}
        else:
            g_parts = {"g_mel": mel_l1_loss(fake, mel)}
            g_loss = cfg.model.lambda_mel * g_parts["g_mel"]
        run.backward(g_loss, optimizer="gen")
    # In the warm-up both optimizers step together: "disc" has no gradients, so only its schedule advances.
    if run.optimizer_step("gen" if adversarial else None):
        run.log(g_loss=g_loss, **g_parts, **({"d_loss": d_loss, **d_parts} if adversarial else {}))  # detaches
        run.maybe_evaluate(evaluate)
        run.maybe_checkpoint()

if run.stopped:  # SIGTERM / Ctrl-C: the last step is checkpointed; rerunning the same command resumes
    sys.exit(0)

# ---- save: the generator only, with the verdict; the discriminators and optimizers stay in the step checkpoints.
# The verdict needs the final step's metrics, which Run.finish would compute itself: evaluate first (as finish
# does, only when this step has none: a rerun of a finished run reuses the checkpointed ones, unless they lack what
# this config judges by: a run finished before the judge, or data.asr given since).
judged_by = {"val_mr_stft"} | ({"val_asr_cer"} if asr is not None else set())
if run.last_eval is None or run.last_eval["step"] != run.step or not judged_by <= run.last_eval["metrics"].keys():
    run.evaluate(evaluate)
judge = judge_vocoders(run.last_eval["metrics"], clips=len(val_source))
metrics = run.finish(evaluate, final_weights=vocoder_weights(run.raw_model.generator, cfg.model, judge=judge))
if run.is_main:
    names = {"hifigan": "", "griffin-lim": "_griffin_lim"}
    report = {**judge, "step": run.step, "clips": len(val_source), "asr": cfg.data.asr,
              "asr_cer_real_audio": metrics.get("val_asr_cer_real"),
              **{name: {key: metrics.get(f"val_{key}{suffix}") for key in ("asr_cer", "mr_stft", "mel_l1")}
                 | {"rtf": timing.get("rtf", {}).get(name)} for name, suffix in names.items()},
              "rtf_note": f"compute seconds per second of audio on {run.device.type}, at this process's last "
                          "evaluation (null: none ran, the run was already finished)"}
    try:
        atomic_write_text(run.run_dir / "vocoder_judge.json", json.dumps(report, indent=2) + "\n")
    except OSError as e:  # hifigan.pt (with the verdict) is written; only the report is missing
        raise UserError(f"{write_error(run.run_dir / 'vocoder_judge.json', e)}; rerun to write it again") from e
    run.info(f"vocoder verdict: {judge['reason']} ({run.run_dir / 'vocoder_judge.json'})")
print(f"val_mel_l1 {metrics['val_mel_l1']:.4f} griffin_lim {metrics['val_mel_l1_griffin_lim']:.4f}")
print(f"vocoder verdict: {judge['reason']}")
