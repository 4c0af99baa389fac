"""Each stage's evaluation: the metric computation the stage script runs at every val_freq and at the end, and that
scripts/evaluate.py runs on final weights and any held-out set (A, B, C, OCR, D's codec and Talker, the vocoder, E).
One function per metric, so that a held-out score and the run's summary.json come from the same code.

Every function takes `run`, the object that provides the evaluation machinery: a training `omni.training.Run`
in the stage scripts, or an `Evaluator` (below) in scripts/evaluate.py, both with
`eval_batches(source, batch_size, shard=)`, `autocast()`, `reduce_sums(dict)`, `info(str)`, `device`, `is_main`
and `raw_model` (the model to score, in eval mode, under torch.no_grad()). The functions return the metrics dict
the stage records (summary.json "metrics").
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from omni.config import load_config_file
from omni.errors import UserError
from omni.training import loader
from omni.training.run import AMP_DTYPES

# Stage name (omni.stages.STAGE_CLASSES) -> the final-weights file its script writes into train.save_dir.
WEIGHTS_FILES = {"text": "thinker.pt", "audio": "audio_enc.pt", "vision": "vision.pt", "ocr": "ocr.pt",
                 "sft": "omni_final.pt", "talker": "talker.pt", "vocoder": "hifigan.pt"}


def resolve_stage(config: str | Path, overrides=(), stage: str | None = None, *, among=tuple(WEIGHTS_FILES)):
    """(stage name, config) of any stage's config file, for the tools that take one (scripts/evaluate.py,
    scripts/check_data.py): `stage` when given, else `omni.stages.detect_stage` (its keys, else its file name)."""
    import json

    from omni.stages import STAGE_CLASSES, detect_stage

    if not Path(config).is_file():
        raise UserError(f"config file not found: {config}")
    if stage is None:
        try:
            data = json.loads(Path(config).read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            load_config_file(STAGE_CLASSES["text"], config)  # raises the config error naming the line
            raise
        try:
            stage = detect_stage(data if isinstance(data, dict) else {}, Path(config).name)
        except ValueError as e:
            raise UserError(f"{e} with --stage") from None
    if stage not in among:
        raise UserError(f"{config}: stage {stage!r}; this tool takes one of {', '.join(among)} (--stage)")
    return stage, load_config_file(STAGE_CLASSES[stage], config, list(overrides))


class Evaluator:
    """The evaluation side of `omni.training.Run` for a model outside any training run: one process, no run dir, no
    checkpoints written; log lines go to `log` (print by default)."""

    def __init__(self, model: torch.nn.Module, *, device: str | torch.device = "cpu", precision: str = "fp32",
                 log=print, seed: int = 0):
        self.device = torch.device(device)
        self.amp_dtype = AMP_DTYPES[precision]
        if self.amp_dtype == torch.float16 and self.device.type == "cpu":
            self.amp_dtype = None  # as Run refuses it: CPU fp16 autocast is slow; fp32 scores the same model
        self.raw_model = model.to(self.device).eval()
        self.is_main, self.log, self.seed = True, log, seed

    def info(self, message: str) -> None:
        self.log(message)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def eval_batches(self, source, batch_size: int, *, shard: bool = True):
        return loader.eval_batches(source, batch_size, rank=0, world_size=1, device=self.device, log=self.info)

    def reduce_sums(self, values: dict) -> dict:
        return {k: float(v) for k, v in values.items()}

    def evaluate(self, evaluate) -> dict:
        """`evaluate()` in eval mode without gradients, seeded (Run.evaluate runs it under a forked RNG)."""
        random.seed(self.seed)
        torch.manual_seed(self.seed)
        with torch.no_grad():
            return evaluate()


# ---------------------------------------------------------------------- Stage A
def text_metrics(run, val_source, *, batch_size: int, tokenizer=None, sample_prompts=(), sample_tokens: int = 0):
    """Validation loss and perplexity over every token of the TokenWindows `val_source`; greedy samples to the log."""
    from omni.metrics import perplexity

    nll = tokens = 0.0
    for batch in run.eval_batches(val_source, batch_size):
        with run.autocast():
            _, loss = run.raw_model(batch["inputs"], targets=batch["targets"])
        n = batch["targets"].numel()
        nll, tokens = nll + loss.float().item() * n, tokens + n
    sums = run.reduce_sums({"nll": nll, "tokens": tokens})
    for prompt in sample_prompts if tokenizer is not None else ():
        ids = torch.tensor([tokenizer.encode(prompt, bos=True)], device=run.device)
        out = run.raw_model.generate(ids, max_new_tokens=sample_tokens, eos_id=tokenizer.eos_id)
        run.info(f"sample: {prompt!r} -> {tokenizer.decode(out[0].tolist())!r}")
    return {"val_loss": sums["nll"] / sums["tokens"], "val_ppl": perplexity(sums["nll"], int(sums["tokens"]))}


# ---------------------------------------------------------------------- Stage B
def asr_metrics(run, val_source, *, vocab, batch_size: int, samples: int = 0) -> dict:
    """CTC loss, CER and WER (greedy decoding, edits summed over utterances) on the AsrSource `val_source`."""
    from omni.ctc import ctc_loss, ctc_transcripts
    from omni.metrics import char_error_counts, word_error_counts

    nll = utterances = word_edits = words = char_edits = chars = 0.0
    shown = []
    for batch in run.eval_batches(val_source, batch_size):
        with run.autocast():
            log_probs, _ = run.raw_model(batch["mel"], batch["mel_lengths"])
        frames = run.raw_model.output_lengths(batch["mel_lengths"])
        loss = ctc_loss(log_probs, frames, batch["labels"], batch["label_lengths"])
        hypotheses = ctc_transcripts(log_probs, frames, vocab)
        for hyp, ref in zip(hypotheses, batch["texts"]):
            (we, wn), (ce, cn) = word_error_counts(hyp, ref), char_error_counts(hyp, ref)
            word_edits, words, char_edits, chars = word_edits + we, words + wn, char_edits + ce, chars + cn
        nll, utterances = nll + loss.item() * len(hypotheses), utterances + len(hypotheses)
        shown += list(zip(batch["audio"], batch["texts"], hypotheses))[: samples - len(shown)]
    for audio, ref, hyp in shown:
        run.info(f"sample {Path(audio).name}: {ref!r} -> {hyp!r}")
    sums = run.reduce_sums({"nll": nll, "utterances": utterances, "word_edits": word_edits, "words": words,
                            "char_edits": char_edits, "chars": chars})
    if sums["utterances"] < len(val_source):
        run.info(f"WARNING: {len(val_source) - int(sums['utterances'])} of {len(val_source)} validation utterances "
                 "are unusable (bad audio or transcript) and not scored")
    return {"val_loss": sums["nll"] / sums["utterances"], "val_cer": sums["char_edits"] / sums["chars"],
            "val_wer": sums["word_edits"] / sums["words"]}


# ---------------------------------------------------------------------- Stage C
def retrieval_metrics(run, val_source, *, batch_size: int, samples: int = 0) -> dict:
    """Image->text and text->image R@1 / R@5 over the whole ImageSource `val_source` (every rank ranks against
    every candidate: R@k depends on all of them)."""
    from omni.contrastive import caption_retrieval

    image_emb, text_emb, captions, paths = [], [], [], []
    for batch in run.eval_batches(val_source, batch_size, shard=False):
        with run.autocast():
            image_emb.append(run.raw_model.encode_image(batch["images"]).float())
            text_emb.append(run.raw_model.encode_text(batch["caption_ids"], batch["caption_mask"]).float())
        captions += batch["captions"]
        paths += batch["paths"]
    image_emb, text_emb = torch.cat(image_emb), torch.cat(text_emb)
    metrics = caption_retrieval(image_emb, text_emb, captions, image_keys=paths)
    first = {}  # unique caption -> its first pair
    for i, caption in enumerate(captions):
        first.setdefault(caption, i)
    unique = list(first)
    top = (image_emb[:samples] @ text_emb[list(first.values())].T).argmax(-1)
    for i, j in enumerate(top.tolist()):
        run.info(f"sample: {Path(paths[i]).name} {captions[i]!r} -> top caption {unique[j]!r}")
    return metrics


def classify_metrics(run, val_source, *, labels: list[str], batch_size: int, samples: int = 0) -> dict:
    """Cross-entropy and accuracy of the image classifier on the ImageSource `val_source`."""
    nll = correct = n = 0.0
    shown = []
    for batch in run.eval_batches(val_source, batch_size):
        with run.autocast():
            out, loss = run.raw_model(batch["images"], labels=batch["labels"])
        pred = out.logits.argmax(-1)
        nll, n = nll + loss.float().item() * len(pred), n + len(pred)
        correct += (pred == batch["labels"]).sum().item()
        rows = zip(batch["paths"], pred.tolist(), batch["labels"].tolist())
        shown += list(rows)[: samples - len(shown)]
    for path, p, t in shown:
        run.info(f"sample: {Path(path).name} label {labels[t]!r} -> predicted {labels[p]!r}")
    sums = run.reduce_sums({"nll": nll, "correct": correct, "n": n})
    return {"val_loss": sums["nll"] / sums["n"], "val_acc": sums["correct"] / sums["n"]}


# ---------------------------------------------------------------------- OCR
def ocr_metrics(run, val_source, *, vocab, batch_size: int, samples: int = 0) -> dict:
    """CTC loss, CER and exact-line accuracy (greedy decoding) on the OcrSource `val_source`."""
    from omni.ctc import ctc_transcripts
    from omni.metrics import char_error_counts

    nll = lines = edits = chars = exact = 0.0
    shown = []
    for batch in run.eval_batches(val_source, batch_size):
        with run.autocast():
            log_probs, loss = run.raw_model(batch["images"], batch["widths"], batch["labels"], batch["label_lengths"])
        frames = run.raw_model.output_lengths(batch["widths"])
        hypotheses = ctc_transcripts(log_probs, frames, vocab)
        for hyp, ref in zip(hypotheses, batch["texts"]):
            e, n = char_error_counts(hyp, ref)
            edits, chars, exact = edits + e, chars + n, exact + (hyp == ref)
        nll, lines = nll + loss.item() * len(hypotheses), lines + len(hypotheses)
        shown += list(zip(batch["texts"], hypotheses))[: samples - len(shown)]
    for ref, hyp in shown:
        run.info(f"sample: {ref!r} -> {hyp!r}")
    sums = run.reduce_sums({"nll": nll, "lines": lines, "edits": edits, "chars": chars, "exact": exact})
    return {"val_loss": sums["nll"] / sums["lines"], "val_cer": sums["edits"] / sums["chars"],
            "val_exact_line_acc": sums["exact"] / sums["lines"]}


# ---------------------------------------------------------------------- Stage E
def sft_media(batch: dict) -> dict:
    """The media inputs of an SftSource batch, as OmniModel's forward and generate take them."""
    return {"images": batch["images"], "mel": batch["mel"], "mel_lengths": batch["mel_lengths"]}


def sft_metrics(run, val_source, *, batch_size: int, log_samples=None) -> dict:
    """val_loss per assistant token and greedy exact match per task, per question kind ("image_qa/position") and
    over all conversations (mixed_acc) on the SftSource `val_source`. log_samples(): called on the main process
    after the sums (the stage's generated samples)."""
    from omni.chat import IGNORE_INDEX
    from omni.omni_model import greedy_exact_match

    groups = [*val_source.tasks, *val_source.kinds]  # per task, and per question kind within a task
    sums = {"nll": 0.0, "tokens": 0.0, **{f"{k}_{g}": 0.0 for g in groups for k in ("n", "ok")}}
    for batch in run.eval_batches(val_source, batch_size):
        with run.autocast():
            logits, loss = run.raw_model(batch["input_ids"], targets=batch["targets"], **sft_media(batch))
        n = int((batch["targets"] != IGNORE_INDEX).sum())
        sums["nll"], sums["tokens"] = sums["nll"] + loss.float().item() * n, sums["tokens"] + n
        matches = greedy_exact_match(logits, batch["targets"]).tolist()
        for task, kind, ok in zip(batch["tasks"], batch["kinds"], matches):
            for group in (task, f"{task}/{kind}") if kind is not None else (task,):
                sums[f"n_{group}"] += 1
                sums[f"ok_{group}"] += ok
    sums = run.reduce_sums(sums)
    if run.is_main and log_samples is not None:
        log_samples()
    metrics = {"val_loss": sums["nll"] / max(1.0, sums["tokens"])}
    metrics.update({f"em_{g}": sums[f"ok_{g}"] / max(1.0, sums[f"n_{g}"]) for g in groups})
    n_all = sum(sums[f"n_{t}"] for t in val_source.tasks)
    metrics["mixed_acc"] = sum(sums[f"ok_{t}"] for t in val_source.tasks) / max(1.0, n_all)
    return metrics



# ---------------------------------------------------------------------- Stage D
def codec_metrics(run, val_source, *, batch_size: int) -> dict:
    """Reconstruction error of the normalised log-mel ((mel - mel_mean) / mel_std, padding excluded) as L1 and MSE,
    and per codebook the perplexity of its usage and the codes used, over every clip of the SpeechClips
    `val_source` (the codec is `run.raw_model`)."""
    from omni.codec import usage_perplexity
    from omni.layers import lengths_mask

    cfg = run.raw_model.cfg
    K, n_mels = cfg.n_codebooks, cfg.n_mels
    sums, usage = {"l1": 0.0, "sq": 0.0, "values": 0.0}, torch.zeros(K, cfg.codebook_size, device=run.device)
    for batch in run.eval_batches(val_source, batch_size):
        mel, lengths = batch["mel"], batch["mel_lengths"]
        with run.autocast():
            out = run.raw_model(mel, lengths)
        valid = lengths_mask(lengths, mel.shape[1])[:, :, None]
        err = (out.recon.float() - mel) / cfg.mel_std * valid  # normalised log-mel units, padding zeroed
        sums["l1"] += err.abs().sum().item()
        sums["sq"] += err.pow(2).sum().item()
        sums["values"] += valid.sum().item() * n_mels
        usage += out.usage
    sums = run.reduce_sums(sums)
    counts = run.reduce_sums(dict(enumerate(usage.flatten().tolist())))  # every rank's code counts
    usage = torch.tensor([counts[i] for i in range(usage.numel())]).view(K, -1)
    ppl = usage_perplexity(usage)
    return {"val_recon_l1": sums["l1"] / sums["values"], "val_recon_mse": sums["sq"] / sums["values"],
            **{f"val_ppl_cb{k}": ppl[k].item() for k in range(K)},
            **{f"val_used_cb{k}": int((usage[k] > 0).sum()) for k in range(K)}}


def talker_metrics(run, val_codes, *, batch_size: int, sample_sentences: int = 0) -> dict:
    """The Talker `run.raw_model` on the TalkerCodes `val_codes`: code cross entropy and accuracy (all codebooks,
    and per codebook) with the aligned durations (teacher forcing of the lengths and of the lower codebooks),
    duration loss (MSE of log(1 + frames)) and mean absolute error in frames of the predicted durations, per unit
    and per utterance; val_loss is the training objective. The first `sample_sentences` usable sentences are
    spoken greedily and their length logged against the reference."""
    from omni.layers import lengths_mask
    from omni.talker import code_accuracy
    from omni.text_frontend import OTHER_CHAR

    model = run.raw_model
    K = model.cfg.n_codebooks
    sums = {name: 0.0 for name in ("nll", "frames", "dur_sq", "dur_abs", "units", "len_abs", "utts")}
    sums.update({f"correct{k}": 0.0 for k in range(K)})
    for batch in run.eval_batches(val_codes, batch_size):
        with run.autocast():
            out = model(batch["chars"], batch["tokens"], batch["unit_lengths"], batch["durations"], batch["codes"],
                        batch["code_lengths"])
        correct, counted = code_accuracy(out.logits, batch["codes"], batch["code_lengths"])
        mask = lengths_mask(batch["unit_lengths"].to(batch["chars"].device), batch["chars"].shape[1])
        predicted = model.predict_durations(out.log_durations, mask)
        true = batch["durations"].to(predicted.device)
        sums["nll"] += out.code_loss.float().item() * counted.item()
        sums["frames"] += counted.item()
        sums["dur_sq"] += out.duration_loss.float().item() * mask.sum().item()
        sums["dur_abs"] += (predicted - true).abs()[mask].sum().item()
        sums["units"] += mask.sum().item()
        sums["len_abs"] += (predicted.sum(1) - true.sum(1)).abs().sum().item()
        sums["utts"] += len(true)
        for k in range(K):
            sums[f"correct{k}"] += correct[k].item()
    sums = run.reduce_sums(sums)
    shown = [i for i in range(len(val_codes)) if not val_codes.bad[i]][:sample_sentences]
    for i in shown:  # greedy: draws no random numbers
        chars, tokens = (x[i].long()[None].to(run.device) for x in (val_codes.chars, val_codes.tokens))
        _, length = model.generate(chars, tokens)
        text = "".join(chr(c) if c < OTHER_CHAR else "?" for c in chars[0, 1:-1].tolist())
        run.info(f"sample {text!r}: {int(length[0])} frames spoken "
                 f"(reference {len(val_codes.codes[i])})")
    code_loss, duration_loss = sums["nll"] / sums["frames"], sums["dur_sq"] / sums["units"]
    return {"val_loss": code_loss + model.cfg.duration_loss_weight * duration_loss, "val_code_loss": code_loss,
            "val_duration_loss": duration_loss, "val_duration_mae": sums["dur_abs"] / sums["units"],
            "val_length_mae": sums["len_abs"] / sums["utts"],
            "val_acc": sum(sums[f"correct{k}"] for k in range(K)) / (K * sums["frames"]),
            **{f"val_acc_cb{k}": sums[f"correct{k}"] / sums["frames"] for k in range(K)}}


# ---------------------------------------------------------------------- vocoder
def vocoder_metrics(run, val_source, *, griffin_lim_iters: int, griffin_lim_cache: dict | None = None, asr=None,
                    timing: dict | None = None) -> dict:
    """HiFi-GAN (`run.raw_model`, log-mel -> waveform) and the Griffin-Lim fallback on the same held-out clips of the
    SpeechClips `val_source`, whole utterances, one clip per batch (no padding):
    - val_mel_l1: L1 between the clip's log-mel and the log-mel of the vocoded audio (frame-weighted). It favours
      Griffin-Lim by construction (it inverts that very mel), hence the two below.
    - val_mr_stft: multi-resolution STFT distance to the real waveform (omni.vocoder.mr_stft_distance,
      frame-weighted), when `val_source` gives the waveform (with_wav=True).
    - val_asr_cer: corpus CER of the Stage-B ASR `asr` (an omni.asr.Transcriber) on the vocoded audio against
      the normalised transcripts of the records, when `asr` is given; val_asr_cer_real is the same ASR on the
      real clips (the best a vocoder can do).
    Each metric has a "_griffin_lim" twin. Griffin-Lim is deterministic (zero initial phase), so its per-clip scores
    (and the real clips' ASR edits) are kept in `griffin_lim_cache` (clip path -> scores) across calls when one is
    given. The real-time factor (compute seconds per second of audio) is a wall-clock measurement, so it is logged
    and added to `timing` (when given), never returned: the metrics go into checkpoints, which must be identical
    for identical runs."""
    import time

    from omni.audio import HOP_LENGTH, SAMPLE_RATE
    from omni.metrics import char_error_counts
    from omni.text_frontend import normalize_transcript
    from omni.vocoder import griffin_lim, mel_l1_loss, mr_stft_distance

    def clock() -> float:  # CUDA kernels run asynchronously: wait for them before reading the clock
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        return time.perf_counter()

    def scores(wav, mel, batch) -> dict:
        """One clip's sums: frame-weighted mel-L1 and MR-STFT, and the ASR's character edits and count."""
        out = {"mel_l1": mel_l1_loss(wav, mel).item() * mel.shape[1]}
        if "wav" in batch:
            out["mr_stft"] = mr_stft_distance(wav, batch["wav"]).item() * mel.shape[1]
        if asr is not None:
            out["char_edits"], out["chars"] = char_error_counts(asr.transcribe([wav[0]])[0],
                                                                normalize_transcript(texts[batch["audio"][0]]))
        return out

    texts = {str(r["audio"]): r.get("text", "") for r in val_source.records}
    cache = {} if griffin_lim_cache is None else griffin_lim_cache
    sums: dict[str, float] = {"frames": 0.0, "gen_seconds": 0.0, "gl_seconds": 0.0}
    for batch in run.eval_batches(val_source, 1):
        mel, name = batch["mel"], batch["audio"][0]
        start = clock()
        with run.autocast():
            wav = run.raw_model(mel).float()
        sums["gen_seconds"] += clock() - start
        if name not in cache:
            start = time.perf_counter()
            gl_wav = griffin_lim(mel, n_iter=griffin_lim_iters).to(mel.device)
            cache[name] = {"seconds": time.perf_counter() - start, "gl": scores(gl_wav, mel, batch)}
            if asr is not None and "wav" in batch:  # the ceiling: what the ASR gets from the real clip
                cache[name]["real"] = scores(batch["wav"], mel, batch)
        sums["frames"] += mel.shape[1]
        sums["gl_seconds"] += cache[name]["seconds"]
        for prefix, clip in (("gen", scores(wav, mel, batch)), ("gl", cache[name]["gl"]),
                             ("real", cache[name].get("real", {}))):
            for key, value in clip.items():
                sums[f"{prefix}_{key}"] = sums.get(f"{prefix}_{key}", 0.0) + value
    sums = run.reduce_sums(sums)
    audio_seconds = sums["frames"] * HOP_LENGTH / SAMPLE_RATE
    rtf = {"hifigan": sums["gen_seconds"] / audio_seconds, "griffin-lim": sums["gl_seconds"] / audio_seconds}
    run.info(f"vocoder real-time factor (compute s per s of audio, {run.device.type}): HiFi-GAN {rtf['hifigan']:.4f}, "
             f"Griffin-Lim {rtf['griffin-lim']:.4f}")
    if timing is not None:
        timing.update(rtf=rtf, audio_seconds=audio_seconds)
    metrics = {}
    for key in ("mel_l1", "mr_stft"):
        if f"gen_{key}" in sums:
            metrics[f"val_{key}"] = sums[f"gen_{key}"] / sums["frames"]
            metrics[f"val_{key}_griffin_lim"] = sums[f"gl_{key}"] / sums["frames"]
    if "gen_chars" in sums:
        chars = max(sums["gen_chars"], 1.0)
        metrics.update(val_asr_cer=sums["gen_char_edits"] / chars,
                       val_asr_cer_griffin_lim=sums["gl_char_edits"] / chars)
        if "real_char_edits" in sums:
            metrics["val_asr_cer_real"] = sums["real_char_edits"] / chars
    return metrics
