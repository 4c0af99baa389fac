"""The whole pipeline at CPU scale: synthetic data, every stage with configs/demo/, then a summary table.

    make demo          (or: .venv/bin/python scripts/demo.py [--only text])

Every stage resumes, so rerunning after an interruption (or after it finished) continues instead of starting over.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# (stage, script, demo config, the summary metrics to show: key -> label)
STAGES = [
    ("A text", "train_text.py", "configs/demo/thinker.json", {"val_ppl": "val perplexity"}),
    ("B audio", "train_audio_enc.py", "configs/demo/audio_enc.json", {"val_cer": "val CER", "val_wer": "val WER"}),
    ("C vision", "train_vision.py", "configs/demo/vision.json", {"i2t_r1": "i2t R@1", "t2i_r1": "t2i R@1"}),
    ("OCR", "train_ocr.py", "configs/demo/ocr.json",
     {"val_cer": "OCR CER", "val_exact_line_acc": "exact-line accuracy"}),
    ("E sft", "sft_omni.py", "configs/demo/omni_sft.json",
     {"mixed_acc": "mixed accuracy (held-out chats)", "em_image_qa": "exact match image QA",
      "em_audio_qa": "exact match audio QA", "em_ocr_qa": "exact match OCR QA", "em_text": "exact match text"}),
]


SPEECH_OUT_WORDS = {"d", "speech", "talker", "codec", "vocoder", "tts"}  # --only words that select the block below
TTS_SENTENCES = 50  # held-out sentences spoken for the TTS -> ASR CER


def speech_out_rows() -> list[tuple]:
    """Stage D (codec, then Talker), the vocoder, then the loop closed: held-out sentences synthesized (Talker ->
    codec -> HiFi-GAN, or Griffin-Lim when no vocoder was trained) and transcribed by the Stage-B ASR model."""
    talker_cfg = json.loads((REPO / "configs/demo/talker.json").read_text())
    codec_dir, talker_dir = (REPO / talker_cfg[p]["train"]["save_dir"] for p in ("codec", "talker"))
    wall = run([sys.executable, "train_talker.py", "--config", "configs/demo/talker.json"])
    codec = json.loads((codec_dir / "summary.json").read_text())["metrics"]
    talker = json.loads((talker_dir / "summary.json").read_text())["metrics"]
    size = talker_cfg["codec"]["model"]["codebook_size"]
    rows = [("D codec", "held-out mel recon L1 (normalised)", codec["val_recon_l1"], wall),
            ("D codec", "held-out recon MSE (normalised)", codec["val_recon_mse"], wall)]
    rows += [("D codec", f"codebook {k} perplexity (of {size})", codec[f"val_ppl_cb{k}"], wall)
             for k in range(talker_cfg["codec"]["model"]["n_codebooks"])]
    rows += [("D talker", "held-out code CE", talker["val_loss"], wall),
             ("D talker", "held-out code accuracy", talker["val_acc"], wall)]
    wall = run([sys.executable, "train_vocoder.py", "--config", "configs/demo/vocoder.json"])
    vocoder_dir = save_dir("configs/demo/vocoder.json")
    vocoder = json.loads((vocoder_dir / "summary.json").read_text())["metrics"]
    rows += [("vocoder", "held-out mel-L1 HiFi-GAN", vocoder["val_mel_l1"], wall),
             ("vocoder", "held-out mel-L1 Griffin-Lim", vocoder["val_mel_l1_griffin_lim"], wall)]
    asr_dir = save_dir("configs/demo/audio_enc.json")
    if not (asr_dir / "audio_enc.pt").is_file():
        return rows + [("D TTS>ASR", "CER: no Stage-B model, skipped", "-", 0.0)]
    out = talker_dir / "tts_asr.json"
    wall = run([sys.executable, "-m", "omni.speech", "--talker", str(talker_dir), "--vocoder", str(vocoder_dir),
                "--asr", str(asr_dir), "--manifest", talker_cfg["talker"]["data"]["val_manifest"],
                "--n", str(TTS_SENTENCES), "--threads", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    return rows + [("D TTS>ASR", f"CER, {result['sentences']} held-out ({result['vocoder']})", result["cer"], wall)]


# export.py flag -> demo config whose save_dir holds that stage's final weights
EXPORT_SOURCES = {
    "--thinker_ckpt": "configs/demo/thinker.json", "--audio_ckpt": "configs/demo/audio_enc.json",
    "--vision_ckpt": "configs/demo/vision.json", "--ocr_ckpt": "configs/demo/ocr.json",
    "--vocoder_ckpt": "configs/demo/vocoder.json", "--omni_ckpt": "configs/demo/omni_sft.json",
}


def export_rows() -> list[tuple]:
    """Merge every finished demo stage into one export, load it back and compare the Thinker's logits with the
    stage checkpoint's, then answer an image question from the export alone (when Stage E ran)."""
    import torch

    import omni
    from omni.thinker import Thinker, ThinkerConfig
    from omni.training.checkpoint import load

    out = REPO / "checkpoints/demo/merged_model"
    flags = []
    for flag, config in EXPORT_SOURCES.items():
        if any(save_dir(config).glob("*.pt")) and (save_dir(config) / "summary.json").exists():
            flags += [flag, str(save_dir(config))]
    talker_dir = REPO / json.loads((REPO / "configs/demo/talker.json").read_text())["talker"]["train"]["save_dir"]
    if (talker_dir / "talker.pt").exists():
        flags += ["--talker_ckpt", str(talker_dir)]
    wall = run([sys.executable, "export.py", *flags, "--output_dir", str(out)])
    exported = omni.load_exported(out)
    stage = load(save_dir("configs/demo/thinker.json") / "thinker.pt")
    reference = Thinker(ThinkerConfig(**stage["config"])).eval()
    reference.load_state_dict(stage["model"])
    ids = torch.randint(0, reference.cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (exported.thinker(ids)[0] - reference(ids)[0]).abs().max().item()
    export_config = json.loads((out / "config.json").read_text())
    present, absent = export_config["components_present"], export_config["components_absent"]
    rows = [("export", f"components present (of {len(present) + len(absent)})", len(present), wall),
            ("export", "round trip max |logit diff| thinker", diff, wall)]
    image = REPO / "data/images/val.jsonl"
    if "vision_projector" in present and image.exists():
        first = json.loads(image.read_text().splitlines()[0])
        wall = run([sys.executable, "infer_chat.py", "--model_dir", str(out), "--image",
                    str(image.parent / first["image"]), "--text", "What colour is the shape?"])
        rows.append(("infer", f"image QA from export ({first['caption'][:20]})", "see above", wall))
    return rows


def run(cmd: list[str]) -> float:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.perf_counter() - start


def save_dir(config: str) -> Path:
    return REPO / json.loads((REPO / config).read_text())["train"]["save_dir"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated stage letters/names to run (default: all)")
    args = parser.parse_args(argv)
    total = time.perf_counter()
    rows = [("data", "synthetic datasets", "", run([sys.executable, "scripts/make_synthetic_datasets.py"]))]
    only = {w.strip().lower() for w in args.only.split(",")} if args.only else None
    for stage, script, config, metrics in STAGES:
        if only and not only & set(stage.lower().split()):  # whole words: "a" or "text" select "A text"
            continue
        wall = run([sys.executable, script, "--config", config])
        summary = json.loads((save_dir(config) / "summary.json").read_text())
        for key, label in metrics.items():
            rows.append((stage, label, summary["metrics"][key], wall))
        rows.append((stage, "training seconds (all resumes)", summary["train_seconds"], wall))
    if not only or only & SPEECH_OUT_WORDS:
        rows += speech_out_rows()
    if not only or "export" in only:
        rows += export_rows()
    print("\n" + table(rows))
    print(f"total {time.perf_counter() - total:.0f}s")


def table(rows) -> str:
    lines = [f"{'stage':<10} {'metric':<34} {'value':>12} {'wall s':>8}", "-" * 67]
    for stage, label, value, wall in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{stage:<10} {label:<34} {shown:>12} {wall:>8.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
