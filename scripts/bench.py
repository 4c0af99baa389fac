"""Benchmarks: training throughput, peak memory and generation speed, measured (never asserted in tests).

    python scripts/bench.py [--config configs/thinker_tiny.json] [--steps 10] [--device auto] [--json out.json]

Stage A: training tokens/s at the config's batch and context with its precision, peak memory (CUDA: the
allocator's peak; CPU: the process's max RSS), and greedy generation tokens/s with and without the KV cache.
Random token ids stand in for data so only the model and optimizer are measured.
TTS: real-time factor of omni.speech synthesize on CPU (compute seconds per second of audio), with demo
checkpoints when present, else randomly initialised tiny models (the output says which).
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omni.config import load_config_file  # noqa: E402
from omni.stages import TextStage  # noqa: E402
from omni.thinker import Thinker  # noqa: E402
from omni.training import adamw  # noqa: E402
from omni.training.distributed import local_device  # noqa: E402
from omni.training.run import AMP_DTYPES  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bench_thinker(config: str, steps: int, device: torch.device) -> dict:
    cfg = load_config_file(TextStage, config)
    model = Thinker(cfg.model).to(device)
    opt = adamw(model, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    amp = AMP_DTYPES[cfg.train.precision] if device.type == "cuda" else None
    if cfg.train.grad_checkpointing:
        model.set_gradient_checkpointing(True)
    B, T = cfg.train.batch_size, cfg.data.seq_len
    tokens = torch.randint(0, cfg.model.vocab_size, (B, T + 1), device=device)

    def train_step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            _, loss = model(tokens[:, :-1], targets=tokens[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):  # warm-up (allocator, kernels)
        train_step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync(device)
    step_s = (time.perf_counter() - start) / steps
    result = {
        "stage": "A thinker", "config": config, "device": str(device),
        "params": sum(p.numel() for p in model.parameters()),
        "batch": B, "seq_len": T, "train_step_s": step_s, "train_tokens_per_s": B * T / step_s,
        "peak_memory_mb": peak_memory_mb(device),
    }
    model.eval()
    prompt = tokens[:1, :16]
    new = min(128, cfg.model.max_seq_len - 16)
    for use_cache in (True, False):
        sync(device)
        start = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=new, use_cache=use_cache)
        sync(device)
        result[f"generate_tokens_per_s_{'kv_cache' if use_cache else 'no_cache'}"] = out.shape[1] / (
            time.perf_counter() - start)
    return result


TTS_SENTENCES = ("a red circle is next to the blue square", "seven green triangles", "the small boat is far away")


class _ByteIds:
    """Stands in for the tokenizer when no demo checkpoint exists: byte values as text ids (only speed matters)."""

    def __init__(self, vocab_size: int):
        self.vocab_size, self.model_path = vocab_size, "byte ids"

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        return [2] * bos + [min(b, self.vocab_size - 1) for b in text.encode()] + [3] * eos


def bench_tts() -> dict:
    """Real-time factor of omni.speech synthesize on CPU: compute seconds per second of audio (< 1 = faster than
    real time), split into Talker + codec decoder and vocoder, for HiFi-GAN and for the Griffin-Lim fallback. Uses
    the demo checkpoints when they exist, else randomly initialised models of configs/*_tiny.json (which babble to
    the length cap, so the audio is longer; the time per second of audio is what is measured)."""
    from omni.codec import Codec
    from omni.speech import SpeechSynthesizer, Vocoder
    from omni.stages import TalkerStage, VocoderStage
    from omni.talker import Talker
    from omni.vocoder import Generator

    talker_dir, vocoder_file = Path("checkpoints/demo/talker"), Path("checkpoints/demo/vocoder/hifigan.pt")
    if (talker_dir / "talker.pt").is_file() and vocoder_file.is_file():
        synth = SpeechSynthesizer.from_checkpoints(talker_dir, vocoder=vocoder_file, log=lambda _: None)
        source = f"trained demo checkpoints ({talker_dir}, {vocoder_file})"
    else:
        torch.manual_seed(0)  # the same random models every time, so the same babble length
        stage = load_config_file(TalkerStage, "configs/talker_tiny.json")
        vocoder = Generator(load_config_file(VocoderStage, "configs/vocoder_tiny.json").model).eval()
        synth = SpeechSynthesizer(_ByteIds(stage.talker.model.text_vocab_size), Talker(stage.talker.model).eval(),
                                  Codec(stage.codec.model).eval(), Vocoder(vocoder))
        source = "randomly initialised configs/talker_tiny.json + configs/vocoder_tiny.json (no demo checkpoints)"
    hifigan, fallback = synth.vocoder, Vocoder()
    synth.synthesize(TTS_SENTENCES[0])  # warm-up
    mel_s = hifigan_s = gl_s = audio_s = 0.0
    for text in TTS_SENTENCES:
        start = time.perf_counter()
        mel = synth.mel(text)[None]
        mel_s += time.perf_counter() - start
        if mel.shape[1] == 0:
            continue
        start = time.perf_counter()
        wav = hifigan(mel)
        hifigan_s += time.perf_counter() - start
        start = time.perf_counter()
        fallback(mel)
        gl_s += time.perf_counter() - start
        audio_s += wav.shape[-1] / 16000
    if audio_s == 0:
        return {"stage": "TTS synthesize", "source": source, "audio_seconds": 0.0}
    return {"stage": "TTS synthesize", "source": source, "device": "cpu", "threads": torch.get_num_threads(),
            "audio_seconds": audio_s, "rtf_hifigan": (mel_s + hifigan_s) / audio_s,
            "rtf_griffin_lim": (mel_s + gl_s) / audio_s, "rtf_talker_and_codec": mel_s / audio_s,
            "rtf_hifigan_vocoder_only": hifigan_s / audio_s, "rtf_griffin_lim_vocoder_only": gl_s / audio_s}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/thinker_tiny.json")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    device = local_device(args.device)
    results = [bench_thinker(args.config, args.steps, device)]
    for r in results:
        print(f"\n{r['stage']} ({r['config']}, {r['device']}, {r['params']:,} params, "
              f"batch {r['batch']} x {r['seq_len']})")
        for key, value in r.items():
            if key not in ("stage", "config", "device", "params", "batch", "seq_len"):
                print(f"  {key:<34} {value:>14,.1f}" if isinstance(value, float) else f"  {key:<34} {value:>14}")
    tts = bench_tts()
    print(f"\n{tts['stage']} (CPU; {tts['source']})")
    for key, value in tts.items():
        if key not in ("stage", "source"):
            print(f"  {key:<34} {value:>14,.3f}" if isinstance(value, float) else f"  {key:<34} {value:>14}")
    results.append(tts)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
