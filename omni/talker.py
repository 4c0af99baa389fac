"""Talker: text-conditioned decoder-only transformer that speaks codec codes (Stage D; speech out).

Design choices
- One causal sequence per utterance: [text prefix ; speech frames]. Text tokens (ids of the shared SentencePiece
  `Tokenizer`) have their own embedding. Speech frame j's input is the sum over the K codebooks of per-codebook
  embeddings of frame j-1's codes; frame 0 gets the reserved START id (= codebook_size) in every codebook. The
  K per-codebook tables are one embedding matrix with offsets k * (codebook_size + 1), so a frame is one lookup.
- K heads (one linear layer, reshaped) predict all K codes of the current frame in parallel, each over
  codebook_size + 1 classes; the extra class (= codebook_size) is END-OF-SPEECH, the target of every codebook at
  the frame after the last one. There is no delay pattern: the codebooks of one frame are independent given the
  past, which is enough for K = 2 coarse codes per 40-80 ms frame. Generation decides "end" from codebook 0 alone and
  samples the other codebooks among real codes only, so an emitted frame is always decodable.
- Frame dropout (training only): each frame's input, the previous frame's codes, is replaced by the START input
  with probability frame_dropout. Teacher forcing otherwise lets the model predict a frame mostly from the one
  before it (neighbouring frames are alike), which it cannot rely on when it reads its own output; hidden inputs
  make it read the text. Tacotron's always-on prenet dropout serves the same end (Shen et al. 2018).
- Loss: cross entropy over speech positions only (frames 0..length, END included), averaged over every
  (frame, codebook) target; the text prefix and padding carry no loss.
- Positions: text token i sits at i and speech frame j at text_length + j, per row. Padded text tokens are masked
  as keys, so a padded batch computes exactly what each row computes alone (rotary is relative, and the gap the
  padding would leave never appears). Without text_lengths no mask is built and attention takes SDPA's causal
  fast path.
- Blocks, rotary, final norm, block loop and init are the shared `omni.layers.Transformer` trunk (init as the
  Thinker's: normal 0.02, residual output projections scaled by 1/sqrt(2 n_layers)); KV cache and sampling are
  the shared ones from `omni.layers` too. `generate` with the KV cache equals generation
  without it (tested).

References: Borsos et al. 2023 (AudioLM); Wang et al. 2023 (VALL-E); Copet et al. 2023 (MusicGen, parallel
codebook prediction); Qwen2.5-Omni / Qwen3-Omni technical reports (Thinker-Talker).

Shape legend: B batch, T text tokens, F speech frames (the codec's frame_rate_hz: 12.5 Hz by default, 25 Hz in the
demo), K codebooks, V codebook_size, D model width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.chat import IGNORE_INDEX  # target of positions without loss (here: padding after END)
from omni.layers import Transformer, check_rotary_heads, lengths_mask, sample_next_token


@dataclass
class TalkerConfig:
    text_vocab_size: int  # shared tokenizer vocabulary (Tokenizer.vocab_size)
    n_codebooks: int = 2  # K codebooks per frame (CodecConfig.n_codebooks)
    codebook_size: int = 1024  # V codes per codebook (CodecConfig.codebook_size); id V = START in, END out
    d_model: int = 192  # residual stream width D
    n_layers: int = 4  # transformer blocks
    n_heads: int = 3  # query heads; d_model / n_heads must be even (rotary)
    n_kv_heads: int = 3  # key/value heads (GQA when < n_heads)
    d_ff: int = 768  # SwiGLU hidden width
    max_text_len: int = 256  # longest text prefix in tokens
    max_frames: int = 500  # longest speech in code frames (40 s at 12.5 Hz, 20 s at 25 Hz)
    rope_theta: float = 10_000.0  # rotary base; sequences are a few hundred positions
    qk_norm: bool = True  # per-head RMSNorm on queries and keys
    norm_eps: float = 1e-6  # RMSNorm epsilon
    dropout: float = 0.0  # attention and residual dropout
    frame_dropout: float = 0.0  # training only: chance that a frame's input (the previous codes) is hidden

    def __post_init__(self):
        names = ("text_vocab_size", "n_codebooks", "codebook_size", "d_model", "n_layers", "n_heads", "n_kv_heads")
        names += ("d_ff", "max_text_len", "max_frames")
        bad = {k: getattr(self, k) for k in names if getattr(self, k) < 1}
        if bad:
            raise ValueError(f"TalkerConfig sizes must be >= 1, got {bad}")
        check_rotary_heads(self.d_model, self.n_heads, self.n_kv_heads, self.dropout)
        if not 0 <= self.frame_dropout < 1:
            raise ValueError(f"need 0 <= frame_dropout < 1, got frame_dropout={self.frame_dropout}")


def talker_targets(codes: torch.Tensor, code_lengths: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """codes (B, F, K), code_lengths (B,) -> targets (B, F + 1, K): the codes before each row's length, END
    (= codebook_size) at the length, IGNORE_INDEX after it."""
    B, n_frames, K = codes.shape
    frame = torch.arange(n_frames + 1, device=codes.device)[None, :, None]
    length = code_lengths.to(codes.device)[:, None, None]
    padded = F.pad(codes, (0, 0, 0, 1))
    targets = torch.where(frame < length, padded, torch.full_like(padded, IGNORE_INDEX))
    return targets.masked_fill(frame == length, codebook_size)


def talker_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy over every non-ignored (frame, codebook) target; logits (B, F+1, K, V+1)."""
    return F.cross_entropy(logits.float().flatten(0, 2), targets.flatten(), ignore_index=IGNORE_INDEX)


def code_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, counted) targets as tensors, summed over the batch; sum them over steps and divide at log time."""
    keep = targets != IGNORE_INDEX
    return ((logits.argmax(-1) == targets) & keep).sum(), keep.sum()


class Talker(Transformer):
    """Text ids -> K-codebook speech codes, one frame per step."""

    def __init__(self, cfg: TalkerConfig):
        super().__init__()
        self.cfg = cfg
        V, K = cfg.codebook_size, cfg.n_codebooks
        self.start_id = self.end_id = V  # input id V = START, output class V = END
        self.text_embed = nn.Embedding(cfg.text_vocab_size, cfg.d_model)
        self.code_embed = nn.Embedding(K * (V + 1), cfg.d_model)
        self.register_buffer("code_offsets", torch.arange(K) * (V + 1), persistent=False)
        self.build_trunk(n_layers=cfg.n_layers, d_model=cfg.d_model, norm_eps=cfg.norm_eps,
                         rotary_len=cfg.max_text_len + cfg.max_frames + 1, rope_theta=cfg.rope_theta,
                         n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, d_ff=cfg.d_ff, causal=True,
                         qk_norm=cfg.qk_norm, dropout=cfg.dropout)
        self.heads = nn.Linear(cfg.d_model, K * (V + 1), bias=False)
        self.init_weights()

    def embed_frames(self, frame_codes: torch.Tensor) -> torch.Tensor:
        """Input ids (B, F, K) in [0, V] (V = START) -> frame embeddings (B, F, D), the sum over codebooks."""
        return self.code_embed(frame_codes + self.code_offsets).sum(dim=2)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """h (..., D) -> (..., K, V + 1)."""
        return self.heads(h).unflatten(-1, (self.cfg.n_codebooks, self.cfg.codebook_size + 1))

    def _prefix(self, text_ids: torch.Tensor, text_lengths: torch.Tensor | None, n_frames: int):
        """Positions (T + n_frames,) or (B, T + n_frames) and key mask (B, T + n_frames) or None for a text
        prefix (B, T) followed by n_frames speech frames."""
        B, T = text_ids.shape
        if T > self.cfg.max_text_len or n_frames > self.cfg.max_frames + 1:
            raise ValueError(
                f"text length {T} > max_text_len={self.cfg.max_text_len} or {n_frames} frame positions > "
                f"max_frames + 1={self.cfg.max_frames + 1}"
            )
        pos = torch.arange(T + n_frames, device=text_ids.device)
        if text_lengths is None:
            return pos, None
        text_lengths = text_lengths.to(text_ids.device)
        # Frame j sits right after the row's real text, at text_length + j, whatever the padding.
        positions = torch.where(pos < T, pos, pos - T + text_lengths[:, None])
        mask = torch.cat([lengths_mask(text_lengths, T), pos.new_ones(B, n_frames, dtype=torch.bool)], dim=1)
        return positions, mask

    def forward(
        self,
        text_ids: torch.Tensor,
        text_lengths: torch.Tensor | None,
        codes: torch.Tensor,
        code_lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """text_ids (B, T) right-padded, text_lengths (B,) (None = no padding), codes (B, F, K) in [0, V),
        code_lengths (B,) (None = F) -> (logits (B, F + 1, K, V + 1), loss).

        Position j of the logits predicts frame j's codes, or END at j = code_length; see `talker_targets` and
        `code_accuracy` for the targets and the metric.
        """
        B, T = text_ids.shape
        n_frames = codes.shape[1]
        if code_lengths is None:
            code_lengths = torch.full((B,), n_frames, dtype=torch.long, device=codes.device)
        start = codes.new_full((B, 1, self.cfg.n_codebooks), self.start_id)
        inputs = torch.cat([start, codes], dim=1)  # frame j sees frame j-1's codes
        if self.training and self.cfg.frame_dropout > 0:
            hidden = torch.rand(inputs.shape[:2], device=inputs.device) < self.cfg.frame_dropout
            inputs = inputs.masked_fill(hidden[..., None], self.start_id)
        frames = self.embed_frames(inputs)
        x = torch.cat([self.text_embed(text_ids), frames], dim=1)
        positions, mask = self._prefix(text_ids, text_lengths, n_frames + 1)
        logits = self._logits(self.run_blocks(x, positions, mask)[0][:, T:])
        return logits, talker_loss(logits, talker_targets(codes, code_lengths, self.cfg.codebook_size))

    @torch.no_grad()
    def generate(
        self,
        text_ids: torch.Tensor,
        *,
        text_lengths: torch.Tensor | None = None,
        max_frames: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """text_ids (B, T) (right-padded when text_lengths (B,) is given) -> (codes (B, F, K) in [0, V),
        lengths (B,)), F <= max_frames. A row ends when codebook 0 predicts END (that frame is not emitted); rows
        that ended are padded with code 0 and generation stops once all have ended. temperature 0 = greedy.
        Runs in the module's current mode: call eval() first when dropout > 0."""
        B, T = text_ids.shape
        K, V = self.cfg.n_codebooks, self.cfg.codebook_size
        if not 1 <= max_frames <= self.cfg.max_frames:
            raise ValueError(f"need 1 <= max_frames <= {self.cfg.max_frames}, got max_frames={max_frames}")
        positions, mask = self._prefix(text_ids, text_lengths, max_frames + 1)
        n_in = T + 1  # positions fed so far: the text and the START frame
        x = torch.cat([self.text_embed(text_ids), self.embed_frames(text_ids.new_full((B, 1, K), self.start_id))], 1)
        caches = self.make_caches(T + max_frames) if use_cache else None
        lengths = torch.full((B,), max_frames, dtype=torch.long, device=text_ids.device)
        finished = torch.zeros(B, dtype=torch.bool, device=text_ids.device)
        sample = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        frames = []
        for j in range(max_frames):
            new = x.shape[1] if caches is None else n_in - caches[0].length
            pos = positions[..., n_in - new : n_in]
            h, _ = self.run_blocks(x[:, -new:], pos, None if mask is None else mask[:, :n_in], caches)
            logits = self._logits(h[:, -1])  # (B, K, V + 1)
            first = sample_next_token(logits[:, 0], **sample)  # END allowed
            rest = sample_next_token(logits[:, 1:, :V], **sample)  # real codes only
            ended = (first == self.end_id) & ~finished
            lengths = torch.where(ended, j, lengths)
            finished |= ended
            if bool(finished.all()):
                break
            frame = torch.cat([first[:, None], rest], dim=1).masked_fill(finished[:, None], 0)  # (B, K)
            frames.append(frame)
            if j + 1 < max_frames:
                step = self.embed_frames(frame[:, None])
                x = step if caches is not None else torch.cat([x, step], dim=1)
                n_in += 1
        if not frames:
            return text_ids.new_zeros(B, 0, K), lengths
        return torch.stack(frames, dim=1), lengths
