"""scripts/check_data.py: exit 0 on small good data of several stages, 1 naming the bad samples (through the stage's
own source, so with the reason training would log) when a manifest has more than train.max_bad_fraction of them."""

import json

from omni.data.manifest import write_jsonl
from tests import test_sft_omni, test_train_audio_enc, test_train_ocr
from tests.conftest import REPO, load_script
from tests.stage_data import sft_standins

check_data = load_script("check_data")


def config(tmp_path, tiny, name) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(tiny))
    return str(path)


def test_good_speech_ok_and_bad_manifest_named(tmp_path, capsys):
    data = test_train_audio_enc.write_tone_dataset(tmp_path / "speech", n_train=8, n_val=4)
    cfg = config(tmp_path, test_train_audio_enc.TINY, "audio_enc_tiny.json")
    sets = [f"data.train_manifest={data / 'train.jsonl'}", f"data.val_manifest={data / 'val.jsonl'}",
            f"train.save_dir={tmp_path / 'run'}"]
    assert check_data.main(["--config", cfg, "--set", *sets]) == 0
    out = capsys.readouterr().out
    assert "as stage audio" in out and "train: 8 samples, 8 usable, 0 bad; seconds: total" in out
    assert "implies: 2 batches of 4 per epoch" in out and "ok: the run would start" in out
    assert not (tmp_path / "run").exists()  # nothing written

    # 3 of 8 training clips bad (> max_bad_fraction 0.05): an unreadable file, a missing one, an empty transcript
    records = [json.loads(x) for x in (data / "train.jsonl").read_text().splitlines()]
    (data / "wavs" / "broken.wav").write_bytes(b"not a wav")
    records[1]["audio"] = "wavs/broken.wav"
    records[2]["audio"] = "wavs/missing.wav"
    records[3]["text"] = "   "
    write_jsonl(data / "bad.jsonl", records)
    sets[0] = f"data.train_manifest={data / 'bad.jsonl'}"
    assert check_data.main(["--config", cfg, "--set", *sets]) == 1
    out = capsys.readouterr().out
    assert "train: 8 samples, 5 usable, 3 bad" in out
    for reason in ("broken.wav: cannot read audio", "missing.wav: audio file not found",
                   "train_00003.wav: empty transcript"):
        assert reason in out.split("val:")[0], reason
    assert "3 of 8 training samples are bad (> train.max_bad_fraction=0.05" in out
    assert "the run would not start or would stop on its data (1 reason(s))" in out


def test_ocr_ok_and_unusable_val(tmp_path, capsys):
    from omni.synthetic.ocr_lines import write_ocr_dataset

    lines = tmp_path / "ocr"
    write_ocr_dataset(lines, seed=1, n_train=16, n_val=4, height=32)
    cfg = config(tmp_path, test_train_ocr.TINY, "ocr_tiny.json")
    sets = [f"data.train_manifest={lines / 'train.jsonl'}", f"data.val_manifest={lines / 'val.jsonl'}"]
    assert check_data.main(["--config", cfg, "--set", *sets]) == 0
    out = capsys.readouterr().out
    assert "train: 16 samples, 16 usable, 0 bad; pixels wide" in out and "vocabulary:" in out
    write_jsonl(lines / "gone.jsonl", [{"image": "imgs/none.png", "text": "abc"}])
    assert check_data.main(["--config", cfg, "--set", sets[0], f"data.val_manifest={lines / 'gone.jsonl'}"]) == 1
    out = capsys.readouterr().out
    assert "no usable val sample (all 1 are bad; first:" in out and "none.png" in out


def test_sft_ok_with_tasks(tmp_path, text_corpus, capsys):
    root, sft = sft_standins(tmp_path / "stages", text_corpus)
    cfg = config(tmp_path, test_sft_omni.TINY, "omni_sft_tiny.json")
    cmd = test_sft_omni.command(tmp_path, (root, sft), tmp_path / "run")
    sets = cmd[cmd.index("--set") + 1:]
    assert check_data.main(["--config", cfg, "--set", *sets]) == 0
    out = capsys.readouterr().out
    assert "as stage sft" in out and "train: 48 samples, 48 usable" in out and "val tasks: " in out
    assert "longest training conversation:" in out


def test_text_with_and_without_tokenizer(tmp_path, text_corpus, capsys):
    from omni.tokenizer import train_tokenizer
    from tests import test_train_text

    cfg = config(tmp_path, test_train_text.TINY, "thinker_tiny.json")
    sets = [f"data.train_path={text_corpus / 'train.txt'}", f"data.val_path={text_corpus / 'val.txt'}",
            f"train.save_dir={tmp_path / 'run'}"]
    assert check_data.main(["--config", cfg, "--set", *sets]) == 0
    assert "train: 600 documents from 1 shard" in capsys.readouterr().out
    train_tokenizer([text_corpus / "train.txt"], tmp_path / "run", vocab_size=400)
    assert check_data.main(["--config", cfg, "--set", *sets]) == 0
    out = capsys.readouterr().out
    assert "vocabulary coverage 100.00%" in out and "train.max_steps 16 = " in out
    assert check_data.main(["--config", cfg, "--set", *sets[1:], "data.train_path=nowhere.txt"]) == 1
    assert "data not found: data.train_path=nowhere.txt" in capsys.readouterr().out


def test_talker_and_vocoder_name_a_missing_aligner_or_judge(tmp_path, capsys):
    data = test_train_audio_enc.write_tone_dataset(tmp_path / "speech", n_train=8, n_val=4)
    manifests = [f"data.train_manifest={data / 'train.jsonl'}", f"data.val_manifest={data / 'val.jsonl'}"]
    talker = ["--config", str(REPO / "configs/talker_tiny.json"), "--set", "phase=talker",
              *(f"talker.{m}" for m in manifests), f"talker.data.tokenizer={data / 'train.jsonl'}",
              "talker.train.batch_size=4", f"talker.data.aligner={tmp_path / 'no_stage_b'}"]
    assert check_data.main(talker) == 1
    assert f"talker.data.aligner={tmp_path / 'no_stage_b'} does not exist" in capsys.readouterr().out
    talker[-1] = f"talker.data.aligner={data}"  # any existing path passes this check
    assert check_data.main(talker) == 0
    vocoder = ["--config", str(REPO / "configs/vocoder_tiny.json"), "--set", *manifests, "train.batch_size=4",
               f"data.asr={tmp_path / 'no_b'}"]
    assert check_data.main(vocoder) == 1
    assert f"data.asr={tmp_path / 'no_b'} does not exist" in capsys.readouterr().out
