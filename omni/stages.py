"""The config dataclass of each stage script: nested `model`, `data` and `train` parts, plus `init_from`.

JSON files in configs/ mirror these; defaults live here and in the model configs, never in the scripts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omni.config import TrainConfig
from omni.thinker import ThinkerConfig


@dataclass
class TextData:
    train_path: str = "data/text/train.txt"  # plain text, documents separated by blank lines
    val_path: str = "data/text/val.txt"  # held-out documents for perplexity
    seq_len: int = 512  # training context in tokens (<= model.max_seq_len)
    tokenizer: str | None = None  # existing tokenizer.model (or its folder); None = train one into save_dir
    tokenizer_model_type: str = "unigram"  # SentencePiece algorithm when training one: unigram | bpe
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
        if self.data.seq_len > self.model.max_seq_len:
            raise ValueError(f"data.seq_len ({self.data.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})")
