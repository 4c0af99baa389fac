"""Benchmarks: training throughput, step time, peak memory and generation speed of every stage, measured (never
asserted in tests).

    python scripts/bench.py [--stages A B ...] [--config-dir configs] [--steps 3] [--device auto] [--json out.json]

Per stage (A thinker, B audio encoder/CTC, C vision contrastive, OCR, D codec, D talker, vocoder, E omni SFT) at
its `<config-dir>/*_tiny.json` batch size and precision: one synthetic training step (omni/stage_bench.py: the
stage's own model, AdamW and loss on random tensors of the stage's shapes) is warmed up, then timed for `--steps`
steps (fewer when they exceed `--budget-s`; a warm-up step over the budget is itself the measurement).
Reported: samples/s, tokens/s (Thinker, Talker, Stage E), step ms, peak memory (CUDA: the allocator's peak for
that stage alone; CPU: the process's max RSS so far, which is process-wide and only grows, so a stage's number
includes every stage before it).
Stage A also gets: data ms (a real ResumableDataset + DataLoader batch fetch from a generated token memmap, the
path train_text.py uses, in the main process; with train.num_workers > 0 it overlaps compute), Thinker MFU
(6N + attention FLOPs per token x tokens/s / the device's peak dense bf16 FLOP/s; n/a on CPU or an unknown GPU),
and greedy generation tokens/s with and without the KV cache.
Resume: time from a fresh ResumableDataset positioned at sample 10^6 (of a 2 x 10^6-item source) to its first batch
in hand, plain and length-bucketed, next to the same at sample 0 (equal times = O(1) in the skipped samples).
TTS: real-time factor of omni.speech synthesize on CPU (compute seconds per second of audio), one-shot and
streamed (SpeechSynthesizer.stream, with its time to first audio), with demo checkpoints when present, else
randomly initialised tiny models (the output says which).
"""

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omni.config import load_config_file  # noqa: E402
from omni.data.resumable import ResumableDataset  # noqa: E402
from omni.data.text import TokenWindows, open_tokens  # noqa: E402
from omni.stage_bench import STAGES, StageStep, build_stage  # noqa: E402
from omni.training.distributed import local_device  # noqa: E402

# Peak dense bf16 tensor FLOP/s by device name (substring of torch.cuda.get_device_name; first match wins).
# RTX 3060: 25.6e12 is its bf16 rate with fp32 accumulation, which is what autocast matmuls use (the often quoted
# 51e12 is fp16 with fp16 accumulation), so MFU there is against what training can actually reach.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
    ("RTX 3060", 25.6e12),
)
RESUME_SOURCE_ITEMS = 2_000_000
RESUME_SKIP = 1_000_000


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device) -> tuple[float | None, str]:
    if device.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None), name


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def time_steps(stage: StageStep, device, steps: int, budget_s: float) -> tuple[float, int]:
    """(seconds per training step, timed steps) after one warm-up step (optimizer state, allocator, kernels).
    A warm-up step that alone exceeds budget_s is the measurement (0 timed steps; slightly pessimistic): on a
    small CPU the HiFi-GAN discriminators take a minute per step, and a second one would tell little more."""
    start = time.perf_counter()
    stage.step()
    sync(device)
    warmup_s = time.perf_counter() - start
    if warmup_s > budget_s:
        return warmup_s, 0
    times = []
    while len(times) < steps and sum(times) < budget_s:
        start = time.perf_counter()
        stage.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return sum(times) / len(times), len(times)


def bench_stage(key: str, config_dir: str, device, *, steps: int, budget_s: float,
                batch_size: int | None = None) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    stage = build_stage(key, config_dir, device, batch_size=batch_size)
    step_s, timed = time_steps(stage, device, steps, budget_s)
    result = {"stage": key, "name": stage.name, "config": stage.config, "device": str(device),
              "precision": stage.precision, "params": stage.params, "trainable": stage.trainable,
              "batch": stage.batch, "shapes": stage.shapes, "timed_steps": timed, "step_ms": step_s * 1e3,
              "samples_per_s": stage.batch / step_s,
              "tokens_per_s": stage.tokens / step_s if stage.tokens else None}
    if device.type == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    else:
        result["peak_mb"] = max_rss_mb()  # process-wide and monotone (see the module docstring)
    if key == "A":
        result.update(thinker_extras(stage, device, step_s, steps))
    del stage
    gc.collect()
    return result


def thinker_extras(stage: StageStep, device, step_s: float, steps: int) -> dict:
    """Stage A: MFU, the data path's batch fetch time and generation speed, on the benchmarked model."""
    flops, device_name = peak_flops(device)
    tokens_per_s = stage.tokens / step_s
    out = {"flops_per_token": stage.flops_per_token, "device_name": device_name, "device_peak_flops": flops,
           "mfu": stage.flops_per_token * tokens_per_s / flops if flops else None}
    out["data_ms"] = data_fetch_ms(stage, device, steps)
    model = stage.model.eval()
    vocab, max_len = model.cfg.vocab_size, model.cfg.max_seq_len
    prompt = torch.randint(0, vocab, (1, 16), device=device)
    new = min(128, max_len - 16)
    for use_cache in (True, False):
        sync(device)
        start = time.perf_counter()
        tokens = model.generate(prompt, max_new_tokens=new, use_cache=use_cache)
        sync(device)
        out[f"generate_tokens_per_s_{'kv_cache' if use_cache else 'no_cache'}"] = tokens.shape[1] / (
            time.perf_counter() - start)
    return out


def data_fetch_ms(stage: StageStep, device, batches: int) -> float:
    """Milliseconds per batch to fetch a Stage-A batch through ResumableDataset + DataLoader from a token memmap
    (random ids written to a temporary file: after tokenization, train_text.py reads exactly such a memmap) and
    move it to the device. num_workers=0, so this is the cost a worker must hide behind each step."""
    B, T = stage.shapes["tokens"]
    vocab = stage.model.cfg.vocab_size
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.bin"
        rng = np.random.default_rng(0)
        rng.integers(0, vocab, (batches + 2) * B * T + 1, dtype=np.uint16).tofile(path)
        dataset = ResumableDataset(TokenWindows(open_tokens(path, vocab), T), batch_size=B, seed=0)
        loader = iter(DataLoader(dataset, batch_size=None, num_workers=0, collate_fn=lambda x: x))
        next(loader)  # first batch pays the epoch permutation; steady state is what a worker sustains
        start = time.perf_counter()
        for _ in range(batches):
            batch = next(loader).batch
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        sync(device)
        return (time.perf_counter() - start) / batches * 1e3


class IndexSource:
    """A ResumableDataset source of n items whose item i is its own index: free to build at any length, and a batch
    says which samples it holds. Counts item reads, so a resume can be checked to read only the batch it serves."""

    def __init__(self, n: int):
        self.n, self.reads = n, 0
        self.lengths = np.arange(n) % 97  # varied lengths, for length bucketing

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        return {"index": torch.tensor(i)}

    def collate(self, samples: list[dict]) -> dict:
        return {"index": torch.stack([s["index"] for s in samples])}


def first_batch_after(source, skip: int, *, batch_size: int, bucket_batches: int = 0, seed: int = 0,
                      num_workers: int = 0):
    """What a resume does: a fresh ResumableDataset set to `skip` samples into epoch 0, then the first batch out of
    a DataLoader. Returns (LoadedBatch, seconds from construction to the batch in hand)."""
    start = time.perf_counter()
    dataset = ResumableDataset(source, batch_size=batch_size, seed=seed, bucket_batches=bucket_batches)
    dataset.set_position(epoch=0, skip_samples=skip)
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_identity)
    loaded = next(iter(loader))
    return loaded, time.perf_counter() - start


def _identity(x):
    return x


def bench_resume(batch_size: int, num_workers: int) -> dict:
    """Time to the first batch after skipping RESUME_SKIP samples (and after 0, for comparison), plain (Stage A)
    and with length bucketing over 8 batches (the audio/OCR/Talker/SFT stages)."""
    source = IndexSource(RESUME_SOURCE_ITEMS)
    out = {"stage": "resume", "source_items": RESUME_SOURCE_ITEMS, "skip": RESUME_SKIP, "batch": batch_size,
           "num_workers": num_workers}
    for label, bucket in (("plain", 0), ("bucketed", 8)):
        for skip in (RESUME_SKIP, 0):
            loaded, seconds = first_batch_after(source, skip, batch_size=batch_size, bucket_batches=bucket,
                                                num_workers=num_workers)
            out[f"{label}_skip_{skip}_s"] = seconds
            if skip:
                out[f"{label}_first_batch_index"] = loaded.index
    return out


TTS_SENTENCES = ("a red circle is next to the blue square", "seven green triangles", "the small boat is far away")


class _ByteIds:
    """Stands in for the tokenizer when no demo checkpoint exists: byte values as text ids (only speed matters)."""

    bos_id, eos_id = 2, 3

    def __init__(self, vocab_size: int):
        self.vocab_size, self.model_path = vocab_size, "byte ids"

    def char_tokens(self, text: str) -> list[int]:
        """One id per character, as omni.alignment.text_units needs."""
        return [min(ord(c), self.vocab_size - 1) for c in text]


def bench_tts() -> dict:
    """Real-time factor of omni.speech synthesize on CPU: compute seconds per second of audio (< 1 = faster than
    real time), split into Talker + codec decoder and vocoder, for HiFi-GAN and for the Griffin-Lim fallback; and
    of the streaming path (SpeechSynthesizer.stream, default 0.5 s chunks) with its time to first audio (text in to
    the first chunk out, Talker included; mean over the sentences). Uses
    the demo checkpoints when they exist, else randomly initialised models of configs/*_tiny.json (which babble to
    the length cap, so the audio is longer; the time per second of audio is what is measured)."""
    from omni.codec import Codec
    from omni.speech import SpeechSynthesizer, Vocoder
    from omni.stages import TalkerStage, VocoderStage
    from omni.talker import Talker
    from omni.vocoder import Generator

    talker_dir, vocoder_file = Path("checkpoints/demo/talker"), Path("checkpoints/demo/vocoder/hifigan.pt")
    if (talker_dir / "talker.pt").is_file() and vocoder_file.is_file():
        synth = SpeechSynthesizer.from_checkpoints(talker_dir, log=lambda _: None)
        # HiFi-GAN whatever the run's verdict: both vocoders are timed here, each under its own name.
        synth.vocoder = Vocoder.load(vocoder_file, prefer="hifigan", log=lambda _: None)
        source = f"trained demo checkpoints ({talker_dir}, {vocoder_file})"
    else:
        torch.manual_seed(0)  # the same random models every time, so the same babble length
        stage = load_config_file(TalkerStage, "configs/talker_tiny.json")
        vocoder = Generator(load_config_file(VocoderStage, "configs/vocoder_tiny.json").model).eval()
        talker = Talker(stage.talker.model).eval()
        with torch.no_grad():  # a fresh duration head says ~0 frames (no audio): ~1 frame (80 ms) per character
            talker.duration.out.bias.fill_(np.log1p(1.0))
        synth = SpeechSynthesizer(_ByteIds(stage.talker.model.text_vocab_size), talker,
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
    streamed, talker_s = {}, []

    def timed_latents(text):  # the same Talker call as above (its options included), timed
        start = time.perf_counter()
        z = synth.latents(text)
        talker_s.append(time.perf_counter() - start)
        return z

    for name, vocoder in (("hifigan", hifigan), ("griffin_lim", fallback)):
        streamer = SpeechSynthesizer(synth.tokenizer, synth.talker, synth.codec, vocoder)
        streamer.latents = timed_latents
        list(streamer.stream(TTS_SENTENCES[0]))  # warm-up (the chunk shapes are new to the conv kernels)
        talker_s.clear()
        first_s = total_s = 0.0
        for text in TTS_SENTENCES:
            start, first = time.perf_counter(), None
            for _ in streamer.stream(text):
                first = time.perf_counter() - start if first is None else first
            total_s += time.perf_counter() - start
            first_s += first or 0.0
        # Time to first audio: text in -> first chunk out, Talker included; then the part after the Talker
        # (one codec window and one vocoder window), which is what chunking buys.
        streamed[f"stream_ttfa_s_{name}"] = first_s / len(TTS_SENTENCES)
        streamed[f"stream_ttfa_after_talker_s_{name}"] = (first_s - sum(talker_s)) / len(TTS_SENTENCES)
        streamed[f"stream_rtf_{name}"] = total_s / audio_s
    return {"stage": "TTS synthesize", "source": source, "device": "cpu", "threads": torch.get_num_threads(),
            "audio_seconds": audio_s, "rtf_hifigan": (mel_s + hifigan_s) / audio_s,
            "rtf_griffin_lim": (mel_s + gl_s) / audio_s, "rtf_talker_and_codec": mel_s / audio_s,
            "rtf_hifigan_vocoder_only": hifigan_s / audio_s, "rtf_griffin_lim_vocoder_only": gl_s / audio_s,
            **streamed}


def fmt(value, spec: str = ",.1f") -> str:
    return "-" if value is None else format(value, spec)


def stage_extra(r: dict) -> str:
    parts = [r["precision"], f"{r['timed_steps']} steps" if r["timed_steps"] else "warm-up step only"]
    if r["stage"] == "A":
        parts.append(f"MFU {r['mfu']:.1%}" if r["mfu"] is not None else "MFU n/a")
        parts.append(f"gen {r['generate_tokens_per_s_kv_cache']:,.0f} tok/s KV, "
                     f"{r['generate_tokens_per_s_no_cache']:,.0f} no cache")
    if r["trainable"] != r["params"]:
        parts.append(f"{r['trainable']:,} trainable")
    return "; ".join(parts)


def print_table(rows: list[dict], device) -> None:
    header = ("stage", "params", "batch", "samples/s", "tokens/s", "step ms", "data ms", "peak MB", "extra")
    lines = [header]
    for r in rows:
        lines.append((f"{r['stage']} {r['name']}", f"{r['params'] / 1e6:.2f}M", str(r["batch"]),
                      fmt(r["samples_per_s"]), fmt(r["tokens_per_s"], ",.0f"), fmt(r["step_ms"], ",.0f"),
                      fmt(r.get("data_ms"), ",.1f"), fmt(r["peak_mb"], ",.0f"), stage_extra(r)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    print()
    for i, line in enumerate(lines):
        cells = [c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(line, widths))]
        print(" | ".join(cells + [line[-1]]))
        if i == 0:
            print("-+-".join("-" * w for w in widths + [len("extra")]))
    memory = ("CUDA allocator peak per stage" if device.type == "cuda"
              else "CPU max RSS of the whole process so far (process-wide, includes earlier stages)")
    print(f"device {device}, {torch.get_num_threads()} threads; peak MB = {memory}; data ms = Stage-A batch fetch "
          "(ResumableDataset + DataLoader, main process)")


# ---------------------------------------------------------------------------------------------- --compare
# The nanoGPT-shaped side-by-side: 4 layers x 256 x 4 heads, context 256, batch 16, vocabulary 4000, fp32, dropout 0.
COMPARE_OVERRIDES = ("model.vocab_size=4000", "model.d_model=256", "model.n_layers=4", "model.n_heads=4",
                     "model.d_ff=1024", "model.max_seq_len=256", "model.dropout=0.0", "data.seq_len=256",
                     "train.batch_size=16", "train.precision=fp32", "train.num_workers=0", "train.resume=never",
                     "train.max_steps=1000000", "train.val_freq=1000000", "train.checkpoint_freq=1000000",
                     "train.grad_clip=1.0")
COMPARE_TOKENS = 2_000_000  # random token stream both models read (uint16 memmap, ~4 MB)


class OmniLoop:
    """omni's Stage-A training loop exactly as train_text.py runs it (omni.training.Run over a ResumableDataset of
    TokenWindows on a token memmap), advanced a given number of optimizer steps at a time so that it can be
    interleaved with the reference. Run writes its log into `save_dir` (a temporary folder)."""

    def __init__(self, config_dir: Path, tokens: np.ndarray, save_dir: Path, *, device: str, compile: bool,
                 threads: int, extra: list[str] = ()):
        from omni.stages import TextStage
        from omni.thinker import Thinker
        from omni.training import Run, adamw

        cfg = load_config_file(TextStage, Path(config_dir) / "thinker_tiny.json",
                               [*COMPARE_OVERRIDES, f"train.save_dir={save_dir}", f"train.threads={threads}",
                                f"train.compile={str(compile).lower()}", f"train.device={device}", *extra])
        self.cfg, self.tokens_per_step = cfg, cfg.train.batch_size * cfg.data.seq_len
        self.run = Run(cfg, name="thinker", metric=None)
        train_set = ResumableDataset(TokenWindows(tokens, cfg.data.seq_len), batch_size=cfg.train.batch_size,
                                     seed=cfg.train.seed)
        model = Thinker(cfg.model)
        self.params = sum(p.numel() for p in model.parameters())
        self.model = self.run.setup(model, adamw(model, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay),
                                    train_set)
        self._batches = self.run.batches(train_set)
        self.loss = None

    def steps(self, n: int) -> None:
        run, done = self.run, 0
        for batch in self._batches:  # train_text.py's loop body
            with run.micro_step():
                _, loss = self.model(batch["inputs"], targets=batch["targets"])
                run.backward(loss)
            if run.optimizer_step():
                run.log(loss=loss)
                run.maybe_checkpoint()
                self.loss = loss.detach()
                done += 1
                if done == n:
                    return

    def close(self) -> None:
        self._batches.close()


def interleaved_tokens_per_s(loops: dict, *, warmup: int, rounds: int, steps_per_round: int, device) -> dict:
    """Median tokens/s of each loop over `rounds` rounds that alternate between the loops (A B A B ..., the order
    flipped every round), so that load from other processes on a shared machine hits both alike."""
    for loop in loops.values():
        loop.steps(warmup)
    sync(device)
    times = {name: [] for name in loops}
    names = list(loops)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            loops[name].steps(steps_per_round)
            sync(device)
            times[name].append((time.perf_counter() - start) / steps_per_round)
    return {name: loops[name].tokens_per_step / float(np.median(t)) for name, t in times.items()}


def compare(config_dir: str, device, *, threads: int, compile_modes: list[bool], warmup: int, rounds: int,
            steps_per_round: int, seed: int = 0) -> list[dict]:
    """omni's train_text.py loop vs the nanoGPT-shaped reference (omni/bench_reference.py), one process, same token
    stream; one result per compile mode."""
    from omni.bench_reference import ReferenceConfig, ReferenceGPT, ReferenceTrainer

    torch.set_num_threads(threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.bin"
        np.random.default_rng(seed).integers(0, 4000, COMPARE_TOKENS, dtype=np.uint16).tofile(path)
        tokens = np.memmap(path, dtype=np.uint16, mode="r")
        for compiled in compile_modes:
            torch.manual_seed(seed)
            omni = OmniLoop(Path(config_dir), tokens, Path(tmp) / f"omni_{compiled}", device=str(device),
                            compile=compiled, threads=threads)
            cfg = omni.cfg
            ref_cfg = ReferenceConfig(vocab_size=cfg.model.vocab_size, seq_len=cfg.data.seq_len,
                                      n_layers=cfg.model.n_layers, n_heads=cfg.model.n_heads,
                                      d_model=cfg.model.d_model)
            ref = ReferenceTrainer(ReferenceGPT(ref_cfg), tokens, batch_size=cfg.train.batch_size,
                                   seq_len=cfg.data.seq_len, seed=seed, device=device, compile=compiled)
            ref.tokens_per_step = omni.tokens_per_step
            ref.steps = lambda n, ref=ref: [ref.step() for _ in range(n)]
            rates = interleaved_tokens_per_s({"omni": omni, "reference": ref}, warmup=warmup, rounds=rounds,
                                             steps_per_round=steps_per_round, device=device)
            omni.close()
            results.append({"stage": "compare", "compile": compiled, "device": str(device), "threads": threads,
                            "omni_params": omni.params,
                            "reference_params": sum(p.numel() for p in ref.raw_model.parameters()),
                            "omni_n_kv_heads": cfg.model.n_kv_heads,
                            "omni_tokens_per_s": rates["omni"], "reference_tokens_per_s": rates["reference"],
                            "ratio": rates["omni"] / rates["reference"], "rounds": rounds,
                            "steps_per_round": steps_per_round})
            del omni, ref
            gc.collect()
    return results


def print_compare(results: list[dict]) -> None:
    print("\nomni train_text.py loop vs nanoGPT-shaped reference (4 x 256 x 4 heads, ctx 256, batch 16, vocab 4000, "
          f"fp32, dropout 0; {results[0]['threads']} threads; medians of interleaved rounds)")
    print(f"{'compile':<8} | {'omni tokens/s':>13} | {'reference tokens/s':>18} | {'omni / reference':>16}")
    for r in results:
        print(f"{'on' if r['compile'] else 'off':<8} | {r['omni_tokens_per_s']:>13,.0f} | "
              f"{r['reference_tokens_per_s']:>18,.0f} | {r['ratio']:>15.2f}x")
    print(f"params: omni {results[0]['omni_params']:,} ({results[0]['omni_n_kv_heads']} kv heads), "
          f"reference {results[0]['reference_params']:,}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-dir", default="configs", help="folder with the stages' *_tiny.json")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per stage (after one warm-up step)")
    parser.add_argument("--budget-s", type=float, default=30.0,
                        help="stop timing a stage after this many seconds (at least one timed step)")
    parser.add_argument("--batch-size", type=int, default=None, help="override every stage's batch (smoke tests)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-tts", action="store_true", help="skip the TTS real-time-factor benchmark")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--compare", action="store_true",
                        help="only the side-by-side: omni's train_text.py loop vs a nanoGPT-shaped reference "
                             "(omni/bench_reference.py) at 4 x 256 x 4 heads, ctx 256, batch 16, vocab 4000, fp32, "
                             "with and without torch.compile (default --threads 2)")
    parser.add_argument("--compare-compile", choices=("both", "off", "on"), default="both")
    parser.add_argument("--rounds", type=int, default=8, help="--compare: interleaved rounds per model")
    parser.add_argument("--round-steps", type=int, default=5, help="--compare: optimizer steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="--compare: untimed steps first (compilation)")
    args = parser.parse_args(argv)
    if args.compare and not args.threads:
        args.threads = 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = local_device(args.device)
    if args.compare:
        modes = {"both": [False, True], "off": [False], "on": [True]}[args.compare_compile]
        results = compare(args.config_dir, device, threads=args.threads, compile_modes=modes, warmup=args.warmup,
                          rounds=args.rounds, steps_per_round=args.round_steps)
        print_compare(results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        return
    torch.manual_seed(0)
    rows = []
    for key in args.stages:
        print(f"benchmarking {key} ...", flush=True)
        rows.append(bench_stage(key, args.config_dir, device, steps=args.steps, budget_s=args.budget_s,
                                batch_size=args.batch_size))
    print_table(rows, device)
    from omni.stages import TextStage
    text = load_config_file(TextStage, Path(args.config_dir) / "thinker_tiny.json")
    # Stage A's own batch and workers, also under --batch-size: the resume cost depends on them, not on the model.
    resume = bench_resume(text.train.batch_size, text.train.num_workers)
    print(f"\nresume: first batch after skipping {RESUME_SKIP:,} of {RESUME_SOURCE_ITEMS:,} samples "
          f"(batch {resume['batch']}, {resume['num_workers']} DataLoader workers)")
    for label in ("plain", "bucketed"):
        print(f"  {label:<9} {resume[f'{label}_skip_{RESUME_SKIP}_s']:.3f} s   (from sample 0: "
              f"{resume[f'{label}_skip_0_s']:.3f} s)")
    results = rows + [resume]
    if not args.no_tts:
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
