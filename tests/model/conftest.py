"""Tiny random SEVLMs on the real tokenizer, with a small hand-written VAD table."""

from __future__ import annotations

import pytest
import torch

from sevlm.data.vad import VADLexicon
from sevlm.model import SEVLM, SEVLMConfig
from sevlm.text import SequenceBuilder
from sevlm.vocab import load_tokenizer

VAD_TABLE = """Word\tValence\tArousal\tDominance
sad\t0.2\t0.3\t0.1
dark\t0.2\t0.4\t0.4
bright\t0.9\t0.6\t0.6
sky\t0.8\t0.3\t0.5
calm\t0.9\t0.1\t0.6
storm\t0.2\t0.9\t0.5
awe\t0.8\t0.8\t0.5
fear\t0.1\t0.9\t0.2
sadness\t0.05\t0.3\t0.15
contentment\t0.9\t0.2\t0.6
content\t0.8\t0.3\t0.6
woman\t0.7\t0.4\t0.5
"""


@pytest.fixture(scope="session")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="session")
def lexicon(tmp_path_factory):
    p = tmp_path_factory.mktemp("lex") / "vad.tsv"
    p.write_text(VAD_TABLE, encoding="utf-8")
    return VADLexicon.from_file(p)


@pytest.fixture(scope="session")
def builder(tok, lexicon):
    return SequenceBuilder(tok, lexicon, max_len=20)


@pytest.fixture
def make_model(builder):
    def make(seed: int = 0, **kw) -> SEVLM:
        torch.manual_seed(seed)
        base = dict(n_layer=2, n_embd=32, n_head=2, visual_dim=16, contrastive_dim=16, max_len=20, n_positions=32)
        base.update(kw)
        return SEVLM(SEVLMConfig(**base).with_token_ids(builder.ids))

    return make


def _make_samples(n: int = 4, dim: int = 16, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    texts = [
        ("awe", "the bright sky is vast"),
        ("fear", "the dark storm is coming"),
        ("sadness", "a sad woman alone"),
        ("contentment", "a calm field at noon"),
        ("something else", "just shapes and lines"),
    ]
    out = []
    for i in range(n):
        a, b = texts[i % len(texts)], texts[(i + 1) % len(texts)]
        out.append(
            {
                "__key__": f"s/p{i}",
                "image_id": f"s/p{i}",
                "tokens": torch.randn(5, dim, generator=g),
                "emotions": [a[0], b[0], a[0]],
                "explanations": [a[1], b[1], a[1] + " again"],
            }
        )
    return out


@pytest.fixture(scope="session")
def make_samples():
    """Feature-reader-style samples: 5 visual tokens of width 16, three annotations each."""
    return _make_samples


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are dominated by per-op overhead; on a shared 2-core machine extra torch
    threads only spin (10-20x slower). Restored after each test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
