"""SentencePiece tokenizer: training, loading, special tokens and the Qwen-style chat template.

Design choices:
- Special tokens are omni.chat's `SPECIAL_TOKENS` (their ids are their indexes there): the first four become
  SentencePiece's pad/unk/bos/eos pieces, the rest user-defined symbols, which SentencePiece always emits as one
  piece, also inside ordinary text. `Tokenizer` checks that a loaded model has them at those ids.
- byte_fallback is always on: a character the corpus never showed (an accent, an emoji, a newline) becomes its
  UTF-8 byte pieces instead of <unk>, so decode(encode(text)) keeps the text and the chat template can use the
  byte piece <0x0A> as its newline (the default nmt_nfkc normalizer turns a "\n" inside text into a space). The
  cost is 256 vocabulary entries.
- Deterministic training: the same corpus and settings give a byte-identical model file on any machine. The
  corpus goes in as a sentence iterator and the model comes back in memory, so no file path lands in the model;
  the thread count is fixed (SentencePiece's result depends on it); the random seed is set (it drives sentence
  sampling when `input_sentence_size` > 0) and also seeds the bounded document sample a large corpus is cut to
  (`sample_docs` / `sample_bytes`). The file is written atomically (omni.atomic).
- `fingerprint` (sha256 of the model file) names caches derived from the tokenizer, e.g. tokenized corpora.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from omni.atomic import atomic_file

# The token names are re-exported: `from omni.tokenizer import IM_END` keeps working.
from omni.chat import AUDIO, BOS, EOS, IM_END, IM_START, IMAGE, N_CONTROL, PAD, SPECIAL_TOKENS, UNK  # noqa: F401
from omni.data.text_sources import open_corpus, sample_documents
from omni.errors import InvalidInput, MissingInput

CHAT_ROLES = ("system", "user", "assistant")
TOKENIZER_FILE = "tokenizer.model"
MODEL_TYPES = ("unigram", "bpe")
_NEWLINE_PIECE = "<0x0A>"  # the byte-fallback piece of "\n"
# SentencePiece skips longer lines (default 4192 bytes); one paragraph per line can be longer than that.
_MAX_SENTENCE_BYTES = 16384


def train_tokenizer(
    corpus_files: Sequence[str | Path],
    out_dir: str | Path,
    *,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    input_sentence_size: int = 0,
    num_threads: int = 4,
    seed: int = 0,
    sample_docs: int = 0,
    sample_bytes: int = 0,
    log=None,
) -> Tokenizer:
    """Train a SentencePiece model on the text of `corpus_files`; write `out_dir/tokenizer.model`; return it loaded.

    Each entry of corpus_files is a corpus in any layout of omni.data.text_sources (a .txt/.jsonl/.parquet file,
    gzipped or not, a folder or a glob of shards). The model trains on the non-blank lines of its documents, or of a
    bounded sample of them: sample_docs / sample_bytes (0 = no bound) keep a seeded uniform sample of at most that
    many documents / UTF-8 bytes, read in one streaming pass (text_sources.sample_documents), so a multi-GB corpus
    never sits in memory whole; when the whole corpus fits the bounds, it is all used. `log` (a callable) gets one
    line saying how much was sampled.
    vocab_size counts everything: the special tokens, the 256 byte pieces and the learned pieces.
    model_type: "unigram" or "bpe". character_coverage: fraction of corpus characters that get their own piece
    (1.0 for small alphabets; the rest fall back to bytes). input_sentence_size: SentencePiece's own seeded sample
    of this many lines of the text above (0 = all lines). num_threads and seed (which also seeds the document
    sample) are part of the result: change them and the model (and its fingerprint) changes too.
    Raises ValueError when the corpus is empty or vocab_size does not fit it (naming the sizes that would).
    """
    if not corpus_files:
        raise ValueError("train_tokenizer: corpus_files is empty")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"train_tokenizer: model_type={model_type!r}; expected one of {MODEL_TYPES}")
    corpora = [open_corpus(p) for p in corpus_files]  # MissingInput names a path that is not there
    names = ", ".join(c.spec for c in corpora)
    # Read (and check: not UTF-8, bad JSON, ...) before SentencePiece runs: an error raised through it would come
    # out as a RuntimeError wrapping a traceback.
    sample = sample_documents((doc for c in corpora for doc in c.documents()),
                              max_docs=sample_docs, max_bytes=sample_bytes, seed=seed)
    sentences = [line for doc in sample.documents for line in doc.split("\n") if line.strip()]
    if not sentences:
        raise InvalidInput(f"train_tokenizer: corpus is empty (no non-blank lines) in: {names}")
    writer = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=writer,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            max_sentence_length=_MAX_SENTENCE_BYTES,
            num_threads=num_threads,
            pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            pad_piece=PAD, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS,
            user_defined_symbols=list(SPECIAL_TOKENS[N_CONTROL:]),
            byte_fallback=True,
            minloglevel=1,  # warnings (e.g. skipped lines) stay visible, the per-iteration log does not
        )
    except RuntimeError as e:
        msg = str(e)
        if m := re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", msg):
            raise InvalidInput(
                f"train_tokenizer: vocab_size={m.group(1)} is too large for the corpus {names}; SentencePiece "
                f"({model_type}) can make at most {m.group(2)} pieces from it. Lower vocab_size or add text."
            ) from None
        if m := re.search(r"smaller than required_chars\. (\d+) vs (\d+)", msg):
            raise InvalidInput(
                f"train_tokenizer: vocab_size={m.group(1)} is too small for the corpus {names}; it needs at least "
                f"{m.group(2)} (special tokens, 256 byte pieces and one piece per covered character)."
            ) from None
        raise InvalidInput(f"train_tokenizer: SentencePiece failed on {names}: {msg}") from e
    if log is not None:  # after training: a failure is one error message, not a log line and then the error
        log(f"tokenizer sample: {sample.describe()} of {names} (bounds: {sample_docs or 'no'} documents, "
            f"{sample_bytes or 'no'} bytes; seed {seed})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / TOKENIZER_FILE
    with atomic_file(path) as f:
        f.write(writer.getvalue())
    return Tokenizer(path)


class Tokenizer:
    """A trained SentencePiece model plus the project's special tokens and chat template."""

    pad_id, unk_id, bos_id, eos_id = (SPECIAL_TOKENS.index(t) for t in (PAD, UNK, BOS, EOS))
    im_start_id, im_end_id = SPECIAL_TOKENS.index(IM_START), SPECIAL_TOKENS.index(IM_END)
    special_ids = frozenset(range(len(SPECIAL_TOKENS)))

    def __init__(self, model_path: str | Path):
        self.model_path = Path(model_path)
        data = self.model_path.read_bytes()
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(data)
        except RuntimeError as e:
            raise InvalidInput(f"{self.model_path} is not a SentencePiece model: {e}") from None
        self.fingerprint = hashlib.sha256(data).hexdigest()[:16]
        for i, piece in enumerate(SPECIAL_TOKENS):
            found = self._sp.id_to_piece(i) if i < self.vocab_size else None
            if found != piece:
                raise InvalidInput(f"{self.model_path}: expected special token {piece!r} at id {i}, found {found!r}; "
                                   "train the tokenizer with omni.tokenizer.train_tokenizer")
        self.newline_id = self._sp.piece_to_id(_NEWLINE_PIECE)
        if not self._sp.is_byte(self.newline_id):
            raise InvalidInput(f"{self.model_path}: no byte piece {_NEWLINE_PIECE} (the model lacks byte_fallback)")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load from a tokenizer.model file or a directory that contains one."""
        path = Path(path)
        model_path = path / TOKENIZER_FILE if path.is_dir() else path
        if not model_path.is_file():
            raise MissingInput(f"no tokenizer at {path} (expected a {TOKENIZER_FILE} file or a directory "
                               "containing one)")
        return cls(model_path)

    def save(self, out_dir: str | Path) -> Path:
        """Copy the model file to `out_dir/tokenizer.model` (atomically); return the new path."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / TOKENIZER_FILE
        with atomic_file(path) as f:
            f.write(self.model_path.read_bytes())
        return path

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def token_id(self, piece: str) -> int:
        """Id of a special token, e.g. token_id("<image>"); other pieces are an error (no silent <unk>)."""
        if piece not in SPECIAL_TOKENS:
            raise KeyError(f"{piece!r} is not a special token; special tokens are {SPECIAL_TOKENS}")
        return SPECIAL_TOKENS.index(piece)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids = self._sp.encode(text)
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def char_tokens(self, text: str) -> list[int]:
        """The id of the token that covers each character of `text` (len(text) ids): the Talker's per-character view
        of the Thinker's tokens. Token k covers the characters that decoding ids[:k + 1] adds to decoding ids[:k];
        decoding (rather than piece surfaces) handles the dummy-prefix space, byte-fallback pieces and
        normalisation alike. A character no token adds (a space SentencePiece folds into the next piece) takes the
        next token's id."""
        ids = self._sp.encode(text)
        ends = [len(self._sp.decode(ids[: k + 1])) for k in range(len(ids))]
        out, k = [], 0
        for i in range(len(text)):
            while k < len(ids) - 1 and ends[k] <= i:
                k += 1
            out.append(ids[k] if ids else self.unk_id)
        return out

    def decode(self, ids, *, skip_special: bool = True) -> str:
        """Text of `ids` (any iterable of ints: list, tensor, array). Special tokens are left out unless
        skip_special=False, which renders the user-defined symbols (<|im_start|>, <image>, ...) as text."""
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"decode: id {i} is outside the vocabulary (size {self.vocab_size})")
        if skip_special:
            ids = [i for i in ids if i not in self.special_ids]
        return self._sp.decode(ids)

    def encode_chat(
        self, messages: Sequence[dict], *, add_generation_prompt: bool = False, bos: bool = True
    ) -> tuple[list[int], list[bool]]:
        """Token ids of a conversation in the Qwen layout, and the mask of tokens that carry the SFT loss.

        Each message becomes `<|im_start|>{role}\\n{content}<|im_end|>\\n`. The mask is True exactly on the content
        tokens of assistant messages and their closing <|im_end|>, so the model learns to answer and to stop;
        <|im_end|> is the token generation stops at, and no <eos> is added (append eos_id yourself when packing
        conversations). bos=True starts with <bos>, as every pretraining document did. add_generation_prompt
        appends `<|im_start|>assistant\\n` (mask False) for inference. Role and content are encoded separately,
        like a pretraining document, so decoding a whole chat shows a space after each newline.
        """
        ids = [self.bos_id] if bos else []
        mask = [False] * len(ids)
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not {"role", "content"} <= message.keys():
                raise ValueError(f"encode_chat: message {i} must be a dict with 'role' and 'content', got {message!r}")
            role, content = message["role"], message["content"]
            if role not in CHAT_ROLES:
                raise ValueError(f"encode_chat: message {i} has role {role!r}; expected one of {CHAT_ROLES}")
            if not isinstance(content, str):
                raise ValueError(f"encode_chat: message {i} content must be a str, got {type(content).__name__}")
            head = self._turn_start(role)
            body = self.encode(content) + [self.im_end_id]
            ids += head + body + [self.newline_id]
            mask += [False] * len(head) + [role == "assistant"] * len(body) + [False]
        if add_generation_prompt:
            head = self._turn_start("assistant")
            ids += head
            mask += [False] * len(head)
        return ids, mask

    def apply_chat_template(
        self, messages: Sequence[dict], *, add_generation_prompt: bool = False, bos: bool = True
    ) -> list[int]:
        """The ids of `encode_chat` without the mask (for inference prompts)."""
        return self.encode_chat(messages, add_generation_prompt=add_generation_prompt, bos=bos)[0]

    def _turn_start(self, role: str) -> list[int]:
        return [self.im_start_id] + self.encode(role) + [self.newline_id]
