"""The one error policy (omni/errors.py): a user's mistake is one `error:`/`config error:` line and a non-zero exit,
never a Python traceback; a bug keeps its traceback."""

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run(*args, cwd=REPO):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback():
    user = run("-c", "import omni.errors; raise omni.errors.InvalidInput('data/x.jsonl:3: no text')")
    assert user.returncode == 1 and user.stderr == "error: data/x.jsonl:3: no text\n"
    bug = run("-c", "import omni; raise KeyError('bug')")
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "KeyError: 'bug'" in bug.stderr


def test_a_user_error_raised_in_a_dataloader_worker_is_still_one_line():
    """torch re-raises a worker's exception with the worker's traceback inside the message: only the message shows."""
    code = """if True:
        import omni
        from torch.utils.data import DataLoader, Dataset
        from omni.data.manifest import DataError

        class Bad(Dataset):
            def __len__(self):
                return 4

            def __getitem__(self, i):
                raise DataError("data/x.jsonl:3: 'text' must be a string")

        for batch in DataLoader(Bad(), num_workers=1):
            pass
    """
    result = run("-c", code)
    assert result.returncode == 1 and result.stderr == "error: data/x.jsonl:3: 'text' must be a string\n"


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("a tiny corpus. " * 20 + "\n")
    return path


def cases(tmp_path, corpus):
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{\n  "train": {"save_dir": "caf\xe9"}\n}\n')
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    data = [f"data.train_path={corpus}", f"data.val_path={corpus}"]
    demo = REPO / "configs/demo/thinker.json"
    return {
        "config not UTF-8": (["--config", latin1], rf"{latin1}:2: not UTF-8 text \(byte 0xe9\)"),
        "config is a directory": (["--config", tmp_path], rf"{tmp_path} is a directory; --config takes a JSON file"),
        "save_dir is a file": (["--config", demo, "--set", f"train.save_dir={a_file}", *data],
                               rf"the run directory is an existing file: train.save_dir={a_file}"),
        "lr is Infinity": (["--config", demo, "--set", "train.lr=Infinity", *data],
                           r"train: lr: expected a finite number, got inf"),
        "corpus too small for the vocabulary": (
            ["--config", demo, "--set", f"train.save_dir={tmp_path / 'run'}", *data],
            r"error: train_tokenizer: vocab_size=\d+ is too large for the corpus"),
    }


@pytest.mark.parametrize("case", ["config not UTF-8", "config is a directory", "save_dir is a file", "lr is Infinity",
                                  "corpus too small for the vocabulary"])
def test_user_errors_of_a_stage_script_name_the_cause_without_a_traceback(tmp_path, corpus, case):
    args, message = cases(tmp_path, corpus)[case]
    result = run(REPO / "train_text.py", *args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr  # the message, not a wall of log
    assert re.search(message, result.stderr), result.stderr[-2000:]
