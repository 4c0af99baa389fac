"""The config dataclass of each stage script: nested `model`, `data` and `train` parts, plus `init_from`.

JSON files in configs/ mirror these; defaults live here and in the model configs, never in the scripts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omni.audio import encoder_frames
from omni.audio_encoder import AudioEncoderConfig
from omni.codec import CodecConfig
from omni.config import TrainConfig
from omni.contrastive import ContrastiveConfig
from omni.ocr import OcrConfig, OcrModel
from omni.omni_model import OmniConfig
from omni.talker import TalkerConfig
from omni.thinker import ThinkerConfig
from omni.vocoder import VocoderConfig


@dataclass
class TextData:
    # A text corpus: a .txt file (documents separated by blank lines), a .jsonl file ("text" field), a parquet shard
    # ("text" column), any of them .gz'd (not parquet), a folder of such shards or a glob of them, e.g.
    # data/text/tinystories/data/train-*.parquet (omni.data.text_sources detects which and logs it)
    train_path: str = "data/text/train.txt"
    val_path: str = "data/text/val.txt"  # held-out documents for perplexity, same layouts
    seq_len: int = 512  # training context in tokens (<= model.max_seq_len)
    tokenizer: str | None = None  # existing tokenizer.model (or its folder); None = train one into save_dir
    tokenizer_model_type: str = "unigram"  # SentencePiece algorithm when training one: unigram | bpe
    # The tokenizer trains on a seeded uniform sample of train_path of at most this many documents and bytes
    # (0 = no bound); a smaller corpus is used whole.
    tokenizer_sample_docs: int = 200_000
    tokenizer_sample_bytes: int = 100_000_000
    val_batch_size: int = 16
    sample_prompts: list[str] = field(default_factory=lambda: ["Once upon a time", "The red circle"])
    sample_tokens: int = 40  # tokens generated per prompt at each evaluation (greedy), shown in the log


@dataclass
class TextStage:
    """Stage A: SentencePiece tokenizer + Thinker language model (train_text.py)."""

    model: ThinkerConfig = field(default_factory=lambda: ThinkerConfig(vocab_size=4000))
    data: TextData = field(default_factory=TextData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(save_dir="checkpoints/thinker_tiny"))
    init_from: str | None = None  # weights of an earlier run (checkpoint file or run dir) for a fresh run

    def __post_init__(self):
        if self.data.seq_len < 1:
            raise ValueError(f"data.seq_len must be >= 1, got {self.data.seq_len}")
        if self.data.seq_len > self.model.max_seq_len:
            raise ValueError(f"data.seq_len ({self.data.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})")
        for key in ("tokenizer_sample_docs", "tokenizer_sample_bytes"):
            if getattr(self.data, key) < 0:
                raise ValueError(f"data.{key} must be >= 0 (0 = no bound), got {getattr(self.data, key)}")


@dataclass
class VisionData:
    # A JSONL manifest {"image", "caption", "label"} (paths relative to it), COCO captions JSON, Flickr8k/30k captions
    # file or a captions table (omni.data.image_layouts.load_image_records detects which and logs it)
    train_manifest: str = "data/images/train.jsonl"
    val_manifest: str = "data/images/val.jsonl"  # held-out images for retrieval R@k / accuracy
    train_images: str | None = None  # image folder of train_manifest; None = the layout's convention (COCO:
    # <root>/<split>/ for <root>/annotations/captions_<split>.json; Flickr: Images/, Flicker8k_Dataset/, ...)
    val_images: str | None = None  # image folder of val_manifest, likewise
    tokenizer: str | None = "checkpoints/thinker_tiny/tokenizer.model"  # Stage-A tokenizer (contrastive captions)
    thinker_ckpt: str = "checkpoints/thinker_tiny/thinker.pt"  # Stage-A weights, used when model.use_thinker_for_text
    max_text_length: int = 32  # caption tokens kept (BOS included); train.compile pads every batch to it
    val_batch_size: int = 64
    sample_images: int = 4  # val images whose top caption / predicted class is logged at each evaluation


@dataclass
class VisionStage:
    """Stage C: ViT vision encoder, CLIP-style contrastive or classification (train_vision.py).

    The image size is model.vision.image_size (the data is resized to it), so it is given once.
    """

    model: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    data: VisionData = field(default_factory=VisionData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(save_dir="checkpoints/vision_tiny"))
    init_from: str | None = None  # weights of an earlier run (checkpoint file or run dir) for a fresh run

    def __post_init__(self):
        m, d = self.model, self.data
        if d.max_text_length < 2:
            raise ValueError(f"data.max_text_length must be >= 2 (BOS + one token), got {d.max_text_length}")
        if m.objective == "contrastive" and not m.use_thinker_for_text and d.max_text_length > m.text.max_len:
            raise ValueError(f"data.max_text_length ({d.max_text_length}) exceeds model.text.max_len "
                             f"({m.text.max_len})")


@dataclass
class OcrData:
    # A JSONL manifest {"image", "text"} (paths relative to it), an MJSynth annotation file or a labels file
    # (`<image>\t<text>` lines) (omni.data.image_layouts.load_ocr_records detects which and logs it)
    train_manifest: str = "data/ocr/train.jsonl"
    val_manifest: str = "data/ocr/val.jsonl"  # held-out lines for CER and exact-line accuracy
    train_images: str | None = None  # folder the image paths of train_manifest are relative to; None = its folder
    val_images: str | None = None  # likewise for val_manifest
    max_width: int | None = None  # wider lines are squeezed to it and every batch is padded to it (static shapes,
    # needed by train.compile); None = pad each batch to its widest line
    bucket_batches: int = 8  # sort windows of this many batches by line length to cut padding; 0 = plain shuffle
    val_batch_size: int = 64
    sample_lines: int = 4  # val lines logged as reference -> hypothesis at each evaluation


@dataclass
class OcrStage:
    """Text-line OCR with CTC over characters (train_ocr.py). The character vocabulary comes from the training
    texts; model.vocab_size 0 means "take it from there"."""

    model: OcrConfig = field(default_factory=OcrConfig)
    data: OcrData = field(default_factory=OcrData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(save_dir="checkpoints/ocr_tiny"))
    init_from: str | None = None  # weights of an earlier run (checkpoint file or run dir) for a fresh run

    def __post_init__(self):
        if self.train.compile and self.data.max_width is None:
            raise ValueError("train.compile needs data.max_width: a static line width, so shapes do not recompile")
        if self.data.max_width is not None and -(-self.data.max_width // OcrModel.width_stride) > self.model.max_frames:
            raise ValueError(f"data.max_width ({self.data.max_width}) gives more frames than model.max_frames "
                             f"({self.model.max_frames})")


@dataclass
class AsrModelConfig:
    """Stage-B model: the AuT encoder plus its CTC head. The CTC vocabulary size is not configured: it is the number
    of characters of the normalised training transcripts (+ blank)."""

    encoder: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    ctc_upsample: int = 2  # CTC frames per 12.5 Hz encoder frame: 2 = CTC at 25 Hz (why: omni/audio_encoder.py)

    def __post_init__(self):
        if self.ctc_upsample < 1:
            raise ValueError(f"model.ctc_upsample must be >= 1, got {self.ctc_upsample}")


@dataclass
class SpecAugmentConfig:
    """SpecAugment masking of the training log-mels (omni.audio.spec_augment), done in the training step."""

    enabled: bool = True
    freq_masks: int = 2  # frequency bands per utterance
    freq_width: int = 16  # widest band in mel bins (0..freq_width, uniform)
    time_masks: int = 2  # time spans per utterance
    time_width_frac: float = 0.05  # widest span as a fraction of the utterance's length

    def __post_init__(self):
        if min(self.freq_masks, self.freq_width, self.time_masks) < 0 or not 0.0 <= self.time_width_frac <= 1.0:
            raise ValueError(f"data.spec_augment: counts and widths must be >= 0 and time_width_frac in [0, 1], got "
                             f"freq_masks={self.freq_masks}, freq_width={self.freq_width}, "
                             f"time_masks={self.time_masks}, time_width_frac={self.time_width_frac}")


@dataclass
class AudioData:
    # A JSONL manifest {"audio", "text"[, "duration"]} (paths relative to it), a Common Voice split TSV, a transcript
    # CSV/TSV, a LibriSpeech split folder or an LJSpeech folder, or a list of these read in order
    # (omni.data.speech_layouts.load_asr_records).
    train_manifest: str | list[str] = "data/speech/train.jsonl"
    val_manifest: str | list[str] = "data/speech/val.jsonl"  # held-out utterances for CER / WER
    max_mel_length: int | None = None  # longer clips are skipped (and counted); every batch is padded to it (static
    # shapes, needed by train.compile; scripts/check_mel_lengths.py recommends one); None = pad to the batch's longest
    bucket_batches: int = 8  # sort windows of this many batches by clip length to cut padding; 0 = plain shuffle
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    val_batch_size: int = 32
    sample_transcriptions: int = 4  # val utterances logged as reference -> greedy hypothesis at each evaluation


@dataclass
class AudioStage:
    """Stage B: AuT audio encoder + CTC character head (train_audio_enc.py).

    The number of mel bins is model.encoder.n_mels (the data frontend computes that many), so it is given once.
    """

    model: AsrModelConfig = field(default_factory=AsrModelConfig)
    data: AudioData = field(default_factory=AudioData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(save_dir="checkpoints/audio_enc_tiny"))
    init_from: str | None = None  # weights of an earlier run (checkpoint file or run dir) for a fresh run

    def __post_init__(self):
        max_mel = self.data.max_mel_length
        if self.train.compile and max_mel is None:
            raise ValueError("train.compile needs data.max_mel_length: a static padding length, so shapes do not "
                             "recompile (scripts/check_mel_lengths.py recommends one)")
        if max_mel is not None and max_mel < 1:
            raise ValueError(f"data.max_mel_length must be >= 1 or null, got {max_mel}")
        if max_mel is not None and encoder_frames(max_mel) > self.model.encoder.max_frames:
            raise ValueError(f"data.max_mel_length ({max_mel}) gives {encoder_frames(max_mel)} encoder frames, more "
                             f"than model.encoder.max_frames ({self.model.encoder.max_frames})")


@dataclass
class SftData:
    train_manifest: str = "data/sft/train.jsonl"  # JSONL {"messages", "image"?, "audio"?, "task"?} (omni/data/sft.py)
    val_manifest: str = "data/sft/val.jsonl"  # held-out conversations (disjoint media) for loss and exact match
    tokenizer: str | None = None  # None = the tokenizer named in thinker_ckpt, beside it
    max_length: int = 512  # tokens with media expanded (<= the Thinker's max_seq_len); longer ones are bad samples
    max_mel_frames: int | None = 3000  # longer audio (100 Hz mel frames) is a bad sample; None = no limit
    bucket_batches: int = 8  # sort windows of this many batches by length to cut padding; 0 = plain shuffle
    val_batch_size: int = 32
    sample_conversations: int = 4  # val conversations answered by greedy generation and logged at each evaluation


@dataclass
class SftGroupLr:
    """Peak learning rate per parameter group (None = train.lr); each follows train's warmup + cosine, keeping its
    ratio to train.lr. Frozen groups are simply empty."""

    projectors: float | None = None  # audio_projector + vision_projector
    embeddings: float | None = None  # token embedding (+ untied lm_head); new-token rows only if the Thinker is frozen
    thinker: float | None = None  # every other Thinker parameter
    audio_encoder: float | None = None
    vision_encoder: float | None = None


@dataclass
class SftStage:
    """Stage E: multimodal SFT of Thinker + encoders + projectors (sft_omni.py).

    The Thinker, AuT and ViT shapes come from their stage weights; model holds only what Stage E adds. Freeze flags
    and stage-weight paths live outside model/data so a resume may change them (the log lists what changed).
    """

    model: OmniConfig = field(default_factory=OmniConfig)
    data: SftData = field(default_factory=SftData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(save_dir="checkpoints/omni_sft_tiny"))
    init_from: str | None = None  # an earlier Stage-E run (its omni_final.pt or run dir) for a fresh run, e.g. E1 -> E2
    thinker_ckpt: str = "checkpoints/thinker_tiny/thinker.pt"  # Stage A final weights (required)
    audio_ckpt: str | None = "checkpoints/audio_enc_tiny/audio_enc.pt"  # Stage B; None = a model without audio
    vision_ckpt: str | None = "checkpoints/vision_tiny/vision.pt"  # Stage C; None = a model without images
    freeze_thinker: bool = True
    freeze_audio_encoder: bool = True
    freeze_vision_encoder: bool = True
    freeze_projectors: bool = False
    train_new_tokens: bool = True  # with freeze_thinker: train the rows of <|im_start|> <|im_end|> <image> <audio>
    group_lr: SftGroupLr = field(default_factory=SftGroupLr)


@dataclass
class CodecData:
    train_manifest: str | list[str] = "data/speech/train.jsonl"  # speech clips (transcripts unused): as AudioData's
    val_manifest: str | list[str] = "data/speech/val.jsonl"  # held-out clips for reconstruction error and perplexity
    crop_frames: int = 400  # training clips longer than this (mel frames, 100 Hz) get a random crop of this length
    bucket_batches: int = 8  # sort windows of this many batches by clip length to cut padding; 0 = plain shuffle
    val_batch_size: int = 32


@dataclass
class CodecPhase:
    """Stage D, phase 1: the RVQ codec (a run of its own: checkpoints `codec_step_N.pt`, final `rvq_codec.pt`)."""

    model: CodecConfig = field(default_factory=CodecConfig)
    data: CodecData = field(default_factory=CodecData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(save_dir="checkpoints/talker_tiny/codec"))


@dataclass
class TalkerData:
    train_manifest: str | list[str] = "data/speech/train.jsonl"  # speech + transcripts (as AudioData's), encoded
    val_manifest: str | list[str] = "data/speech/val.jsonl"  # once by the frozen codec; val: code CE / accuracy
    tokenizer: str = "checkpoints/thinker_tiny/tokenizer.model"  # the Stage-A tokenizer (shared with the Thinker)
    aligner: str = "checkpoints/audio_enc_tiny"  # the Stage-B run dir whose CTC model aligns speech and text
    bucket_batches: int = 8  # sort windows of this many batches by sequence length to cut padding; 0 = shuffle
    val_batch_size: int = 32
    sample_sentences: int = 2  # val sentences spoken (greedy) at each evaluation; frame counts go to the log


@dataclass
class TalkerPhase:
    """Stage D, phase 2: the Talker on the frozen codec's codes (checkpoints `talker_step_N.pt`, final `talker.pt`
    and the `rvq_codec.pt` it speaks, side by side)."""

    model: TalkerConfig = field(default_factory=lambda: TalkerConfig(text_vocab_size=8000))
    data: TalkerData = field(default_factory=TalkerData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(save_dir="checkpoints/talker_tiny"))


TALKER_PHASES = ("codec", "talker", "all")


@dataclass
class TalkerStage:
    """Stage D (train_talker.py): the codec phase, then the Talker phase; each has its own model/data/train and is
    its own resumable run. `phase` picks what this invocation trains: "all" runs both in sequence."""

    phase: str = "all"  # codec | talker | all
    codec: CodecPhase = field(default_factory=CodecPhase)
    talker: TalkerPhase = field(default_factory=TalkerPhase)

    def __post_init__(self):
        if self.phase not in TALKER_PHASES:
            raise ValueError(f"phase must be one of {TALKER_PHASES}, got {self.phase!r}")
        c, t = self.codec.model, self.talker.model
        for key in ("n_codebooks", "codebook_size"):
            if getattr(c, key) != getattr(t, key):
                raise ValueError(f"talker.model.{key}={getattr(t, key)} must equal codec.model.{key}="
                                 f"{getattr(c, key)}: the Talker speaks the codec's codes")
        if self.codec.train.save_dir == self.talker.train.save_dir:
            raise ValueError(f"codec.train.save_dir and talker.train.save_dir are both {self.codec.train.save_dir!r}; "
                             "each phase is a run of its own and needs its own folder")
        if self.codec.data.crop_frames < c.downsample:
            raise ValueError(f"codec.data.crop_frames={self.codec.data.crop_frames} is shorter than one code frame "
                             f"({c.downsample} mel frames)")


@dataclass
class VocoderData:
    train_manifest: str | list[str] = "data/speech/train.jsonl"  # speech clips (transcripts unused): as AudioData's
    val_manifest: str | list[str] = "data/speech/val.jsonl"  # held-out clips: mel-L1 of HiFi-GAN vs Griffin-Lim
    segment_frames: int = 32  # random training crop in mel frames (32 = 0.32 s = 5120 samples)
    val_utterances: int | None = 64  # the first N validation clips are scored (Griffin-Lim is slow); None = all
    griffin_lim_iters: int = 32  # iterations of the Griffin-Lim baseline
    # Stage-B run dir or audio_enc.pt: its CER on the vocoded held-out clips judges HiFi-GAN vs Griffin-Lim
    # (None: the multi-resolution STFT distance to the real waveform judges)
    asr: str | None = None


@dataclass
class VocoderStage:
    """HiFi-GAN vocoder (train_vocoder.py): generator + MPD/MSD, two optimizers ("gen", "disc")."""

    model: VocoderConfig = field(default_factory=VocoderConfig)
    data: VocoderData = field(default_factory=VocoderData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        save_dir="checkpoints/vocoder_tiny", batch_size=16, lr=2e-4, min_lr=2e-5, warmup_steps=0, weight_decay=0.01))
    init_from: str | None = None  # weights of an earlier run (checkpoint file or run dir) for a fresh run
    adam_betas: tuple[float, float] = (0.8, 0.99)  # AdamW betas of both players (HiFi-GAN paper)
    mel_warmup_steps: int = 0  # first N steps train the generator on the mel loss alone, without discriminators

    def __post_init__(self):
        self.adam_betas = tuple(self.adam_betas)
        if self.data.segment_frames < 1 or self.mel_warmup_steps < 0:
            raise ValueError(f"need data.segment_frames >= 1 and mel_warmup_steps >= 0, got segment_frames="
                             f"{self.data.segment_frames}, mel_warmup_steps={self.mel_warmup_steps}")
        if self.data.val_utterances is not None and self.data.val_utterances < 1:
            raise ValueError(f"data.val_utterances must be >= 1 or null, got {self.data.val_utterances}")
        if self.mel_warmup_steps and self.train.precision == "fp16":
            # Warm-up steps step "disc" without gradients, which a GradScaler refuses (nothing was scaled).
            raise ValueError(f"mel_warmup_steps={self.mel_warmup_steps} does not work with train.precision=fp16 yet; "
                             "use bf16/fp32 or mel_warmup_steps=0")


# Stage name -> config dataclass, and the config file name prefix of each (configs/thinker_tiny.json is "text").
STAGE_CLASSES = {"text": TextStage, "audio": AudioStage, "vision": VisionStage, "ocr": OcrStage,
                 "talker": TalkerStage, "vocoder": VocoderStage, "sft": SftStage}
STAGE_OF_PREFIX = {"thinker": "text", "audio_enc": "audio", "vision": "vision", "ocr": "ocr", "talker": "talker",
                   "vocoder": "vocoder", "omni_sft": "sft"}


def detect_stage(data: dict, name: str = "") -> str:
    """The stage of a config (its parsed JSON) from the keys only that stage has; the file name's prefix (`name`)
    when the keys do not tell (a minimal config). Used by the config tools in scripts/."""
    keys, model = set(data), data.get("model", {})
    if keys & {"phase", "codec", "talker"}:
        return "talker"
    if keys & {"thinker_ckpt", "audio_ckpt", "vision_ckpt", "group_lr", "train_new_tokens"} or any(
            k.startswith("freeze_") for k in keys):
        return "sft"
    if keys & {"adam_betas", "mel_warmup_steps"} or "upsample_rates" in model:
        return "vocoder"
    if {"encoder", "ctc_upsample"} & set(model):
        return "audio"
    if {"vision", "text", "objective", "embed_dim"} & set(model):
        return "vision"
    if "height" in model:
        return "ocr"
    if {"train_path", "seq_len"} & set(data.get("data", {})) or "max_seq_len" in model:
        return "text"
    for prefix, stage in STAGE_OF_PREFIX.items():
        if name.startswith(prefix):
            return stage
    raise ValueError(f"{name or 'config'}: cannot tell the stage from its keys or name; give it explicitly "
                     f"(one of {sorted(STAGE_CLASSES)})")
