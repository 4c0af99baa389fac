"""The synthetic demo text corpus: deterministic, split without leaks, stats that match the files."""

import re

import pytest

from omni.synthetic.text import COLOURS, POSITIONS, SHAPES, write_text_corpus


def _docs(path):
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and not text.endswith("\n\n\n")
    return text[:-1].split("\n\n")


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a = write_text_corpus(tmp_path / "a", seed=3, n_train_docs=300, n_val_docs=30)
    b = write_text_corpus(tmp_path / "b", seed=3, n_train_docs=300, n_val_docs=30)
    write_text_corpus(tmp_path / "c", seed=4, n_train_docs=300, n_val_docs=30)
    for split in ("train", "val"):
        assert (tmp_path / "a" / f"{split}.txt").read_bytes() == (tmp_path / "b" / f"{split}.txt").read_bytes()
        assert (tmp_path / "a" / f"{split}.txt").read_bytes() != (tmp_path / "c" / f"{split}.txt").read_bytes()
        assert {k: v for k, v in a[split].items() if k != "path"} == {k: v for k, v in b[split].items() if k != "path"}


def test_val_depends_only_on_seed_and_val_size(tmp_path):
    write_text_corpus(tmp_path / "small", seed=0, n_train_docs=100, n_val_docs=40)
    write_text_corpus(tmp_path / "large", seed=0, n_train_docs=900, n_val_docs=40)
    assert (tmp_path / "small" / "val.txt").read_bytes() == (tmp_path / "large" / "val.txt").read_bytes()


def test_no_validation_document_in_train(tmp_path):
    # Big enough that short, low-entropy documents (calendar, numbers) would collide without the exclusion.
    write_text_corpus(tmp_path, seed=0, n_train_docs=6000, n_val_docs=400)
    train, val = set(_docs(tmp_path / "train.txt")), _docs(tmp_path / "val.txt")
    assert len(val) == 400
    assert not train.intersection(val)


def test_stats_match_files_and_format(tmp_path):
    stats = write_text_corpus(tmp_path, seed=1, n_train_docs=500, n_val_docs=50)
    assert stats["seed"] == 1
    for split, n in (("train", 500), ("val", 50)):
        docs = _docs(tmp_path / f"{split}.txt")
        assert stats[split] == {"path": str(tmp_path / f"{split}.txt"), "docs": n,
                                "chars": sum(map(len, docs)), "words": sum(len(d.split()) for d in docs)}
        for doc in docs:  # one non-empty paragraph per document
            assert doc.strip() == doc and doc and "\n" not in doc
    assert stats["train"]["words"] > 500 * 10  # documents are paragraphs, not single words


def test_corpus_content(tmp_path):
    write_text_corpus(tmp_path, seed=0, n_train_docs=2000, n_val_docs=10)
    text = (tmp_path / "train.txt").read_text(encoding="utf-8")
    # Later stages (shape images, SFT questions) reuse this vocabulary, so the language model must have seen it.
    for word in (*COLOURS, *SHAPES, *POSITIONS, "one", "seven", "Monday", "Question:", "user", "assistant"):
        assert word in text, word
    assert not re.search(r"\b[Aa] [aeiou]|\b[Aa]n [b-df-hj-np-tv-z]", text), "wrong indefinite article"
    assert not re.search(r"\{|\}|  ", text), "template leftovers or double spaces"
    docs = _docs(tmp_path / "train.txt")
    assert len(set(docs)) > 0.85 * len(docs), "too many repeated documents"
    assert all(d[0].isupper() or d[0].isdigit() for d in docs)


def test_rejects_empty_splits(tmp_path):
    with pytest.raises(ValueError, match="n_val_docs=0"):
        write_text_corpus(tmp_path, n_train_docs=10, n_val_docs=0)
