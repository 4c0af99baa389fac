"""SFT conversations (Stage E): manifest reading and `SftSource` (token ids, loss targets and media tensors).

A manifest line is `{"messages": [{"role": "user", "content": "<image> What colour is the shape?"},
{"role": "assistant", "content": "red"}], "image": "x.png", "task": "image_qa"}`, with "image" and/or "audio"
(paths relative to the manifest) when the conversation has them, exactly one `<image>` / `<audio>` placeholder in
the user turns per medium, and an optional "task" that names the group a metric is reported for (default:
image_qa / audio_qa / text from the media present).

Other formats are read too, detected per file from its first record (`sft_format`, logged): LLaVA's JSON array
`[{"id", "image", "conversations": [{"from": "human"|"gpt", "value": "<image>\n..."}]}]`, ShareGPT records
(`"conversations"`) and OpenAI-messages records (`"messages"` with `"images"` / `"audios"` lists, LLaMA-Factory's
multimodal format), JSON array or JSONL; their media paths are relative to the file too. They are converted to ours
(`convert_record`); one image and one audio clip per conversation are supported, and a record with more (or with
turns that are not text) is a named bad sample.

An item is `omni.chat.ChatEncoder.encode_prompt` of the conversation, as inference encodes it: the chat template
of `Tokenizer.encode_chat` (the assistant mask covers each answer and its closing `<|im_end|>`) with its
placeholders expanded to the number of Thinker tokens the model gives the medium (`image_tokens` per image, one per
12.5 Hz encoder frame of the audio), and the targets that put the loss on assistant tokens only (`sft_targets`).
Images go through `omni.data.images.image_to_tensor` and audio through `omni.audio.load_audio` + `LogMel`, the
same preprocessing as Stages B and C. Problems with a record (bad structure, missing, unreadable or truncated media,
placeholder counts, too long for max_length or for the audio encoder's max_frames) raise `BadSample` naming
manifest:line, so the run skips and counts it; an unreadable manifest line (invalid JSON) or a field of the wrong
JSON type ("image": 5, "task": 5, "duration": NaN) is an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import soundfile as sf
import torch

from omni.audio import SAMPLE_RATE, AudioError, LogMel, load_audio, mel_frames
from omni.chat import IGNORE_INDEX, ChatEncoder, audio_token_count, sft_targets
from omni.data.images import image_to_tensor, load_image
from omni.data.manifest import DataError, check_fields, read_jsonl_lines, resolve
from omni.data.resumable import BadSample
from omni.data.speech import check_encoder_frames


def default_task(record: dict) -> str:
    return "image_qa" if record.get("image") else "audio_qa" if record.get("audio") else "text"


# Roles of the foreign formats -> ours (ShareGPT / LLaVA "from", OpenAI "role").
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
         "model": "assistant", "system": "system"}
FORMATS = {"omni": "omni JSONL ({messages, image, audio})",
           "llava": "LLaVA JSON ({image, conversations: [{from, value}]})",
           "sharegpt": "ShareGPT ({conversations: [{from, value}], images, audios})",
           "messages": "OpenAI messages ({messages: [{role, content}], images, audios})"}


def _records_of(path: Path) -> tuple[bool, list[tuple[int, object]]]:
    """(is a JSON array file, [(line or item number, record)]): a .json file holding one array (LLaVA, ShareGPT
    dumps) or JSONL, one record per line."""
    if path.is_file():
        with path.open("rb") as f:
            head = f.read(4096).decode("utf-8-sig", errors="replace")
        if head.lstrip().startswith("["):
            try:
                items = json.loads(path.read_text(encoding="utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(f"{path}: not a valid JSON array ({e})") from None
            return True, [(i + 1, item) for i, item in enumerate(items)]
    return False, list(read_jsonl_lines(path, what="SFT manifest"))


def sft_format(first: dict, is_array: bool) -> str:
    """The format of a file from its first record: "conversations" = ShareGPT (LLaVA when a JSON array with a
    single "image"), "messages" with "images"/"audios" lists = OpenAI messages (LLaMA-Factory), else ours."""
    if isinstance(first, dict) and "conversations" in first:
        return "llava" if is_array and "images" not in first and "audios" not in first else "sharegpt"
    if isinstance(first, dict) and ("images" in first or "audios" in first):
        return "messages"
    return "omni"


def _single(record: dict, key: str, where: str) -> tuple[str | None, str | None]:
    """(the one path of a "images"/"audios" list or a single "image"/"audio", None) or (None, why it is unusable)."""
    value = record.get(key)
    if value is None or value == []:
        return None, None
    if isinstance(value, str):
        return value, None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: {key!r} must be a path or a list of paths, got {type(value).__name__}")
    if len(value) > 1:
        return None, f"{len(value)} {key} in one conversation; one image and one audio clip per conversation " \
                     "are supported"
    return value[0], None


def convert_record(record: dict, fmt: str, where: str) -> dict:
    """A ShareGPT / LLaVA / OpenAI-messages record -> ours ({"messages", "image", "audio", "task"?, "kind"?}),
    or a record with "error" (a named bad sample: SftSource skips it) when it cannot be one conversation of ours."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    out = {k: record[k] for k in ("task", "kind", "duration", "id") if record.get(k) is not None}
    turns = record.get("conversations" if fmt in ("llava", "sharegpt") else "messages")
    if not isinstance(turns, list):
        return {**out, "error": f"'{'conversations' if fmt in ('llava', 'sharegpt') else 'messages'}' must be a list"}
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            return {**out, "error": "a turn is not a JSON object"}
        role = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        if role not in ROLES or not isinstance(content, str):
            return {**out, "error": f"turn with role {role!r} and content of type {type(content).__name__} "
                                    f"(roles: {sorted(ROLES)}; content must be text)"}
        messages.append({"role": ROLES[role], "content": content})
    out["messages"] = messages
    for single, many in (("image", "images"), ("audio", "audios")):
        path, error = _single(record, single if fmt == "llava" or single in record else many, where)
        if error:
            return {**out, "error": error}
        if path is not None:
            out[single] = path
    return out


def read_sft_manifest(path: str | Path, *, log=None) -> list[dict]:
    """Records of an SFT file, whatever its format (`sft_format`, said in one `log` line): the conversation in our
    form plus "where" (file:line or file:item), media paths resolved against the file's folder and "task" filled
    in. Field types are checked here (an error naming file:line); a record that cannot be one of our conversations
    (several images, a turn without text) gets "error" and the conversation's structure is checked per item by
    `SftSource`: both are skipped, named, as bad samples."""
    path = Path(path)
    is_array, items = _records_of(path)
    fmt = sft_format(items[0][1] if items else {}, is_array)
    records = []
    for n, record in items:
        where = f"{path}:{n}"
        if fmt != "omni":
            record = convert_record(record, fmt, where)
        check_fields(record, where, optional=("image", "audio", "task", "kind", "duration"))
        for key in ("image", "audio"):
            if record.get(key) is not None:
                record[key] = str(resolve(path, record[key]))
        records.append({**record, "task": record.get("task") or default_task(record), "where": where})
    if log is not None:
        bad = sum(1 for r in records if r.get("error"))
        log(f"SFT data {path}: {FORMATS[fmt]}, {len(records):,} conversations"
            + (f", {bad:,} unusable (skipped as bad samples)" if bad else ""))
    return records


class SftSource:
    """Indexable SFT source: item -> {"ids" (T,), "targets" (T,), "image" (3, S, S) | None, "mel" (T_mel, F) |
    None, "task", "answer" (the first assistant turn)}; see the module docstring."""

    def __init__(self, records: list[dict], *, tokenizer, max_length: int, image_size: int | None = None,
                 image_tokens: int = 0, n_mels: int | None = None, max_mel_frames: int | None = None,
                 max_encoder_frames: int | None = None):
        """image_size / n_mels: the vision / audio encoder's input (None: the model has no such encoder, and
        records with that medium are bad samples). image_tokens: Thinker tokens per image
        (`OmniModel.image_token_count`). max_mel_frames: the data's limit on audio (data.max_mel_frames);
        max_encoder_frames: the audio encoder's `max_frames`; longer audio is a bad sample either way (None: no
        limit)."""
        self.records, self.tokenizer, self.max_length = records, tokenizer, max_length
        self.chat = ChatEncoder(tokenizer, image_tokens=image_tokens)
        self.image_size, self.image_tokens, self.max_mel_frames = image_size, image_tokens, max_mel_frames
        self.max_encoder_frames = max_encoder_frames
        self.logmel = LogMel(n_mels) if n_mels is not None else None
        self.tasks = sorted({r["task"] for r in records})
        # Question kinds per task ("image_qa/position"), from the records' optional "kind": finer metrics.
        self.kinds = sorted({f"{r['task']}/{r['kind']}" for r in records if isinstance(r.get("kind"), str)})
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def lengths(self) -> list[int]:
        """Approximate tokens per item, media expanded, for length bucketing: audio length from the file header
        (no samples read); 0 for records that will fail as BadSample."""
        if self._lengths is None:
            self._lengths = [self._estimate_tokens(r) for r in self.records]
        return self._lengths

    def _estimate_tokens(self, record: dict) -> int:
        try:
            n = len(self.tokenizer.encode_chat(record["messages"])[0])
            if record.get("audio") is not None:
                n += audio_token_count(mel_frames(round(sf.info(record["audio"]).duration * SAMPLE_RATE)))
        except (KeyError, TypeError, ValueError, RuntimeError, OSError):
            return 0
        return n + (self.image_tokens if record.get("image") is not None else 0)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        where = record["where"]
        if record.get("error"):
            raise BadSample(f"{where}: {record['error']}")
        messages = record.get("messages")
        if not isinstance(messages, list) or not any(
                isinstance(m, dict) and m.get("role") == "assistant" and str(m.get("content", "")).strip()
                for m in messages):
            raise BadSample(f"{where}: 'messages' must be a list with a non-empty assistant turn")
        for key, present in (("image", self.image_size), ("audio", self.logmel)):
            if record.get(key) is not None and present is None:
                raise BadSample(f"{where}: has {key!r} but the model has no {key} encoder")
        image = mel = None
        if record.get("image") is not None:
            try:
                image = image_to_tensor(load_image(record["image"]), self.image_size)
            except (FileNotFoundError, ValueError) as e:
                raise BadSample(f"{where}: {e}") from None
        if record.get("audio") is not None:
            try:
                wav = load_audio(record["audio"], duration=record.get("duration"))
            except AudioError as e:
                raise BadSample(f"{where}: {e}") from None
            with torch.no_grad():
                mel = self.logmel(wav)
            if self.max_mel_frames is not None and mel.shape[0] > self.max_mel_frames:
                raise BadSample(f"{where}: {record['audio']} gives {mel.shape[0]} mel frames > max_mel_frames="
                                f"{self.max_mel_frames}")
            check_encoder_frames(record["audio"], mel.shape[0], self.max_encoder_frames, where=f"{where}: ")
        try:  # bad roles or content, placeholders that do not match the media
            ids, mask = self.chat.encode_prompt(messages, image, mel)
        except ValueError as e:
            raise BadSample(f"{where}: {e}") from None
        if len(ids) > self.max_length:
            raise BadSample(f"{where}: {len(ids)} tokens with media expanded > max_length={self.max_length}")
        ids_t = torch.tensor(ids, dtype=torch.long)
        answer = next(m["content"] for m in messages if m["role"] == "assistant")  # the first answer, for logs
        kind = record.get("kind")
        return {"ids": ids_t, "targets": sft_targets(ids_t, torch.tensor(mask)), "image": image, "mel": mel,
                "task": record["task"], "kind": kind if isinstance(kind, str) else None, "answer": answer}

    def collate(self, samples: list[dict]) -> dict:
        """input_ids (B, T) right-padded with <pad>, targets (B, T) padded with IGNORE_INDEX; images (N, 3, S, S)
        and mel (N, T_mel, F) zero-padded + mel_lengths (N,) for the samples that have them, in batch order (the
        order of their placeholders), or None; tasks and answers as lists."""
        T = max(len(s["ids"]) for s in samples)
        input_ids = torch.full((len(samples), T), self.tokenizer.pad_id, dtype=torch.long)
        targets = torch.full((len(samples), T), IGNORE_INDEX, dtype=torch.long)
        for i, s in enumerate(samples):
            input_ids[i, :len(s["ids"])] = s["ids"]
            targets[i, :len(s["targets"])] = s["targets"]
        images = [s["image"] for s in samples if s["image"] is not None]
        mels = [s["mel"] for s in samples if s["mel"] is not None]
        mel = mel_lengths = None
        if mels:
            mel_lengths = torch.tensor([m.shape[0] for m in mels], dtype=torch.long)
            mel = torch.zeros(len(mels), int(mel_lengths.max()), mels[0].shape[1])
            for i, m in enumerate(mels):
                mel[i, :m.shape[0]] = m
        return {"input_ids": input_ids, "targets": targets, "images": torch.stack(images) if images else None,
                "mel": mel, "mel_lengths": mel_lengths, "tasks": [s["task"] for s in samples],
                "kinds": [s["kind"] for s in samples], "answers": [s["answer"] for s in samples]}
