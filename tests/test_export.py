"""export.py, omni.export_writer/export_reader and omni.components: merged safetensors export, load_exported,
Stage-E merge, errors naming the file at fault."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import omni
from omni.components import COMPONENTS, Component, ExportError, StageWeights, read_sft_weights, read_stage_weights
from omni.config import to_dict
from omni.errors import UserError
from omni.export_reader import read_export
from omni.export_writer import check_consistency, merge_trainable, prepare_tensors, write_export
from omni.thinker import Thinker, ThinkerConfig
from omni.tokenizer import TOKENIZER_FILE, Tokenizer, train_tokenizer
from omni.training.checkpoint import atomic_save

REPO = Path(__file__).resolve().parent.parent
VOCAB = 384


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    from omni.synthetic.text import write_text_corpus

    corpus = tmp_path_factory.mktemp("corpus")
    write_text_corpus(corpus, seed=0, n_train_docs=100, n_val_docs=5)
    return train_tokenizer([corpus / "train.txt"], tmp_path_factory.mktemp("tok"), vocab_size=VOCAB, num_threads=1)


def tiny_thinker(tie: bool = True, seed: int = 0) -> Thinker:
    torch.manual_seed(seed)
    return Thinker(ThinkerConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                                 max_seq_len=64, tie_embeddings=tie)).eval()


def write_thinker_run(run_dir: Path, model: Thinker, tokenizer: Tokenizer) -> Path:
    """A Stage-A run dir as train_text.py leaves it: thinker.pt + tokenizer.model."""
    atomic_save({"model": model.state_dict(), "config": to_dict(model.cfg), "tokenizer": TOKENIZER_FILE},
                run_dir / "thinker.pt")
    tokenizer.save(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def thinker_run(tmp_path_factory, tokenizer) -> tuple[Path, Thinker]:
    model = tiny_thinker()
    return write_thinker_run(tmp_path_factory.mktemp("thinker_tiny"), model, tokenizer), model


def run_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "export.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def ids(n: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, n), generator=torch.Generator().manual_seed(1))


def test_cli_export_fp32_reproduces_logits(thinker_run, tmp_path):
    run_dir, model = thinker_run
    out = tmp_path / "merged_model"
    result = run_export("--thinker_ckpt", str(run_dir), "--output_dir", str(out))
    assert result.returncode == 0, result.stderr

    # Nothing pickled: exactly these files, and the weights load with plain safetensors.
    names = {p.name for p in out.iterdir()}
    assert names == {"model.safetensors", "config.json", "tokenizer.model", "generation_config.json", "README.md"}
    tensors = load_file(out / "model.safetensors")
    assert all(k.startswith("thinker.") for k in tensors)
    # The tied lm_head is stored once and recorded.
    assert "thinker.lm_head.weight" not in tensors
    config = json.loads((out / "config.json").read_text())
    assert config["tied_weights"] == {"thinker.lm_head.weight": "thinker.embed_tokens.weight"}
    assert config["components_present"] == ["thinker"]
    assert set(config["components_absent"]) == set(COMPONENTS) - {"thinker"}
    assert config["dtype"] == "fp32" and config["tensor_dtypes"] == {"float32": len(tensors)}
    assert config["components"]["thinker"]["config"] == to_dict(model.cfg)
    assert config["tokenizer"]["eos_id"] == Tokenizer.eos_id and config["tokenizer"]["vocab_size"] == VOCAB
    assert "audio" not in config  # no audio component, so no audio frontend constants
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [Tokenizer.eos_id, Tokenizer.im_end_id] and gen["pad_token_id"] == Tokenizer.pad_id

    loaded = omni.load_exported(out)
    assert not loaded.thinker.training
    assert loaded.thinker.lm_head.weight is loaded.thinker.embed_tokens.weight  # re-tied, not two copies
    with torch.no_grad():
        assert torch.equal(loaded.thinker(ids())[0], model(ids())[0])
    assert loaded.tokenizer.fingerprint == Tokenizer.load(run_dir).fingerprint
    with pytest.raises(AttributeError, match="was not exported"):
        loaded.vision_encoder  # noqa: B018


def test_untied_thinker_roundtrip(tokenizer, tmp_path):
    model = tiny_thinker(tie=False, seed=3)
    run_dir = write_thinker_run(tmp_path / "run", model, tokenizer)
    config = write_export(tmp_path / "out", [read_stage_weights(run_dir, "thinker")], tokenizer=tokenizer)
    assert config["tied_weights"] == {}
    assert "thinker.lm_head.weight" in load_file(tmp_path / "out" / "model.safetensors")
    loaded = omni.load_exported(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(loaded.thinker(ids())[0], model(ids())[0])


@pytest.mark.parametrize("dtype,torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_export(thinker_run, tokenizer, tmp_path, dtype, torch_dtype):
    run_dir, model = thinker_run
    config = write_export(tmp_path, [read_stage_weights(run_dir, "thinker")], dtype=dtype, tokenizer=tokenizer)
    stored = load_file(tmp_path / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch_dtype}
    assert config["dtype"] == dtype and config["tensor_dtypes"] == {str(torch_dtype)[6:]: len(stored)}
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == dtype

    loaded = omni.load_exported(tmp_path)  # default: the stored dtype
    assert {p.dtype for p in loaded.thinker.parameters()} == {torch_dtype}
    upcast = omni.load_exported(tmp_path, dtype="fp32").thinker
    with torch.no_grad():
        ref = model(ids())[0]
        half = loaded.thinker(ids())[0].float()
        full = upcast(ids())[0]
    # fp32 weights rounded to half precision: close, not equal; the upcast copy holds exactly the rounded values.
    tol = 1e-2 if dtype == "fp16" else 5e-2
    assert torch.allclose(full, ref, atol=tol) and not torch.equal(full, ref)
    assert torch.allclose(half, ref, atol=5 * tol)
    w = model.layers[0].mlp.up_proj.weight
    assert torch.equal(upcast.layers[0].mlp.up_proj.weight, w.to(torch_dtype).float())


def test_cast_keeps_integer_buffers_and_refuses_overflow():
    state = {"a.weight": torch.randn(3, 3), "a.count": torch.arange(4), "a.mask": torch.tensor([True, False])}
    out, ties = prepare_tensors(state, "fp16")
    assert out["a.weight"].dtype == torch.float16 and ties == {}
    assert out["a.count"].dtype == torch.int64 and out["a.mask"].dtype == torch.bool
    with pytest.raises(ExportError, match="'big.weight' overflows fp16"):
        prepare_tensors({"big.weight": torch.tensor([1e6])}, "fp16")
    # A view overlapping another entry (not a full alias) is stored as its own copy.
    base = torch.arange(6.0)
    out, ties = prepare_tensors({"x.full": base, "x.half": base[:3]}, "fp32")
    assert ties == {} and out["x.half"].untyped_storage().data_ptr() != out["x.full"].untyped_storage().data_ptr()


def test_encoders_and_ocr_roundtrip(tmp_path):
    """A subset with the ASR encoder, the ViT (from a whole Stage-C model) and the OCR model, in the formats their
    stage scripts write: vocabularies and audio constants go to config.json, the models load with identical
    weights, and the other components are listed as absent."""
    from omni.audio import SAMPLE_RATE
    from omni.audio_encoder import AsrModel, AudioEncoder, AudioEncoderConfig
    from omni.ocr import OcrConfig, OcrModel
    from omni.vision_encoder import VisionConfig, VisionEncoder

    chars = list("abc ")
    enc_cfg = AudioEncoderConfig(n_mels=16, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=32,
                                 conv_channels=4, max_frames=32)
    asr = AsrModel(AudioEncoder(enc_cfg), vocab_size=len(chars) + 1, ctc_upsample=2)
    atomic_save({"model": asr.state_dict(), "config": to_dict(enc_cfg), "vocab": chars, "ctc_upsample": 2},
                tmp_path / "asr" / "audio_enc.pt")
    ocr_cfg = OcrConfig(vocab_size=len(chars) + 1, height=8, conv_channels=4, d_model=16, n_layers=1, n_heads=2,
                        n_kv_heads=2, d_ff=32, max_frames=16)
    ocr = OcrModel(ocr_cfg)
    atomic_save({"model": ocr.state_dict(), "config": to_dict(ocr_cfg), "vocab": chars, "max_width": 64},
                tmp_path / "ocr" / "ocr.pt")
    vit_cfg = VisionConfig(image_size=8, patch_size=4, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=32)
    vit = VisionEncoder(vit_cfg)
    stage_c = {**{f"vision.{k}": v for k, v in vit.state_dict().items()}, "text_proj.weight": torch.randn(8, 16),
               "logit_scale": torch.tensor(2.6)}  # the contrastive-only parts are not exported
    atomic_save({"model": stage_c, "config": {"vision": to_dict(vit_cfg), "objective": "contrastive"},
                 "labels": ["x"]}, tmp_path / "vit" / "vision.pt")

    parts = [read_stage_weights(tmp_path / "asr", "audio_encoder"), read_stage_weights(tmp_path / "ocr", "ocr"),
             read_stage_weights(tmp_path / "vit", "vision_encoder")]
    config = write_export(tmp_path / "out", parts, tokenizer=None)
    assert config["components_present"] == ["audio_encoder", "vision_encoder", "ocr"]
    assert config["components"]["vision_encoder"]["config"] == to_dict(vit_cfg)
    assert config["components"]["ocr"]["max_width"] == 64 and config["components"]["audio_encoder"]["ctc_upsample"] == 2
    assert not any(k.startswith(("vision_encoder.text_proj", "vision_encoder.logit", "vision_encoder.vision.")) for k
                   in load_file(tmp_path / "out" / "model.safetensors"))
    assert "thinker" in config["components_absent"] and "tokenizer" not in config
    assert config["components"]["audio_encoder"]["vocab"] == chars and config["components"]["ocr"]["vocab"] == chars
    assert config["audio"]["SAMPLE_RATE"] == SAMPLE_RATE
    assert not (tmp_path / "out" / "tokenizer.model").exists()
    loaded = omni.load_exported(tmp_path / "out")
    for name, original in (("audio_encoder", asr), ("ocr", ocr), ("vision_encoder", vit)):
        got = loaded[name].state_dict()
        assert got.keys() == original.state_dict().keys()
        assert all(torch.equal(got[k], v) for k, v in original.state_dict().items())


def test_cli_speech_components_fp16(tokenizer, tmp_path):
    """Talker + its codec (found beside talker.pt) + vocoder generator through export.py in fp16: the codec's
    integer/bool buffers keep their dtype, the floats are the fp16-rounded weights."""
    from omni.codec import Codec, CodecConfig
    from omni.talker import Talker, TalkerConfig
    from omni.vocoder import Generator, VocoderConfig

    codec_cfg = CodecConfig(n_mels=16, channels=8, latent_dim=4, n_codebooks=2, codebook_size=8)
    talker_cfg = TalkerConfig(text_vocab_size=VOCAB, n_codebooks=2, codebook_size=8, d_model=16, n_layers=1,
                              n_heads=2, n_kv_heads=2, d_ff=32, max_text_len=16, max_frames=16)
    vocoder_cfg = VocoderConfig(n_mels=16, upsample_initial_channels=8)
    models = {"codec": Codec(codec_cfg), "talker": Talker(talker_cfg), "vocoder": Generator(vocoder_cfg)}
    for name, file, cfg in (("codec", "talker_tiny/rvq_codec.pt", codec_cfg), ("talker", "talker_tiny/talker.pt",
                            talker_cfg), ("vocoder", "vocoder_tiny/hifigan.pt", vocoder_cfg)):
        atomic_save({"model": models[name].state_dict(), "config": to_dict(cfg)}, tmp_path / file)
    tokenizer.save(tmp_path / "talker_tiny")
    result = run_export("--talker_ckpt", str(tmp_path / "talker_tiny"), "--vocoder_ckpt",
                        str(tmp_path / "vocoder_tiny"), "--dtype", "fp16", "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr

    stored = load_file(tmp_path / "out" / "model.safetensors")
    assert stored["codec.rvq.quantizers.0.unused_steps"].dtype == torch.int64
    assert stored["codec.rvq.quantizers.0.initialized"].dtype == torch.bool
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["components_present"] == ["codec", "talker", "vocoder"]
    assert config["tensor_dtypes"]["int64"] == 2 and config["tensor_dtypes"]["bool"] == 2
    assert config["audio"]["HOP_LENGTH"] == 160 and config["tokenizer"]["vocab_size"] == VOCAB
    loaded = omni.load_exported(tmp_path / "out", dtype="fp32")
    for name, original in models.items():
        got = loaded[name].state_dict()
        for key, value in original.state_dict().items():
            expected = value.half().float() if value.is_floating_point() else value
            assert torch.equal(got[key], expected), f"{name}.{key}"


def test_cross_component_sizes_must_agree(tokenizer, tmp_path):
    def part(name, **config):
        return StageWeights(name, tmp_path / f"{name}.pt", {}, config, {})

    with pytest.raises(ExportError, match=r"thinker.pt: vocab_size 999 != .*tokenizer.model vocabulary \(384"):
        check_consistency({"thinker": part("thinker", vocab_size=999)}, tokenizer)
    with pytest.raises(ExportError, match="talker.pt: text_vocab_size 5 !="):
        check_consistency({"talker": part("talker", text_vocab_size=5)}, tokenizer)
    with pytest.raises(ExportError, match="talker.pt: codebook_size 64 != 128 of its codec"):
        check_consistency({"talker": part("talker", n_codebooks=2, codebook_size=64),
                           "codec": part("codec", n_codebooks=2, codebook_size=128)}, None)
    check_consistency({"talker": part("talker", text_vocab_size=VOCAB, n_codebooks=2, codebook_size=64),
                       "codec": part("codec", n_codebooks=2, codebook_size=64)}, tokenizer)


def test_component_this_omni_does_not_know_is_listed_as_unsupported(monkeypatch, tmp_path):
    """An export by a newer omni with a component this code lacks: loading lists it as unsupported and still gives
    its raw tensors."""
    from omni.omni_model import Projector, ProjectorConfig

    monkeypatch.setitem(COMPONENTS, "newpart", Component("newpart", "newpart.pt", "omni.omni_model", "Projector",
                                                         "ProjectorConfig"))
    part = Projector(ProjectorConfig(in_dim=4, out_dim=2, hidden_dim=3))
    atomic_save({"model": part.state_dict(), "config": {"in_dim": 4, "out_dim": 2, "hidden_dim": 3}},
                tmp_path / "newpart.pt")
    write_export(tmp_path / "out", [read_stage_weights(tmp_path / "newpart.pt", "newpart")])
    monkeypatch.delitem(COMPONENTS, "newpart")  # the reading omni is older
    loaded = omni.load_exported(tmp_path / "out")
    assert "newpart" in loaded.unsupported and not loaded.components
    with pytest.raises(AttributeError, match="cannot be loaded: unknown component"):
        loaded.newpart  # noqa: B018
    assert torch.equal(loaded.state_dict("newpart")["fc1.weight"], part.fc1.weight)


def test_cli_missing_checkpoint_exits_nonzero(tmp_path):
    missing = tmp_path / "no_such_run"
    result = run_export("--thinker_ckpt", str(missing), "--output_dir", str(tmp_path / "out"))
    assert result.returncode != 0
    assert str(missing) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_checkpoints_are_named(thinker_run, tmp_path):
    run_dir, model = thinker_run
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(ExportError, match=r"empty_run: no thinker\.pt"):
        read_stage_weights(empty, "thinker")
    corrupt = tmp_path / "thinker.pt"
    corrupt.write_bytes((run_dir / "thinker.pt").read_bytes()[:500])  # truncated
    with pytest.raises(ExportError, match=str(corrupt)):
        read_stage_weights(corrupt, "thinker")
    stage_cfg = tmp_path / "stage_cfg.pt"  # a whole stage config instead of the model config
    atomic_save({"model": model.state_dict(), "config": {"model": {}, "train": {"lr": 1e-3}}}, stage_cfg)
    with pytest.raises(ExportError, match="whole stage config"):
        read_stage_weights(stage_cfg, "thinker")
    wrong_shape = tmp_path / "wrong_shape.pt"
    atomic_save({"model": model.state_dict(), "config": {**to_dict(model.cfg), "d_ff": 48}}, wrong_shape)
    with pytest.raises(ExportError, match="wrong_shape.pt: the thinker weights do not fit"):
        read_stage_weights(wrong_shape, "thinker")
    unknown_key = tmp_path / "unknown_key.pt"
    atomic_save({"model": model.state_dict(), "config": {**to_dict(model.cfg), "lr": 1e-3}}, unknown_key)
    with pytest.raises(ExportError, match="unknown key 'lr'"):
        read_stage_weights(unknown_key, "thinker")


def test_output_dir_safety_and_corrupt_export(thinker_run, tokenizer, tmp_path):
    run_dir, _ = thinker_run
    parts = [read_stage_weights(run_dir, "thinker")]
    other = tmp_path / "not_an_export"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a previous export"):
        write_export(other, parts, tokenizer=tokenizer)
    assert (other / "notes.txt").read_text() == "keep me"

    out = tmp_path / "out"
    write_export(out, parts, tokenizer=tokenizer)
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"out/model.safetensors: size mismatch \(expected \d+ bytes, got \d+\)"):
        read_export(out)  # the checksums catch it first, before the file is parsed
    with pytest.raises(ExportError, match="model.safetensors is unreadable"):
        read_export(out, verify=False)


def flip_tensor_bit(path: Path, value: int = 10) -> None:
    """Flip the lowest mantissa bit of one fp32 value in a safetensors file's data (past its header): the file
    still parses, and the model is silently a little different."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # u64 header length, then the JSON header, then the data
    data[start + 4 * value] ^= 1
    path.write_bytes(data)


def test_damaged_file_is_named_at_load_unless_verify_is_off(thinker_run, tokenizer, tmp_path):
    run_dir, model = thinker_run
    config = write_export(tmp_path, [read_stage_weights(run_dir, "thinker")], tokenizer=tokenizer)
    # Every file but config.json itself (which lists them) has its checksum, also in the file on disk.
    assert set(config["files"]) == {"model.safetensors", "tokenizer.model", "generation_config.json", "README.md"}
    assert json.loads((tmp_path / "config.json").read_text())["files"] == config["files"]
    assert config["files"]["model.safetensors"]["bytes"] == (tmp_path / "model.safetensors").stat().st_size
    omni.load_exported(tmp_path)  # untouched: verifies and loads

    flip_tensor_bit(tmp_path / "model.safetensors")
    with pytest.raises(UserError, match=rf"^{tmp_path}/model.safetensors: sha256 mismatch \(expected [0-9a-f]{{64}}, "
                                        r"got [0-9a-f]{64}\): the file was changed or damaged after export; "
                                        r"re-export it$"):
        omni.load_exported(tmp_path)
    damaged = omni.load_exported(tmp_path, verify=False).thinker.state_dict()
    differ = [k for k, v in model.state_dict().items() if not torch.equal(damaged[k], v)]
    assert len(differ) >= 1  # what verify=False (or an export without checksums) would have served silently

    flip_tensor_bit(tmp_path / "model.safetensors")  # flipped back: the weights are right again
    read_export(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"")
    with pytest.raises(UserError, match=r"tokenizer.model: size mismatch"):  # every listed file is checked
        read_export(tmp_path)


def test_export_without_checksums_loads_with_a_warning(thinker_run, tokenizer, tmp_path, caplog):
    """An export written before config.json had "files" still loads; the log says it could not be verified."""
    run_dir, model = thinker_run
    write_export(tmp_path, [read_stage_weights(run_dir, "thinker")], tokenizer=tokenizer)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["files"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING"):
        loaded = omni.load_exported(tmp_path)
    assert f"{tmp_path}: exported before omni recorded checksums" in caplog.text
    assert "cannot be verified" in caplog.text
    with torch.no_grad():
        assert torch.equal(loaded.thinker(ids())[0], model(ids())[0])


def test_reexport_keeps_the_users_files_and_removes_only_its_own_stale_ones(monkeypatch, thinker_run, tokenizer,
                                                                            tmp_path):
    run_dir, _ = thinker_run
    out = tmp_path / "out"
    write_export(out, [read_stage_weights(run_dir, "thinker")], tokenizer=tokenizer)
    (out / "notes.txt").write_text("eval: 71% on my set")
    (out / "results").mkdir()
    # Re-export something without a tokenizer: the tokenizer files of the previous export go, the user's stay.
    from omni.omni_model import Projector, ProjectorConfig

    monkeypatch.setitem(COMPONENTS, "newpart", Component("newpart", "newpart.pt", "omni.omni_model", "Projector",
                                                         "ProjectorConfig"))
    part_config = {"in_dim": 4, "out_dim": 2, "hidden_dim": 3}
    atomic_save({"model": Projector(ProjectorConfig(**part_config)).state_dict(), "config": part_config},
                tmp_path / "newpart.pt")
    config = write_export(out, [read_stage_weights(tmp_path / "newpart.pt", "newpart")])
    assert {p.name for p in out.iterdir()} == {*config["files"], "config.json", "notes.txt", "results"}
    assert "tokenizer.model" not in config["files"] and "generation_config.json" not in config["files"]
    assert (out / "notes.txt").read_text() == "eval: 71% on my set"
    assert omni.load_exported(out).config["components_present"] == ["newpart"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left

    # Over an export from before config.json listed its files, the names an export may write stand in for the list.
    write_export(out, [read_stage_weights(run_dir, "thinker")], tokenizer=tokenizer)
    config = json.loads((out / "config.json").read_text())
    del config["files"]
    (out / "config.json").write_text(json.dumps(config))
    write_export(out, [read_stage_weights(tmp_path / "newpart.pt", "newpart")])
    assert not (out / "tokenizer.model").exists() and (out / "notes.txt").exists()


def test_interrupted_export_leftovers_are_removed_by_the_next_export(thinker_run, tokenizer, tmp_path, caplog):
    """A killed export leaves its hidden temporary folder beside the target; the next export of that target removes
    it and says so, but never one that a running export holds, nor anything else."""
    from omni.export_files import _hold

    run_dir, _ = thinker_run
    leftover = tmp_path / ".out.export-tmp-k1ll3d"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\0" * 100)  # half written when the process was killed
    running = tmp_path / ".out.export-tmp-running"
    running.mkdir()
    (tmp_path / ".out.mine").mkdir()  # not an export's temporary folder
    (tmp_path / ".other.export-tmp-x").mkdir()  # another target's
    held = _hold(running)
    try:
        with caplog.at_level("WARNING"):
            write_export(tmp_path / "out", [read_stage_weights(run_dir, "thinker")], tokenizer=tokenizer)
    finally:
        os.close(held)
    assert not leftover.exists() and running.exists()
    assert (tmp_path / ".out.mine").exists() and (tmp_path / ".other.export-tmp-x").exists()
    assert "left by an interrupted export" in caplog.text and ".out.export-tmp-k1ll3d" in caplog.text
    omni.load_exported(tmp_path / "out")


def test_merge_trainable_overrides_adds_and_reports():
    stage = {"thinker.a": torch.zeros(2), "thinker.b": torch.zeros(3), "vision_encoder.c": torch.zeros(1)}
    sft = {"thinker.b": torch.ones(3), "audio_projector.0.weight": torch.ones(2, 2)}
    merged, report = merge_trainable(stage, sft)
    assert report == {"overridden": ["thinker.b"], "added": ["audio_projector.0.weight"]}
    assert torch.equal(merged["thinker.b"], torch.ones(3)) and torch.equal(merged["thinker.a"], torch.zeros(2))
    assert merged.keys() == stage.keys() | sft.keys()
    assert torch.equal(stage["thinker.b"], torch.zeros(3))  # inputs untouched

    with pytest.raises(ExportError, match="'thinker.b' has shape"):
        merge_trainable(stage, {"thinker.b": torch.ones(4)})
    with pytest.raises(ExportError, match="'thinker.renamed' does not exist in the thinker"):
        merge_trainable(stage, {"thinker.renamed": torch.ones(1)})
    with pytest.raises(ExportError, match="belongs to 'audio_encoder', whose stage weights were not given"):
        merge_trainable(stage, {"audio_encoder.x": torch.ones(1)})
    with pytest.raises(ExportError, match="unknown component 'fusion'"):
        merge_trainable(stage, {"fusion.x": torch.ones(1)})


def test_merge_trainable_keeps_ties():
    embed = torch.zeros(4, 2)
    stage = {"thinker.embed_tokens.weight": embed, "thinker.lm_head.weight": embed}
    new = torch.ones(4, 2)
    for given in ("thinker.embed_tokens.weight", "thinker.lm_head.weight"):  # either name updates both
        merged, _ = merge_trainable(stage, {given: new})
        assert merged["thinker.embed_tokens.weight"] is merged["thinker.lm_head.weight"]
        assert torch.equal(merged["thinker.lm_head.weight"], new)
    with pytest.raises(ExportError, match="different values"):
        merge_trainable(stage, {"thinker.embed_tokens.weight": new, "thinker.lm_head.weight": -new})


def test_stage_e_export(thinker_run, tokenizer, tmp_path):
    """omni_final.pt over a Thinker: the Thinker update lands in the loaded model, the projector is added."""
    from omni.omni_model import Projector, ProjectorConfig

    run_dir, model = thinker_run
    new_norm = torch.full_like(model.norm.weight, 2.0)
    projector_config = {"in_dim": 16, "out_dim": 32, "hidden_dim": 8}
    fresh = Projector(ProjectorConfig(**projector_config))
    projector = {f"audio_projector.{k}": v for k, v in fresh.state_dict().items()}
    atomic_save({"model": {"thinker.norm.weight": new_norm, **projector},
                 "config": {"audio_projector": projector_config}}, tmp_path / "sft" / "omni_final.pt")
    config = write_export(tmp_path / "out", [read_stage_weights(run_dir, "thinker")], tokenizer=tokenizer,
                          sft=read_sft_weights(tmp_path / "sft"))
    assert "Stage E (omni_final.pt) overrode 1 and added 4 tensors." in (tmp_path / "out" / "README.md").read_text()
    assert config["components_present"] == ["thinker", "audio_projector"]
    loaded = omni.load_exported(tmp_path / "out")
    assert loaded.config["stage_e"] == {"source": "omni_final.pt", "overridden": ["thinker.norm.weight"],
                                        "added": sorted(projector)}
    assert loaded.config["components"]["audio_projector"]["config"] == projector_config
    assert torch.equal(loaded.thinker.norm.weight, new_norm)
    assert torch.equal(loaded.thinker.layers[0].mlp.up_proj.weight, model.layers[0].mlp.up_proj.weight)
    assert not loaded.unsupported
    assert torch.equal(loaded.audio_projector.fc1.weight, projector["audio_projector.fc1.weight"])
