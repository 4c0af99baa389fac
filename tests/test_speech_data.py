"""omni.data.speech readers and AsrSource, and the espeak-ng synthetic speech set (omni.synthetic.speech)."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from omni.audio import SAMPLE_RATE, mel_frames
from omni.ctc import CharVocab
from omni.data.resumable import BadSample
from omni.data.speech import AsrSource
from omni.data.speech_layouts import load_asr_records, read_asr_manifest, read_librispeech, read_ljspeech
from omni.speech import manifest_phrases
from omni.synthetic import speech as synth
from omni.text_frontend import normalize_transcript, normalize_transcript_report

VOCAB = CharVocab.from_texts(["abcdefghijklmnopqrstuvwxyz' "])
HAS_ESPEAK = shutil.which("espeak-ng") is not None


def _tone(path, seconds=1.0, rate=SAMPLE_RATE, freq=220.0, fmt=None):
    t = np.arange(int(rate * seconds)) / rate
    wav = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size)
    sf.write(path, wav.astype(np.float32), rate, format=fmt)
    return path


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("HELLO, World!", "hello world"),
        ("It\u2019s   the   café's cat", "it's the cafe's cat"),
        ("'Quoted' - well-known", "'quoted' well known"),
        (" ' 42 ", ""),
        ("DON'T", "don't"),
    ],
)
def test_normalize_transcript(raw, expected):
    assert normalize_transcript(raw) == expected


@pytest.mark.parametrize(
    "raw, text, dropped, content",
    [
        ("HELLO, World!", "hello world", {}, 10),  # punctuation is meant to go: not counted
        ("Room 101", "room", {"digits": 3}, 7),
        ("café \U0001F600 ok", "cafe ok", {"symbols": 1}, 7),  # the accent is folded, not lost; the emoji is
        ("Привет, мир cat", "cat", {"letters": 9}, 12),
    ],
)
def test_normalize_transcript_report_counts_lost_content(raw, text, dropped, content):
    report = normalize_transcript_report(raw)
    assert (report.text, report.dropped, report.content) == (text, dropped, content)
    assert normalize_transcript(raw) == text


def test_asr_source_summarises_what_normalisation_dropped(tmp_path):
    _tone(tmp_path / "a.wav")
    lines = [{"audio": "a.wav", "text": t} for t in ("a cat", "Room 101", "привет cat", "Room 4 + 5")]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    source = AsrSource(read_asr_manifest(tmp_path / "m.jsonl"), vocab=VOCAB)
    assert source.normalization_summary == (
        "3 of 4 transcripts lost characters to normalisation (digits: 5, letters: 6, symbols: 1); 1 lost more than "
        f"50% of them and are skipped as bad samples; first: {tmp_path / 'm.jsonl'}:2 'Room 101' -> 'room'")
    assert source[1]["text"] == "room"  # 3 of 7 lost: kept (and counted above)
    with pytest.raises(BadSample, match=r"m\.jsonl:3: .*a\.wav: normalisation removes 6 of 9"):
        source[2]
    assert AsrSource(source.records[:1], vocab=VOCAB).normalization_summary is None  # "a cat" loses nothing


def test_talker_text_keeps_digits_symbols_and_all_scripts():
    """The Talker's tokenizer has byte fallback, so its normaliser folds case and spaces and drops nothing."""
    from omni.text_frontend import talker_text

    assert talker_text("  Room 101,\tПРИВЕТ \U0001F600  ") == "room 101, привет \U0001F600"


def test_read_librispeech_layout(tmp_path):
    chapter = tmp_path / "dev-clean" / "19" / "198"
    chapter.mkdir(parents=True)
    (chapter / "19-198.trans.txt").write_text("19-198-0001 NORTHANGER ABBEY\n19-198-0000 IT'S A RED BOX\n")
    for utt in ("19-198-0000", "19-198-0001"):
        _tone(chapter / f"{utt}.flac", fmt="FLAC")
    records = read_librispeech(tmp_path / "dev-clean")
    assert [r["text"] for r in records] == ["NORTHANGER ABBEY", "IT'S A RED BOX"]
    assert [r["audio"].name for r in records] == ["19-198-0001.flac", "19-198-0000.flac"]
    assert all(r["audio"].is_absolute() and r["audio"].is_file() for r in records)
    assert load_asr_records(tmp_path / "dev-clean") == records
    item = AsrSource(records, vocab=VOCAB)[1]
    assert item["text"] == "it's a red box"
    assert item["mel"].shape == (mel_frames(SAMPLE_RATE), 128)


def test_read_ljspeech_layout_uses_normalized_text(tmp_path):
    (tmp_path / "wavs").mkdir()
    (tmp_path / "metadata.csv").write_text(
        'LJ001-0001|Dr. Smith said "hi"|Doctor Smith said "hi"\nLJ001-0002|Only two fields\n'
    )
    for utt in ("LJ001-0001", "LJ001-0002"):
        _tone(tmp_path / "wavs" / f"{utt}.wav", rate=22050)
    records = read_ljspeech(tmp_path)
    assert [r["text"] for r in records] == ['Doctor Smith said "hi"', "Only two fields"]
    assert records[0]["audio"] == (tmp_path / "wavs" / "LJ001-0001.wav").resolve()
    assert load_asr_records(tmp_path) == records
    assert AsrSource(records, vocab=VOCAB)[0]["text"] == "doctor smith said hi"


def test_read_manifest_resolves_relative_paths(tmp_path):
    (tmp_path / "data" / "wavs").mkdir(parents=True)
    _tone(tmp_path / "data" / "wavs" / "a.wav")
    manifest = tmp_path / "data" / "train.jsonl"
    manifest.write_text(json.dumps({"audio": "wavs/a.wav", "text": "a cat", "duration": 1.0}) + "\n")
    records = read_asr_manifest(manifest)
    assert records == [{"audio": (tmp_path / "data" / "wavs" / "a.wav").resolve(), "text": "a cat", "duration": 1.0,
                        "where": f"{manifest}:1"}]
    assert load_asr_records(manifest) == records
    manifest.write_text(json.dumps({"audio": "wavs/a.wav"}) + "\n")
    with pytest.raises(ValueError, match=r"train\.jsonl:1: .*'text'"):
        read_asr_manifest(manifest)


def test_unknown_layout_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not an ASR dataset"):
        load_asr_records(tmp_path)


@pytest.fixture
def records(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wave file")
    return [
        {"audio": _tone(tmp_path / "good_long.wav", seconds=1.2), "text": "The red box!", "duration": 1.2},
        {"audio": _tone(tmp_path / "good_short.wav", seconds=0.5), "text": "a cat"},
        {"audio": corrupt, "text": "hello"},
        {"audio": _tone(tmp_path / "empty_text.wav"), "text": " ?! "},
        {"audio": _tone(tmp_path / "short.wav", seconds=0.3), "text": "this transcript is far too long for the clip"},
        {"audio": _tone(tmp_path / "tiny.wav", seconds=0.01), "text": "a"},
    ]


def test_asr_source_item(records):
    source = AsrSource(records, vocab=VOCAB, n_mels=64)
    item = source[0]
    assert item["text"] == "the red box"
    assert VOCAB.decode(item["labels"].tolist()) == "the red box"
    assert item["mel"].shape == (mel_frames(int(1.2 * SAMPLE_RATE)), 64)
    assert item["audio"].endswith("good_long.wav")


@pytest.mark.parametrize(
    "index, name, reason",
    [
        (2, "corrupt.wav", "cannot read"),
        (3, "empty_text.wav", "empty transcript"),
        (4, "short.wav", "CTC frames"),
        (5, "tiny.wav", "too short"),
    ],
)
def test_asr_source_raises_bad_sample_naming_the_file(records, index, name, reason):
    with pytest.raises(BadSample, match=reason) as info:
        AsrSource(records, vocab=VOCAB)[index]
    assert str(records[index]["audio"]) in str(info.value) and name in str(info.value)


def test_too_long_transcript_depends_on_ctc_upsample(records):
    # 0.3 s -> 31 mel frames -> 4 encoder frames; "a cat" needs 5 CTC frames: only fits with upsample >= 2.
    rec = [{"audio": records[4]["audio"], "text": "a cat"}]
    with pytest.raises(BadSample, match="needs 5 CTC frames"):
        AsrSource(rec, vocab=VOCAB, ctc_upsample=1)[0]
    assert AsrSource(rec, vocab=VOCAB, ctc_upsample=2)[0]["text"] == "a cat"


def test_max_mel_length_rejects_long_audio_and_pads_statically(records):
    source = AsrSource(records[:2], vocab=VOCAB, max_mel_length=100)
    with pytest.raises(BadSample, match="good_long.wav.*max_mel_length=100"):
        source[0]
    batch = source.collate([source[1], source[1]])
    assert batch["mel"].shape == (2, 100, 128)


def test_collate_pads_to_batch_max(records):
    source = AsrSource(records[:2], vocab=VOCAB)
    a, b = source[0], source[1]
    batch = source.collate([a, b])
    t_a, t_b = a["mel"].shape[0], b["mel"].shape[0]
    assert batch["mel"].shape == (2, t_a, 128)
    assert batch["mel_lengths"].tolist() == [t_a, t_b]
    assert torch.equal(batch["mel"][1, :t_b], b["mel"]) and not batch["mel"][1, t_b:].any()
    assert batch["labels"].shape == (2, len("the red box"))
    assert batch["label_lengths"].tolist() == [11, 5]
    assert VOCAB.decode(batch["labels"][1, :5].tolist()) == "a cat" and not batch["labels"][1, 5:].any()
    assert batch["texts"] == ["the red box", "a cat"]


def test_lengths_come_from_duration_or_header(records):
    lengths = AsrSource(records, vocab=VOCAB).lengths
    assert lengths[0] == mel_frames(int(1.2 * SAMPLE_RATE))  # from the record's duration
    assert lengths[1] == mel_frames(int(0.5 * SAMPLE_RATE))  # from the file header
    assert lengths[2] == 0  # unreadable: fails later as BadSample


def test_missing_espeak_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        synth.write_speech_dataset(tmp_path, seed=0, n_train=1, n_val=1)


def test_sentences_are_disjoint_across_splits_and_val_is_stable():
    train, val = synth.split_sentences(seed=0, n_train=2000, n_val=200)
    assert synth.split_sentences(seed=0, n_train=10, n_val=200)[1] == val
    assert synth.split_sentences(seed=1, n_train=10, n_val=200)[1] != val
    assert len(set(val)) == 200 and len(set(train)) == 2000 and not set(val) & set(train)
    lengths = [len(s.split()) for s in train]
    assert min(lengths) == 2 and max(lengths) == 8
    assert all(normalize_transcript(s) == s for s in train)
    assert any("'" in s for s in train)


@pytest.mark.skipif(not HAS_ESPEAK, reason="needs espeak-ng (make demo installs it)")
def test_default_voices_all_sound_different():
    renders = {v: synth.render_speech("the red circle", voice=v).numpy().tobytes() for v in synth.DEFAULT_VOICES}
    assert len(set(renders.values())) == len(renders)


@pytest.mark.skipif(not HAS_ESPEAK, reason="needs espeak-ng (make demo installs it)")
def test_write_speech_dataset(tmp_path):
    stats = synth.write_speech_dataset(tmp_path, seed=3, n_train=6, n_val=3)
    assert stats["n_train"] == 6 and stats["n_val"] == 3 and stats["bytes"] > 0
    train = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    val = [json.loads(line) for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert len(train) == 6 and len(val) == 3
    assert not {r["text"] for r in train} & {r["text"] for r in val}
    for rec in train + val:
        assert {"audio", "text", "duration"} <= set(rec)
        info = sf.info(str(tmp_path / rec["audio"]))
        assert info.samplerate == SAMPLE_RATE and info.channels == 1
        assert abs(info.duration - rec["duration"]) < 1e-3
    # Every rendered utterance is usable for CTC training as is.
    source = AsrSource(read_asr_manifest(tmp_path / "train.jsonl"), vocab=VOCAB)
    assert [source[i]["text"] for i in range(len(source))] == [r["text"] for r in train]


@pytest.mark.skipif(not HAS_ESPEAK, reason="needs espeak-ng (make demo installs it)")
def test_phrases_are_spoken_in_training_only_after_unchanged_sentences(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "PHRASES", ("black", "top left"))
    synth.write_speech_dataset(tmp_path / "plain", seed=3, n_train=4, n_val=2)
    stats = synth.write_speech_dataset(tmp_path / "phrases", seed=3, n_train=4, n_val=2, phrase_repeats=2)

    def read(name, split):
        return [json.loads(line) for line in (tmp_path / name / f"{split}.jsonl").read_text().splitlines()]

    train = read("phrases", "train")
    assert stats["n_train"] == 8 and read("phrases", "val") == read("plain", "val")
    assert train[:4] == read("plain", "train")  # same sentences, same voices, same files
    assert [r["text"] for r in train[4:]] == ["black", "top left", "black", "top left"]
    assert all(r["phrase"] for r in train[4:]) and not any("phrase" in r for r in train[:4])
    # What `python -m omni.speech --phrases` scores: PHRASES, once each, in order.
    assert manifest_phrases(tmp_path / "phrases" / "train.jsonl") == ["black", "top left"]

    one_voice = dict(voices=("en-us",), rates=(150,), pitches=(50,))
    stats = synth.write_speech_dataset(tmp_path / "one", seed=3, n_train=4, n_val=2, phrase_repeats=3, **one_voice)
    train = read("one", "train")
    assert stats["n_train"] == 10 and stats["files"] == 8  # each phrase rendered once, its repeats share the file
    assert train[4] == train[6] == train[8] and train[5] == train[7] == train[9] and train[4] != train[5]
    assert synth.render_speech("black", voice="en-us", rate=150, pitch=50).equal(
        synth.render_speech("black", voice="en-us", rate=150, pitch=50))  # why sharing is right: espeak-ng repeats


def test_phrases_cover_every_image_answer():
    """Stage E speaks its answers; the one-word ones about the shape images must be among the phrases."""
    from omni.synthetic import images

    answers = {*images.COLOURS, *images.SHAPES, *images.COUNT_WORDS.values(), *images.POSITIONS}
    assert answers <= set(synth.PHRASES)
    assert len(set(synth.PHRASES)) == len(synth.PHRASES)
