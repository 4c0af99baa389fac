"""One chat session over a trained omni model: load once, then answer turns with text, image, audio and OCR in and
text and speech out. infer_chat.py (the CLI) and app.py (the browser chat) both drive this, so the two can never
build prompts, generate or speak differently.

    session = ChatSession.from_export("checkpoints/demo/merged_model")            # or .from_checkpoints(...)
    text, wav = session.answer([{"role": "user", "content": "What colour is the circle?"}], image="circle.png",
                               speak=True)                                        # wav: (N,) float32 at 16 kHz

Design choices
- The model is the Stage-E (SFT) Thinker with its projectors: omni_final.pt laid over the stage weights it names
  (load_sft_model: each part built once by omni.components.load_stage_model; scripts/evaluate.py scores Stage E
  with it too), or the merged export (omni.load_exported).
- Prompts are built as SFT built them: `ChatEncoder.encode_prompt` with "<image> " / "<audio> " (and the OCR
  reading, `Text in the image: "..."`) before the FIRST user turn; `messages` are passed as typed and the session
  adds that prefix, so a conversation's media belong to the whole conversation. Images go through
  `image_to_tensor`, audio through `load_audio` (any rate -> 16 kHz) + `LogMel`, OCR lines through `line_to_tensor`.
- Generation uses the Thinker's KV cache and stops at <|im_end|>; temperature 0 is greedy. The answer budget is
  cut to what the Thinker's max_seq_len leaves (a prompt that fills it is an InvalidInput, not a crash).
- Speech: the Talker + codec with the vocoder the vocoder run's verdict favours (omni.speech.Vocoder.judged:
  HiFi-GAN or Griffin-Lim, by held-out ASR CER; HiFi-GAN for runs without a verdict), or the other on request
  (both share the Talker and codec; only the last step differs).
- Every problem a user can cause (missing part, unreadable file, prompt too long) raises an omni.errors.UserError
  with one clear message; callers show it (the CLI as `infer_chat.py: error: ...`, the app in the page).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

import omni
from omni.asr import Transcriber
from omni.audio import LogMel, load_audio
from omni.chat import ChatEncoder, media_prefix
from omni.components import SftWeights, load_stage_model, read_sft
from omni.config import from_dict
from omni.ctc import CharVocab, ctc_transcripts
from omni.data.images import image_to_tensor, line_to_tensor, load_image
from omni.errors import InvalidInput, MissingInput
from omni.metrics import char_error_counts
from omni.omni_model import OmniConfig, OmniModel
from omni.speech import SpeechSynthesizer, Vocoder
from omni.text_frontend import normalize_transcript
from omni.tokenizer import TOKENIZER_FILE, Tokenizer

HIFIGAN, GRIFFIN_LIM = "hifigan", "griffin-lim"  # the vocoder choices (omni.speech.Vocoder.name)


@dataclass
class Media:
    """A conversation's media, preprocessed once: model inputs (batch of one) and the text put before the first
    question."""
    images: torch.Tensor | None = None  # (1, 3, S, S)
    mel: torch.Tensor | None = None  # (1, T, F)
    mel_lengths: torch.Tensor | None = None  # (1,)
    prefix: str = ""
    ocr_text: str | None = None


def load_sft_model(sft: SftWeights, stage: dict, device: torch.device | str = "cpu"):
    """Stage E's OmniModel: each part built once from the stage file `stage` names for it (component -> file), the
    projectors (born in Stage E) and any trained stage parameters laid over them from omni_final.pt (`sft`).
    Returns (model, the Stage-B CTC model whose encoder it uses or None, that model's StageWeights or None)."""
    thinker, _ = load_stage_model(stage["thinker"], "thinker", device)
    asr_model = asr_weights = vit = None
    if stage.get("audio_encoder"):
        asr_model, asr_weights = load_stage_model(stage["audio_encoder"], "audio_encoder", device)
    if stage.get("vision_encoder"):
        vit, _ = load_stage_model(stage["vision_encoder"], "vision_encoder", device)
    model = OmniModel(from_dict(OmniConfig, sft.config.get("omni", {}), where=f"{sft.source} 'config.omni'"),
                      thinker=thinker, audio_encoder=asr_model and asr_model.encoder, vision_encoder=vit)
    model.to(device)
    missing, unexpected = model.load_state_dict(sft.state, strict=False)
    if unexpected or any("_projector." in k for k in missing):
        raise InvalidInput(f"{sft.source} does not fit the model built from its stage weights {stage}: unexpected "
                           f"{unexpected[:5]}, missing {[k for k in missing if '_projector.' in k][:5]}")
    return model, asr_model, asr_weights


class ChatSession:
    """A loaded SFT model with what answering needs: tokenizer, optional OCR model, speech synthesizer and ASR."""

    def __init__(self, model: OmniModel, tokenizer: Tokenizer, *, device: torch.device, source: str, ocr=None,
                 ocr_vocab: Sequence[str] | None = None, ocr_max_width: int | None = None,
                 synth: SpeechSynthesizer | None = None, asr: Transcriber | None = None, log: Callable = print):
        self.model, self.tokenizer, self.device, self.source, self.log = model.to(device).eval(), tokenizer, \
            device, source, log
        if tokenizer.vocab_size != model.thinker.cfg.vocab_size:
            raise InvalidInput(f"{tokenizer.model_path} has {tokenizer.vocab_size} pieces, the Thinker "
                               f"{model.thinker.cfg.vocab_size}")
        self.ocr, self.ocr_max_width, self.asr = ocr, ocr_max_width, asr
        self.ocr_vocab = CharVocab.from_list(ocr_vocab) if ocr is not None else None
        # One synthesizer per vocoder; they share the Talker and codec (nothing is copied).
        self.synths: dict[str, SpeechSynthesizer] = {}
        if synth is not None:
            self.synths = {synth.vocoder.name: synth}  # the first is the default: the vocoder run's verdict
            if synth.vocoder.passed_over is not None:  # HiFi-GAN, ranked below Griffin-Lim: still on offer
                self.synths[HIFIGAN] = SpeechSynthesizer(synth.tokenizer, synth.talker, synth.codec,
                                                         Vocoder(synth.vocoder.passed_over))
            self.synths.setdefault(GRIFFIN_LIM, SpeechSynthesizer(synth.tokenizer, synth.talker, synth.codec,
                                                                  Vocoder()))
        has_vision = model.vision_encoder is not None
        self.chat = ChatEncoder(tokenizer, image_tokens=model.image_token_count if has_vision else 0)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_export(cls, model_dir: str | Path, *, device: torch.device | str = "cpu", verify: bool = True,
                    asr_ckpt: str | Path | None = None, log: Callable = print) -> ChatSession:
        """An export.py folder: the Thinker and tokenizer, and whichever of the encoders + projectors, OCR, Talker +
        codec (+ HiFi-GAN) it holds; the ASR check uses its audio encoder's CTC head unless asr_ckpt is given."""
        device = torch.device(device)
        if not Path(model_dir).is_dir():
            raise MissingInput(f"--model_dir {model_dir}: no such folder")
        m = omni.load_exported(model_dir, device=device, verify=verify)
        present, sections = m.config["components_present"], m.config["components"]
        if "thinker" not in present or m.tokenizer is None:
            raise InvalidInput(f"{model_dir} holds no Thinker and tokenizer (present: {present})")
        parts = {n: m[n] for n in ("audio_encoder", "vision_encoder", "audio_projector", "vision_projector")
                 if n in present}
        if ("audio_encoder" in parts) != ("audio_projector" in parts) or \
                ("vision_encoder" in parts) != ("vision_projector" in parts):
            raise InvalidInput(f"{model_dir}: an encoder without its projector (present: {present}); export with "
                               "--omni_ckpt")
        omni_section = m.config.get("omni")
        if omni_section is None and "vision_encoder" in parts:
            log(f"{model_dir}/config.json has no 'omni' section: assuming the default image_tokens="
                f"{OmniConfig().image_tokens!r}")
        hidden = next((p.cfg.hidden_dim for n, p in parts.items() if n.endswith("_projector")), None)
        omni_cfg = from_dict(OmniConfig, omni_section or {"projector_hidden": hidden}, where="config.json 'omni'")
        asr_model = parts.get("audio_encoder")  # an AsrModel: its encoder is the audio tower
        model = OmniModel(omni_cfg, thinker=m.thinker, audio_encoder=asr_model and asr_model.encoder,
                          vision_encoder=parts.get("vision_encoder"), audio_projector=parts.get("audio_projector"),
                          vision_projector=parts.get("vision_projector"))
        ocr = ocr_vocab = ocr_max_width = synth = asr = None
        if "ocr" in present:
            ocr, ocr_vocab, ocr_max_width = m.ocr, sections["ocr"]["vocab"], sections["ocr"].get("max_width")
        if "talker" in present and "codec" in present:
            synth = SpeechSynthesizer(m.tokenizer, m.talker, m.codec, Vocoder.judged(
                m.vocoder, sections["vocoder"].get("judge"), source=f"{model_dir}/config.json", log=log)
                if "vocoder" in present else Vocoder())
        if asr_ckpt:
            asr = Transcriber.load(asr_ckpt, device)
        elif "audio_encoder" in present:
            section = sections["audio_encoder"]
            asr = Transcriber(m.audio_encoder, CharVocab.from_list(section["vocab"]), section["config"]["n_mels"])
        return cls(model, m.tokenizer, device=device, source=f"export {model_dir}", ocr=ocr, ocr_vocab=ocr_vocab,
                   ocr_max_width=ocr_max_width, synth=synth, asr=asr, log=log)

    @classmethod
    def from_checkpoints(cls, omni_ckpt: str | Path, *, thinker_ckpt=None, audio_ckpt=None, vision_ckpt=None,
                         ocr_ckpt=None, talker_ckpt=None, vocoder_ckpt=None, asr_ckpt=None,
                         device: torch.device | str = "cpu", log: Callable = print) -> ChatSession:
        """omni_final.pt (a Stage-E run dir or the file) over the stage weights it names (thinker/audio/vision
        overridable); OCR, Talker (+ vocoder, missing: Griffin-Lim) and ASR from their run dirs when given."""
        device = torch.device(device)
        sft = read_sft(omni_ckpt)
        sft_file = sft.source
        stage = dict(sft.stage_weights)
        stage.update({k: v for k, v in (("thinker", thinker_ckpt), ("audio_encoder", audio_ckpt),
                                        ("vision_encoder", vision_ckpt)) if v})
        if not stage.get("thinker"):
            raise InvalidInput(f"{sft_file} names no Thinker checkpoint: pass --thinker_ckpt")
        for name in ("audio_encoder", "vision_encoder"):
            if (stage.get(name) is None) != (name not in sft.config):
                raise InvalidInput(f"{sft_file} was trained {'with' if name in sft.config else 'without'} a {name}; "
                                   f"{'pass its checkpoint' if name in sft.config else 'drop its checkpoint'}")
        model, asr_model, asr_weights = load_sft_model(sft, stage, device)
        tokenizer = Tokenizer.load(sft.tokenizer)
        ocr = ocr_vocab = ocr_max_width = synth = asr = None
        if ocr_ckpt:
            ocr, weights = load_stage_model(ocr_ckpt, "ocr", device)
            ocr_vocab, ocr_max_width = weights.extras["vocab"], weights.extras.get("max_width")
        if talker_ckpt:
            talker_dir = Path(talker_ckpt)
            talker_dir = talker_dir if talker_dir.is_dir() else talker_dir.parent
            own = talker_dir / TOKENIZER_FILE
            synth = SpeechSynthesizer.from_checkpoints(talker_dir, vocoder=vocoder_ckpt, device=device, log=log,
                                                       tokenizer=own if own.is_file() else tokenizer.model_path)
        if asr_ckpt:
            asr = Transcriber.load(asr_ckpt, device)
        elif stage.get("audio_encoder"):
            asr = Transcriber(asr_model, CharVocab.from_list(asr_weights.extras["vocab"]), asr_model.encoder.cfg.n_mels)
        return cls(model, tokenizer, device=device, source=str(omni_ckpt), ocr=ocr, ocr_vocab=ocr_vocab,
                   ocr_max_width=ocr_max_width, synth=synth, asr=asr, log=log)

    # ------------------------------------------------------------------ what the model can do
    @property
    def image_tokens(self) -> int | None:
        return self.model.image_token_count if self.model.vision_encoder is not None else None

    @property
    def vocoders(self) -> list[str]:
        """The vocoder choices for speech, the default (the one the vocoder run's verdict favours, see
        omni.speech.Vocoder.judged) first; [] = no speech."""
        return list(self.synths)

    def lacks(self, what: str) -> str | None:
        """None when the model can take `what` ("image", "audio", "ocr", "speak"), else what it would need."""
        ok, need = {"image": (self.model.vision_encoder is not None, "a vision encoder"),
                    "audio": (self.model.audio_encoder is not None, "an audio encoder"),
                    "ocr": (self.ocr is not None, "an OCR model (--ocr_ckpt, or export with --ocr_ckpt)"),
                    "speak": (bool(self.synths), "a Talker + codec (--talker_ckpt, or export with --talker_ckpt)"),
                    }[what]
        return None if ok else f"needs {need}"

    def _require(self, what: str) -> None:
        if (need := self.lacks(what)) is not None:
            raise InvalidInput(f"{what} {need}; this model ({self.source}) has none")

    # ------------------------------------------------------------------ answering
    def prepare(self, image: str | Path | None = None, audio: str | Path | None = None,
                ocr_image: str | Path | None = None) -> Media:
        """Read and preprocess a conversation's media as SFT did (errors name the file)."""
        media = Media(prefix=media_prefix(image=image is not None, audio=audio is not None))
        if image is not None:
            self._require("image")
            size = self.model.vision_encoder.cfg.image_size
            media.images = image_to_tensor(load_image(image), size)[None].to(self.device)
        if audio is not None:
            self._require("audio")
            mel = LogMel(self.model.audio_encoder.encoder.cfg.n_mels)(load_audio(audio))
            media.mel, media.mel_lengths = mel[None].to(self.device), torch.tensor([mel.shape[0]], device=self.device)
        if ocr_image is not None:
            self._require("ocr")
            line = line_to_tensor(load_image(ocr_image), self.ocr.cfg.height, self.ocr_max_width)[None].to(self.device)
            widths = torch.tensor([line.shape[-1]], device=self.device)
            with torch.no_grad():
                log_probs, _ = self.ocr(line, widths)
            media.ocr_text = ctc_transcripts(log_probs, self.ocr.output_lengths(widths), self.ocr_vocab)[0]
            self.log(f"ocr: {media.ocr_text!r}")
            media.prefix += f'Text in the image: "{media.ocr_text}". '
        return media

    def reply(self, messages: Sequence[dict], media: Media | None = None, *, max_new_tokens: int = 64,
              temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
              generator: torch.Generator | None = None) -> str:
        """The assistant's next turn after `messages` (role/content dicts as typed, ending with a user turn); the
        media prefix goes before the first user turn, where SFT put it."""
        media = media or Media()
        first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        if first is None:
            raise InvalidInput("no question: the conversation has no user turn")
        messages = [dict(m, content=media.prefix + m["content"]) if i == first else m for i, m in enumerate(messages)]
        # Unchecked placeholders: the question goes in as typed (an "<image>" without an image expands to nothing;
        # one too many is an error when the features are spliced in).
        ids, _ = self.chat.encode_prompt(messages, media.images[0] if media.images is not None else None,
                                         media.mel[0] if media.mel is not None else None, add_generation_prompt=True,
                                         check_placeholders=False)
        budget = min(max_new_tokens, self.model.thinker.cfg.max_seq_len - len(ids))
        if budget < 1:
            raise InvalidInput(f"the prompt has {len(ids)} tokens, the Thinker's max_seq_len is "
                               f"{self.model.thinker.cfg.max_seq_len}")
        with torch.no_grad():
            out = self.model.generate(torch.tensor([ids], device=self.device), images=media.images, mel=media.mel,
                                      mel_lengths=media.mel_lengths, max_new_tokens=budget, temperature=temperature,
                                      top_k=top_k, top_p=top_p, eos_id=self.tokenizer.im_end_id,
                                      generator=generator)
        return self.tokenizer.decode(out[0].tolist()).strip()

    def speak(self, text: str, vocoder: str | None = None) -> tuple[torch.Tensor, str]:
        """text -> (waveform (N,) float32 at omni.audio.SAMPLE_RATE, the vocoder's name); vocoder: HIFIGAN,
        GRIFFIN_LIM or None (the default: the vocoder run's verdict, see `vocoders`)."""
        synth, name = self._synth(vocoder)
        return synth.synthesize(text), name

    def speak_stream(self, text: str, vocoder: str | None = None) -> tuple[Iterator[torch.Tensor], str]:
        """`speak` chunk by chunk: (a lazy iterator of waveform chunks (n,) float32 at omni.audio.SAMPLE_RATE, each
        made when it is asked for (omni.speech.SpeechSynthesizer.stream), the vocoder's name)."""
        synth, name = self._synth(vocoder)
        return synth.stream(text), name

    def _synth(self, vocoder: str | None) -> tuple[SpeechSynthesizer, str]:
        self._require("speak")
        name = vocoder or self.vocoders[0]
        if name not in self.synths:
            raise InvalidInput(f"vocoder {name!r}: this model has {self.vocoders}")
        return self.synths[name], name

    def hear(self, wav: torch.Tensor, text: str) -> tuple[str, str, float] | None:
        """The ASR check of spoken `text`: (what the ASR heard, the normalised text, CER), None without ASR."""
        if self.asr is None:
            return None
        heard, ref = self.asr.transcribe([wav])[0], normalize_transcript(text)
        edits, chars = char_error_counts(heard, ref)
        return heard, ref, edits / max(chars, 1)

    def answer(self, messages: Sequence[dict], image=None, audio=None, ocr_image=None, *, speak: bool = False,
               vocoder: str | None = None, temperature: float = 0.0, max_new_tokens: int = 64, top_k=None,
               top_p=None, seed: int = 0) -> tuple[str, torch.Tensor | None]:
        """One turn in one call (the app's path): prepare the media, reply, and speak the reply when asked ->
        (text, waveform or None). Sampling is seeded per call, so the same inputs give the same answer."""
        media = self.prepare(image, audio, ocr_image)
        generator = torch.Generator(self.device).manual_seed(seed)
        text = self.reply(messages, media, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                          top_p=top_p, generator=generator)
        return text, (self.speak(text, vocoder)[0] if speak else None)
