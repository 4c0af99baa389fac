"""Shared fixtures: fixed seeds for every test, a small text corpus and tokenizer trained once per session."""

import importlib.util
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
# Tests use tiny tensors: one intra-op thread avoids thread start-up and contention costs that dominate them.
torch.set_num_threads(1)


def load_script(name: str):
    """Import scripts/<name>.py (a folder of scripts, not a package) as a module, to test its functions in-process."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being created
    sys.path.insert(0, str(REPO / "scripts"))  # some import a sibling (download_coco -> download_util)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts on one thread (tiny convolutions and matrices run several times faster than on two
    contended ones), and a test that changes the count (a benchmark, a script run in-process) can't leak it."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fixed_seeds():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A small synthetic corpus folder with train.txt and val.txt."""
    from tests.stage_data import text_corpus

    return text_corpus(tmp_path_factory.mktemp("text"))
