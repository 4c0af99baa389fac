"""Score a trained stage on any held-out set, without training and without touching the run's files.

    python scripts/evaluate.py --config configs/audio_enc_tiny.json [--set data.val_manifest=my_test.jsonl]
                               [--weights FILE] [--json out.json] [--stage audio]
    python scripts/evaluate.py --config configs/talker_tiny.json [--asr checkpoints/audio_enc_tiny]
                               [--vocoder checkpoints/vocoder_tiny] [--tts-sentences 50]

Loads the stage's final weights (<train.save_dir>/<its file>, or --weights: a final-weights file or a run dir),
reads data.val_manifest / data.val_path exactly as the stage script does (the same readers and sources, the final
weights' vocabulary and tokenizer) and computes the stage's metric with the function the stage script calls
(omni/evaluation.py), so on the run's own validation set it prints the metrics of the run's summary.json.
Stages: text (A: val_ppl), audio (B: CER/WER), vision (C: retrieval R@k or accuracy), ocr (CER, exact lines),
sft (E: exact match per task, mixed_acc), talker (D: the codec's held-out mel reconstruction L1/MSE and codebook
perplexities, the Talker's code cross entropy/accuracy, and with --asr the TTS->ASR CER/WER of `python -m
omni.speech`: the val sentences spoken by the Talker, codec and vocoder, transcribed by the Stage-B model), vocoder
(mel-L1 of HiFi-GAN vs Griffin-Lim). Stage D scores the parts its `phase` names (default "all": both, keys
"codec.*" and "talker.*"; --set phase=codec or phase=talker for one); the Talker's val codes are encoded into a
temporary folder, not its run dir. --stage is inferred from the config when it fits one stage only.
Output: one "metric value" line per metric on stdout; --json writes {"stage", "weights", "val", "metrics"}
("weights" and "val" are {part: ...} when Stage D scores both parts).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omni import evaluation  # noqa: E402
from omni.config import from_dict, missing_data_paths  # noqa: E402
from omni.errors import UserError  # noqa: E402
from omni.training.distributed import local_device  # noqa: E402

STAGES = ("text", "audio", "vision", "ocr", "sft", "talker", "vocoder")  # the stages scored here (omni/evaluation.py)
PART_FILES = {**evaluation.WEIGHTS_FILES, "codec": "rvq_codec.pt"}  # Stage D's two parts: the codec and the Talker


def weights_file(part: str, cfg, given: str | Path | None) -> Path:
    path = Path(given) if given else Path(cfg.train.save_dir)
    name = PART_FILES[part]
    path = path / name if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"no final weights at {path}: train the stage first (its script writes {name} into "
                        "train.save_dir) or pass --weights FILE")
    return path


# ---- per stage: (model, metric function over an Evaluator) from the config and the final weights, reading the
# validation data through the same readers and sources as the stage script.
def text(cfg, path: Path, log):
    from omni.components import load_stage_model
    from omni.data.text import TokenWindows, build_token_cache, open_tokens
    from omni.tokenizer import TOKENIZER_FILE, Tokenizer

    model, saved = load_stage_model(path, "thinker")
    tokenizer = Tokenizer.load(cfg.data.tokenizer or saved.tokenizer or path.parent / TOKENIZER_FILE)
    tokens = open_tokens(build_token_cache(cfg.data.val_path, tokenizer, log=log), tokenizer.vocab_size)
    source = TokenWindows(tokens, cfg.data.seq_len, name=cfg.data.val_path)
    return model, lambda ev: evaluation.text_metrics(
        ev, source, batch_size=cfg.data.val_batch_size, tokenizer=tokenizer, sample_prompts=cfg.data.sample_prompts,
        sample_tokens=cfg.data.sample_tokens)


def audio(cfg, path: Path, log):
    from omni.components import load_stage_model
    from omni.ctc import CharVocab
    from omni.data.resumable import require_usable
    from omni.data.speech import AsrSource
    from omni.data.speech_layouts import load_asr_records

    model, saved = load_stage_model(path, "audio_encoder")
    vocab = CharVocab.from_list(saved.extras["vocab"])
    records = load_asr_records(cfg.data.val_manifest, key="data.val_manifest", log=log)
    source = AsrSource(records, vocab=vocab, n_mels=model.encoder.cfg.n_mels,
                       max_mel_length=cfg.data.max_mel_length, ctc_upsample=saved.extras["ctc_upsample"],
                       max_encoder_frames=model.encoder.cfg.max_frames)
    require_usable(source, name=cfg.data.val_manifest)
    return model, lambda ev: evaluation.asr_metrics(ev, source, vocab=vocab, batch_size=cfg.data.val_batch_size,
                                                    samples=cfg.data.sample_transcriptions)


def ocr(cfg, path: Path, log):
    from omni.components import load_stage_model
    from omni.ctc import CharVocab
    from omni.data.image_layouts import load_ocr_records
    from omni.data.images import OcrSource
    from omni.data.resumable import require_usable
    from omni.ocr import OcrModel

    model, saved = load_stage_model(path, "ocr")
    vocab = CharVocab.from_list(saved.extras["vocab"])
    records = load_ocr_records(cfg.data.val_manifest, cfg.data.val_images, key="data.val_manifest", log=log)
    source = OcrSource(records, vocab=vocab, height=model.cfg.height,
                       max_width=saved.extras.get("max_width"), width_stride=OcrModel.width_stride,
                       max_frames=model.cfg.max_frames)
    require_usable(source, name=cfg.data.val_manifest)
    return model, lambda ev: evaluation.ocr_metrics(ev, source, vocab=vocab, batch_size=cfg.data.val_batch_size,
                                                    samples=cfg.data.sample_lines)


def vision(cfg, path: Path, log):
    from omni.components import load_stage_model
    from omni.contrastive import ContrastiveConfig, ContrastiveModel
    from omni.data.image_layouts import load_image_records
    from omni.data.images import ImageSource
    from omni.data.resumable import require_usable
    from omni.tokenizer import Tokenizer
    from omni.training.checkpoint import load

    # The whole ContrastiveModel (both towers): components' readers give the ViT part only.
    data = load(path)
    model_cfg = from_dict(ContrastiveConfig, data["config"], where=f"{path} 'config'")
    thinker = load_stage_model(data["thinker"], "thinker")[0] if data.get("thinker") else None
    model = ContrastiveModel(model_cfg, thinker=thinker)
    missing, unexpected = model.load_state_dict(data["model"], strict=False)
    if unexpected or [k for k in missing if not k.startswith("thinker.")]:
        raise UserError(f"{path}: the weights do not fit the model of its config (missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]})")
    labels = data.get("labels")
    tokenizer = Tokenizer.load(path.parent / data["tokenizer"]) if data.get("tokenizer") else None
    records = load_image_records(cfg.data.val_manifest, cfg.data.val_images, key="data.val_manifest", log=log)
    source = ImageSource(records, image_size=model_cfg.vision.image_size,
                         caption_tokenizer=tokenizer, labels=labels, max_caption_tokens=cfg.data.max_text_length,
                         pad_captions=cfg.train.compile)
    require_usable(source, name=cfg.data.val_manifest)
    if model_cfg.objective == "contrastive":
        return model, lambda ev: evaluation.retrieval_metrics(ev, source, batch_size=cfg.data.val_batch_size,
                                                              samples=cfg.data.sample_images)
    return model, lambda ev: evaluation.classify_metrics(ev, source, labels=labels,
                                                         batch_size=cfg.data.val_batch_size,
                                                         samples=cfg.data.sample_images)


def sft(cfg, path: Path, log):
    from omni.chat_session import load_sft_model
    from omni.components import read_sft
    from omni.data.resumable import require_usable
    from omni.data.sft import SftSource, read_sft_manifest
    from omni.tokenizer import Tokenizer

    saved = read_sft(path)
    # The stage files it was trained on; the projectors come from omni_final.pt (built as the chat builds it).
    model, asr, _ = load_sft_model(saved, saved.stage_weights)
    vit = model.vision_encoder
    tokenizer = Tokenizer.load(cfg.data.tokenizer or saved.tokenizer)
    source = SftSource(read_sft_manifest(cfg.data.val_manifest, log=log), tokenizer=tokenizer,
                       max_length=cfg.data.max_length, image_size=vit and vit.cfg.image_size,
                       image_tokens=model.image_token_count if vit is not None else 0,
                       n_mels=asr and asr.encoder.cfg.n_mels, max_mel_frames=cfg.data.max_mel_frames,
                       max_encoder_frames=asr and asr.encoder.cfg.max_frames)
    require_usable(source, name=cfg.data.val_manifest)
    return model, lambda ev: evaluation.sft_metrics(ev, source, batch_size=cfg.data.val_batch_size)


def codec(cfg, path: Path, log):
    from omni.components import load_stage_model
    from omni.data.resumable import require_usable
    from omni.data.speech_layouts import load_asr_records, source_name
    from omni.data.tts import SpeechClips

    model, _ = load_stage_model(path, "codec")
    records = load_asr_records(cfg.data.val_manifest, key="codec.data.val_manifest", log=log)
    source = SpeechClips(records, n_mels=model.cfg.n_mels)
    require_usable(source, name=source_name(cfg.data.val_manifest))
    return model, lambda ev: evaluation.codec_metrics(ev, source, batch_size=cfg.data.val_batch_size)


def talker(cfg, path: Path, log, *, device, asr=None, vocoder=None, tts_sentences=None, cache_dir):
    """The Talker on its val codes, encoded by the codec beside talker.pt (the one it speaks) into a code cache in
    `cache_dir` (never the run's); with `asr` (a Stage-B run dir or audio_enc.pt) also the TTS->ASR CER/WER of
    omni.speech (the `python -m omni.speech` check) on the first `tts_sentences` val sentences."""
    from omni.alignment import CtcAligner
    from omni.asr import Transcriber
    from omni.components import CODEC_FILE, load_stage_model
    from omni.data.resumable import require_usable
    from omni.data.speech_layouts import load_asr_records, source_name
    from omni.data.tts import TalkerCodes, build_code_cache
    from omni.speech import SpeechSynthesizer, Vocoder, intelligibility
    from omni.tokenizer import TOKENIZER_FILE, Tokenizer

    model, saved = load_stage_model(path, "talker")
    codec_file = path.parent / CODEC_FILE
    if not codec_file.is_file():
        raise UserError(f"{codec_file} not found: train_talker.py writes the codec a Talker speaks beside talker.pt")
    codec_model, _ = load_stage_model(codec_file, "codec", device)
    tokenizer = Tokenizer.load(saved.tokenizer or path.parent / TOKENIZER_FILE)  # the one it was trained with
    records = load_asr_records(cfg.data.val_manifest, key="talker.data.val_manifest", log=log)
    aligner = CtcAligner.load(cfg.data.aligner, device)
    val_codes = TalkerCodes(build_code_cache(
        records, codec=codec_model, codec_file=codec_file, aligner=aligner, tokenizer=tokenizer,
        max_text_len=model.cfg.max_text_len,
        max_frames=model.cfg.max_frames, cache_dir=cache_dir, name="val", device=device, log=log))
    require_usable(val_codes, name=source_name(cfg.data.val_manifest))

    def metrics(ev) -> dict:
        out = evaluation.talker_metrics(ev, val_codes, batch_size=cfg.data.val_batch_size,
                                        sample_sentences=cfg.data.sample_sentences)
        if asr is not None:
            synth = SpeechSynthesizer(tokenizer, ev.raw_model, codec_model.eval(), Vocoder.load(vocoder, device, log))
            texts = [r["text"] for r in records[:tts_sentences]]
            result = intelligibility(synth, Transcriber.load(asr, device), texts, log=log)
            log(f"tts->asr: {result['sentences']} sentences, {result['audio_seconds']:.1f} s of audio "
                f"({result['vocoder']})")
            out.update(tts_asr_cer=result["cer"], tts_asr_wer=result["wer"])
        return out

    return model, metrics


def vocoder(cfg, path: Path, log, *, device, asr=None):
    """HiFi-GAN and Griffin-Lim on the val clips as train_vocoder.py judges them: mel-L1, MR-STFT to the real
    waveform, and the ASR CER of the vocoded audio with `asr` (default: the config's data.asr; none: no CER)."""
    from omni.asr import Transcriber
    from omni.components import load_stage_model
    from omni.data.resumable import require_usable
    from omni.data.speech_layouts import load_asr_records, source_name
    from omni.data.tts import SpeechClips

    model, saved = load_stage_model(path, "vocoder")  # the generator
    records = load_asr_records(cfg.data.val_manifest, key="data.val_manifest", log=log)[: cfg.data.val_utterances]
    source = SpeechClips(records, n_mels=saved.config["n_mels"], with_wav=True)
    require_usable(source, name=source_name(cfg.data.val_manifest))
    listener = asr or cfg.data.asr
    transcriber = Transcriber.load(listener, device) if listener else None
    return model, lambda ev: evaluation.vocoder_metrics(ev, source, griffin_lim_iters=cfg.data.griffin_lim_iters,
                                                        asr=transcriber)


def parts(stage: str, cfg) -> list[tuple[str, str, object]]:
    """What is scored: (metric key prefix, part name, its config section). Stage D has two parts, the codec and the
    Talker, each a run of its own; its `phase` picks them ("all": both, keys prefixed "codec." and "talker.")."""
    if stage != "talker":
        return [("", stage, cfg)]
    names = ("codec", "talker") if cfg.phase == "all" else (cfg.phase,)
    return [(f"{name}." if len(names) > 1 else "", name, getattr(cfg, name)) for name in names]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the stage's JSON config (as trained)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted overrides, e.g. data.val_manifest=my_test.jsonl")
    parser.add_argument("--stage", choices=STAGES, help="default: inferred from the config")
    parser.add_argument("--weights", help="final-weights file or run dir (default: the config's train.save_dir; "
                        "Stage D with phase=all: the Talker's run dir, which holds the codec it speaks)")
    parser.add_argument("--json", help="also write the metrics to this JSON file")
    parser.add_argument("--device", default=None, help="default: the config's train.device")
    parser.add_argument("--asr", metavar="DIR", help="Stage D: also the Talker's TTS->ASR CER/WER (omni.speech) with "
                        "this Stage-B run dir or audio_enc.pt as the listener; vocoder: the ASR CER of the vocoded "
                        "val clips (default: the config's data.asr)")
    parser.add_argument("--vocoder", metavar="DIR", help="with --asr: the vocoder run dir or hifigan.pt that makes "
                        "the audio (default: Griffin-Lim)")
    parser.add_argument("--tts-sentences", type=int, default=50, metavar="N",
                        help="with --asr: synthesize the first N sentences of talker.data.val_manifest (default 50)")
    args = parser.parse_args(argv)
    stage, cfg = evaluation.resolve_stage(args.config, args.set, args.stage, among=STAGES)
    if args.asr is not None and stage not in ("talker", "vocoder"):
        raise UserError(f"--asr scores the Talker (Stage D) or the vocoder; {args.config} is stage {stage!r}")
    if args.tts_sentences < 1:
        raise UserError(f"--tts-sentences must be >= 1, got {args.tts_sentences}")
    val_key = "val_path" if stage == "text" else "val_manifest"
    log = (lambda message: print(message, file=sys.stderr, flush=True))
    scored = parts(stage, cfg)
    metrics, weights, vals = {}, {}, {}
    for prefix, name, part in scored:
        key = f"{name}.data." if stage == "talker" else "data."
        missing = [m for m in missing_data_paths(part.data, key) if m.startswith((f"{key}{val_key}=",
                                                                                  f"{key}{val_key}["))]
        if missing:
            raise UserError(f"{args.config}: data not found: {missing[0]}")
        given = args.weights
        if given and name == "codec" and len(scored) > 1:  # the Talker's run dir holds the codec it speaks
            given = given if Path(given).is_dir() else Path(given).parent
        path, val = weights_file(name, part, given), getattr(part.data, val_key)
        device = local_device(args.device or part.train.device)
        log(f"evaluate {name}: weights {path}, {val_key} {val}, device {device}")
        with tempfile.TemporaryDirectory(prefix="omni-eval-") as scratch:  # the Talker's code cache, not the run's
            extra = {"device": device, "asr": args.asr, "vocoder": args.vocoder, "tts_sentences": args.tts_sentences,
                     "cache_dir": scratch} if name == "talker" else {}
            if name == "vocoder":
                extra = {"device": device, "asr": args.asr}
            model, metric_fn = globals()[name](part, path, log, **extra)
            evaluator = evaluation.Evaluator(model, device=device, precision=part.train.precision, log=log,
                                             seed=part.train.seed)
            result = evaluator.evaluate(functools.partial(metric_fn, evaluator))
        metrics.update({prefix + k: v for k, v in result.items()})
        weights[name], vals[name] = str(path), str(val)
    for key, value in metrics.items():
        print(f"{key} {value:.6g}")
    if args.json:
        one = len(scored) == 1
        out = {"stage": stage, "weights": weights[name] if one else weights, "val": vals[name] if one else vals,
               "metrics": metrics}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
