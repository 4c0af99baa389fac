"""Thinker -> Hugging Face export: transformers loads it and reproduces our logits and greedy generations."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from omni.config import to_dict
from omni.errors import UserError
from omni.hf_export import hf_config, verify_hf_thinker, write_hf_thinker
from omni.thinker import Thinker, ThinkerConfig
from omni.tokenizer import TOKENIZER_FILE, Tokenizer, train_tokenizer
from omni.training.checkpoint import atomic_save
from tests.test_export import flip_tensor_bit

REPO = Path(__file__).resolve().parent.parent
VOCAB = 384


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    from omni.synthetic.text import write_text_corpus

    corpus = tmp_path_factory.mktemp("corpus")
    write_text_corpus(corpus, seed=0, n_train_docs=100, n_val_docs=5)
    return train_tokenizer([corpus / "train.txt"], tmp_path_factory.mktemp("tok"), vocab_size=VOCAB, num_threads=1)


def tiny_thinker(**overrides) -> Thinker:
    torch.manual_seed(0)
    cfg = ThinkerConfig(**{"vocab_size": VOCAB, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                           "d_ff": 64, "max_seq_len": 64, **overrides})
    model = Thinker(cfg).eval()
    with torch.no_grad():  # larger weights than the 0.02 init, so logits (and argmaxes) are well separated
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(10)
    return model


def ids(n: int = 24) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, n), generator=torch.Generator().manual_seed(1))


def hf_logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return hf(input_ids=x).logits


@pytest.mark.parametrize("tie,theta", [(True, 500.0), (False, 1_000_000.0)])
def test_logits_match(tokenizer, tmp_path, tie, theta):
    model = tiny_thinker(tie_embeddings=tie, rope_theta=theta)
    write_hf_thinker(tmp_path, model.state_dict(), model.cfg, tokenizer=tokenizer)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == theta and config["tie_word_embeddings"] == tie
    with torch.no_grad():
        ours = model(ids())[0]
    theirs = hf_logits(tmp_path, ids())
    assert (ours - theirs).abs().max() < 1e-4
    # The comparison is sensitive to theta: the same weights with another rotary base do not match.
    other = Thinker(ThinkerConfig(**{**to_dict(model.cfg), "rope_theta": 10_000.0})).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (other(ids())[0] - theirs).abs().max() > 1e-3


def test_cli_hf_export_greedy_generation_and_tokenizer(tokenizer, tmp_path):
    model = tiny_thinker(tie_embeddings=True, rope_theta=2_000.0)
    run_dir = tmp_path / "thinker_tiny"
    atomic_save({"model": model.state_dict(), "config": to_dict(model.cfg), "tokenizer": TOKENIZER_FILE},
                run_dir / "thinker.pt")
    tokenizer.save(run_dir)
    out = tmp_path / "hf_out"
    result = subprocess.run([sys.executable, str(REPO / "export.py"), "--thinker_ckpt", str(run_dir),
                             "--hf_thinker", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not any(p.suffix in (".pt", ".bin", ".pkl") for p in out.iterdir())

    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    assert "lm_head.weight" not in load_file(out / "model.safetensors")  # tied: HF re-ties it from the config
    prompt = torch.tensor([tokenizer.encode("The red circle is", bos=True)])
    ours = model.generate(prompt, max_new_tokens=10)  # no eos: exactly 10 tokens
    hf.generation_config.eos_token_id = None  # ours does not stop either
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False)
    assert theirs.shape == (1, prompt.shape[1] + 10)
    assert torch.equal(theirs[:, prompt.shape[1]:], ours)

    # AutoTokenizer loads the SentencePiece model offline and encodes exactly as ours.
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (
        tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    for text in ("The red circle is on the top left.", "What colour? <image> <|im_end|>", "Émile ate 3 apples"):
        assert hf_tok.encode(text, add_special_tokens=False) == tokenizer.encode(text)
    plain = "a small cat sat on the mat"
    assert hf_tok.decode(tokenizer.encode(plain)) == plain


def test_moe_thinker_exports_to_qwen3_moe(tokenizer, tmp_path):
    model = tiny_thinker(n_experts=4, moe_top_k=2, rope_theta=800.0)
    write_hf_thinker(tmp_path, model.state_dict(), model.cfg, tokenizer=tokenizer)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["Qwen3MoeForCausalLM"]
    with torch.no_grad():
        ours = model(ids())[0]
    assert (ours - hf_logits(tmp_path, ids())).abs().max() < 1e-4


def test_unmappable_thinker_is_refused():
    with pytest.raises(ValueError, match="qk_norm=False"):
        hf_config(ThinkerConfig(vocab_size=VOCAB, d_model=32, n_heads=4, qk_norm=False))


def test_hf_export_checksums_reexport_and_leftovers(tokenizer, tmp_path, caplog):
    """The HF folder records its files' checksums in omni_files.json (transformers ignores it) and
    verify_hf_thinker names a damaged file; a re-export keeps the user's files and removes an interrupted export's
    temporary folder."""
    model = tiny_thinker()
    out = tmp_path / "hf"
    manifest = write_hf_thinker(out, model.state_dict(), model.cfg, tokenizer=tokenizer)
    assert set(manifest["files"]) == {"model.safetensors", "config.json", "generation_config.json", "tokenizer.model",
                                      "tokenizer_config.json"}
    verify_hf_thinker(out)
    (out / "notes.txt").write_text("mine")
    leftover = tmp_path / ".hf.export-tmp-k1ll3d"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\0" * 100)
    with caplog.at_level("WARNING"):
        write_hf_thinker(out, model.state_dict(), model.cfg, tokenizer=tokenizer)
    assert (out / "notes.txt").read_text() == "mine" and not leftover.exists()
    assert ".hf.export-tmp-k1ll3d" in caplog.text

    flip_tensor_bit(out / "model.safetensors")
    with pytest.raises(UserError, match=rf"^{out}/model.safetensors: sha256 mismatch .*re-export it$"):
        verify_hf_thinker(out)
    (out / "omni_files.json").unlink()  # as an export from before checksums: accepted, with a warning
    caplog.clear()
    with caplog.at_level("WARNING"):
        verify_hf_thinker(out)
    assert "cannot be verified" in caplog.text
