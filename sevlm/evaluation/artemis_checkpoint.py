"""ArtEmis's released text-to-emotion classifier, read without running any pickle code.

The SEVLM authors' Emo-Align labels each generated explanation with ArtEmis's LSTM utterance
classifier (optas/artemis, `notebooks/deep_nets/emotions/utterance_to_emotion_classifier.ipynb`):
a whole `TextEmotionClassifier` module saved with `torch.save(model)`, plus the `Vocabulary` of
ArtEmis's preprocessing (`vocabulary.pkl`). Both are pickles, and `torch.load` / `pickle.load`
would run whatever callables they name. Here a restricted unpickler reads them instead:

- `find_class` answers only an allowlist. ArtEmis's classes and the torch layers they are built
  from become inert stand-ins (`_Stub`) that only keep the state pickle hands them; tensors are
  rebuilt by our own function from the raw storage bytes; `collections.OrderedDict`, `set` and
  the like are plain containers. Any other name (`os.system`, `builtins.eval`, ...) is refused
  with a DataError before anything runs.
- The network is then built by this module from the stand-ins' state (layer sizes, parameters,
  buffers), layer by layer from a fixed list of kinds, and runs as ArtEmis's code runs it at
  evaluation: `<sos>` words `<eos>`, the word-embedding stack, an LSTM over the words (packed),
  max-pooling over time, and the MLP head with batch norm in eval mode.

Both torch file layouts are read: the zip archive (torch >= 1.6) and the legacy stream.

Faithful details of ArtEmis's scoring, kept on purpose: texts are split on whitespace (after
lower-casing: generated text is already ArtEmis-tokenised); a batch is up to 1000 texts; the LSTM
outputs are padded with zeros to the longest text of the batch *before* max-pooling, so a text
shorter than the batch's longest pools over those zeros too (`pad_packed_sequence` then `.max`).
A text without words, which ArtEmis's code cannot encode, is read as one `<unk>`.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from sevlm.emotions import EMOTIONS
from sevlm.errors import DataError
from sevlm.evaluation.emo_base import TextEmotionClassifier

# ArtEmis's names (module, class), as pickle records them.
ARTEMIS_CLASSES = {
    ("artemis.neural_models.text_emotional_clf", "TextEmotionClassifier"),
    ("artemis.neural_models.lstm_encoder", "LSTMEncoder"),
    ("artemis.neural_models.mlp", "MLP"),
}
VOCABULARY_CLASS = ("artemis.utils.vocabulary", "Vocabulary")
# The torch layers ArtEmis's classifier is made of (torch.nn.modules.<file>.<class>).
TORCH_LAYERS = {
    ("torch.nn.modules.container", "Sequential"),
    ("torch.nn.modules.sparse", "Embedding"),
    ("torch.nn.modules.linear", "Linear"),
    ("torch.nn.modules.activation", "ReLU"),
    ("torch.nn.modules.dropout", "Dropout"),
    ("torch.nn.modules.batchnorm", "BatchNorm1d"),
    ("torch.nn.modules.rnn", "LSTM"),
}
_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
BATCH = 1000  # ArtEmis's text_to_emotion batch size (it changes the pooling: see the module docstring)


class _Stub:
    """A stand-in for an allowlisted class: pickle's NEWOBJ makes it, BUILD hands it the state."""

    name = ""

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = state if isinstance(state, dict) else {}


def _stub(module: str, name: str) -> type:
    return type(name, (_Stub,), {"name": f"{module}.{name}"})


class _Storage:
    """A tensor storage named by the pickle; its bytes are read from the file afterwards."""

    def __init__(self, dtype: str, key: str, numel: int):
        self.dtype, self.key, self.numel = dtype, key, numel
        self.data = None  # a 1-D torch tensor once read
        self.view: tuple[_Storage, int] | None = None  # legacy views: (root, element offset)

    def array(self):
        if self.view is not None:
            root, offset = self.view
            return root.array()[offset : offset + self.numel]
        if self.data is None:
            raise DataError(f"storage {self.key!r} is named by the pickle but its data is missing")
        return self.data


class _TensorRef:
    """A tensor as `torch._utils._rebuild_tensor_v2` describes it; materialised once its storage is read."""

    def __init__(self, storage, offset, size, stride, *_):
        if not isinstance(storage, _Storage):
            raise DataError("a tensor's storage is not a storage record")
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def tensor(self):
        data = self.storage.array()
        need = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1 if all(self.size) else 0
        if need > data.numel():
            raise DataError(f"tensor of shape {self.size} reaches past its storage {self.storage.key!r}")
        return torch.as_strided(data, self.size, self.stride, self.offset).clone()


def _parameter(data, *_):  # torch._utils._rebuild_parameter(data, requires_grad, backward_hooks[, state])
    return data


def _thnn_backend():  # torch < 1.4 pickled every module's `_backend` as a call to this: nothing to keep
    return None


class _Restricted(pickle.Unpickler):
    """An unpickler that resolves only allowlisted names, to inert stand-ins."""

    def __init__(self, file, where: str, classes: set[tuple[str, str]], storages: dict | None = None, zip_reader=None):
        super().__init__(file, encoding="latin1")
        self.where, self.classes, self.storages, self.zip_reader = where, classes, storages, zip_reader
        self.stubs: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in self.classes:
            return self.stubs.setdefault(key, _stub(module, name))
        if module in ("collections",) and name == "OrderedDict":
            return OrderedDict
        if module in ("builtins", "__builtin__") and name in ("set", "frozenset"):
            return set if name == "set" else frozenset
        if self.storages is not None:  # a torch file: tensors and their storages
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return _TensorRef
            if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
                return _parameter
            if module == "torch" and name in _DTYPES:
                return _DTYPES[name]
            if module == "torch.nn.backends.thnn" and name == "_get_thnn_function_backend":
                return _thnn_backend
        raise DataError(
            f"{self.where}: refusing to load: the pickle asks for {module}.{name}, which is not part of "
            "ArtEmis's text-to-emotion classifier (nothing from the file was run)"
        )

    def persistent_load(self, pid):
        # legacy files name each module class as ('module', class, source file, source); the class
        # itself came through find_class, so it is one of our stand-ins
        if (
            isinstance(pid, tuple)
            and len(pid) >= 2
            and pid[0] == "module"
            and isinstance(pid[1], type)
            and issubclass(pid[1], _Stub)
        ):
            return pid[1]
        if self.storages is None or not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise DataError(f"{self.where}: refusing to load: unexpected persistent record {pid!r:.80}")
        dtype, key = pid[1], str(pid[2])
        if dtype not in _DTYPES.values():
            raise DataError(f"{self.where}: refusing to load: storage of unknown type {dtype!r:.80}")
        if key not in self.storages:
            numel = int(pid[4])
            storage = _Storage(dtype, key, numel)
            if self.zip_reader is not None:
                storage.data = self.zip_reader(key, dtype, numel)
            self.storages[key] = storage
        storage = self.storages[key]
        view = pid[5] if len(pid) > 5 else None
        if view:  # legacy: (view key, offset in elements, size)
            view_key, offset, size = str(view[0]), int(view[1]), int(view[2])
            if view_key not in self.storages:
                sub = _Storage(dtype, view_key, size)
                sub.view = (storage, offset)
                self.storages[view_key] = sub
            return self.storages[view_key]
        return storage


def _frombuffer(raw: bytes, dtype: str, numel: int, where: str):
    tdtype = getattr(torch, dtype)
    size = torch.empty((), dtype=tdtype).element_size()
    if len(raw) < numel * size:
        raise DataError(f"{where}: a storage holds {len(raw)} bytes, {numel * size} expected")
    if numel == 0:
        return torch.empty(0, dtype=tdtype)
    return torch.frombuffer(bytearray(raw[: numel * size]), dtype=tdtype)


def _load(unpickler: _Restricted, where: str):
    """unpickler.load(), with malformed data (wrong opcodes, stand-ins called wrongly) as a DataError."""
    try:
        return unpickler.load()
    except DataError:
        raise
    except Exception as e:  # only our stand-ins and containers can be called: this is bad data, not code
        raise DataError(f"{where}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None


def read_torch_pickle(path: str | Path, classes: set[tuple[str, str]]):
    """The object a `torch.save` file holds, with `classes` (module, name) as `_Stub`s and every
    tensor as a `_TensorRef` whose storage has been read; nothing outside the allowlist is called."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise DataError(f"{where}: file not found")
    storages: dict[str, _Storage] = {}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkl) != 1:
                raise DataError(f"{where}: a zip file but not a torch checkpoint (no single data.pkl)")
            prefix = pkl[0][: -len("data.pkl")]

            def read(key, dtype, numel):
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise DataError(f"{where}: storage {member} is missing")
                return _frombuffer(zf.read(member), dtype, numel, f"{where}:{member}")

            obj = _load(_Restricted(io.BytesIO(zf.read(pkl[0])), where, classes, storages, read), where)
        return obj
    with open(path, "rb") as f:
        magic = _load(_Restricted(f, where, set()), where)
        if magic != _LEGACY_MAGIC:
            raise DataError(f"{where}: not a torch checkpoint (neither a zip archive nor torch's legacy format)")
        _load(_Restricted(f, where, set()), where)  # protocol version
        _load(_Restricted(f, where, set()), where)  # sys info (endianness, type sizes)
        obj = _load(_Restricted(f, where, classes, storages), where)
        keys = _load(_Restricted(f, where, set()), where)
        for key in keys:  # each: int64 element count, then the raw bytes
            storage = storages.get(str(key))
            head = f.read(8)
            if storage is None or len(head) < 8:
                raise DataError(f"{where}: storage {key!r} is not described by the pickle or is cut short")
            (numel,) = struct.unpack("<q", head)
            size = np.dtype(storage.dtype if storage.dtype != "bfloat16" else "uint16").itemsize
            storage.data = _frombuffer(f.read(numel * size), storage.dtype, numel, where)
    return obj


def read_vocabulary(path: str | Path) -> dict[str, int]:
    """ArtEmis's `vocabulary.pkl` (a pickled `artemis.utils.vocabulary.Vocabulary`): word -> id."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        obj = _load(_Restricted(f, str(path), {VOCABULARY_CLASS}), str(path))
    word2idx = obj.state.get("word2idx") if isinstance(obj, _Stub) else None
    if not isinstance(word2idx, dict) or not all(
        isinstance(w, str) and isinstance(i, int) for w, i in word2idx.items()
    ):
        raise DataError(f"{path}: not an ArtEmis Vocabulary (no word2idx of words to ids)")
    for special in ("<pad>", "<sos>", "<eos>", "<unk>"):
        if special not in word2idx:
            raise DataError(f"{path}: the vocabulary has no {special} token")
    return dict(word2idx)


# ---- the network, built by us from the stand-ins' state --------------------------------------------
def _kind(obj) -> str:
    return obj.name.rsplit(".", 1)[-1] if isinstance(obj, _Stub) else type(obj).__name__


def _children(obj) -> list:
    return list((obj.state.get("_modules") or {}).values())


def _param(obj, name: str, where: str, required: bool = True):
    for group in ("_parameters", "_buffers"):
        ref = (obj.state.get(group) or {}).get(name)
        if ref is not None:
            if not isinstance(ref, _TensorRef):
                raise DataError(f"{where}: {obj.name}.{name} is not a tensor")
            return ref.tensor().float() if ref.storage.dtype.startswith(("float", "bfloat")) else ref.tensor()
    if required:
        raise DataError(f"{where}: {obj.name} has no {name!r}")
    return None


def _layer(obj, where: str):
    """A torch module equal (in eval mode) to the stand-in `obj`: one of the allowlisted layers."""
    kind = _kind(obj)
    if kind in ("Sequential", "MLP"):
        mods = _children(obj)
        if kind == "MLP":  # ArtEmis's MLP keeps its layers in `net`, a Sequential
            mods = _children(obj.state["_modules"]["net"]) if "net" in (obj.state.get("_modules") or {}) else []
        return nn.Sequential(*[_layer(m, where) for m in mods])
    if kind == "Embedding":
        return nn.Embedding.from_pretrained(_param(obj, "weight", where), freeze=True)
    if kind == "Linear":
        w, b = _param(obj, "weight", where), _param(obj, "bias", where, required=False)
        lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        with torch.no_grad():
            lin.weight.copy_(w)
            if b is not None:
                lin.bias.copy_(b)
        return lin
    if kind == "ReLU":
        return nn.ReLU()
    if kind == "Dropout":
        return nn.Identity()  # evaluation
    if kind == "BatchNorm1d":
        mean = _param(obj, "running_mean", where)
        bn = nn.BatchNorm1d(mean.numel(), eps=float(obj.state.get("eps", 1e-5)), affine=obj.state.get("affine", True))
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(_param(obj, "running_var", where))
        if bn.affine:
            with torch.no_grad():
                bn.weight.copy_(_param(obj, "weight", where))
                bn.bias.copy_(_param(obj, "bias", where))
        return bn.eval()
    raise DataError(f"{where}: unexpected layer {getattr(obj, 'name', type(obj).__name__)} in the classifier")


def _lstm(obj, where: str):
    if _kind(obj) != "LSTM":
        raise DataError(f"{where}: the text encoder's rnn is {getattr(obj, 'name', type(obj).__name__)}, not an LSTM")
    s = obj.state
    rnn = nn.LSTM(
        int(s["input_size"]),
        int(s["hidden_size"]),
        num_layers=int(s.get("num_layers", 1)),
        bias=bool(s.get("bias", True)),
        batch_first=True,
        bidirectional=bool(s.get("bidirectional", False)),
    )
    if s.get("proj_size", 0):
        raise DataError(f"{where}: LSTM with proj_size is not ArtEmis's classifier")
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            got = _param(obj, name, where)
            if got.shape != p.shape:
                raise DataError(f"{where}: LSTM {name} has shape {tuple(got.shape)}, expected {tuple(p.shape)}")
            p.copy_(got)
    return rnn.eval()


class ArtEmisTextClassifier(TextEmotionClassifier):
    """ArtEmis's text -> emotion LSTM classifier from its released checkpoint and vocabulary."""

    classes = list(EMOTIONS)  # ArtEmis's ARTEMIS_EMOTIONS: the same 9, in the same order

    def __init__(self, checkpoint: str | Path, vocabulary: str | Path):
        where = str(checkpoint)
        self.checkpoint, self.vocabulary_path = str(checkpoint), str(vocabulary)
        self.word2idx = read_vocabulary(vocabulary)
        root = read_torch_pickle(checkpoint, ARTEMIS_CLASSES | TORCH_LAYERS)
        if _kind(root) != "TextEmotionClassifier":
            raise DataError(
                f"{where}: holds {getattr(root, 'name', type(root).__name__)}, not ArtEmis's TextEmotionClassifier"
            )
        mods = root.state.get("_modules") or {}
        if mods.get("img_encoder") is not None:
            raise DataError(f"{where}: this classifier also reads the image; Emo-Align uses the text-only one")
        enc, head = mods.get("text_encoder"), mods.get("clf_head")
        if _kind(enc) != "LSTMEncoder" or head is None:
            raise DataError(f"{where}: expected a text_encoder (LSTMEncoder) and a clf_head")
        emods = enc.state.get("_modules") or {}
        if emods.get("init_h") is not None or emods.get("init_c") is not None:
            raise DataError(f"{where}: the LSTM is grounded on an image (init_h/init_c); expected the text-only one")
        self.feature_type = enc.state.get("feature_type", "last")
        if self.feature_type not in ("max", "last", "mean"):
            raise DataError(f"{where}: LSTM feature type {self.feature_type!r} is not one a classifier pools with")
        embed = emods.get("word_embedding")
        self.embed = _layer(embed, where).eval()
        if emods.get("word_transformation") is not None:
            self.embed = nn.Sequential(self.embed, _layer(emods["word_transformation"], where)).eval()
        self.rnn = _lstm(emods.get("rnn"), where)
        self.head = _layer(head, where).eval()
        if not isinstance(self.head, nn.Sequential):
            self.head = nn.Sequential(self.head)

        first = self.embed
        while isinstance(first, nn.Sequential) and len(first):
            first = first[0]
        if not isinstance(first, nn.Embedding):
            raise DataError(f"{where}: the text encoder does not start with a word embedding")
        n_words = first.weight.shape[0]
        if max(self.word2idx.values()) >= n_words:
            raise DataError(
                f"{vocabulary}: ids reach {max(self.word2idx.values())}, but the checkpoint's word "
                f"embedding has {n_words} rows: not the vocabulary it was trained with"
            )
        self.eos = self.word2idx["<eos>"]
        n_out = getattr(self.head[-1], "out_features", 0) if len(self.head) else 0
        if n_out != len(self.classes):
            raise DataError(f"{where}: the classifier has {n_out} outputs, not the 9 ArtEmis emotions")
        self.meta: dict = {}

    def encode(self, texts: list[str]):
        """(tokens [N, T] as ArtEmis's Vocabulary.encode pads them, word counts [N])."""
        w = self.word2idx
        rows = [[w.get(t, w["<unk>"]) for t in text.lower().split()] or [w["<unk>"]] for text in texts]
        longest = max(len(r) for r in rows)
        out = torch.full((len(rows), longest + 2), w["<pad>"], dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r) + 2] = torch.tensor([w["<sos>"]] + r + [w["<eos>"]])
        return out, torch.tensor([len(r) for r in rows])

    def logits(self, texts: list[str]):
        tokens, lengths = self.encode(texts)
        with torch.no_grad():
            x = self.embed(tokens[:, 1:])  # (N, T+1, E): <sos> skipped, as ArtEmis
            out, _ = self.rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
            out, _ = pad_packed_sequence(out, batch_first=True)  # (N, longest, H), zeros after each text's end
            if self.feature_type == "max":
                feat = out.max(1).values  # over the zeros too, as ArtEmis
            elif self.feature_type == "mean":
                feat = out.sum(1) / lengths[:, None]
            else:
                feat = out[torch.arange(len(texts)), lengths - 1]
            return self.head(feat)

    def predict_proba(self, texts: list[str], batch_size: int = BATCH) -> np.ndarray:
        probs = [
            torch.softmax(self.logits(texts[i : i + batch_size]).float(), -1).numpy()
            for i in range(0, len(texts), batch_size)
        ]
        return np.concatenate(probs).astype(np.float64) if probs else np.zeros((0, len(self.classes)))

    def describe(self) -> dict:
        return {
            "kind": "artemis",
            "checkpoint": self.checkpoint,
            "vocabulary": self.vocabulary_path,
            "vocab_size": len(self.word2idx),
            "feature_type": self.feature_type,
            "classes": self.classes,
        }
