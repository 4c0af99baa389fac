"""Chat with the omni model in a browser: text, an image, an audio clip (upload or microphone) and a text-line image
(OCR) in; the answer as text and, on request, as speech.

    python app.py                                                   # the demo's export, http://127.0.0.1:7860
    python app.py --model_dir merged_model --host 0.0.0.0 --port 8000
    python app.py --omni_ckpt checkpoints/omni_sft_tiny --ocr_ckpt checkpoints/ocr_tiny \
        --talker_ckpt checkpoints/talker_tiny --vocoder_ckpt checkpoints/vocoder_tiny

Loading, prompts, generation and speech are omni.chat_session.ChatSession's, the same code infer_chat.py runs, so
the page answers exactly what the CLI answers for the same question, media and settings. The image, clip and
text line belong to the whole conversation: they go before its first question, as in Stage E's data (a single
image and clip per conversation); "Clear" starts a new one. A file that cannot be read (a corrupt image, an
unreadable clip) or a part the model lacks is reported in the page as one line; the conversation is left as it was.
Only this module imports gradio, so the stage scripts never load it.
"""

import argparse
import os
import sys
import traceback

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo (set before the import)
import gradio as gr  # noqa: E402
import numpy as np
import torch

from omni.audio import SAMPLE_RATE
from omni.chat_session import GRIFFIN_LIM, ChatSession
from omni.errors import UserError

TITLE = "omni: chat with the tiny omni model"
DEMO_EXPORT = "checkpoints/demo/merged_model"  # where scripts/demo.py (make demo) writes its export


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def upload_path(payload) -> str | None:
    """The server-side path of an uploaded file. The listener runs with preprocess=False so that gradio never decodes
    an upload itself (a corrupt image would fail inside gradio, with gradio's message); omni reads it and names the
    problem."""
    if payload is None:
        return None
    return payload.get("path") if isinstance(payload, dict) else str(payload)


def build_app(session: ChatSession) -> gr.Blocks:
    vocoders = session.vocoders
    can = {what: session.lacks(what) is None for what in ("image", "audio", "ocr", "speak")}

    def display(turns: list[dict]) -> list[dict]:
        """The chat as shown: the conversation's image with its first question, then the turns."""
        shown = []
        for turn in turns:
            if turn.get("image"):
                shown.append({"role": "user", "content": gr.Image(turn["image"])})
            shown += [{"role": "user", "content": turn["question"]}, {"role": "assistant", "content": turn["answer"]}]
        return shown

    def respond(question, turns, image, audio, ocr_image, speak, vocoder, temperature, max_new_tokens):
        """One turn -> (chat display, turns, text box, speech or None, status line). On an error the conversation
        stays as it was and the question stays in the box."""
        turns = list(turns or [])
        question = (question or "").strip()
        if not question:
            return display(turns), turns, "", None, "Type a question first."
        files = {"image": upload_path(image), "audio": upload_path(audio), "ocr_image": upload_path(ocr_image)}
        messages = [m for t in turns for m in ({"role": "user", "content": t["question"]},
                                               {"role": "assistant", "content": t["answer"]})]
        try:
            text, wav = session.answer(messages + [{"role": "user", "content": question}], **files,
                                       speak=bool(speak), vocoder=vocoder, temperature=float(temperature),
                                       max_new_tokens=int(max_new_tokens))
        except (UserError, FileNotFoundError, ValueError) as e:  # the user's file or request: say what, keep going
            return display(turns), turns, question, None, f"**Error:** {e}"
        except Exception as e:  # a bug: the traceback goes to the server's log, the page gets one line
            traceback.print_exc()
            return display(turns), turns, question, None, \
                f"**Internal error** ({type(e).__name__}: {e}); see the server log."
        turns.append({"image": files["image"] if not turns else None, "question": question, "answer": text})
        speech = None
        if wav is not None:  # 16-bit PCM, as infer_chat.py --speak writes it
            speech = (SAMPLE_RATE, (wav.clamp(-1, 1).numpy() * 32767).round().astype(np.int16))
        status = f"Answered by {session.source}" + (f", spoken with {vocoder}" if wav is not None else "") + "."
        return display(turns), turns, "", speech, status

    def clear():
        return [], [], "", None, None, None, None, "New conversation."

    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}\nModel: `{session.source}`. The image, clip and text line belong to the "
                    "conversation (they go before its first question, as in training); **Clear** starts a new one.")
        turns = gr.State([])  # {"image", "question", "answer"} per turn: the model's messages and the display
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", height=380)
                question = gr.Textbox(label="Question", placeholder="What colour is the circle?", lines=1)
                with gr.Row():
                    send = gr.Button("Send", variant="primary")
                    clear_btn = gr.Button("Clear")
                status = gr.Markdown("Ready.")
                speech = gr.Audio(label="Spoken answer", type="numpy", format="wav", interactive=False)
            with gr.Column(scale=2):
                image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"],
                                 interactive=can["image"], height=200)
                audio = gr.Audio(label="Audio clip (upload or microphone)", sources=["upload", "microphone"],
                                 type="filepath", format=None, interactive=can["audio"])
                ocr_image = gr.Image(label="Text-line image for OCR (its reading goes into the question)",
                                     type="filepath", sources=["upload", "clipboard"], interactive=can["ocr"],
                                     height=120)
                speak = gr.Checkbox(label="Speak the answer", value=False, interactive=can["speak"])
                vocoder = gr.Radio(vocoders or [GRIFFIN_LIM], value=(vocoders or [GRIFFIN_LIM])[0], label="Vocoder",
                                   info="HiFi-GAN when the model has one; an under-trained HiFi-GAN (the CPU demo's) "
                                        "is less intelligible than Griffin-Lim",
                                   interactive=can["speak"])
                temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                max_new_tokens = gr.Slider(1, session.model.thinker.cfg.max_seq_len, value=64, step=1,
                                           label="Max new tokens")
                missing = [f"{what}: {session.lacks(what)}" for what, ok in can.items() if not ok]
                if missing:
                    gr.Markdown("This model cannot take: " + "; ".join(missing))
        inputs = [question, turns, image, audio, ocr_image, speak, vocoder, temperature, max_new_tokens]
        outputs = [chatbot, turns, question, speech, status]
        send.click(respond, inputs, outputs, api_name="respond", preprocess=False)
        question.submit(respond, inputs, outputs, api_name=False, preprocess=False)  # Enter = Send, one API name
        clear_btn.click(clear, None, [chatbot, turns, question, speech, image, audio, ocr_image, status],
                        api_name="clear")
    return app


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", help=f"an export.py folder (default: the demo's, {DEMO_EXPORT}, unless "
                                            "--omni_ckpt is given)")
    parser.add_argument("--no_verify", action="store_true", help="skip checking --model_dir's files' sha256")
    parser.add_argument("--omni_ckpt", help="Stage-E run dir or omni_final.pt (instead of an export)")
    for flag, what in (("thinker", "Stage-A"), ("audio", "Stage-B"), ("vision", "Stage-C")):
        parser.add_argument(f"--{flag}_ckpt", help=f"{what} run dir (default: the one omni_final.pt names)")
    parser.add_argument("--ocr_ckpt", help="OCR run dir or ocr.pt (for the OCR image)")
    parser.add_argument("--talker_ckpt", help="Stage-D run dir: talker.pt, rvq_codec.pt (for speech)")
    parser.add_argument("--vocoder_ckpt", help="vocoder run dir or hifigan.pt (missing: Griffin-Lim only)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: reachable from others)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.omni_ckpt and args.model_dir:
        parser.error("give one of --omni_ckpt (checkpoints) or --model_dir (an export folder)")
    try:
        if args.omni_ckpt:
            session = ChatSession.from_checkpoints(
                args.omni_ckpt, thinker_ckpt=args.thinker_ckpt, audio_ckpt=args.audio_ckpt,
                vision_ckpt=args.vision_ckpt, ocr_ckpt=args.ocr_ckpt, talker_ckpt=args.talker_ckpt,
                vocoder_ckpt=args.vocoder_ckpt, device=args.device, log=log)
        else:
            session = ChatSession.from_export(args.model_dir or DEMO_EXPORT, device=args.device,
                                              verify=not args.no_verify, log=log)
    except (UserError, FileNotFoundError, ValueError, RuntimeError) as e:
        hint = "" if args.model_dir or args.omni_ckpt else " (run `make demo` first, or pass --model_dir)"
        parser.exit(1, f"app.py: error: {e}{hint}\n")
    log(f"model: {session.source} on {args.device}; image tokens {session.image_tokens or '-'}; speech "
        f"{session.vocoders or 'none'}")
    app = build_app(session)
    # launch prints "* Running on local URL:  http://HOST:PORT", which `make chat` and the test wait for.
    app.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
