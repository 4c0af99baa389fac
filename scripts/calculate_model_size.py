"""Exact parameter counts of a stage config's models, and a rough training-memory estimate.

    python scripts/calculate_model_size.py configs/thinker_medium.json [--stage text] [--json]

The models are built on the meta device (shapes only, no memory), exactly as the stage script builds them, so the
counts are exact for any size. The stage is detected from the config's keys (or give --stage). A few sizes depend on
the data rather than the config; where the data is not at hand an assumption is used and printed:
- character vocabularies (audio CTC head, OCR model.vocab_size 0): counted from the training transcripts when the
  manifest exists, else ASSUMED_CHARS;
- the vision text tower's vocab_size 0: from data.tokenizer when it exists, else the sibling Thinker preset's;
- Stage E's Thinker / AuT / ViT shapes: from the stage checkpoints when they exist, else from the sibling presets
  (configs/thinker_<size>.json, audio_enc_<size>.json, vision_<size>.json; --thinker-config etc. override).

Training-memory estimate (bytes; a rough planning number, not a measurement — scripts/measure_memory.py measures):
    weights      = 4 * N_total                       (fp32 master weights; autocast casts on the fly)
    grads        = 4 * N_trainable
    adamw        = 8 * N_trainable                   (exp_avg + exp_avg_sq in fp32)
    activations  = sum over transformer stacks of  A * B * T * D * L * a        (no grad checkpointing)
                                               or  B * T * D * (L + A) * a      (train.grad_checkpointing)
                 + 2 * B * T * V * 4                 (fp32 logits and their gradient, token-output stages)
with B = train.batch_size (the micro-batch), T = tokens/frames/patches per sample, D = width, L = layers,
a = 2 bytes under bf16/fp16 and 4 under fp32, V = output vocabulary, and A = ACTIVATION_FACTOR values stored per
token, layer and model-width unit (norm inputs, q/k/v, attention output, residuals and the SwiGLU's 3 d_ff-wide
tensors at d_ff = 4 D come to about 24 D). Convolutional stacks (the vocoder generator) use the same formula with
A = CONV_FACTOR, T = their time length, D = their channels and L = their conv layers. Frozen towers whose inputs
need no gradient (Stage E's frozen encoders) store no activations. Attention scores are not stored (fused SDPA).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omni import builders  # noqa: E402
from omni.audio import encoder_frames  # noqa: E402
from omni.audio_encoder import AudioEncoderConfig  # noqa: E402
from omni.components import vision_encoder_config  # noqa: E402
from omni.config import from_dict, load_config_file  # noqa: E402
from omni.ocr import OcrModel  # noqa: E402
from omni.stages import STAGE_CLASSES, STAGE_OF_PREFIX, detect_stage  # noqa: E402
from omni.thinker import Thinker, ThinkerConfig  # noqa: E402
from omni.vision_encoder import VisionConfig  # noqa: E402

ASSUMED_CHARS = 32  # a character vocabulary (letters, digits, punctuation, blank) when no transcripts are at hand
ASSUMED_AUDIO_SECONDS = 15.0  # clip length for the activation estimate when data.max_mel_length is null
ACTIVATION_FACTOR = 24
CONV_FACTOR = 3  # a conv layer stores its input and its activation's input (+ a residual)


@dataclass
class Stack:
    """One activation-storing stack for the memory estimate: B x T x D x L."""

    name: str
    batch: int
    length: int
    width: int
    layers: int
    factor: int = 24  # values stored per B x T x D x layer: ACTIVATION_FACTOR, CONV_FACTOR for conv stacks


@dataclass
class Report:
    stage: str
    components: dict[str, int]  # "<model>.<top-level child>" -> parameters
    trainable: int
    stacks: list[Stack] = field(default_factory=list)
    logits: int = 0  # B * T * V of the token outputs (0 = none)
    notes: list[str] = field(default_factory=list)
    bytes_per_activation: int = 4
    grad_checkpointing: bool = False

    @property
    def total(self) -> int:
        return sum(self.components.values())

    def memory(self) -> dict[str, int]:
        a = self.bytes_per_activation
        acts = 0
        for s in self.stacks:
            per = s.layers + s.factor if self.grad_checkpointing else s.factor * s.layers
            acts += s.batch * s.length * s.width * per * a
        acts += 2 * self.logits * 4
        out = {"weights": 4 * self.total, "grads": 4 * self.trainable, "adamw": 8 * self.trainable,
               "activations": acts}
        out["total"] = sum(out.values())
        return out


def sibling(path: Path, prefix: str) -> Path | None:
    """The preset of another stage at the same size: omni_sft_medium.json -> thinker_medium.json, demo/omni_sft.json
    -> demo/thinker.json; configs/<prefix>_tiny.json when there is no such file."""
    stem = path.stem
    for p in STAGE_OF_PREFIX:
        if stem.startswith(p):
            candidate = path.with_name(prefix + stem[len(p):] + ".json")
            if candidate.is_file():
                return candidate
    fallback = Path(__file__).resolve().parent.parent / "configs" / f"{prefix}_tiny.json"
    return fallback if fallback.is_file() else None


def saved_config(path: str | None) -> dict | None:
    """The "config" of a stage checkpoint, read through mmap so a large file costs no memory."""
    if path is None or not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["config"]


def char_vocab(manifest, normalize: bool) -> int | None:
    """CTC ids (characters + blank) of the training texts, as the stage script counts them; None when the data is not
    at hand. ASR data (normalize) is read as train_audio_enc.py reads it (any speech layout, or a list of paths);
    OCR data from a JSONL manifest only."""
    from omni.ctc import CharVocab
    from omni.data.speech_layouts import load_asr_records, source_paths
    from omni.text_frontend import normalize_transcript

    if normalize:
        if not all(p.exists() for p in source_paths(manifest)):
            return None
        return len(CharVocab.from_texts(normalize_transcript(r["text"]) for r in load_asr_records(manifest)))
    path = Path(manifest)
    if path.suffix != ".jsonl" or not path.is_file():
        return None
    with path.open() as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    return len(CharVocab.from_texts(texts))


def build(stage: str, cfg, path: Path, args, device: str = "meta") -> tuple[dict[str, torch.nn.Module], list[str]]:
    """The models the stage script trains, built on `device` (meta: shapes only) by the stage's own builder
    (omni.builders), and notes on the assumptions made."""
    notes = []
    with torch.device(device):
        if stage == "text":
            return {"thinker": builders.build_text(cfg).model}, notes
        if stage == "audio":
            vocab = char_vocab(cfg.data.train_manifest, normalize=True)
            if vocab is None:
                vocab = ASSUMED_CHARS
                notes.append(f"CTC vocabulary assumed {ASSUMED_CHARS} characters ({cfg.data.train_manifest} absent)")
            return {"asr": builders.build_audio(cfg, vocab_size=vocab).model}, notes
        if stage == "ocr":
            if cfg.model.vocab_size == 0:
                vocab = char_vocab(cfg.data.train_manifest, normalize=False)
                if vocab is None:
                    vocab = ASSUMED_CHARS
                    notes.append(f"OCR vocabulary assumed {ASSUMED_CHARS} characters")
                cfg.model.vocab_size = vocab
            return {"ocr": builders.build_ocr(cfg).model}, notes
        if stage == "vision":
            thinker = None
            m = cfg.model
            if m.objective == "contrastive" and (m.use_thinker_for_text or m.text.vocab_size == 0):
                thinker_cfg = thinker_config(cfg.data.thinker_ckpt, path, args, notes)
                if m.use_thinker_for_text:
                    thinker = Thinker(thinker_cfg)
                else:
                    m.text.vocab_size = tokenizer_vocab(cfg.data.tokenizer) or thinker_cfg.vocab_size
            return {"vision": builders.build_vision(cfg, thinker=thinker).model}, notes
        if stage == "talker":
            return {"codec": builders.build_codec(cfg.codec).model,
                    "talker": builders.build_talker(cfg.talker).model}, notes
        if stage == "vocoder":
            notes.append("activation estimate covers the generator only, not the MPD/MSD discriminators")
            return {"vocoder": builders.build_vocoder(cfg).model}, notes
        thinker_cfg = thinker_config(cfg.thinker_ckpt, path, args, notes)
        audio_cfg = vision_cfg = None
        if cfg.audio_ckpt is not None:
            audio_cfg = stage_part(cfg.audio_ckpt, args.audio_config, path, "audio_enc", notes)
            audio_cfg = from_dict(AudioEncoderConfig, audio_cfg.get("encoder", audio_cfg), "audio encoder")
        if cfg.vision_ckpt is not None:
            vision_cfg = stage_part(cfg.vision_ckpt, args.vision_config, path, "vision", notes)
            vision_cfg = from_dict(VisionConfig, vision_encoder_config(vision_cfg), "vision encoder")
        model = builders.build_sft(cfg, thinker=thinker_cfg, audio=audio_cfg, vision=vision_cfg).model
        if cfg.freeze_thinker and cfg.train_new_tokens:
            notes.append(f"the embedding counts as trainable (as in the run log) though only "
                         f"{len(builders.new_token_rows())} rows change")
        return {"omni": model}, notes


def stage_part(ckpt_path: str | None, override: str | None, path: Path, prefix: str, notes: list[str]) -> dict:
    """A stage's model config as a dict: --X-config, else the checkpoint's, else the sibling preset's model part."""
    if override is None:
        saved = saved_config(ckpt_path)
        if saved is not None:
            return saved
        found = sibling(path, prefix)
        if found is None:
            raise SystemExit(f"no {ckpt_path} and no {prefix} preset beside {path}; give --{prefix}-config")
        override = str(found)
    notes.append(f"{prefix} shapes from {override}")
    return json.loads(Path(override).read_text()).get("model", {})


def thinker_config(ckpt_path: str | None, path: Path, args, notes: list[str]) -> ThinkerConfig:
    data = stage_part(ckpt_path, args.thinker_config, path, "thinker", notes)
    return from_dict(ThinkerConfig, data, "thinker")


def tokenizer_vocab(tokenizer: str | None) -> int | None:
    if tokenizer is None or not Path(tokenizer).is_file():
        return None
    from omni.tokenizer import Tokenizer

    return Tokenizer.load(tokenizer).vocab_size


def count(models: dict[str, torch.nn.Module]) -> tuple[dict[str, int], int]:
    """Parameters per "<model>.<top-level child>" (parameters shared between children, e.g. tied embeddings,
    counted once, where they first appear) and the trainable total."""
    seen, components, trainable = set(), {}, 0
    for model_name, model in models.items():
        for name, p in model.named_parameters():  # named_parameters already skips shared tensors
            if id(p) in seen:
                continue
            seen.add(id(p))
            key = f"{model_name}.{name.split('.', 1)[0]}"
            components[key] = components.get(key, 0) + p.numel()
            trainable += p.numel() if p.requires_grad else 0
    return components, trainable


def stacks(stage: str, cfg, models: dict[str, torch.nn.Module]) -> tuple[list[Stack], int]:
    """The activation-storing stacks (B, T, D, L) of one micro-batch and the B * T * V of the token outputs."""
    if stage == "talker":  # the two phases are separate runs; this estimates the larger (Talker) one
        t = cfg.talker
        b, frames = t.train.batch_size, t.model.max_text_len + t.model.max_frames
        return ([Stack("talker", b, frames, t.model.d_model, t.model.n_layers)],
                b * t.model.max_frames * t.model.n_codebooks * t.model.codebook_size)
    b = cfg.train.batch_size
    m = cfg.model
    if stage == "text":
        return [Stack("thinker", b, cfg.data.seq_len, m.d_model, m.n_layers)], b * cfg.data.seq_len * m.vocab_size
    if stage == "audio":
        mel = cfg.data.max_mel_length or int(ASSUMED_AUDIO_SECONDS * 100)
        return [Stack("encoder", b, encoder_frames(mel), m.encoder.d_model, m.encoder.n_layers)], 0
    if stage == "ocr":
        frames = -(-cfg.data.max_width // OcrModel.width_stride) if cfg.data.max_width else m.max_frames
        return [Stack("ocr", b, frames, m.d_model, m.n_layers)], 0
    if stage == "vision":
        v = m.vision
        out = [Stack("vit", b, (v.image_size // v.patch_size) ** 2 + 1, v.d_model, v.n_layers)]
        if m.objective == "contrastive" and not m.use_thinker_for_text:
            out.append(Stack("text", b, cfg.data.max_text_length, m.text.d_model, m.text.n_layers))
        return out, 0
    if stage == "vocoder":  # generator only: per upsampling, the transposed conv + its MRF's dilated conv pairs
        out, length, width = [], cfg.data.segment_frames, m.upsample_initial_channels
        convs = 1 + 2 * sum(len(d) for d in m.resblock_dilations)
        for i, rate in enumerate(m.upsample_rates):
            length, width = length * rate, width // 2
            out.append(Stack(f"generator.up{i}", b, length, width, convs, CONV_FACTOR))
        return out, 0
    omni = models["omni"]  # sft: the Thinker always (gradients flow through it to the projectors), encoders if trained
    t = omni.thinker.cfg
    out = [Stack("thinker", b, cfg.data.max_length, t.d_model, t.n_layers)]
    if omni.audio_encoder is not None and not cfg.freeze_audio_encoder:
        a = omni.audio_encoder.encoder.cfg
        out.append(Stack("audio_encoder", b, encoder_frames(cfg.data.max_mel_frames or 3000), a.d_model, a.n_layers))
    if omni.vision_encoder is not None and not cfg.freeze_vision_encoder:
        v = omni.vision_encoder.cfg
        out.append(Stack("vision_encoder", b, (v.image_size // v.patch_size) ** 2 + 1, v.d_model, v.n_layers))
    return out, b * cfg.data.max_length * t.vocab_size


def analyse(path: str | Path, stage: str | None = None, args=None) -> Report:
    path = Path(path)
    args = args or parse_args([str(path)])
    stage = stage or detect_stage(json.loads(path.read_text()), path.name)
    cfg = load_config_file(STAGE_CLASSES[stage], path)
    models, notes = build(stage, cfg, path, args)
    components, trainable = count(models)
    stack_list, logits = stacks(stage, cfg, models)
    train = cfg.talker.train if stage == "talker" else cfg.train
    return Report(stage, components, trainable, stack_list, logits, notes,
                  bytes_per_activation=2 if train.precision in ("bf16", "fp16") else 4,
                  grad_checkpointing=train.grad_checkpointing)


def human(n: float, unit: str = "") -> str:
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="stage config files")
    parser.add_argument("--stage", choices=sorted(STAGE_CLASSES), help="the stage (default: detected from the config)")
    parser.add_argument("--thinker-config", help="Thinker shapes for Stage E / the vision text tower (a config)")
    parser.add_argument("--audio-config", help="AuT shapes for Stage E (an audio_enc config)")
    parser.add_argument("--vision-config", help="ViT shapes for Stage E (a vision config)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per config instead of a table")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    for path in args.configs:
        r = analyse(path, args.stage, args)
        mem = r.memory()
        if args.json:
            print(json.dumps({"config": path, "stage": r.stage, "components": r.components, "total": r.total,
                              "trainable": r.trainable, "memory_bytes": mem, "notes": r.notes}))
            continue
        print(f"{path}  (stage {r.stage})")
        for name, n in r.components.items():
            print(f"  {name:<32} {n:>14,}")
        print(f"  {'total':<32} {r.total:>14,}  ({human(r.total)})")
        print(f"  {'trainable':<32} {r.trainable:>14,}  ({human(r.trainable)})")
        gc = ", grad checkpointing" if r.grad_checkpointing else ""
        print(f"  memory estimate ({r.bytes_per_activation}-byte activations{gc}): " +
              ", ".join(f"{k} {human(v, 'B')}" for k, v in mem.items()))
        for note in r.notes:
            print(f"  note: {note}")


if __name__ == "__main__":
    main()
