"""Stale derived data and unusable validation sets (issue 14, classes 3 and 7).

- Every cache of derived data is rebuilt when its inputs change (size or mtime_ns, omni.data.fingerprint): the
  token memmaps of a corpus, the Talker's code cache (also when one audio file changes), and the log says whether
  a cache was reused or rebuilt and why. A resumed run whose corpus changed under it says so in its log.
- A validation set with no usable sample is one clear error naming the file before any training step, not a
  ZeroDivisionError at the first evaluation.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from omni.alignment import CtcAligner
from omni.audio import SAMPLE_RATE
from omni.codec import Codec, CodecConfig
from omni.data import fingerprint
from omni.data.manifest import write_jsonl
from omni.data.resumable import BadSample, require_usable
from omni.data.text import build_token_cache, open_tokens, read_documents
from omni.data.tts import TalkerCodes, build_code_cache
from omni.errors import UserError
from omni.synthetic.ocr_lines import write_ocr_dataset
from omni.tokenizer import train_tokenizer
from tests.conftest import REPO
from tests.stage_data import random_aligner
from tests.test_train_audio_enc import TINY as ASR_TINY
from tests.test_train_audio_enc import write_tone_dataset
from tests.test_train_ocr import TINY as OCR_TINY
from tests.test_train_text import TINY as TEXT_TINY


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, text_corpus):
    return train_tokenizer([text_corpus / "train.txt"], tmp_path_factory.mktemp("tok"), vocab_size=400)


def later_mtime(path, seconds=1):
    """Move the mtime of `path` on by `seconds`: an edit within one timestamp tick of the filesystem would
    otherwise keep the mtime, and that is not what these tests are about."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def tokens_of(tokenizer, corpus):
    return [i for doc in read_documents(corpus) for i in tokenizer.encode(doc, bos=True, eos=True)]


# ---------------------------------------------------------------- class 3: caches follow their inputs
def test_token_cache_is_rebuilt_when_the_corpus_changes_and_reused_when_not(tmp_path, tokenizer):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat.\n\nthe dog ran home.\n")
    logs = []
    cache = build_token_cache(corpus, tokenizer, log=logs.append)
    assert "tokenizing" in logs[-1] and "no cache yet" in logs[-1]
    assert build_token_cache(corpus, tokenizer, log=logs.append) == cache and "reused" in logs[-1]

    # Same name, different content (and size): the run must see the new tokens.
    corpus.write_text("a red circle is above a blue square.\n")
    assert build_token_cache(corpus, tokenizer, log=logs.append) == cache
    assert "tokenizing" in logs[-1] and "changed" in logs[-1] and str(corpus) in logs[-1]
    assert open_tokens(cache, tokenizer.vocab_size).tolist() == tokens_of(tokenizer, corpus)

    # Same size, different content, a later mtime.
    before = corpus.stat().st_size
    corpus.write_text("a red square is above a blue circle.\n")
    later_mtime(corpus)
    assert corpus.stat().st_size == before
    build_token_cache(corpus, tokenizer, log=logs.append)
    assert "tokenizing" in logs[-1]
    assert open_tokens(cache, tokenizer.vocab_size).tolist() == tokens_of(tokenizer, corpus)
    assert build_token_cache(corpus, tokenizer, log=logs.append) == cache and "reused" in logs[-1]

    # A crash between writing the cache and its record: the inputs are unknown, so it is rebuilt.
    fingerprint.sidecar(cache).unlink()
    build_token_cache(corpus, tokenizer, log=logs.append)
    assert "tokenizing" in logs[-1] and "unknown" in logs[-1]


def test_code_cache_is_rebuilt_when_an_audio_file_changes(tmp_path, tokenizer):
    def clip(name, seconds, freq):
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        sf.write(tmp_path / name, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SAMPLE_RATE,
                 subtype="PCM_16")
        return tmp_path / name

    torch.manual_seed(0)
    codec = Codec(CodecConfig(n_mels=16, channels=8, latent_dim=8, n_codebooks=2, codebook_size=16)).eval()
    codec_file = tmp_path / "codec.pt"
    torch.save(codec.state_dict(), codec_file)
    records = [{"audio": clip("a.wav", 0.5, 220), "text": "a red circle"},
               {"audio": clip("b.wav", 0.5, 440), "text": "a blue square"}]
    logs = []
    aligner = CtcAligner.load(random_aligner(tmp_path / "aligner"))
    kwargs = dict(codec=codec, codec_file=codec_file, tokenizer=tokenizer, aligner=aligner, max_text_len=64,
                  max_frames=64, name="train", log=logs.append)
    cache = build_code_cache(records, cache_dir=tmp_path / "run", **kwargs)
    assert "encoding" in logs[-1] and not any(TalkerCodes(cache).bad)
    frames = len(TalkerCodes(cache).codes[1])
    assert build_code_cache(records, cache_dir=tmp_path / "run", **kwargs) == cache and "reused" in logs[-1]

    clip("b.wav", 1.0, 440)  # re-rendered longer, same name
    build_code_cache(records, cache_dir=tmp_path / "run", **kwargs)
    assert "encoding" in logs[-1] and "b.wav" in logs[-1]
    assert len(TalkerCodes(cache).codes[1]) > frames

    clip("b.wav", 1.0, 660)  # same size, other sound, later mtime
    later_mtime(records[1]["audio"])
    build_code_cache(records, cache_dir=tmp_path / "run", **kwargs)
    assert "encoding" in logs[-1]
    fresh = TalkerCodes(build_code_cache(records, cache_dir=tmp_path / "fresh", **kwargs))
    assert all(torch.equal(a, b) for a, b in zip(TalkerCodes(cache).codes, fresh.codes))

    kwargs["max_frames"] = 4  # a limit that decides which records are unusable is an input too
    build_code_cache(records, cache_dir=tmp_path / "run", **kwargs)
    assert "encoding" in logs[-1] and "max_frames" in logs[-1]
    assert all(TalkerCodes(cache).bad)


def test_note_run_data_warns_only_when_a_resumed_run_sees_other_data(tmp_path):
    logs = []
    assert fingerprint.note_run_data(tmp_path, {"data.train_path": "aaa"}, resumed=False, log=logs.append) == []
    assert fingerprint.note_run_data(tmp_path, {"data.train_path": "aaa"}, resumed=True, log=logs.append) == []
    assert logs == []
    changed = fingerprint.note_run_data(tmp_path, {"data.train_path": "bbb"}, resumed=True, log=logs.append)
    assert changed == ["data.train_path"] and "WARNING: data.train_path changed" in logs[0]
    assert "not the exact continuation" in logs[0]
    assert fingerprint.note_run_data(tmp_path, {"data.train_path": "bbb"}, resumed=True, log=logs.append) == []


# ---------------------------------------------------------------- class 7: a validation set with nothing usable
class Items:
    def __init__(self, good):
        self.good, self.reads = good, 0

    def __len__(self):
        return len(self.good)

    def __getitem__(self, i):
        self.reads += 1
        if not self.good[i]:
            raise BadSample(f"clip{i}.wav: unreadable")
        return {"x": i}


def test_require_usable_scans_to_the_first_good_sample_and_names_the_file_otherwise():
    source = Items([False, False, True, False])
    assert require_usable(source, name="val.jsonl") == 2 and source.reads == 3  # stops at the first good one
    with pytest.raises(UserError, match=r"val\.jsonl: no usable validation sample: all 5 are bad(.|\n)*"
                                        r"clip0\.wav: unreadable(.|\n)*and 2 more"):
        require_usable(Items([False] * 5), name="val.jsonl")
    with pytest.raises(UserError, match=r"val\.jsonl: the validation set is empty"):
        require_usable(Items([]), name="val.jsonl")


def run_script(script, config, tmp_path, *sets):
    path = tmp_path / f"{script}.json"
    path.write_text(json.dumps(config))
    return subprocess.run([sys.executable, str(REPO / script), "--config", str(path), "--set", *sets], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def assert_clear_error_before_training(result, save, *expected):
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "error: " in result.stderr, result.stderr[-3000:]
    for text in expected:
        assert text in result.stderr, result.stderr[-3000:]
    assert not list(save.glob("*_step_*.pt"))  # before any step


def test_text_val_file_too_short_for_one_window_is_an_error_before_training(tmp_path, text_corpus):
    (tmp_path / "val.txt").write_text("hello there.\n")
    save = tmp_path / "run"
    result = run_script("train_text.py", TEXT_TINY, tmp_path, f"train.save_dir={save}",
                        f"data.train_path={text_corpus / 'train.txt'}", f"data.val_path={tmp_path / 'val.txt'}")
    assert_clear_error_before_training(result, save, str(tmp_path / "val.txt"), "cannot fill one window")


def test_asr_val_set_of_only_bad_clips_is_an_error_before_training(tmp_path):
    data = write_tone_dataset(tmp_path / "speech", n_train=4, n_val=2)
    write_jsonl(data / "bad_val.jsonl", [{"audio": f"wavs/missing_{i}.wav", "text": "a cat"} for i in range(3)])
    save = tmp_path / "run"
    result = run_script("train_audio_enc.py", ASR_TINY, tmp_path, f"train.save_dir={save}",
                        f"data.train_manifest={data / 'train.jsonl'}", f"data.val_manifest={data / 'bad_val.jsonl'}")
    assert_clear_error_before_training(result, save, f"{data / 'bad_val.jsonl'}: no usable validation sample",
                                       "missing_0.wav")


def test_ocr_val_set_the_vocabulary_does_not_cover_is_an_error_before_training(tmp_path):
    data = tmp_path / "ocr"
    write_ocr_dataset(data, seed=1, n_train=8, n_val=2, height=32)
    val = [json.loads(x) for x in (data / "val.jsonl").read_text().splitlines()]
    write_jsonl(data / "bad_val.jsonl", [{**r, "text": "\u00a7\u00a7\u00a7"} for r in val])  # never in training
    save = tmp_path / "run"
    result = run_script("train_ocr.py", OCR_TINY, tmp_path, f"train.save_dir={save}",
                        f"data.train_manifest={data / 'train.jsonl'}", f"data.val_manifest={data / 'bad_val.jsonl'}")
    assert_clear_error_before_training(result, save, f"{data / 'bad_val.jsonl'}: no usable validation sample")


def test_text_run_retokenizes_an_edited_corpus_and_a_resumed_run_says_its_data_changed(tmp_path, text_corpus):
    corpus = tmp_path / "corpus"
    # The text only: earlier tests leave token caches beside the shared corpus, which a copy would carry along.
    shutil.copytree(text_corpus, corpus, ignore=lambda folder, names: [n for n in names if not n.endswith(".txt")])
    save = tmp_path / "run"
    config = {**TEXT_TINY, "train": {**TEXT_TINY["train"], "max_steps": 2, "val_freq": 2}}
    sets = (f"train.save_dir={save}", f"data.train_path={corpus / 'train.txt'}", f"data.val_path={corpus / 'val.txt'}")
    first = run_script("train_text.py", config, tmp_path, *sets)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "no cache yet" in first.stderr and "WARNING" not in first.stderr

    with open(corpus / "train.txt", "a") as f:  # edited in place: more text under the same name
        f.write("\n\n" + (corpus / "val.txt").read_text())
    again = run_script("train_text.py", config, tmp_path, *sets, "train.max_steps=4")
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stderr
    assert "resumed at step 2" in log
    assert f"tokenizing {corpus / 'train.txt'}" in log and "changed since it was built" in log
    assert f"token cache {corpus / 'val.txt'}" in log and "reused" in log  # the unchanged val file
    tokenizer_path = save / "tokenizer.model"
    assert f"WARNING: keeping this run's {tokenizer_path}, although it was trained on other data" in log
    assert "WARNING: data.train_path changed since this run last started" in log
    assert "data.val_path changed" not in log
    from omni.tokenizer import Tokenizer
    n_tokens = len(tokens_of(Tokenizer.load(tokenizer_path), corpus / "train.txt"))
    assert f"corpus: {n_tokens:,} training tokens" in log  # trains on the new tokens
