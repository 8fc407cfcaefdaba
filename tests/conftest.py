"""Shared test set-up: paths to the real assets beside the checkout, and the gpu marker.

Tests marked slow always run (CI too); `pytest -m "not slow"` is the fast loop.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
NRC_VAD = SHARED / "assets" / "nrc-vad" / "NRC-VAD-Lexicon.txt"
GPT2_TOKENIZER = SHARED / "assets" / "gpt2-tokenizer"
WIKIART = SHARED / "data" / "wikiart"

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: see sevlm/cli.py
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    import torch

    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def nrc_vad_path() -> Path:
    if not NRC_VAD.exists():
        pytest.skip(f"real NRC-VAD lexicon not found at {NRC_VAD}")
    return NRC_VAD


@pytest.fixture(scope="session")
def wikiart_dir() -> Path:
    if not WIKIART.exists():
        pytest.skip(f"WikiArt images not found at {WIKIART}")
    return WIKIART
