"""Stage E on other people's data: LLaVA JSON, ShareGPT and OpenAI-messages records (LLaMA-Factory's multimodal
format) read and detected per file, and scripts/make_sft_from_data.py building a real Stage-E set from a COCO-layout
caption set, speech, OCR lines and a text corpus, which sft_omni.py trains on with an evaluation per task; then
scripts/evaluate.py scores that run on the same val set as a LLaMA-Factory JSON file."""

import json
import subprocess

import pytest
import torch

from omni.data.manifest import write_jsonl
from omni.data.sft import SftSource, read_sft_manifest
from omni.synthetic.images import write_image_dataset
from omni.synthetic.ocr_lines import write_ocr_dataset
from omni.tokenizer import Tokenizer
from tests import test_sft_omni
from tests.conftest import REPO, load_script
from tests.stage_data import sft_standins
from tests.test_text_sources import evaluate_like_the_run
from tests.test_train_audio_enc import write_tone_dataset

make_sft = load_script("make_sft_from_data")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    write_image_dataset(root / "images", seed=0, n_train=6, n_val=4, image_size=32)
    write_tone_dataset(root / "speech", n_train=4, n_val=2)
    return root


def test_llava_sharegpt_and_messages_formats(tmp_path, media, text_corpus):
    from omni.tokenizer import train_tokenizer

    train_tokenizer([text_corpus / "train.txt"], tmp_path, vocab_size=400)
    tokenizer = Tokenizer.load(tmp_path / "tokenizer.model")
    image = str(media / "images" / "imgs" / "train_000000.png")
    audio = str(media / "speech" / "wavs" / "train_00000.wav")
    llava = tmp_path / "llava.json"  # a JSON array, the image relative to the file
    llava.write_text(json.dumps([
        {"id": "0", "image": "../" + llava.parent.name + "/img.png",
         "conversations": [{"from": "human", "value": "<image>\nWhat shape is it?"},
                           {"from": "gpt", "value": "a circle"}]},
        {"id": "1", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]},
    ]))
    (tmp_path / "img.png").write_bytes((media / "images" / "imgs" / "train_000000.png").read_bytes())
    sharegpt = tmp_path / "sharegpt.jsonl"
    write_jsonl(sharegpt, [
        {"conversations": [{"from": "human", "value": "<audio> What did they say?"}, {"from": "gpt", "value": "words"}],
         "audios": [audio]},
        {"conversations": [{"from": "human", "value": "<image><image> Compare."}, {"from": "gpt", "value": "same"}],
         "images": [image, image]},  # two images: a named skip
    ])
    messages = tmp_path / "messages.jsonl"
    write_jsonl(messages, [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>Colour?"},
                      {"role": "assistant", "content": "red"}], "images": [image], "task": "colour"},
        {"messages": [{"role": "user", "content": "<audio><image> Both?"}, {"role": "assistant", "content": "yes"}],
         "images": [image], "audios": [audio]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "?"}]},  # unknown role
    ])
    logged = []
    records = {p.name: read_sft_manifest(p, log=logged.append) for p in (llava, sharegpt, messages)}
    assert "LLaVA JSON" in logged[0] and "2 conversations" in logged[0]
    assert "ShareGPT" in logged[1] and "1 unusable (skipped as bad samples)" in logged[1]
    assert "OpenAI messages" in logged[2] and "1 unusable" in logged[2]
    first = records["llava.json"][0]
    assert first["messages"] == [{"role": "user", "content": "<image>\nWhat shape is it?"},
                                 {"role": "assistant", "content": "a circle"}]
    assert first["image"] == str(tmp_path / ".." / tmp_path.name / "img.png") and first["task"] == "image_qa"
    assert records["llava.json"][1]["task"] == "text" and records["llava.json"][1]["where"] == f"{llava}:2"
    assert records["sharegpt.jsonl"][0]["audio"] == audio and records["sharegpt.jsonl"][0]["task"] == "audio_qa"
    assert records["messages.jsonl"][0]["task"] == "colour"

    everything = [r for rs in records.values() for r in rs]
    source = SftSource(everything, tokenizer=tokenizer, max_length=400, image_size=16, image_tokens=4, n_mels=16)
    good, bad = [], []
    for i in range(len(source)):
        try:
            good.append(source[i])
        except Exception as e:  # BadSample: named
            bad.append(str(e))
    assert len(good) == 5
    assert len(bad) == 2
    assert bad[0].startswith(f"{sharegpt}:2: 2 images in one conversation")
    assert bad[1].startswith(f"{messages}:3: turn with role 'robot'")
    assert good[0]["image"].shape == (3, 16, 16) and good[2]["mel"] is not None and good[4]["image"] is not None
    assert (good[4]["ids"] == 6).sum() == 4  # the <image> placeholder expanded, the audio one too
    assert good[3]["answer"] == "red"  # the system turn is kept before the question


def test_make_sft_from_data_then_sft_omni_per_task(tmp_path, media, text_corpus):
    # COCO captions layout: <root>/annotations/captions_<split>.json with the images in <root>/<split>/
    coco = tmp_path / "coco"
    for split in ("train", "val"):
        rows = [json.loads(x) for x in (media / "images" / f"{split}.jsonl").read_text().splitlines()]
        (coco / split).mkdir(parents=True)
        images, annotations = [], []
        for i, row in enumerate(rows):
            name = f"{i:012d}.png"
            (coco / split / name).write_bytes((media / "images" / row["image"]).read_bytes())
            images.append({"id": i, "file_name": name})
            annotations.append({"id": 100 + i, "image_id": i, "caption": row["caption"]})
        (coco / "annotations").mkdir(exist_ok=True)
        (coco / "annotations" / f"captions_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations}))
    write_ocr_dataset(tmp_path / "ocr", seed=1, n_train=4, n_val=2, height=32)
    out = tmp_path / "sft"
    assert make_sft.main([
        "--out", str(out), "--per_task", "6",
        "--captions", *(str(coco / "annotations" / f"captions_{split}.json") for split in ("train", "val")),
        "--speech", str(media / "speech" / "train.jsonl"), str(media / "speech" / "val.jsonl"),
        "--ocr", str(tmp_path / "ocr" / "train.jsonl"), str(tmp_path / "ocr" / "val.jsonl"),
        "--text", str(text_corpus / "train.txt"), str(text_corpus / "val.txt")]) == 0
    tasks = {"image_caption", "image_qa", "audio_transcribe", "audio_qa", "ocr_read", "text"}
    val = [json.loads(x) for x in (out / "val.jsonl").read_text().splitlines()]
    assert {r["task"] for r in val} == tasks
    caption = next(r for r in val if r["task"] == "image_caption")
    assert caption["messages"][0]["content"] == "<image> Describe the image in one sentence."
    assert (out / caption["image"]).resolve().parent == (coco / "val").resolve()  # val media from the val sources
    yes = next(r for r in val if r.get("kind") == "yes")
    word = yes["messages"][0]["content"].split("Is there a ")[1].split(" in the image")[0]
    assert word in next(r["messages"][1]["content"] for r in val
                        if r["task"] == "image_caption" and r["image"] == yes["image"]).lower()

    root, _ = sft_standins(tmp_path / "stages", text_corpus)
    run_dir = tmp_path / "run"
    cmd = test_sft_omni.command(tmp_path, (root, out), run_dir, "train.max_steps=2", "train.val_freq=2",
                                "train.batch_size=4")
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert {f"em_{t}" for t in tasks} <= metrics.keys() and "mixed_acc" in metrics
    assert "omni JSONL" in (run_dir / "training.log").read_text()

    # The same val set in LLaMA-Factory's multimodal layout (a JSON array of {"messages", "images", "audios"}, the
    # media relative to the file, our "task", "kind" and "duration" kept as extra keys) scores the run's metrics.
    extra = ("task", "kind", "duration")
    factory = [{"messages": r["messages"], "images": [r["image"]] if r.get("image") else [],
                "audios": [r["audio"]] if r.get("audio") else [], **{k: r[k] for k in extra if k in r}} for r in val]
    (out / "val_llamafactory.json").write_text(json.dumps(factory))
    done = evaluate_like_the_run(run_dir, cmd[cmd.index("--config") + 1], cmd[cmd.index("--set") + 1:] + [
        f"data.val_manifest={out / 'val_llamafactory.json'}"], "mixed_acc", tmp_path / "eval.json")
    assert f"{out / 'val_llamafactory.json'}: OpenAI messages" in done.stderr

    # A few steps on the same train set in the other layouts sft_omni.py reads. ShareGPT: the same records in the
    # same order (our "task", "kind" and "duration" kept as extra keys), so the same batches: its step-2 weights
    # equal the JSONL run's bit for bit, i.e. the conversion loses nothing the training sees.
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    frm = {"user": "human", "assistant": "gpt", "system": "system"}
    sharegpt = [{"conversations": [{"from": frm[m["role"]], "value": m["content"]} for m in r["messages"]],
                 "images": [r["image"]] if r.get("image") else [], "audios": [r["audio"]] if r.get("audio") else [],
                 **{k: r[k] for k in extra if k in r}} for r in train]
    write_jsonl(out / "train_sharegpt.jsonl", sharegpt)  # next to train.jsonl: the same relative media paths
    # LLaVA: a JSON array of the image conversations only, "<image>\n" first as LLaVA writes it, no extra keys.
    llava = [{"id": str(i), "image": r["image"],
              "conversations": [{"from": frm[m["role"]], "value": m["content"].replace("<image> ", "<image>\n")}
                                for m in r["messages"]]} for i, r in enumerate(train) if r.get("image")]
    assert len(llava) >= 4 and all(r["conversations"][0]["value"].startswith("<image>\n") for r in llava)
    (out / "train_llava.json").write_text(json.dumps(llava))
    for layout, name in (("sharegpt", "ShareGPT"), ("llava", "LLaVA JSON")):
        train_file = out / ("train_sharegpt.jsonl" if layout == "sharegpt" else "train_llava.json")
        layout_dir = tmp_path / f"run_{layout}"
        result = subprocess.run(test_sft_omni.command(
            tmp_path, (root, out), layout_dir, "train.max_steps=2", "train.val_freq=2", "train.batch_size=4",
            f"data.train_manifest={train_file}"), cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"SFT data {train_file}: {name}" in (layout_dir / "training.log").read_text()
        summary = json.loads((layout_dir / "summary.json").read_text())
        assert summary["step"] == 2 and {f"em_{t}" for t in tasks} | {"mixed_acc"} <= summary["metrics"].keys()
        steps = [torch.load(d / "omni_sft_step_2.pt", weights_only=True)["model"] for d in (run_dir, layout_dir)]
        assert steps[0].keys() == steps[1].keys()
        same = all(torch.equal(steps[0][k], steps[1][k]) for k in steps[0])
        assert same if layout == "sharegpt" else not same  # LLaVA: image conversations only, other batches
