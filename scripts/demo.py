"""The whole pipeline at CPU scale: synthetic data, every stage with configs/demo/, export, inference, one summary.

    make demo          (or: .venv/bin/python scripts/demo.py [--only text,e] [--jobs 2])

The steps form a dependency graph (Stage C needs Stage A's tokenizer, Stage E needs A, B and C, ...) and up to
--jobs of them run at once, each with one torch thread: on a 2-core machine two stages train side by side. Each
step's output goes to checkpoints/demo/logs/<step>.log; the console shows starts, ends and a progress line a minute.
Every step resumes, so rerunning after an interruption (or after it finished) continues instead of starting over.
A failed step stops the launch of new ones, lets the running ones finish, prints the tail of its log and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PY = sys.executable
LOGS = REPO / "checkpoints/demo/logs"
EXPORT_DIR = REPO / "checkpoints/demo/merged_model"
TTS_SENTENCES = 50  # held-out sentences spoken for the TTS -> ASR CER


def config(name: str) -> dict:
    return json.loads((REPO / "configs/demo" / f"{name}.json").read_text())


def save_dir(name: str, part: str | None = None) -> Path:
    """The run dir of demo config `name` (of its `part`, for the two-phase talker config)."""
    cfg = config(name)
    return REPO / (cfg[part] if part else cfg)["train"]["save_dir"]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def metric_rows(step: str, run_dir: Path, labels: dict[str, str]) -> list[tuple]:
    """(step, label, value) for the summary metrics named in labels, plus the training seconds of all resumes."""
    s = summary(run_dir)
    return [(step, label, s["metrics"][key]) for key, label in labels.items() if key in s["metrics"]] + \
        [(step, "training seconds (all resumes)", s["train_seconds"])]


def vocoder_rows(_: str) -> list[tuple]:
    """The held-out scores of both vocoders and the verdict the demo's speech follows (vocoder_judge.json)."""
    judge = json.loads((save_dir("vocoder") / "vocoder_judge.json").read_text())
    return metric_rows("vocoder", save_dir("vocoder"), {
        "val_asr_cer": "held-out ASR CER HiFi-GAN", "val_asr_cer_griffin_lim": "held-out ASR CER Griffin-Lim",
        "val_asr_cer_real": "held-out ASR CER real audio", "val_mr_stft": "held-out MR-STFT HiFi-GAN",
        "val_mr_stft_griffin_lim": "held-out MR-STFT Griffin-Lim", "val_mel_l1": "held-out mel-L1 HiFi-GAN",
        "val_mel_l1_griffin_lim": "held-out mel-L1 Griffin-Lim"}) + [("vocoder", "speaks with", judge["choice"])]


@dataclass
class Step:
    """One command of the demo (or a function giving it when the step starts, for commands that depend on earlier
    steps' outputs); `rows(stdout)` reads its results once it has finished."""
    name: str
    cmd: list[str] | Callable[[], list[str]]
    needs: tuple[str, ...] = ()
    rows: Callable[[str], list[tuple]] = lambda out: []
    words: set[str] = field(default_factory=set)  # --only words that select it, besides the name's own words


def talker_rows(_: str) -> list[tuple]:
    cfg = config("talker")
    codec, talker = summary(save_dir("talker", "codec"))["metrics"], summary(save_dir("talker", "talker"))["metrics"]
    rows = [("D codec", "held-out mel recon L1 (normalised)", codec["val_recon_l1"])]
    rows += [("D codec", f"codebook {k} perplexity (of {cfg['codec']['model']['codebook_size']})",
              codec[f"val_ppl_cb{k}"]) for k in range(cfg["codec"]["model"]["n_codebooks"])]
    return rows + [("D talker", "held-out code CE", talker["val_code_loss"]),
                   ("D talker", "held-out code accuracy", talker["val_acc"]),
                   ("D talker", "held-out duration error (frames/char)", talker["val_duration_mae"])]


def tts_rows(_: str) -> list[tuple]:
    result = json.loads((save_dir("talker", "talker") / "tts_asr.json").read_text())
    phrases = result["phrases"]
    return [("D TTS>ASR", f"CER, {result['sentences']} held-out sentences ({result['vocoder']})", result["cer"]),
            ("D TTS>ASR", f"CER, {phrases['sentences']} one-word answers (trained texts)", phrases["cer"])]


# export.py flag -> the demo config whose run dir holds that stage's final weights
EXPORT_SOURCES = {"--thinker_ckpt": "thinker", "--audio_ckpt": "audio_enc", "--vision_ckpt": "vision",
                  "--ocr_ckpt": "ocr", "--vocoder_ckpt": "vocoder", "--omni_ckpt": "omni_sft"}


def export_cmd() -> list[str]:
    """export.py over every demo stage that has finished (decided when the step starts)."""
    flags = [x for flag, name in EXPORT_SOURCES.items() if (save_dir(name) / "summary.json").exists()
             for x in (flag, str(save_dir(name)))]
    if (save_dir("talker", "talker") / "talker.pt").exists():
        flags += ["--talker_ckpt", str(save_dir("talker", "talker"))]
    return [PY, "export.py", *flags, "--output_dir", str(EXPORT_DIR)]


def export_rows(_: str) -> list[tuple]:
    """Load the export back and compare the Thinker's logits with the Stage-A checkpoint's (the SFT Thinker when
    Stage E is in it: then with the checkpoint model infer_chat builds)."""
    import torch

    import omni
    from omni.thinker import Thinker, ThinkerConfig
    from omni.training.checkpoint import load

    exported = omni.load_exported(EXPORT_DIR)
    export_config = json.loads((EXPORT_DIR / "config.json").read_text())
    present, absent = export_config["components_present"], export_config["components_absent"]
    stage = load(save_dir("thinker") / "thinker.pt")
    reference = Thinker(ThinkerConfig(**stage["config"])).eval()
    reference.load_state_dict(stage["model"])
    sft = load(save_dir("omni_sft") / "omni_final.pt") if "vision_projector" in present else None
    if sft:  # the export's Thinker is the SFT one: lay Stage E's changes over the Stage-A weights
        reference.load_state_dict({k.removeprefix("thinker."): v for k, v in sft["model"].items()
                                   if k.startswith("thinker.")}, strict=False)
    ids = torch.randint(0, reference.cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (exported.thinker(ids)[0] - reference(ids)[0]).abs().max().item()
    which = "SFT thinker" if sft else "thinker"
    return [("export", f"components present (of {len(present) + len(absent)})", len(present)),
            ("export", f"round trip max |logit diff| {which}", diff)]


def demo_questions() -> dict:
    """The infer steps' inputs, read when they start (the data does not exist before the demo made it): the first
    held-out image with one shape (asked its colour) and the first held-out clip (asked what was said)."""
    images, speech = REPO / "data/images/val.jsonl", REPO / "data/speech/val.jsonl"
    image = next(r for r in map(json.loads, images.read_text().splitlines()) if r["attributes"]["count"] == 1)
    clip = json.loads(speech.read_text().splitlines()[0])
    shape = image["attributes"]["shapes"][0]
    return {"image": str(images.parent / image["image"]), "question": f"What colour is the {shape['shape']}?",
            "colour": shape["colour"], "audio": str(speech.parent / clip["audio"]), "transcript": clip["text"]}


def infer_steps() -> list[Step]:
    """infer_chat.py from the export alone: an image question, an audio question, and an image answer spoken."""
    base = [PY, "infer_chat.py", "--model_dir", str(EXPORT_DIR)]

    def answer(truth_key: str) -> Callable[[str], list[tuple]]:
        def rows(out: str) -> list[tuple]:
            truth = demo_questions()[truth_key]
            reply = next((line for line in out.splitlines() if not line.startswith("speech:")), "")
            heard = re.search(r"speech: asr (.*) vs .*: cer ([0-9.]+)", out)
            return [("infer", f"{reply[:14]!r} (truth {truth[:14]!r})", "right" if reply == truth else "wrong")] + \
                ([("infer", f"--speak: ASR heard {heard.group(1)[:14]}; CER", float(heard.group(2)))] if heard else [])
        return rows

    def image_question() -> list[str]:
        q = demo_questions()
        return [*base, "--image", q["image"], "--text", q["question"]]

    return [
        Step("infer image", image_question, ("export",), answer("colour")),
        # The answer to "what did the speaker say" is a sentence: spoken, and heard back by the ASR.
        Step("infer audio", lambda: [*base, "--audio", demo_questions()["audio"], "--text",
                                     "What did the speaker say?", "--speak", str(LOGS / "infer_audio_speak.wav")],
             ("export",), answer("transcript")),
        Step("infer speak", lambda: [*image_question(), "--speak", str(LOGS / "infer_speak.wav")],
             ("export",), answer("colour")),
    ]


def steps() -> list[Step]:
    """In launch priority order: the longest chain (A -> C -> E) first, so the other lane fills in around it."""
    data = [PY, "scripts/make_synthetic_datasets.py", "--only"]
    train = {name: [PY, script, "--config", f"configs/demo/{name}.json"] for name, script in (
        ("thinker", "train_text.py"), ("audio_enc", "train_audio_enc.py"), ("vision", "train_vision.py"),
        ("ocr", "train_ocr.py"), ("talker", "train_talker.py"), ("vocoder", "train_vocoder.py"),
        ("omni_sft", "sft_omni.py"))}
    talker = config("talker")["talker"]
    return [
        Step("data text", [*data, "text"], words={"data"}),
        Step("data images", [*data, "images"], words={"data"}),
        Step("data speech", [*data, "speech"], words={"data"}),
        Step("A text", train["thinker"], ("data text",),
             lambda _: metric_rows("A text", save_dir("thinker"), {"val_ppl": "val perplexity"})),
        Step("data ocr", [*data, "ocr"], words={"data"}),
        Step("data sft", [*data, "sft"], ("data images", "data speech"), words={"data"}),
        Step("C vision", train["vision"], ("A text", "data images"),
             lambda _: metric_rows("C vision", save_dir("vision"), {"i2t_r1": "i2t R@1", "t2i_r1": "t2i R@1"})),
        Step("B audio", train["audio_enc"], ("data speech",),
             lambda _: metric_rows("B audio", save_dir("audio_enc"), {"val_cer": "val CER", "val_wer": "val WER"})),
        # Only the Talker needs it: after B, so that neither A (the head of the longest chain) nor B (which E
        # waits for) waits for it.
        Step("data tts", [*data, "tts"], words={"data", "speech"}),
        Step("E sft", train["omni_sft"], ("A text", "B audio", "C vision", "data sft"),
             lambda _: metric_rows("E sft", save_dir("omni_sft"), {
                 "mixed_acc": "mixed accuracy (held-out chats)", "em_image_qa": "exact match image QA",
                 "em_audio_qa": "exact match audio QA", "em_ocr_qa": "exact match OCR QA",
                 "em_text": "exact match text", **{f"em_image_qa/{k}": f"  image QA: {k} questions" for k in (
                     "colour", "count", "position", "shape")}})),
        Step("OCR", train["ocr"], ("data ocr",),
             lambda _: metric_rows("OCR", save_dir("ocr"), {"val_cer": "OCR CER",
                                                           "val_exact_line_acc": "exact-line accuracy"})),
        # B's CTC model aligns the Talker's speech with its text (durations per character).
        Step("D talker", train["talker"], ("A text", "data tts", "B audio"), talker_rows, {"d", "speech", "codec"}),
        # B's ASR judges HiFi-GAN against Griffin-Lim (CER of their held-out audio); the export carries the verdict.
        Step("vocoder", train["vocoder"], ("data speech", "B audio"), vocoder_rows, {"speech"}),
        # With the vocoder the verdict of the vocoder step chose (as infer_chat and the export speak).
        Step("D TTS>ASR", [PY, "-m", "omni.speech", "--talker", str(save_dir("talker", "talker")),
                           "--vocoder", str(save_dir("vocoder")), "--asr", str(save_dir("audio_enc")),
                           "--manifest", talker["data"]["val_manifest"], "--n", str(TTS_SENTENCES),
                           "--phrases", talker["data"]["train_manifest"], "--threads", "1",
                           "--json", str(save_dir("talker", "talker") / "tts_asr.json")],
             ("B audio", "D talker", "vocoder"), tts_rows, {"d", "speech", "tts"}),
        Step("export", export_cmd, ("A text", "B audio", "C vision", "OCR", "D talker", "vocoder", "E sft"),
             export_rows),
        *infer_steps(),
    ]


def selected(all_steps: list[Step], only: set[str] | None) -> list[Step]:
    """--only by whole words ("a" or "text" select "A text"); the steps a selected one needs are taken to be done
    already (each script says clearly when a checkpoint it needs is missing). The infer steps need the data."""
    if not only:
        return all_steps
    chosen = [s for s in all_steps if only & (set(s.name.lower().split()) | s.words)]
    names = {s.name for s in chosen}
    return [Step(s.name, s.cmd, tuple(n for n in s.needs if n in names), s.rows, s.words) for s in chosen]


def last_line(log: Path) -> str:
    """The latest progress line of a log (tqdm redraws with carriage returns)."""
    try:
        tail = log.read_bytes()[-2000:].decode(errors="replace")
    except OSError:
        return ""
    lines = [x.strip() for x in re.split(r"[\r\n]", tail) if x.strip()]
    return lines[-1][:110] if lines else ""


def run_all(plan: list[Step], jobs: int) -> tuple[list[tuple], dict[str, float], list[str]]:
    """Run the plan with up to `jobs` steps at once. Returns rows, wall seconds per step, and failed steps."""
    LOGS.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    pending, running = list(plan), {}
    done, failed, rows, walls = set(), [], [], {}
    last_report = time.perf_counter()
    while pending or running:
        ready = [s for s in pending if all(n in done for n in s.needs)] if not failed else []
        for step in ready[:max(0, jobs - len(running))]:
            pending.remove(step)
            cmd = step.cmd() if callable(step.cmd) else step.cmd
            log = LOGS / f"{step.name.replace(' ', '_').replace('>', '-')}.log"  # stderr: logs, progress bars
            print(f"[start] {step.name}: {' '.join(Path(c).name if c == PY else c for c in cmd)}  (log: "
                  f"{os.path.relpath(log, REPO)})", flush=True)
            handles = (log.with_suffix(".out").open("w"), log.open("w"))  # stdout: the results rows() reads
            running[step.name] = (step, subprocess.Popen(cmd, cwd=REPO, stdout=handles[0], stderr=handles[1],
                                                         env=env), time.perf_counter(), log, handles)
        if failed and not running:
            break
        if not ready and not running:  # what is left needs a step that was not selected or failed
            break
        time.sleep(0.5)
        for name, (step, proc, start, log, handles) in list(running.items()):
            if proc.poll() is None:
                continue
            for handle in handles:
                handle.close()
            del running[name]
            walls[name] = time.perf_counter() - start
            if proc.returncode != 0:
                failed.append(name)
                print(f"[FAILED] {name} (exit {proc.returncode}) after {walls[name]:.0f}s; the end of {log}:\n" +
                      "\n".join(log.read_text(errors="replace").splitlines()[-30:]), flush=True)
                continue
            done.add(name)
            print(f"[done] {name} in {walls[name]:.0f}s", flush=True)
            stdout = log.with_suffix(".out").read_text(errors="replace")
            rows += [(*row, walls[name]) for row in step.rows(stdout)]
            if name.startswith("infer"):
                print(f"  {name}: {stdout.strip().splitlines()[-1] if stdout.strip() else ''}", flush=True)
        if running and time.perf_counter() - last_report > 60:
            last_report = time.perf_counter()
            for name, (_, _, start, log, _) in running.items():
                print(f"  ... {name} ({time.perf_counter() - start:.0f}s): {last_line(log)}", flush=True)
    failed += [s.name + " (not started: needs " + ", ".join(n for n in s.needs if n not in done) + ")"
               for s in pending]
    return rows, walls, failed


def table(rows: list[tuple]) -> str:
    lines = [f"{'step':<12} {'metric':<42} {'value':>12} {'wall s':>8}", "-" * 77]
    for step, label, value, wall in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{step:<12} {label:<42} {shown:>12} {wall:>8.1f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated words of the steps to run, e.g. 'a,c,e', "
                                                      "'data', 'speech', 'export,infer' (default: all)")
    parser.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                        help="steps run at once, one thread each (default: 2, or 1 on a 1-core machine)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    only = {w.strip().lower() for w in args.only.split(",") if w.strip()} if args.only else None
    rows, walls, failed = run_all(selected(steps(), only), args.jobs)
    data_s = sum(w for name, w in walls.items() if name.startswith("data"))
    print("\n" + table([("data", "synthetic datasets (all parts, summed)", "", data_s), *rows]))
    print(f"total {time.perf_counter() - start:.0f}s wall with {args.jobs} steps at a time")
    if failed:
        print("failed: " + "; ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
