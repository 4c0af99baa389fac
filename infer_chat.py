"""Chat with the omni model: text, image QA, audio QA, OCR into the prompt, speech out.

    python infer_chat.py --omni_ckpt checkpoints/omni_sft_tiny --text "Hello"                       # one-shot
    python infer_chat.py --omni_ckpt checkpoints/omni_sft_tiny --image data/images/imgs/val_000006.png \
        --text "What colour is the circle?"
    python infer_chat.py --omni_ckpt checkpoints/omni_sft_tiny --audio clip.flac --text "What did the speaker say?"
    python infer_chat.py --omni_ckpt checkpoints/omni_sft_tiny --ocr_ckpt checkpoints/ocr_tiny --ocr line.png \
        --text "What does the text say?"
    python infer_chat.py --omni_ckpt ... --talker_ckpt checkpoints/talker_tiny --vocoder_ckpt checkpoints/vocoder_tiny \
        --text "Say hello" --speak out.wav               # + the CER of the ASR transcript of out.wav vs the answer
    python infer_chat.py --model_dir merged_model --image x.png --text "..."           # from an export.py folder
    python infer_chat.py --omni_ckpt checkpoints/omni_sft_tiny                          # interactive (exit / EOF)

The model is the Stage-E (SFT) Thinker with its projectors: omni_final.pt laid over the stage weights it names
(thinker_ckpt / audio_ckpt / vision_ckpt, overridable here), or the merged export. Prompts are built as SFT built
them: omni.chat's `ChatEncoder.encode_prompt` (the chat template with "<image> " / "<audio> " before the first
question, the placeholders expanded to the encoders' token counts), images through `image_to_tensor`, audio
through `load_audio` (any rate -> 16 kHz) + `LogMel`. Generation uses the Thinker's KV cache and stops at
<|im_end|>; --temperature 0 is greedy. --ocr runs the OCR model on a text-line image and puts its reading into the
question (`Text in the image: "..."`). The answer goes to stdout; with --speak also `speech: ...` lines (the WAV
written and, when an ASR model is at hand, its transcript and CER). Logs go to stderr.
"""

import argparse
import sys
from pathlib import Path

import soundfile as sf
import torch

import omni
from omni.audio import SAMPLE_RATE, AudioError, LogMel, load_audio
from omni.chat import ChatEncoder, media_prefix
from omni.components import SFT_WEIGHTS_FILE, ExportError, load_stage_model, read_sft
from omni.config import from_dict
from omni.ctc import CharVocab, ctc_transcripts
from omni.data.images import image_to_tensor, line_to_tensor, load_image
from omni.metrics import char_error_counts
from omni.omni_model import OmniConfig, OmniModel
from omni.speech import SpeechSynthesizer, Transcriber, Vocoder
from omni.text_frontend import normalize_transcript
from omni.tokenizer import TOKENIZER_FILE, Tokenizer

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--omni_ckpt", help=f"Stage-E run dir or {SFT_WEIGHTS_FILE}")
parser.add_argument("--model_dir", help="an export.py folder (instead of the checkpoints)")
parser.add_argument("--no_verify", action="store_true",
                    help="skip checking --model_dir's files against their sha256 (faster start, damage goes unseen)")
parser.add_argument("--thinker_ckpt", help="Stage-A run dir or thinker.pt (default: the one omni_final.pt names)")
parser.add_argument("--audio_ckpt", help="Stage-B run dir or audio_enc.pt (default: the one omni_final.pt names)")
parser.add_argument("--vision_ckpt", help="Stage-C run dir or vision.pt (default: the one omni_final.pt names)")
parser.add_argument("--ocr_ckpt", help="OCR run dir or ocr.pt (needed for --ocr)")
parser.add_argument("--talker_ckpt", help="Stage-D run dir: talker.pt, rvq_codec.pt (needed for --speak)")
parser.add_argument("--vocoder_ckpt", help="vocoder run dir or hifigan.pt (missing: Griffin-Lim)")
parser.add_argument("--griffin_lim", action="store_true",
                    help="speak with Griffin-Lim even when HiFi-GAN weights are there (an under-trained HiFi-GAN, "
                         "like the CPU demo's, is less intelligible)")
parser.add_argument("--asr_ckpt", help="ASR for the --speak check (default: the audio encoder's CTC head)")
parser.add_argument("--text", help="one-shot question (without it: interactive, one turn per stdin line)")
parser.add_argument("--image", help="image file to ask about")
parser.add_argument("--audio", help="audio file to ask about (any format soundfile reads, resampled to 16 kHz)")
parser.add_argument("--ocr", metavar="IMAGE", help="text-line image: its OCR reading goes into the question")
parser.add_argument("--speak", metavar="OUT_WAV", help="also speak the answer into this 16 kHz WAV")
parser.add_argument("--max_new_tokens", type=int, default=64)
parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
parser.add_argument("--top_k", type=int, default=None)
parser.add_argument("--top_p", type=float, default=None)
parser.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
args = parser.parse_args()
if (args.omni_ckpt is None) == (args.model_dir is None):
    parser.error("give exactly one of --omni_ckpt (checkpoints) or --model_dir (an export folder)")
for flag in ("image", "audio", "ocr"):
    if getattr(args, flag) and not Path(getattr(args, flag)).is_file():
        parser.exit(1, f"infer_chat.py: error: --{flag} {getattr(args, flag)}: no such file\n")
device = torch.device(args.device)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fail(msg: str):
    parser.exit(1, f"infer_chat.py: error: {msg}\n")


# ---- load: the SFT model, its tokenizer, and what --ocr / --speak / the CER check need
ocr = ocr_vocab = ocr_max_width = synth = asr = None
try:
    if args.model_dir:
        if not Path(args.model_dir).is_dir():
            fail(f"--model_dir {args.model_dir}: no such folder")
        m = omni.load_exported(args.model_dir, device=device, verify=not args.no_verify)
        present, sections = m.config["components_present"], m.config["components"]
        if "thinker" not in present or m.tokenizer is None:
            fail(f"{args.model_dir} holds no Thinker and tokenizer (present: {present})")
        tokenizer = m.tokenizer
        parts = {n: m[n] for n in ("audio_encoder", "vision_encoder", "audio_projector", "vision_projector")
                 if n in present}
        if ("audio_encoder" in parts) != ("audio_projector" in parts) or \
                ("vision_encoder" in parts) != ("vision_projector" in parts):
            fail(f"{args.model_dir}: an encoder without its projector (present: {present}); export with --omni_ckpt")
        omni_section = m.config.get("omni")
        if omni_section is None and "vision_encoder" in parts:
            log(f"{args.model_dir}/config.json has no 'omni' section: assuming the default image_tokens="
                f"{OmniConfig().image_tokens!r}")
        hidden = next((p.cfg.hidden_dim for n, p in parts.items() if n.endswith("_projector")), None)
        omni_cfg = from_dict(OmniConfig, omni_section or {"projector_hidden": hidden}, where="config.json 'omni'")
        asr_model = parts.get("audio_encoder")  # an AsrModel: its encoder is the audio tower
        model = OmniModel(omni_cfg, thinker=m.thinker, audio_encoder=asr_model and asr_model.encoder,
                          vision_encoder=parts.get("vision_encoder"), audio_projector=parts.get("audio_projector"),
                          vision_projector=parts.get("vision_projector"))
        if "ocr" in present:
            ocr, ocr_vocab, ocr_max_width = m.ocr, sections["ocr"]["vocab"], sections["ocr"].get("max_width")
        if "talker" in present and "codec" in present:
            vocoder = Vocoder(m.vocoder if "vocoder" in present else None)
            synth = SpeechSynthesizer(tokenizer, m.talker, m.codec, vocoder)
        if args.asr_ckpt is None and "audio_encoder" in present:
            section = sections["audio_encoder"]
            asr = Transcriber(m.audio_encoder, CharVocab.from_list(section["vocab"]), section["config"]["n_mels"])
    else:
        sft = read_sft(args.omni_ckpt)
        sft_file = sft.source
        stage = dict(sft.stage_weights)
        stage.update({k: v for k, v in (("thinker", args.thinker_ckpt), ("audio_encoder", args.audio_ckpt),
                                        ("vision_encoder", args.vision_ckpt)) if v})
        if not stage.get("thinker"):
            fail(f"{sft_file} names no Thinker checkpoint: pass --thinker_ckpt")
        for name in ("audio_encoder", "vision_encoder"):
            if (stage.get(name) is None) != (name not in sft.config):
                fail(f"{sft_file} was trained {'with' if name in sft.config else 'without'} a {name}; "
                     f"{'pass its checkpoint' if name in sft.config else 'drop its checkpoint'}")
        # Each part built once from its stage file; the projectors (born in Stage E) come from omni_final.pt below.
        thinker, _ = load_stage_model(stage["thinker"], "thinker", device)
        asr_model = vit = None
        if stage.get("audio_encoder"):
            asr_model, asr_weights = load_stage_model(stage["audio_encoder"], "audio_encoder", device)
        if stage.get("vision_encoder"):
            vit, _ = load_stage_model(stage["vision_encoder"], "vision_encoder", device)
        model = OmniModel(from_dict(OmniConfig, sft.config.get("omni", {}), where=f"{sft_file} 'config.omni'"),
                          thinker=thinker, audio_encoder=asr_model and asr_model.encoder, vision_encoder=vit)
        model.to(device)
        missing, unexpected = model.load_state_dict(sft.state, strict=False)
        if unexpected or any("_projector." in k for k in missing):
            fail(f"{sft_file} does not fit the model built from its stage weights: unexpected {unexpected[:5]}, "
                 f"missing {[k for k in missing if '_projector.' in k][:5]}")
        tokenizer = Tokenizer.load(sft.tokenizer)
        if args.ocr_ckpt:
            ocr, weights = load_stage_model(args.ocr_ckpt, "ocr", device)
            ocr_vocab, ocr_max_width = weights.extras["vocab"], weights.extras.get("max_width")
        if args.talker_ckpt:
            talker_dir = Path(args.talker_ckpt)
            talker_dir = talker_dir if talker_dir.is_dir() else talker_dir.parent
            own = talker_dir / TOKENIZER_FILE
            synth = SpeechSynthesizer.from_checkpoints(talker_dir, vocoder=args.vocoder_ckpt, device=device, log=log,
                                                       tokenizer=own if own.is_file() else tokenizer.model_path)
        if args.asr_ckpt is None and stage.get("audio_encoder"):
            asr = Transcriber(asr_model, CharVocab.from_list(asr_weights.extras["vocab"]), asr_model.encoder.cfg.n_mels)
    if args.asr_ckpt:
        asr = Transcriber.load(args.asr_ckpt, device)
except (ExportError, FileNotFoundError, ValueError, RuntimeError) as e:  # RuntimeError: unreadable file, shapes
    fail(str(e))
if synth is not None and args.griffin_lim:
    synth.vocoder = Vocoder()
model.to(device).eval()
if tokenizer.vocab_size != model.thinker.cfg.vocab_size:
    fail(f"{tokenizer.model_path} has {tokenizer.vocab_size} pieces, the Thinker {model.thinker.cfg.vocab_size}")
for flag, ok, need in (("image", model.vision_encoder is not None, "a vision encoder"),
                       ("audio", model.audio_encoder is not None, "an audio encoder"),
                       ("ocr", ocr is not None, "an OCR model (--ocr_ckpt, or export with --ocr_ckpt)"),
                       ("speak", synth is not None, "a Talker + codec (--talker_ckpt, or export with --talker_ckpt)")):
    if getattr(args, flag) and not ok:
        fail(f"--{flag} needs {need}")
log(f"model: {'export ' + args.model_dir if args.model_dir else args.omni_ckpt} on {device}; image tokens "
    f"{model.image_token_count if model.vision_encoder is not None else '-'}")

# ---- media: preprocessed once, as SFT preprocesses them
images = mel = mel_lengths = None
prefix = media_prefix(image=bool(args.image), audio=bool(args.audio))
try:
    if args.image:
        images = image_to_tensor(load_image(args.image), model.vision_encoder.cfg.image_size)[None].to(device)
    if args.audio:
        n_mels = model.audio_encoder.encoder.cfg.n_mels
        mel = LogMel(n_mels)(load_audio(args.audio))[None].to(device)
        mel_lengths = torch.tensor([mel.shape[1]], device=device)
    if args.ocr:
        line = line_to_tensor(load_image(args.ocr), ocr.cfg.height, ocr_max_width)[None].to(device)
        widths = torch.tensor([line.shape[-1]], device=device)
        with torch.no_grad():
            log_probs, _ = ocr(line, widths)
        ocr_text = ctc_transcripts(log_probs, ocr.output_lengths(widths), CharVocab.from_list(ocr_vocab))[0]
        log(f"ocr: {ocr_text!r}")
        prefix += f'Text in the image: "{ocr_text}". '
except (AudioError, FileNotFoundError, ValueError) as e:
    fail(str(e))
chat = ChatEncoder(tokenizer, image_tokens=model.image_token_count if model.vision_encoder is not None else 0)
generator = torch.Generator(device).manual_seed(args.seed)


def answer(messages: list[dict]) -> str:
    """Generate the assistant's next turn; the media go with the first user turn (where their placeholders are)."""
    # Unchecked placeholders: the question goes in as typed, as before (an "<image>" without --image expands to
    # nothing; one too many is an error when the features are spliced in).
    ids, _ = chat.encode_prompt(messages, images[0] if images is not None else None,
                                mel[0] if mel is not None else None, add_generation_prompt=True,
                                check_placeholders=False)
    budget = min(args.max_new_tokens, model.thinker.cfg.max_seq_len - len(ids))
    if budget < 1:
        raise ValueError(f"the prompt has {len(ids)} tokens, the Thinker's max_seq_len is "
                         f"{model.thinker.cfg.max_seq_len}")
    out = model.generate(torch.tensor([ids], device=device), images=images, mel=mel, mel_lengths=mel_lengths,
                         max_new_tokens=budget, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         eos_id=tokenizer.im_end_id, generator=generator)
    return tokenizer.decode(out[0].tolist()).strip()


def speak(text: str) -> None:
    wav = synth.synthesize(text)
    Path(args.speak).parent.mkdir(parents=True, exist_ok=True)
    sf.write(args.speak, wav.numpy(), SAMPLE_RATE, subtype="PCM_16")
    print(f"speech: wrote {args.speak} ({wav.shape[0] / SAMPLE_RATE:.2f} s, {synth.vocoder.name})", flush=True)
    if asr is None:
        log("speech: no ASR model (--asr_ckpt or an audio encoder with its CTC head): CER not computed")
        return
    written, _ = sf.read(args.speak, dtype="float32")
    heard = asr.transcribe([torch.from_numpy(written)])[0]
    ref = normalize_transcript(text)
    edits, chars = char_error_counts(heard, ref)
    print(f"speech: asr {heard!r} vs {ref!r}: cer {edits / max(chars, 1):.3f}", flush=True)


# ---- chat: one-shot, or one turn per stdin line
first = True
messages: list[dict] = []
for question in [args.text] if args.text is not None else sys.stdin:
    question = question.strip()
    if args.text is None and question in ("exit", "quit"):
        break
    if not question:
        continue
    messages.append({"role": "user", "content": (prefix if first else "") + question})
    first = False
    try:
        reply = answer(messages)
    except ValueError as e:
        fail(str(e))
    messages.append({"role": "assistant", "content": reply})
    print(reply, flush=True)
    if args.speak:
        speak(reply)
