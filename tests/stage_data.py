"""Tiny generated inputs for the stage scripts, shared by the stage tests' fixtures and scripts/chaos.py.

Each function writes into `out` and returns what the stage command needs. The stage tests own the tiny configs and
command lines (TINY / command() in tests/test_train_*.py, tests/test_sft_omni.py); this module owns the data.
"""

import shutil
from pathlib import Path

import numpy as np
import torch

from omni.config import to_dict


def text_corpus(out):
    """A small synthetic corpus folder with train.txt and val.txt."""
    from omni.synthetic.text import write_text_corpus

    write_text_corpus(out, seed=0, n_train_docs=600, n_val_docs=40)
    return out


def asr_speech(out, *, n_train=40, n_val=10):
    """Speech with alignable transcripts for Stage B: espeak-ng, or per-character tones where it is missing."""
    from omni.synthetic.speech import write_speech_dataset
    from tests.test_train_audio_enc import write_tone_dataset

    if shutil.which("espeak-ng") is None:
        return write_tone_dataset(out, n_train=n_train, n_val=n_val)
    write_speech_dataset(out, seed=0, n_train=n_train, n_val=n_val, workers=2)  # 10 steps per epoch at batch 4
    return out


def random_aligner(out, *, seed=0):
    """A randomly initialised Stage-B model, written as train_audio_enc.py writes its final `audio_enc.pt` (ctc_upsample
    2, the a-z / apostrophe / space alphabet): talker.data.aligner for the Talker tests. Random CTC log-probs still
    align any clip with enough CTC frames (25 per second) for its characters. Returns the file; the same seed writes
    the same weights."""
    from omni.audio_encoder import AsrModel, AudioEncoder, AudioEncoderConfig
    from omni.components import audio_encoder_weights
    from omni.ctc import CharVocab
    from omni.torch_io import save

    vocab = CharVocab(list(" 'abcdefghijklmnopqrstuvwxyz"))
    cfg = AudioEncoderConfig(n_mels=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, conv_channels=4)
    torch.manual_seed(seed)
    model = AsrModel(AudioEncoder(cfg), vocab_size=len(vocab), ctc_upsample=2)
    [(name, payload)] = audio_encoder_weights(model, cfg, vocab=vocab.to_list(), ctc_upsample=2).items()
    Path(out).mkdir(parents=True, exist_ok=True)
    save(payload, Path(out) / name)
    return Path(out) / name


def stage_a_standin(out, corpus):
    """A Stage-A folder as train_text.py leaves it: tokenizer.model + thinker.pt {"model", "config", "tokenizer"}."""
    from omni.thinker import Thinker, ThinkerConfig
    from omni.tokenizer import train_tokenizer

    train_tokenizer([corpus / "train.txt"], out, vocab_size=400)
    torch.manual_seed(0)
    cfg = ThinkerConfig(vocab_size=400, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64, max_seq_len=64)
    torch.save({"model": Thinker(cfg).state_dict(), "config": to_dict(cfg), "tokenizer": "tokenizer.model"},
               out / "thinker.pt")
    return out


def sft_standins(root, corpus):
    """Stand-ins for Stages A, B and C in their final-weights formats, plus the SFT data: (root, sft folder)."""
    from omni.audio_encoder import AsrModel, AudioEncoder, AudioEncoderConfig
    from omni.thinker import Thinker, ThinkerConfig
    from omni.tokenizer import train_tokenizer
    from omni.vision_encoder import VisionConfig, VisionEncoder
    from tests.test_sft_data import make_sft_data

    train_tokenizer([corpus / "train.txt"], root / "thinker", vocab_size=400)
    torch.manual_seed(0)
    thinker = ThinkerConfig(vocab_size=400, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64, max_seq_len=160)
    torch.save({"model": Thinker(thinker).state_dict(), "config": to_dict(thinker), "tokenizer": "tokenizer.model"},
               root / "thinker" / "thinker.pt")
    audio = AudioEncoderConfig(n_mels=16, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=32, conv_channels=4)
    torch.save({"model": AsrModel(AudioEncoder(audio), vocab_size=10).state_dict(), "config": to_dict(audio),
                "vocab": list("abcdefghi"), "ctc_upsample": 2, "n_mels": 16}, root / "audio_enc.pt")
    vision = VisionConfig(image_size=16, patch_size=4, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=32)
    torch.save({"model": {f"vision.{k}": v for k, v in VisionEncoder(vision).state_dict().items()},
                "config": {"objective": "contrastive", "vision": to_dict(vision)}}, root / "vision.pt")
    sft, _ = make_sft_data(root, n_train=48, n_val=16)
    return root, sft


CHAT_WORDS = "the red blue green circle square triangle what colour is shape which word say hello".split()


def chat_tokenizer(out: Path):
    """A 295-piece tokenizer over random sentences of CHAT_WORDS (the SFT tests pin token ids made with it)."""
    from omni.tokenizer import train_tokenizer

    rng = np.random.default_rng(0)
    (out / "c.txt").write_text("\n".join(" ".join(rng.choice(CHAT_WORDS, 8)) for _ in range(300)) + "\n")
    return train_tokenizer([out / "c.txt"], out, vocab_size=295, num_threads=1)
