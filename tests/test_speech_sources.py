"""Public speech layouts beyond LibriSpeech/LJSpeech (omni.data.speech): Common Voice split TSVs with clips/*.mp3,
a folder of audio with a transcript CSV/TSV, several sources per data key (real + synthetic mixed), bad rows named
file:line, each path of a list checked before a run, the Talker code cache over these records, and a few steps of
train_audio_enc.py (Common Voice) and train_talker.py phase=codec (folder + CSV mixed with a JSONL set), each run
then scored by scripts/evaluate.py on its val set in that layout (dev.tsv, the folder's val.tsv).

Fixtures are written in the datasets' exact on-disk layouts from the synthetic tone speech of
tests/test_train_audio_enc.py (alignable transcripts, so Stage B really trains on them)."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from omni.audio import resample
from omni.config import load_config_file, missing_data_paths
from omni.ctc import CharVocab
from omni.data.manifest import DataError, read_jsonl
from omni.data.speech import AsrSource
from omni.data.speech_layouts import load_asr_records, speech_layout
from omni.data.tts import SpeechClips, build_code_cache
from omni.stages import AudioStage
from tests.conftest import REPO
from tests.stage_helpers import run_ok
from tests.test_text_sources import evaluate_like_the_run
from tests.test_train_audio_enc import TINY as AUDIO_TINY
from tests.test_train_audio_enc import write_tone_dataset

VOCAB = CharVocab.from_texts(["abcdefghijklmnopqrstuvwxyz' "])
# Common Voice 17's TSV header (train/dev/test/validated/other/invalidated.tsv share it).
CV_COLUMNS = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
              "gender", "accents", "variant", "locale", "segment"]


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """The synthetic source: wavs/*.wav + train.jsonl / val.jsonl {"audio", "text", "duration"}."""
    return write_tone_dataset(tmp_path_factory.mktemp("tones"), n_train=16, n_val=4)


def write_common_voice(tones, out):
    """`out` as a Common Voice language folder: clips/common_voice_en_N.mp3 (48 kHz MP3, as Common Voice ships
    them) and train.tsv / dev.tsv with the release's columns. Sentences keep a quote and a comma, unquoted."""
    (out / "clips").mkdir(parents=True)
    for split, tsv in (("train", "train.tsv"), ("val", "dev.tsv")):
        lines = ["\t".join(CV_COLUMNS)]
        for i, rec in enumerate(read_jsonl(tones / f"{split}.jsonl")):
            wav, rate = sf.read(tones / rec["audio"], dtype="float32")
            name = f"common_voice_en_{split}{i}.mp3"
            sf.write(out / "clips" / name, resample(torch.from_numpy(wav), rate, 48000).numpy(), 48000, format="MP3")
            sentence = f'"{rec["text"]}", he said' if i == 0 else rec["text"]
            row = dict.fromkeys(CV_COLUMNS, "") | {"client_id": f"{i % 3:064x}", "path": name, "sentence_id": f"{i:x}",
                                                   "sentence": sentence, "up_votes": "2", "down_votes": "0",
                                                   "locale": "en"}
            lines.append("\t".join(row[c] for c in CV_COLUMNS))
        (out / tsv).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "validated.tsv").write_text((out / "train.tsv").read_text())
    return out


def write_audio_folder(tones, out):
    """`out` as a folder of audio + transcripts: audio/<name>.wav, metadata.csv (file_name,transcription; quoted
    where a text has a comma) for training and val.tsv (path<TAB>text<TAB>duration) for validation."""
    (out / "audio").mkdir(parents=True)
    for split, table, delimiter, columns in (("train", "metadata.csv", ",", ("file_name", "transcription")),
                                             ("val", "val.tsv", "\t", ("path", "text", "duration"))):
        with (out / table).open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter=delimiter)
            writer.writerow(columns)
            for i, rec in enumerate(read_jsonl(tones / f"{split}.jsonl")):
                name = f"audio/{split}_{i}.wav"
                (out / name).write_bytes((tones / rec["audio"]).read_bytes())
                text = rec["text"].replace(" ", ", ", 1) if i == 0 else rec["text"]
                writer.writerow((name, text, rec["duration"])[:len(columns)])
    return out


def write_librispeech(tones, split_dir):
    """tones' val clips as one LibriSpeech chapter: 19/198/19-198-NNNN.flac + 19-198.trans.txt (upper case)."""
    chapter = split_dir / "19" / "198"
    chapter.mkdir(parents=True)
    lines = []
    for i, rec in enumerate(read_jsonl(tones / "val.jsonl")):
        wav, rate = sf.read(tones / rec["audio"], dtype="float32")
        sf.write(chapter / f"19-198-{i:04d}.flac", wav, rate, format="FLAC")
        lines.append(f"19-198-{i:04d} {rec['text'].upper()}")
    (chapter / "19-198.trans.txt").write_text("\n".join(lines) + "\n")
    return split_dir


@pytest.fixture(scope="module")
def cv(tones, tmp_path_factory):
    return write_common_voice(tones, tmp_path_factory.mktemp("cv") / "cv-corpus-17.0" / "en")


@pytest.fixture(scope="module")
def folder(tones, tmp_path_factory):
    return write_audio_folder(tones, tmp_path_factory.mktemp("myspeech"))


def test_common_voice_tsv_reads_mp3_clips_and_logs_its_layout(cv, tones):
    log = []
    records = load_asr_records(cv / "train.tsv", key="data.train_manifest", log=log.append)
    texts = [r["text"] for r in read_jsonl(tones / "train.jsonl")]
    assert log == [f"data.train_manifest: Common Voice TSV {cv / 'train.tsv'}, 16 clips"]
    assert [r["text"] for r in records] == [f'"{texts[0]}", he said', *texts[1:]]
    assert records[3]["audio"] == (cv / "clips" / "common_voice_en_train3.mp3").resolve()
    assert records[3]["where"] == f"{cv / 'train.tsv'}:5"
    item = AsrSource(records, vocab=VOCAB, n_mels=16)[0]  # 48 kHz MP3 decoded and resampled to 16 kHz
    assert item["text"] == f"{texts[0]} he said"
    expected = read_jsonl(tones / "train.jsonl")[0]["duration"]
    assert abs(item["mel"].shape[0] / 100 - expected) < 0.1  # MP3 adds at most a frame of encoder padding
    assert len(load_asr_records(cv / "validated.tsv")) == 16
    with pytest.raises(DataError, match=r"a Common Voice folder; point at one split's TSV, e.g. .*train\.tsv"):
        load_asr_records(cv)


def test_audio_folder_with_a_transcript_csv_or_tsv(folder, tones):
    train, val = read_jsonl(tones / "train.jsonl"), read_jsonl(tones / "val.jsonl")
    log = []
    records = load_asr_records(folder, key="k", log=log.append)  # the folder: its metadata.csv
    assert log == [f"k: transcript table {folder}, 16 clips"]
    assert records == load_asr_records(folder / "metadata.csv")
    assert records[0]["text"] == train[0]["text"].replace(" ", ", ", 1)  # the quoted comma stayed in the text
    assert records[5] == {"audio": (folder / "audio" / "train_5.wav").resolve(), "text": train[5]["text"],
                          "where": f"{folder / 'metadata.csv'}:7"}
    val_records = load_asr_records(folder / "val.tsv")
    assert [r["duration"] for r in val_records] == [r["duration"] for r in val]
    assert SpeechClips(val_records, n_mels=16, with_wav=True)[1]["wav"].shape[0] > 0


def test_ljspeech_metadata_csv_is_still_ljspeech(tmp_path):
    (tmp_path / "wavs").mkdir()
    (tmp_path / "metadata.csv").write_text("LJ001-0001|Printing, in the only sense|Printing, in the only sense\n")
    assert speech_layout(tmp_path)[0] == "LJSpeech folder"
    assert speech_layout(tmp_path / "metadata.csv")[0] == "LJSpeech folder"
    assert load_asr_records(tmp_path / "metadata.csv")[0]["audio"] == (tmp_path / "wavs" / "LJ001-0001.wav").resolve()


def test_a_list_of_sources_mixes_layouts_in_order(tones, tmp_path):
    libri = write_librispeech(tones, tmp_path / "LibriSpeech" / "dev-clean")
    log = []
    records = load_asr_records([str(tones / "train.jsonl"), str(libri)], key="data.train_manifest", log=log.append)
    assert log == [f"data.train_manifest: JSONL manifest {tones / 'train.jsonl'}, 16 clips",
                   f"data.train_manifest: LibriSpeech split folder {libri}, 4 clips",
                   "data.train_manifest: 20 clips from 2 sources"]
    assert [r["text"] for r in records] == ([r["text"] for r in read_jsonl(tones / "train.jsonl")]
                                            + [r["text"].upper() for r in read_jsonl(tones / "val.jsonl")])
    assert records[16]["audio"].suffix == ".flac" and "duration" in records[0]
    with pytest.raises(DataError, match="an empty list of data paths"):
        load_asr_records([], key="data.train_manifest")


@pytest.mark.parametrize("name, content, message", [
    ("train.tsv", "client_id\tpath\tsentence\nc1\ta.mp3\thello\nc2\tb.mp3\n",
     r"train\.tsv:3: expected 3 tab-separated columns \(client_id, path, sentence\), got 2"),
    ("train.tsv", "client_id\tpath\tsentence\nc1\t\thello\n", r"train\.tsv:2: empty 'path'"),
    ("metadata.csv", 'file,text\na.wav,"hello, world"\n\n,orphan text\n', r"metadata\.csv:4: empty 'file'"),
    ("metadata.csv", "file_name,text,duration\na.wav,hi,1.5\nb.wav,ho,abc\n",
     r"metadata\.csv:3: 'duration' must be a finite number of seconds > 0, got 'abc'"),
    ("metadata.csv", "file_name,text,duration\na.wav,hi,nan\n", r"metadata\.csv:2: 'duration' must be"),
    ("metadata.csv", 'file,text\na.wav,"two\nlines"\nb.wav,x,extra\n',
     r"metadata\.csv:4: expected 2 comma-separated columns"),  # the quoted row spans lines 2-3
    ("clips.csv", "name,words\na.wav,hi\n",
     r"clips\.csv:1: not a transcript table header: .*audio column \(one of file_name, file, path.*\), got "
     r"'name,words'"),
    ("clips.tsv", b"path\ttext\na.wav\tcaf\xe9\n", r"clips\.tsv:2: not UTF-8"),
])
def test_bad_rows_are_named_by_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    if name == "train.tsv":
        (tmp_path / "clips").mkdir()
    with pytest.raises(DataError, match=message):
        load_asr_records(path)


def test_each_path_of_a_list_must_exist_before_a_run(tmp_path, tones):
    config = tmp_path / "audio.json"
    config.write_text(json.dumps({"data": {"train_manifest": [str(tones / "train.jsonl"), str(tmp_path / "cv.tsv")],
                                           "val_manifest": str(tones / "val.jsonl")}}))
    cfg = load_config_file(AudioStage, config)
    assert cfg.data.train_manifest == [str(tones / "train.jsonl"), str(tmp_path / "cv.tsv")]
    assert missing_data_paths(cfg) == [f"data.train_manifest[1]={tmp_path / 'cv.tsv'}"]
    cfg = load_config_file(AudioStage, config, [f'data.val_manifest=["{tones / "val.jsonl"}"]'])  # --set takes JSON
    assert cfg.data.val_manifest == [str(tones / "val.jsonl")]


def test_calculate_model_size_counts_the_ctc_alphabet_of_a_list_of_sources(cv, folder):
    import importlib

    from omni.text_frontend import normalize_transcript

    char_vocab = importlib.import_module("scripts.calculate_model_size").char_vocab
    paths = [str(cv / "train.tsv"), str(folder)]
    texts = [normalize_transcript(r["text"]) for r in load_asr_records(paths)]
    assert char_vocab(paths, normalize=True) == len(CharVocab.from_texts(texts))
    assert char_vocab([*paths, str(folder / "missing.csv")], normalize=True) is None  # not at hand: assumed


def test_config_tools_read_every_speech_layout_and_lists(cv, folder, tones, tmp_path, capsys):
    import importlib

    update = importlib.import_module("scripts.update_configs_from_data")
    check_mel_lengths = importlib.import_module("scripts.check_mel_lengths")
    paths = [str(cv / "train.tsv"), str(folder / "val.tsv")]
    cfg = load_config_file(AudioStage, _write(tmp_path / "a.json", {"data": {"train_manifest": paths}}))
    counts = update.count_data("audio", cfg, None)
    assert counts["samples"] == 20 and "unreadable_audio" not in counts
    assert f"train_manifest: Common Voice TSV {paths[0]}, 16 clips" in capsys.readouterr().out
    data = {"train_manifest": paths, "val_manifest": str(tones / "val.jsonl")}
    update.rewrite_paths(data, Path("/d"))
    assert data == {"train_manifest": ["/d/en/train.tsv", f"/d/{folder.name}/val.tsv"],
                    "val_manifest": f"/d/{tones.name}/val.jsonl"}
    check_mel_lengths.main([*paths, "--keep", "90"])
    out = capsys.readouterr().out
    assert f"{paths[0]} + {paths[1]}: 20 utterances" in out and "recommended data.max_mel_length" in out


def _write(path, config):
    path.write_text(json.dumps(config))
    return path


class ByteTokenizer:
    """Stands in for the Stage-A tokenizer: the code cache needs only the text units' ids (omni.alignment.text_units)
    and a fingerprint."""

    fingerprint = "bytes"
    bos_id, eos_id = 1, 2

    def char_tokens(self, text):
        return [min(ord(c), 255) for c in text]


def test_talker_code_cache_over_mixed_sources_and_their_durations(cv, folder, tmp_path):
    from omni.alignment import CtcAligner
    from omni.codec import Codec, CodecConfig
    from omni.data.tts import TalkerCodes
    from tests.stage_data import random_aligner

    codec = Codec(CodecConfig(n_mels=16, channels=8, latent_dim=4, codebook_size=8)).eval()
    torch.save(codec.state_dict(), tmp_path / "codec.pt")
    records = load_asr_records([cv / "dev.tsv", folder / "val.tsv"])
    log = []
    kwargs = dict(codec=codec, codec_file=tmp_path / "codec.pt", tokenizer=ByteTokenizer(),
                  aligner=CtcAligner.load(random_aligner(tmp_path / "aligner")), max_text_len=256,
                  max_frames=512, cache_dir=tmp_path, name="val", log=log.append)
    codes = TalkerCodes(build_code_cache(records, **kwargs))
    assert len(codes) == 8 and not any(codes.bad) and all(len(c) > 0 for c in codes.codes)
    build_code_cache(records, **kwargs)
    assert log[-1].endswith("reused (codec, tokenizer, transcripts and 8 audio files unchanged)")
    # A stated duration decides whether a clip is cut short, so a changed one rebuilds the cache.
    records[-1] = records[-1] | {"duration": records[-1]["duration"] + 5.0}
    codes = TalkerCodes(build_code_cache(records, **kwargs))
    assert log[-1].startswith("encoding 8 utterances") and "truncated" in codes.bad[-1]



def test_train_audio_enc_on_common_voice(tmp_path, cv):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(AUDIO_TINY))
    save = tmp_path / "run"
    sets = [f"train.save_dir={save}", "train.max_steps=4", "train.val_freq=4",
            f"data.train_manifest={cv / 'train.tsv'}", f"data.val_manifest={cv / 'dev.tsv'}"]
    run_ok([sys.executable, str(REPO / "train_audio_enc.py"), "--config", str(config), "--set", *sets])
    log = (save / "training.log").read_text()
    assert f"data.train_manifest: Common Voice TSV {cv / 'train.tsv'}, 16 clips" in log
    summary = json.loads((save / "summary.json").read_text())
    assert summary["step"] == 4 and np.isfinite(summary["metrics"]["val_cer"])
    done = evaluate_like_the_run(save, config, sets, "val_cer", tmp_path / "eval.json")
    assert f"data.val_manifest: Common Voice TSV {cv / 'dev.tsv'}, 4 clips" in done.stderr


def test_train_talker_codec_phase_on_a_folder_csv_mixed_with_jsonl(tmp_path, folder, tones):
    from tests.test_train_talker import tiny

    config = tiny(tones, tmp_path / "unused_tokenizer.model", tmp_path / "talker", codec_steps=4)
    config["codec"]["data"] |= {"train_manifest": [str(folder), str(tones / "train.jsonl")],
                                "val_manifest": str(folder / "val.tsv")}
    config["phase"] = "codec"
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    run_ok([sys.executable, str(REPO / "train_talker.py"), "--config", str(tmp_path / "tiny.json")])
    save = tmp_path / "talker" / "codec"
    log = (save / "training.log").read_text()
    assert f"codec.data.train_manifest: transcript table {folder}, 16 clips" in log
    assert "codec.data.train_manifest: 32 clips from 2 sources" in log
    assert "data: 32 training clips, 4 validation clips" in log
    summary = json.loads((save / "summary.json").read_text())
    assert summary["step"] == 4 and np.isfinite(summary["metrics"]["val_recon_l1"])
    assert (save / "rvq_codec.pt").is_file()
    done = evaluate_like_the_run(tmp_path / "talker", tmp_path / "tiny.json", [], "val_recon_l1",
                                 tmp_path / "eval.json", summary_dir=save)
    assert f"transcript table {folder / 'val.tsv'}, 4 clips" in done.stderr
