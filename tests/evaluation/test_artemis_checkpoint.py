"""ArtEmis's released text-to-emotion classifier, read with a restricted unpickler.

The checkpoints here are built by the test with ArtEmis's module and class names (stand-in
modules registered in sys.modules for torch.save, removed before reading), in the layout of
ArtEmis's utterance_to_emotion_classifier notebook: embedding -> dropout -> linear -> relu ->
dropout -> linear, an LSTM, max-pooling, an MLP head with batch norm.
"""

from __future__ import annotations

import pickle
import sys
import types

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from sevlm.emotions import EMOTIONS
from sevlm.errors import DataError
from sevlm.evaluation.artemis_checkpoint import ArtEmisTextClassifier, read_vocabulary

# torch's legacy writer warns that it cannot read our stand-in classes' source
pytestmark = pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")

WORDS = ["the", "sky", "is", "dark", "and", "cold", "she", "cries", "bright", "funny", "clown", "calm", "sea"]
TEXTS = [
    "the sky is dark",
    "she cries",
    "funny clown",
    "the calm sea and the bright sky is cold",
    "an unknown word",
    "",
    "Bright SKY",
]


# Our own classes, named as ArtEmis's (pickle records module + qualified name).
class Vocabulary:  # ArtEmis's Vocabulary keeps these attributes
    def __init__(self, words):
        self.word2idx, self.idx2word, self.idx = {}, {}, 0
        for w in ["<pad>", "<sos>", "<eos>", "<unk>"] + words:
            self.word2idx[w], self.idx2word[self.idx] = self.idx, w
            self.idx += 1
        self.pad, self.sos, self.eos, self.unk = 0, 1, 2, 3

    def encode_batch(self, texts):
        """<sos> words <eos> padded to the longest, as ArtEmis's Vocabulary.encode with max_len."""
        rows = [[self.word2idx.get(t, self.unk) for t in x.lower().split()] or [self.unk] for x in texts]
        n = max(map(len, rows))
        return torch.tensor([[self.sos] + r + [self.eos] + [self.pad] * (n - len(r)) for r in rows])


class LSTMEncoder(nn.Module):
    def __init__(self, n_input, n_hidden, word_embedding, eos, feature_type="max"):
        super().__init__()
        self.word_embedding, self.eos, self.feature_type = word_embedding, eos, feature_type
        self.word_transformation = self.init_h = self.init_c = None
        self.n_hidden = n_hidden
        self.rnn = nn.LSTM(input_size=n_input, hidden_size=n_hidden, batch_first=True)

    def forward(self, tokens):  # the reference: what ArtEmis's encoder computes
        lengths = (tokens == self.eos).nonzero()[:, 1] - 1
        packed = pack_padded_sequence(
            self.word_embedding(tokens[:, 1:]), lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True)
        return out.max(1).values


class MLP(nn.Module):
    def __init__(self, n_in, hidden, n_out, p):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p),
            nn.Linear(hidden, n_out),
        )

    def forward(self, x):
        return self.net(x)


class TextEmotionClassifier(nn.Module):
    def __init__(self, text_encoder, clf_head, img_encoder=None):
        super().__init__()
        self.text_encoder, self.clf_head, self.img_encoder = text_encoder, clf_head, img_encoder

    def forward(self, tokens):
        return self.clf_head(self.text_encoder(tokens))


NAMES = {
    "artemis.neural_models.text_emotional_clf": ("TextEmotionClassifier", TextEmotionClassifier),
    "artemis.neural_models.lstm_encoder": ("LSTMEncoder", LSTMEncoder),
    "artemis.neural_models.mlp": ("MLP", MLP),
    "artemis.utils.vocabulary": ("Vocabulary", Vocabulary),
}


@pytest.fixture()
def artemis_names(monkeypatch):
    """Our classes under ArtEmis's module and class names while the test saves (pickle looks them up)."""
    for package in ("artemis", "artemis.neural_models", "artemis.utils"):
        monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
    for module, (name, cls) in NAMES.items():
        mod = types.ModuleType(module)
        setattr(mod, name, cls)
        monkeypatch.setattr(cls, "__module__", module)
        monkeypatch.setitem(sys.modules, module, mod)
    return monkeypatch


def _model(vocab, seed=0, bias_bn=True):
    torch.manual_seed(seed)
    glove = nn.Embedding.from_pretrained(torch.randn(len(vocab.word2idx), 10), freeze=True, padding_idx=vocab.pad)
    embed = nn.Sequential(
        glove,
        nn.Dropout(0.25, inplace=True),
        nn.Linear(10, 16),
        nn.ReLU(),
        nn.Dropout(0.25, inplace=True),
        nn.Linear(16, 16),
    )
    model = TextEmotionClassifier(LSTMEncoder(16, 12, embed, vocab.eos), MLP(12, 10, 9, 0.25))
    bn = model.clf_head.net[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    return model.eval()


def _save(tmp_path, artemis_names, legacy=False):
    vocab = Vocabulary(WORDS)
    model = _model(vocab)
    ckpt, vocab_file = tmp_path / "best_model.pt", tmp_path / "vocabulary.pkl"
    torch.save(model, ckpt, _use_new_zipfile_serialization=not legacy)
    with open(vocab_file, "wb") as f:
        pickle.dump(vocab, f, protocol=2)
    with torch.no_grad():
        want = model(vocab.encode_batch(TEXTS))
    artemis_names.undo()  # reading must not need (or import) ArtEmis's classes
    assert "artemis.neural_models.lstm_encoder" not in sys.modules
    return ckpt, vocab_file, want


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reads_artemis_checkpoint_and_scores_as_artemis(tmp_path, artemis_names, legacy):
    ckpt, vocab_file, want = _save(tmp_path, artemis_names, legacy)
    clf = ArtEmisTextClassifier(ckpt, vocab_file)
    got = clf.logits(TEXTS)
    assert got.shape == (len(TEXTS), 9)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert clf.predict(TEXTS) == [EMOTIONS[k] for k in want.argmax(1).tolist()]
    # max-pooling runs over the batch's zero padding too (ArtEmis): alone, a short text pools differently
    alone = clf.logits(["she cries"])
    assert not torch.allclose(alone, got[1:2], atol=1e-4)
    assert clf.describe()["kind"] == "artemis" and clf.describe()["vocab_size"] == len(WORDS) + 4
    assert read_vocabulary(vocab_file)["sky"] == 5


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_malicious_pickles_are_refused_and_not_run(tmp_path, artemis_names):
    ckpt, vocab_file, _ = _save(tmp_path, artemis_names)
    marker = tmp_path / "pwned"
    evil_ckpt, evil_vocab = tmp_path / "evil.pt", tmp_path / "evil.pkl"
    torch.save({"model": _Evil(marker)}, evil_ckpt)
    evil_vocab.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(DataError, match=r"evil.pt: refusing to load: the pickle asks for (posix|os)\.system"):
        ArtEmisTextClassifier(evil_ckpt, vocab_file)
    with pytest.raises(DataError, match=r"evil.pkl: refusing to load: the pickle asks for (posix|os)\.system"):
        ArtEmisTextClassifier(ckpt, evil_vocab)
    assert not marker.exists()
    legacy = tmp_path / "evil_legacy.pt"
    torch.save(_Evil(marker), legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(DataError, match="refusing to load"):
        ArtEmisTextClassifier(legacy, vocab_file)
    assert not marker.exists()


def test_wrong_files_are_named(tmp_path, artemis_names):
    ckpt, vocab_file, _ = _save(tmp_path, artemis_names)
    with pytest.raises(DataError, match="nope.pt: file not found"):
        ArtEmisTextClassifier(tmp_path / "nope.pt", vocab_file)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataError, match="junk.pt: not a readable torch checkpoint"):
        ArtEmisTextClassifier(junk, vocab_file)
    small = tmp_path / "small.pkl"
    small.write_bytes(pickle.dumps({"word2idx": {"<pad>": 0}}))
    with pytest.raises(DataError, match="small.pkl: not an ArtEmis Vocabulary"):
        ArtEmisTextClassifier(ckpt, small)
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(DataError, match="plain.pt: holds dict, not ArtEmis's TextEmotionClassifier"):
        ArtEmisTextClassifier(plain, vocab_file)


@pytest.mark.slow  # the coco-caption metrics of a whole evaluation (~30 s here)
def test_evaluate_scores_emo_align_with_the_artemis_checkpoint(
    tmp_path, artemis_names, good_predictions, test_refs, dataset_dir
):
    import json

    from sevlm.cli import main
    from sevlm.errors import ConfigError

    ckpt, vocab_file, _ = _save(tmp_path, artemis_names)
    out = tmp_path / "R.json"
    refs = str(dataset_dir / "test.json")
    assert (
        main(
            [
                "evaluate",
                "--predictions",
                str(good_predictions),
                "--references",
                refs,
                "--out",
                str(out),
                "--emo-classifier",
                "artemis",
                "--artemis-checkpoint",
                str(ckpt),
                "--artemis-vocabulary",
                str(vocab_file),
                "--because",
                "last",
            ]
        )
        == 0
    )
    rep = json.loads(out.read_text())
    assert rep["emo_classifier"]["kind"] == "artemis" and rep["because"] == "last"
    preds = [json.loads(line) for line in good_predictions.read_text().splitlines()]
    labels = ArtEmisTextClassifier(ckpt, vocab_file).predict([p["explanation"] for p in preds])
    dominant = [test_refs[p["image_id"]]["dominant_emotion"] for p in preds]
    hits = [lab == d for lab, d in zip(labels, dominant) if d is not None]
    assert rep["emo_align_n"] == len(hits) > 0 and rep["emo_align"] == pytest.approx(sum(hits) / len(hits))
    assert "(classifier: artemis;" in out.with_suffix(".md").read_text()
    import argparse

    from sevlm.commands import evaluate as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    with pytest.raises(
        ConfigError, match="--emo-classifier artemis needs --artemis-checkpoint and --artemis-vocabulary"
    ):
        cmd.run(
            parser.parse_args(
                [
                    "--predictions",
                    str(good_predictions),
                    "--references",
                    refs,
                    "--out",
                    str(out),
                    "--emo-classifier",
                    "artemis",
                    "--artemis-checkpoint",
                    str(ckpt),
                ]
            )
        )
