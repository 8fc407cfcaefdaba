"""ArtEmis-style LSTM text -> emotion classifier, for Emo-Align numbers comparable with ArtEmis.

ArtEmis scores emotional alignment with its own LSTM utterance classifier: word embeddings, a
small projection, a one-layer LSTM, max-pooling over time and an MLP head over the 9 emotions.
This is the same kind of model, trained from scratch on the training split's explanations (no
GloVe download) on the CPU. Training is deterministic for a seed: the initial weights, dropout
and the batch order all come from it.

Stored as `classifier.json` (vocabulary, classes, parameters, metadata, weights' sha256) and
`weights.safetensors` (no pickle), through the same helpers as the TF-IDF classifier.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from sevlm.data.table import tokenize
from sevlm.emotions import EMOTIONS
from sevlm.errors import DataError
from sevlm.evaluation.emo_base import TextEmotionClassifier, load_spec, save_spec

FORMAT = "sevlm-emo-classifier-lstm/1"
WEIGHTS = "weights.safetensors"
PAD, UNK = "<pad>", "<unk>"
DEFAULT_PARAMS = {
    "embed_dim": 100,  # ArtEmis uses 100-d (GloVe-sized) word embeddings
    "hidden": 128,
    "dropout": 0.1,
    "min_count": 2,  # rarer training words become <unk>
    "max_tokens": 40,  # ArtEmis utterances are short; longer ones are cut
    "epochs": 4,
    "min_steps": 300,  # small training sets get more epochs, so they still converge
    "batch_size": 128,
    "lr": 2e-3,
}


@contextlib.contextmanager
def _one_thread():
    """A model this small gains nothing from intra-op threads, and on a busy machine their
    spin-waiting makes training many times slower: run it on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _net(vocab_size: int, n_classes: int, params: dict):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            d, h, p = params["embed_dim"], params["hidden"], params["dropout"]
            self.embed = nn.Embedding(vocab_size, d, padding_idx=0)
            self.project = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(p))
            self.lstm = nn.LSTM(d, h, batch_first=True)
            self.head = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Dropout(p), nn.Linear(h, n_classes))

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            # a one-directional LSTM: outputs at real tokens do not see the padding after them
            out, _ = self.lstm(self.project(self.embed(tokens)))
            out = out.masked_fill((tokens == 0)[..., None], float("-inf")).amax(dim=1)
            return self.head(out)

    return Net()


@dataclass
class LSTMEmotionClassifier(TextEmotionClassifier):
    classes: list[str]
    vocabulary: list[str]  # token id -> word; 0 is <pad>, 1 is <unk>
    state: dict  # the network's state_dict (CPU tensors)
    params: dict
    meta: dict = field(default_factory=dict)
    DEFAULT_PARAMS: ClassVar[dict] = DEFAULT_PARAMS

    def __post_init__(self):
        self._index = {w: i for i, w in enumerate(self.vocabulary)}
        self._model = None

    @property
    def model(self):
        if self._model is None:
            model = _net(len(self.vocabulary), len(self.classes), self.params)
            model.load_state_dict(self.state, strict=True)
            self._model = model.eval()
        return self._model

    def encode(self, texts: list[str]):
        """Token ids [N, T] (0-padded); a text without words becomes one <unk>."""
        rows = [[self._index.get(w, 1) for w in tokenize(t)][: self.params["max_tokens"]] or [1] for t in texts]
        out = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return out

    def predict_proba(self, texts: list[str], batch_size: int = 512) -> np.ndarray:
        probs = []
        with torch.no_grad(), _one_thread():
            for start in range(0, len(texts), batch_size):
                logits = self.model(self.encode(texts[start : start + batch_size]))
                probs.append(torch.softmax(logits.float(), dim=-1).numpy())
        return np.concatenate(probs).astype(np.float64) if probs else np.zeros((0, len(self.classes)))

    def describe(self) -> dict:
        n_params = int(sum(t.numel() for t in self.state.values()))
        return {
            "kind": "lstm",
            "format": FORMAT,
            "classes": self.classes,
            "vocab_size": len(self.vocabulary),
            "n_parameters": n_params,
            "params": self.params,
            **self.meta,
        }

    # -- storage (no pickle) ----------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        state = {k: v.contiguous() for k, v in self.state.items()}
        save_spec(
            directory,
            WEIGHTS,
            lambda tmp: save_file(state, str(tmp), metadata={"format": FORMAT}),
            {
                "format": FORMAT,
                "classes": self.classes,
                "params": self.params,
                "meta": self.meta,
                "vocabulary": self.vocabulary,
            },
        )

    @classmethod
    def load(cls, directory: str | Path) -> "LSTMEmotionClassifier":
        spec, weights, where = load_spec(directory, FORMAT, WEIGHTS)
        try:
            state = load_file(str(weights))
        except SafetensorError as e:
            raise DataError(f"{weights}: not a readable safetensors file ({e})") from None
        vocab = spec.get("vocabulary")
        if not isinstance(vocab, list) or vocab[:2] != [PAD, UNK]:
            raise DataError(f"{where}: vocabulary must start with {PAD!r}, {UNK!r}")
        clf = cls(spec["classes"], vocab, state, {**DEFAULT_PARAMS, **spec["params"]}, spec.get("meta", {}))
        try:
            clf.model  # noqa: B018  (builds the network: shapes must match the spec)
        except RuntimeError as e:
            raise DataError(
                f"{weights}: weights do not match the vocabulary/classes/parameters in {where} "
                f"({str(e).splitlines()[0]})"
            ) from None
        return clf

    # -- training -------------------------------------------------------------------------
    @classmethod
    def train(
        cls, texts: list[str], labels: list[str], params: dict | None = None, seed: int = 0
    ) -> "LSTMEmotionClassifier":
        """Fit on texts and their emotions with Adam and cross-entropy; deterministic for `seed`."""
        params = {**DEFAULT_PARAMS, **(params or {})}
        if len(set(labels)) < 2:
            raise DataError("emotion classifier: training data holds fewer than 2 emotions")
        if len(texts) != len(labels):
            raise DataError("emotion classifier: texts and labels differ in number")
        counts: dict[str, int] = {}
        for t in texts:
            for w in tokenize(t):
                counts[w] = counts.get(w, 0) + 1
        vocab = [PAD, UNK] + sorted(w for w, c in counts.items() if c >= params["min_count"])
        classes = [e for e in EMOTIONS if e in set(labels)]
        clf = cls(classes, vocab, {}, params)
        x = clf.encode(list(texts))
        y = torch.tensor([classes.index(label) for label in labels])
        batch = params["batch_size"]
        per_epoch = math.ceil(len(texts) / batch)
        epochs = max(params["epochs"], math.ceil(params["min_steps"] / per_epoch))
        order_rng = np.random.default_rng(seed)
        with torch.random.fork_rng(devices=[]), _one_thread():
            torch.manual_seed(seed)
            model = _net(len(vocab), len(classes), params)
            opt = torch.optim.Adam(model.parameters(), lr=params["lr"])
            model.train()
            with tqdm(
                total=epochs * per_epoch, desc="Emo-Align LSTM", unit="step", file=sys.stderr, disable=None, leave=False
            ) as bar:
                for _ in range(epochs):
                    for idx in np.array_split(order_rng.permutation(len(texts)), per_epoch):
                        idx = torch.from_numpy(idx)
                        tokens = x[idx]
                        tokens = tokens[:, : int((tokens != 0).sum(1).max())]  # drop all-padding columns
                        loss = torch.nn.functional.cross_entropy(model(tokens), y[idx])
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                        bar.update()
                        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        clf.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return clf
