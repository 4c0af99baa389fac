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
written, with the time to first audio, and, when an ASR model is at hand, its transcript and CER). The WAV is
written as the speech is made: each chunk of SpeechSynthesizer.stream (0.5 s) is appended and flushed when it is
ready, so a player can start on the file before the answer is fully spoken. Logs go to stderr. Loading, prompts,
generation and speech are omni.chat_session.ChatSession's, which the browser chat (app.py) uses too.
"""

import argparse
import sys
from pathlib import Path

import soundfile as sf
import torch

from omni.audio import SAMPLE_RATE
from omni.chat_session import GRIFFIN_LIM, HIFIGAN, ChatSession
from omni.components import SFT_WEIGHTS_FILE
from omni.errors import UserError
from omni.speech import write_stream

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
                    help="speak with Griffin-Lim even when the vocoder run's verdict (vocoder_judge.json: held-out "
                         "ASR CER of both) favours HiFi-GAN")
parser.add_argument("--hifigan", action="store_true",
                    help="speak with HiFi-GAN even when the vocoder run's verdict favours Griffin-Lim")
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
if args.griffin_lim and args.hifigan:
    parser.error("give at most one of --griffin_lim and --hifigan")
device = torch.device(args.device)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fail(msg: str):
    parser.exit(1, f"infer_chat.py: error: {msg}\n")


# ---- load: the SFT model, its tokenizer, and what --ocr / --speak / the CER check need
try:
    if args.model_dir:
        session = ChatSession.from_export(args.model_dir, device=device, verify=not args.no_verify,
                                          asr_ckpt=args.asr_ckpt, log=log)
    else:
        session = ChatSession.from_checkpoints(
            args.omni_ckpt, thinker_ckpt=args.thinker_ckpt, audio_ckpt=args.audio_ckpt, vision_ckpt=args.vision_ckpt,
            ocr_ckpt=args.ocr_ckpt, talker_ckpt=args.talker_ckpt, vocoder_ckpt=args.vocoder_ckpt,
            asr_ckpt=args.asr_ckpt, device=device, log=log)
except (UserError, FileNotFoundError, ValueError, RuntimeError) as e:  # RuntimeError: unreadable file, shapes
    fail(str(e))
for flag in ("image", "audio", "ocr", "speak"):
    if getattr(args, flag) and (need := session.lacks(flag)):
        fail(f"--{flag} {need}")
log(f"model: {session.source} on {device}; image tokens {session.image_tokens or '-'}")

# ---- media: preprocessed once, as SFT preprocesses them
try:
    media = session.prepare(args.image, args.audio, args.ocr)
except (UserError, FileNotFoundError, ValueError) as e:
    fail(str(e))
generator = torch.Generator(device).manual_seed(args.seed)


def speak(text: str) -> None:
    chunks, vocoder = session.speak_stream(text, GRIFFIN_LIM if args.griffin_lim else HIFIGAN if args.hifigan
                                           else None)
    Path(args.speak).parent.mkdir(parents=True, exist_ok=True)
    samples, first = write_stream(chunks, args.speak)  # the file grows chunk by chunk as the speech is made
    ttfa = "no audio" if first is None else f"first audio after {first:.3f} s"
    print(f"speech: wrote {args.speak} ({samples / SAMPLE_RATE:.2f} s, {vocoder}; {ttfa})", flush=True)
    written, _ = sf.read(args.speak, dtype="float32")  # the check hears the 16-bit file, as a listener would
    heard = session.hear(torch.from_numpy(written), text)
    if heard is None:
        log("speech: no ASR model (--asr_ckpt or an audio encoder with its CTC head): CER not computed")
        return
    print(f"speech: asr {heard[0]!r} vs {heard[1]!r}: cer {heard[2]:.3f}", flush=True)


# ---- chat: one-shot, or one turn per stdin line
messages: list[dict] = []
for question in [args.text] if args.text is not None else sys.stdin:
    question = question.strip()
    if args.text is None and question in ("exit", "quit"):
        break
    if not question:
        continue
    messages.append({"role": "user", "content": question})
    try:
        reply = session.reply(messages, media, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, generator=generator)
    except (UserError, ValueError) as e:
        fail(str(e))
    messages.append({"role": "assistant", "content": reply})
    print(reply, flush=True)
    if args.speak:
        speak(reply)
