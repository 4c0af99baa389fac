"""omni.ctc.pin_vocab: the one rule by which ASR (train_audio_enc.py) and OCR (train_ocr.py) keep a run's alphabet."""

import json

import pytest

from omni.ctc import CharVocab, load_vocab, pin_vocab
from omni.errors import UserError


def test_first_run_writes_the_alphabet_and_reruns_keep_it(tmp_path):
    path, log = tmp_path / "vocab.json", []
    assert pin_vocab(CharVocab(["a", "é"]), path, force=False, source="m.jsonl", log=log.append, write=False).chars \
        == ["a", "é"]
    assert not path.exists()  # write=False only reads
    pin_vocab(CharVocab(["a", "é"]), path, force=False, source="m.jsonl", log=log.append)
    assert json.loads(path.read_text(encoding="utf-8")) == ["a", "é"] and load_vocab(path).chars == ["a", "é"]
    assert pin_vocab(CharVocab(["a", "é"]), path, force=False, source="m.jsonl", log=log.append).chars == ["a", "é"]
    assert log == []


def test_a_changed_alphabet_is_refused_unless_forced_which_keeps_the_runs(tmp_path):
    path, log = tmp_path / "vocab.json", []
    pin_vocab(CharVocab(["a", "b"]), path, force=False, source="m.jsonl", log=log.append)
    with pytest.raises(UserError, match=r"m2\.jsonl use the characters 'abz', but this run's .*vocab\.json has 'ab'"
                                        r".*--force to keep the run's alphabet"):
        pin_vocab(CharVocab(["a", "b", "z"]), path, force=False, source="m2.jsonl", log=log.append)
    kept = pin_vocab(CharVocab(["a", "b", "z"]), path, force=True, source="m2.jsonl", log=log.append)
    assert kept.chars == ["a", "b"] and json.loads(path.read_text()) == ["a", "b"]
    assert len(log) == 1 and "--force: keeping the run's alphabet" in log[0]


def test_a_damaged_vocabulary_file_is_named(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text("[\"a\", ")
    with pytest.raises(UserError, match="vocab.json: not a character list"):
        pin_vocab(CharVocab(["a"]), path, force=True, source="m.jsonl", log=print)
