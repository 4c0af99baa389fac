"""Stage A text in the layouts public corpora ship in (omni.data.text_sources): .txt, .jsonl, parquet shards (the
TinyStories, FineWeb-Edu and Wikipedia layouts), .gz, folders and globs; the token cache over shards; train_text.py
on a folder of parquet shards, then scripts/evaluate.py on a parquet val shard; scripts/download_text.py against a
file:// mirror. `evaluate_like_the_run` (the evaluate.py check after a few training steps) serves the other
*_sources tests too."""

import gzip
import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omni.config import missing_data_paths
from omni.data.manifest import DataError
from omni.data.text import build_token_cache, open_tokens, read_documents, token_cache_path
from omni.data.text_sources import normalize_document, open_corpus
from omni.errors import MissingInput
from omni.stages import TextStage
from omni.tokenizer import train_tokenizer
from tests.conftest import REPO
from tests.test_train_text import TINY


@pytest.fixture(scope="module")
def docs(text_corpus):
    return read_documents(text_corpus / "train.txt")


@pytest.fixture(scope="module")
def tokenizer(text_corpus, tmp_path_factory):
    return train_tokenizer([text_corpus / "train.txt"], tmp_path_factory.mktemp("tok"), vocab_size=400)


def write_parquet(path, texts, **extra_columns):
    """A shard as the Hugging Face datasets write them: a "text" column among others, several row groups."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({**{k: [v(i) for i in range(len(texts))] for k, v in extra_columns.items()}, "text": texts})
    pq.write_table(table, path, row_group_size=max(1, len(texts) // 3))
    return path


def write_jsonl(path, texts, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": i, "text": t, "meta": {"source": "x"}}) + "\n")
    return path


def evaluate_like_the_run(run_dir, config, sets, metric, out, summary_dir=None):
    """`scripts/evaluate.py --config config --set *sets --json out` as a user runs it after training: exit 0,
    `metric` among its metrics and every metric of the run's summary.json (in `summary_dir`, default `run_dir`)
    equal to the run's own on its val set (same readers, same evaluation code), nothing under `run_dir` written."""
    before = {p.relative_to(run_dir): (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.rglob("*")}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), "--config", str(config), "--set",
                           *map(str, sets), "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(out.read_text())["metrics"]
    summary = json.loads(((summary_dir or run_dir) / "summary.json").read_text())["metrics"]
    assert metric in metrics and metrics.keys() == summary.keys()
    for key, value in summary.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert {p.relative_to(run_dir): (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.rglob("*")} == before
    return done


def split(items, n):
    k = -(-len(items) // n)
    return [items[i:i + k] for i in range(0, len(items), k)]


def read_back(spec):
    corpus = open_corpus(spec)
    return corpus, [normalize_document(d) for d in corpus.documents()]


def test_every_layout_reads_the_same_documents(tmp_path, docs):
    some = docs[:60]
    (tmp_path / "plain.txt").write_text("\n\n".join(some) + "\n", encoding="utf-8")
    with gzip.open(tmp_path / "plain.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n\n".join(some) + "\n")
    write_jsonl(tmp_path / "records.jsonl", some)
    write_jsonl(tmp_path / "records.jsonl.gz", some, opener=gzip.open)
    # TinyStories: data/train-0000i-of-00004-<hash>.parquet beside data/validation-...parquet (text only)
    ts = tmp_path / "TinyStories" / "data"
    for i, part in enumerate(split(some, 4)):
        write_parquet(ts / f"train-0000{i}-of-00004-{i:016x}.parquet", part)
    write_parquet(ts / "validation-00000-of-00001-869c898b519ad725.parquet", ["a held-out story."])
    (ts.parent / "README.md").write_text("# TinyStories\n")
    # FineWeb-Edu: sample/10BT/000_00000.parquet ... with metadata columns
    fw = tmp_path / "fineweb-edu" / "sample" / "10BT"
    for i, part in enumerate(split(some, 3)):
        write_parquet(fw / f"{i:03d}_00000.parquet", part, id=lambda j: f"<urn:{j}>", url=lambda j: f"http://x/{j}",
                      score=lambda j: 3.5, token_count=lambda j: 100)
    (fw / ".gitattributes").write_text("*.parquet filter=lfs\n")
    # Wikipedia: 20231101.en/train-0000i-of-0000n.parquet with id, url, title, text
    wiki = tmp_path / "wikipedia" / "20231101.en"
    for i, part in enumerate(split(some, 2)):
        write_parquet(wiki / f"train-0000{i}-of-00002.parquet", part, id=str, url=lambda j: f"https://w/{j}",
                      title=lambda j: f"Title {j}")

    expected = {
        tmp_path / "plain.txt": "file, plain text file",
        tmp_path / "plain.txt.gz": "file, plain text file (1 gzip)",
        tmp_path / "records.jsonl": "file, JSONL file",
        tmp_path / "records.jsonl.gz": "file, JSONL file (1 gzip)",
        ts / "train-*.parquet": "glob, 4 parquet shards",
        fw: "folder, 3 parquet shards",
        tmp_path / "wikipedia" / "**" / "train-*.parquet": "glob, 2 parquet shards",
        ts / "train-00002-of-00004-0000000000000002.parquet": "file, parquet file",
    }
    for spec, layout in expected.items():
        corpus, got = read_back(spec)
        assert f"{spec}: {layout}" in corpus.describe()
        assert got == (split(some, 4)[2] if spec.name.startswith("train-00002") else some), spec
        assert corpus.summary().startswith(f"{len(got)} documents from {len(corpus.shards)} shard")
    assert "ignored" not in open_corpus(fw).describe()  # hidden files are not data
    _, val = read_back(ts / "validation-*.parquet")
    assert val == ["a held-out story."]  # the validation shard beside the train shards stays out of train-*


def test_token_cache_of_shards_matches_the_text_and_is_rebuilt_when_a_shard_changes(tmp_path, docs, tokenizer):
    folder = tmp_path / "shards"
    parts = split(docs[:90], 3)
    for i, part in enumerate(parts):
        write_parquet(folder / f"train-{i:05d}.parquet", part)
    plain = tmp_path / "same.txt"
    plain.write_text("\n\n".join(docs[:90]) + "\n")
    logs = []
    cache = build_token_cache(folder, tokenizer, log=logs.append)
    assert cache == tmp_path / f"shards.{tokenizer.fingerprint}.bin"  # beside the folder, not among its shards
    assert "shards: folder, 3 parquet shards" in logs[0] and "90 documents from 3 shards" in logs[-1]
    reference = open_tokens(build_token_cache(plain, tokenizer, log=logs.append), tokenizer.vocab_size)
    assert np.array_equal(open_tokens(cache, tokenizer.vocab_size), reference)  # the layout changes nothing
    assert build_token_cache(folder, tokenizer, log=logs.append) == cache and "reused" in logs[-1]

    # One shard re-downloaded with other documents (size and mtime change): rebuilt, with the new tokens.
    write_parquet(folder / "train-00001.parquet", parts[1][:5])
    build_token_cache(folder, tokenizer, log=logs.append)
    assert any("changed" in line and "train-00001.parquet" in line for line in logs[-2:])
    expected = [i for d in parts[0] + parts[1][:5] + parts[2] for i in tokenizer.encode(d, bos=True, eos=True)]
    assert open_tokens(cache, tokenizer.vocab_size).tolist() == expected
    # A shard added: rebuilt; the cache's own files beside the folder are never read as shards.
    write_parquet(folder / "train-00003.parquet", docs[90:95])
    build_token_cache(folder, tokenizer, log=logs.append)
    assert any("1 new" in line for line in logs[-2:]) and "70 documents from 4 shards" in logs[-1]


def test_glob_cache_path_and_missing_paths(tmp_path, tokenizer):
    train, val = tmp_path / "data" / "train-*.parquet", tmp_path / "data" / "validation-*.parquet"
    a, b = token_cache_path(train, tokenizer), token_cache_path(val, tokenizer)
    assert a.parent == b.parent == tmp_path / "data" and a != b and "*" not in a.name + b.name
    cfg = TextStage()
    cfg.data.train_path, cfg.data.val_path = str(train), str(tmp_path / "nothing" / "*.parquet")
    write_parquet(tmp_path / "data" / "train-00000.parquet", ["one document."])
    # A glob that matches nothing is missing; one that matches is not.
    assert missing_data_paths(cfg) == [f"data.val_path={cfg.data.val_path}"]
    with pytest.raises(MissingInput, match="no file matches"):
        open_corpus(cfg.data.val_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("x")
    with pytest.raises(DataError, match=r"no text shards .* found: notes\.md"):
        open_corpus(tmp_path / "empty")


def test_bad_records_are_named_and_empty_ones_counted(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "one"}\n{"text": null}\n{"text": "  "}\n{"text": "two"}\n')
    corpus, got = read_back(path)
    assert got == ["one", "two"]
    assert "2 empty or null 'text' record(s) skipped, first: " + f"{path}:2" in corpus.summary()
    path.write_text('{"text": "one"}\n{"body": "two"}\n')
    with pytest.raises(DataError, match=r"c\.jsonl:2: missing key\(s\) \['text'\]"):
        read_back(path)
    path.write_text('{"text": "one"}\n{"text": 5}\n')
    with pytest.raises(DataError, match=r"c\.jsonl:2: 'text' must be a string"):
        read_back(path)
    shard = write_parquet(tmp_path / "p.parquet", ["a", None, "b"])
    corpus, got = read_back(shard)
    assert got == ["a", "b"] and f"first: {shard}:row 1" in corpus.summary()
    pq.write_table(pa.table({"content": ["a"]}), tmp_path / "q.parquet")
    with pytest.raises(DataError, match=r"q\.parquet: no 'text' column; the columns are \['content'\]"):
        read_back(tmp_path / "q.parquet")
    (tmp_path / "r.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"r\.parquet: not a readable parquet file"):
        read_back(tmp_path / "r.parquet")
    whole = gzip.compress(("\n\n".join(["a story."] * 2000)).encode())
    (tmp_path / "cut.txt.gz").write_bytes(whole[:len(whole) // 2])  # a download that stopped half way
    with pytest.raises(DataError, match=r"cut\.txt\.gz: not a complete gzip file"):
        read_back(tmp_path / "cut.txt.gz")


def test_train_text_on_a_folder_of_parquet_shards(tmp_path, text_corpus, docs):
    """A few steps of Stage A on FineWeb-Edu-style shards, validated on a .jsonl.gz; the log names the layouts. Then
    scripts/evaluate.py on the same val documents as download_text.py's FineWeb-Edu val.parquet scores the run's
    val_ppl: the parquet reader and the token cache over it give the same tokens."""
    train = tmp_path / "fineweb-edu" / "train"
    for i, part in enumerate(split(docs, 3)):
        write_parquet(train / f"{i:03d}_00000.parquet", part, url=lambda j: f"http://x/{j}")
    val = write_jsonl(tmp_path / "val.jsonl.gz", read_documents(text_corpus / "val.txt"), opener=gzip.open)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    save = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train_text.py"), "--config", str(cfg), "--set", f"train.save_dir={save}",
           f"data.train_path={train}", f"data.val_path={val}", "train.max_steps=4", "train.val_freq=4",
           "data.tokenizer_sample_docs=300"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "val_ppl" in done.stdout
    log = (save / "training.log").read_text()
    assert f"{train}: folder, 3 parquet shards" in log and f"{val}: file, JSONL file (1 gzip)" in log
    assert f"tokenizer sample: 300 of {len(docs)} documents" in log
    assert f"{len(docs)} documents from 3 shards" in log
    assert json.loads((save / "summary.json").read_text())["step"] == 4

    val_shard = write_parquet(tmp_path / "fineweb-edu" / "val.parquet", read_documents(text_corpus / "val.txt"))
    done = evaluate_like_the_run(save, cfg, cmd[cmd.index("--set") + 1:] + [f"data.val_path={val_shard}"], "val_ppl",
                                 tmp_path / "eval.json")
    assert f"{val_shard}: file, parquet file" in done.stderr


# ------------------------------------------------------------------------------------------------ download


@pytest.fixture
def download_text(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))  # the script imports download_util as a sibling
    return importlib.import_module("download_text")


def test_download_tinystories_from_a_file_mirror(tmp_path, docs, download_text):
    mirror = tmp_path / "mirror"
    hf = mirror / download_text.TINYSTORIES
    for name, part in zip(download_text.TINYSTORIES_FILES, split(docs[:50], 5)):
        write_parquet(hf / name, part)
    out = tmp_path / "data" / "text"
    download_text.main(["tinystories", "--out", str(out), "--mirror", mirror.as_uri()])
    _, train = read_back(out / "tinystories" / "data" / "train-*.parquet")
    _, val = read_back(out / "tinystories" / "data" / "validation-*.parquet")
    assert train == docs[:40] and val == docs[40:50]
    shutil.rmtree(mirror)  # a rerun finds every file there and needs no network (here: no mirror)
    download_text.main(["tinystories", "--out", str(out), "--mirror", mirror.as_uri()])


def test_download_fineweb_edu_holds_out_validation(tmp_path, docs, download_text):
    mirror = tmp_path / "mirror"
    hf = mirror / download_text.FINEWEB_EDU
    for i, part in enumerate(split(docs[:60], 2)):
        write_parquet(hf / f"{i:03d}_00000.parquet", part, url=lambda j: f"http://x/{j}", score=lambda j: 2.5)
    out = tmp_path / "text"
    download_text.main(["fineweb-edu", "--shards", "2", "--val-docs", "7", "--out", str(out),
                        "--mirror", mirror.as_uri()])
    root = out / "fineweb-edu"
    _, train = read_back(root / "train")
    _, val = read_back(root / "val.parquet")
    assert val == docs[:7] and train == docs[7:60]  # held out, not shared
    assert pq.ParquetFile(root / "val.parquet").schema_arrow.names == ["text"]
    assert not list((root / "download").iterdir())  # the raw shards are gone once rewritten
    stamps = {p: os.stat(p).st_mtime_ns for p in (root / "train").iterdir()}
    shutil.rmtree(mirror)
    download_text.main(["fineweb-edu", "--shards", "2", "--out", str(out), "--mirror", mirror.as_uri()])
    assert {p: os.stat(p).st_mtime_ns for p in (root / "train").iterdir()} == stamps
