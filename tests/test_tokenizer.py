"""SentencePiece tokenizer: deterministic training, clear errors, fixed special ids, chat template and its mask."""

import pytest
import sentencepiece as spm
import torch

from omni.data.text_sources import sample_documents
from omni.synthetic.text import write_text_corpus
from omni.tokenizer import AUDIO, IM_END, IM_START, IMAGE, SPECIAL_TOKENS, TOKENIZER_FILE, Tokenizer, train_tokenizer

VOCAB = 400  # small corpus (about 340 KB) and vocab: trains in well under a second


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    write_text_corpus(out, seed=0, n_train_docs=2000, n_val_docs=50)
    return out


@pytest.fixture(scope="module")
def tok(corpus, tmp_path_factory):
    return train_tokenizer([corpus / "train.txt"], tmp_path_factory.mktemp("tok"), vocab_size=VOCAB)


def test_training_is_deterministic(corpus, tok, tmp_path):
    # Another output dir and another copy of the corpus: neither path may leak into the model file.
    copy = tmp_path / "copy.txt"
    copy.write_bytes((corpus / "train.txt").read_bytes())
    again = train_tokenizer([copy], tmp_path / "again", vocab_size=VOCAB)
    assert again.model_path.read_bytes() == tok.model_path.read_bytes()
    assert again.fingerprint == tok.fingerprint and len(tok.fingerprint) == 16
    other = train_tokenizer([corpus / "train.txt"], tmp_path / "other", vocab_size=VOCAB + 20)
    assert other.fingerprint != tok.fingerprint
    assert [p.name for p in (tmp_path / "again").iterdir()] == [TOKENIZER_FILE]  # no temp file left behind


def test_special_tokens_have_fixed_single_ids(tok):
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.vocab_size == VOCAB
    assert tok.special_ids == set(range(len(SPECIAL_TOKENS)))
    for i, piece in enumerate(SPECIAL_TOKENS):
        assert tok.token_id(piece) == i
    ids = tok.encode(f"look {IMAGE} and {AUDIO} then{IMAGE}{IM_START}")
    for piece in (IMAGE, AUDIO, IM_START):
        assert piece not in tok.decode(ids)  # special ids are skipped by default ...
    assert ids.count(tok.token_id(IMAGE)) == 2 and ids.count(tok.token_id(AUDIO)) == 1
    assert tok.decode(ids, skip_special=False) == f"look {IMAGE} and {AUDIO} then{IMAGE}{IM_START}"
    with pytest.raises(KeyError, match="not a special token"):
        tok.token_id("hello")


def test_encode_decode_round_trip(corpus, tok):
    val_docs = (corpus / "val.txt").read_text(encoding="utf-8").split("\n\n")[:20]
    texts = [d.strip() for d in val_docs] + ["Zoë ate crème brûlée 🍰 at 10:45, #42!", "UPPER lower 12345"]
    for text in texts:
        ids = tok.encode(text)
        assert tok.unk_id not in ids  # byte fallback: never <unk>
        assert tok.decode(ids) == text
    ids = tok.encode("the red circle", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and ids[1:-1] == tok.encode("the red circle")
    assert tok.decode(ids + [tok.pad_id]) == "the red circle"
    assert tok.decode(torch.tensor(ids)) == "the red circle"
    # It learned pieces, not just characters (with few learned pieces at VOCAB=400, about 1.7 chars per token).
    assert sum(map(len, val_docs)) > 1.4 * sum(len(tok.encode(d)) for d in val_docs)
    with pytest.raises(ValueError, match=f"id {VOCAB} is outside"):
        tok.decode([5, VOCAB])


def test_load_and_save(tok, tmp_path):
    assert Tokenizer.load(tok.model_path.parent).fingerprint == tok.fingerprint
    assert Tokenizer.load(tok.model_path).encode("a blue star") == tok.encode("a blue star")
    saved = tok.save(tmp_path / "export")
    assert saved == tmp_path / "export" / TOKENIZER_FILE
    assert Tokenizer.load(tmp_path / "export").fingerprint == tok.fingerprint
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Tokenizer.load(tmp_path / "nowhere")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.model"):
        Tokenizer.load(tmp_path / "junk.model")


def test_rejects_foreign_sentencepiece_model(corpus, tmp_path):
    # SentencePiece's defaults put <unk> at 0 and have none of our symbols: loading must refuse, not misbehave.
    spm.SentencePieceTrainer.train(input=str(corpus / "train.txt"), model_prefix=str(tmp_path / "plain"),
                                   vocab_size=200, minloglevel=2)
    with pytest.raises(ValueError, match="expected special token '<pad>' at id 0"):
        Tokenizer.load(tmp_path / "plain.model")


def test_vocab_size_errors_name_the_possible_sizes(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size=50000 is too large .*train\.txt.* at most \d+ pieces"):
        train_tokenizer([corpus / "train.txt"], tmp_path, vocab_size=50000)
    with pytest.raises(ValueError, match=r"vocab_size=100 is too small .* at least \d+"):
        train_tokenizer([corpus / "train.txt"], tmp_path, vocab_size=100)
    assert not (tmp_path / TOKENIZER_FILE).exists()


def test_empty_or_missing_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="corpus is empty.*empty.txt"):
        train_tokenizer([empty], tmp_path / "tok", vocab_size=VOCAB)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_tokenizer([tmp_path / "missing.txt"], tmp_path / "tok", vocab_size=VOCAB)
    with pytest.raises(ValueError, match="model_type='wordpiece'"):
        train_tokenizer([empty], tmp_path / "tok", vocab_size=VOCAB, model_type="wordpiece")


def test_bpe_model_type(corpus, tmp_path):
    bpe = train_tokenizer([corpus / "train.txt"], tmp_path, vocab_size=VOCAB, model_type="bpe")
    assert bpe.token_id(IMAGE) == 6 and bpe.decode(bpe.encode("The small red circle.")) == "The small red circle."


CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": f"{IMAGE} What colour is the circle?"},
    {"role": "assistant", "content": "The circle is red."},
    {"role": "user", "content": "And the star?"},
    {"role": "assistant", "content": "It is blue."},
]


def test_chat_template_ids_and_assistant_mask(tok):
    ids, mask = tok.encode_chat(CHAT)
    start, end, nl = tok.token_id(IM_START), tok.token_id(IM_END), tok.newline_id
    expected_ids, expected_mask = [tok.bos_id], [False]
    for m in CHAT:
        head, body = [start, *tok.encode(m["role"]), nl], [*tok.encode(m["content"]), end]
        expected_ids += head + body + [nl]
        expected_mask += [False] * len(head) + [m["role"] == "assistant"] * len(body) + [False]
    assert ids == expected_ids and mask == expected_mask
    # The loss positions decode to exactly the assistant answers, each closed by <|im_end|>.
    answer = tok.decode([i for i, m in zip(ids, mask) if m], skip_special=False)
    assert answer == f"The circle is red.{IM_END} It is blue.{IM_END}"
    assert ids.count(tok.token_id(IMAGE)) == 1 and not mask[ids.index(tok.token_id(IMAGE))]
    assert tok.eos_id not in ids  # <|im_end|> ends a turn; no <eos> inside a chat
    # Layout check on the text: "<|im_start|>role\ncontent<|im_end|>\n" (decode puts a space after \n and specials).
    text = tok.decode(ids, skip_special=False).replace("\n ", "\n").replace("> ", ">")
    assert text.startswith(f"{IM_START}system\nAnswer briefly.{IM_END}\n{IM_START}user\n{IMAGE}What colour")
    assert text.endswith(f"{IM_START}assistant\nIt is blue.{IM_END}\n")


def test_generation_prompt_and_no_bos(tok):
    prompt = tok.apply_chat_template(CHAT[:2], add_generation_prompt=True)
    ids, mask = tok.encode_chat(CHAT[:2], add_generation_prompt=True)
    assert prompt == ids and not any(mask)
    tail = [tok.token_id(IM_START), *tok.encode("assistant"), tok.newline_id]
    assert prompt[-len(tail):] == tail
    assert tok.apply_chat_template(CHAT[:2], bos=False) == tok.apply_chat_template(CHAT[:2])[1:]


def test_chat_rejects_bad_messages(tok):
    with pytest.raises(ValueError, match="message 1 has role 'robot'"):
        tok.encode_chat([CHAT[0], {"role": "robot", "content": "hi"}])
    with pytest.raises(ValueError, match="message 0 must be a dict with 'role' and 'content'"):
        tok.encode_chat([{"role": "user"}])
    with pytest.raises(ValueError, match="message 0 content must be a str"):
        tok.encode_chat([{"role": "user", "content": None}])


# ---- a large corpus: the tokenizer trains on a bounded, seeded sample read through the document stream

def test_document_sample_is_bounded_seeded_and_uniform():
    docs = [f"document number {i} " + "x" * (i % 7) for i in range(5000)]
    a = sample_documents(iter(docs), max_docs=300, seed=1)
    assert a.documents == sample_documents(iter(docs), max_docs=300, seed=1).documents  # same seed, same sample
    assert a.documents != sample_documents(iter(docs), max_docs=300, seed=2).documents
    assert len(a.documents) == 300 and a.seen == 5000
    assert a.documents == sorted(a.documents, key=docs.index)  # kept in corpus order
    assert max(docs.index(d) for d in a.documents) > 4000 and min(docs.index(d) for d in a.documents) < 1000
    by_bytes = sample_documents(iter(docs), max_bytes=10_000, seed=1)
    assert by_bytes.kept_bytes == sum(len(d.encode()) for d in by_bytes.documents)
    assert 9_900 < by_bytes.kept_bytes <= 10_000  # within one document of the bound
    assert sample_documents(iter(docs[:50]), max_docs=300, max_bytes=10**6).documents == docs[:50]  # all fit


def test_tokenizer_trains_on_a_bounded_sample_of_a_sharded_corpus(corpus, tok, tmp_path):
    """Two gzipped JSONL shards (a glob): the sample is logged, the model reproducible, and a corpus that fits the
    bounds gives the tokenizer of the whole corpus (the same file as training on the plain text)."""
    import gzip
    import json

    from omni.data.text import read_documents

    docs = read_documents(corpus / "train.txt")
    for i, part in enumerate((docs[:1000], docs[1000:])):
        with gzip.open(tmp_path / f"part-{i}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": d}) + "\n" for d in part)
    logs = []
    glob = str(tmp_path / "part-*.jsonl.gz")
    a = train_tokenizer([glob], tmp_path / "a", vocab_size=VOCAB, sample_docs=500, sample_bytes=10**8, log=logs.append)
    b = train_tokenizer([glob], tmp_path / "b", vocab_size=VOCAB, sample_docs=500, sample_bytes=10**8)
    assert a.model_path.read_bytes() == b.model_path.read_bytes()
    assert logs == [f"tokenizer sample: 500 of 2,000 documents ({logs[0].split('(')[1].split(')')[0]}) of {glob} "
                    "(bounds: 500 documents, 100000000 bytes; seed 0)"]
    c = train_tokenizer([glob], tmp_path / "c", vocab_size=VOCAB, sample_docs=500, sample_bytes=10**8, seed=1)
    assert c.fingerprint != a.fingerprint  # another sample
    whole = train_tokenizer([glob], tmp_path / "whole", vocab_size=VOCAB, sample_docs=10**6, sample_bytes=10**9)
    assert whole.fingerprint == tok.fingerprint
