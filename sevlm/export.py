"""Exported models: safetensors weights + resolved config + tokenizer, and THE load function.

An export folder holds
  model.safetensors   SEVLM's weights except the decoder's (visual projection, emotion
                      encoder, fusion, heads)
  decoder/            the GPT-2 decoder as transformers saves it (config.json +
                      model.safetensors, the only copy of the decoder's weights, the tied
                      lm_head stored once): stock `GPT2LMHeadModel.from_pretrained("export/decoder")`
                      loads it. Its token ids are the model's: vocab.json's compact ids when there
                      is one. SEVLM feeds it `inputs_embeds` (SEVLM.embed_tokens: word + segment
                      embedding fused with the causal VAD) and `encoder_hidden_states`
                      (SEVLM.visual_context: the projected visual tokens), both computed by
                      weights in model.safetensors
  decoder_config.json the GPT-2 architecture (so a hub decoder reloads offline)
  config.json         {"format", "sevlm_version", "model": SEVLMConfig fields,
                       "lexicon": path or "demo", "encoder": {"name", "settings"} or null
                       (the features' own record: it rebuilds the very encoder),
                       "hf_decoder": "decoder",
                       "weights": {file: the prefix its keys take in SEVLM's state dict}
                       ({"model.safetensors": "", "decoder/model.safetensors": "decoder."}),
                       "weights_sha256": {file: sha256}, checked on load,
                       "train": the trainer's resolved config}
  tokenizer/          the tokenizer files, special tokens included (AutoTokenizer loads them)
  vocab.json          only for a model trained on a corpus vocabulary (vocab.VocabMap): the
                      GPT-2 ids of its compact id space; config.json's "vocab" names it
An older export (FORMAT_1) holds every weight, the decoder's as `decoder.*`, in
model.safetensors, and records that file's sha256 as a string; it still loads.
`load_run` takes an export folder or a run folder with `export/` inside; generation,
evaluation, retrieval and `sevlm predict` all load through it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import GPT2Config
from transformers.utils import logging as hf_logging

import sevlm
from sevlm.config import from_dict
from sevlm.data.vad import DEMO, VADLexicon, lexicon_spec
from sevlm.encoders import build_encoder
from sevlm.encoders.base import load_pixels
from sevlm.errors import DataError, SevlmError
from sevlm.features.hdf5 import FeatureStore
from sevlm.features.shards import read_manifest
from sevlm.io import atomic_dir, read_json, sha256_file, write_json
from sevlm.model import SEVLM, SEVLMConfig
from sevlm.model.config import saved_model_config
from sevlm.text import SequenceBuilder
from sevlm.vocab import VOCAB_FILE, VocabMap, check_id_space, load_tokenizer

FORMAT = "sevlm-export-2"  # the decoder's weights only in decoder/
FORMAT_1 = "sevlm-export-1"  # every weight in model.safetensors
RUN_EXPORT = "export"  # the export folder inside a training run folder
WEIGHTS = "model.safetensors"
HF_DECODER = "decoder"  # the decoder as a transformers model folder
DECODER_PREFIX = "decoder."  # the decoder's keys in SEVLM's state dict


@dataclass(frozen=True)
class RunDataPaths:
    """Where a run's data came from, as recorded in its export (None = not recorded)."""

    dataset_dir: str | None
    features: str | None
    shards: str | None
    lexicon: str | None

    @classmethod
    def from_config(cls, config: dict) -> "RunDataPaths":
        data = (config.get("train") or {}).get("data") or {}
        features = data.get("features") or _shard_features(data.get("shards"))
        return cls(data.get("dataset_dir"), features, data.get("shards"), config.get("lexicon") or data.get("lexicon"))

    @classmethod
    def of(cls, path: str | Path) -> "RunDataPaths":
        """The recorded paths of a run folder or export, without loading its weights."""
        return cls.from_config(read_json(find_export(path) / "config.json"))


def _shard_features(shards: str | None) -> str | None:
    """The feature cache a local shard folder was written from (its manifest records it), when
    that file is still there: a run trained from shards alone generates and retrieves from it."""
    if not shards:
        return None
    manifest = Path(shards) / "manifest.json" if urlparse(str(shards)).scheme == "" else None  # a local folder
    if manifest is None or not manifest.is_file():
        return None
    try:
        path = (json.loads(manifest.read_text(encoding="utf-8")).get("features") or {}).get("features_path")
    except (OSError, ValueError, AttributeError):
        return None
    return path if path and Path(path).is_file() else None


@dataclass
class LoadedRun:
    model: Any  # SEVLM, eval mode
    tokenizer: Any
    lexicon: Any  # VADLexicon
    builder: Any  # SequenceBuilder
    config: dict  # the export's config.json
    path: Path
    vocab: Any = None  # the run's corpus VocabMap (None = GPT-2 ids); pass it to generate()

    @property
    def data_paths(self) -> RunDataPaths:
        return RunDataPaths.from_config(self.config)

    def check_visual_dim(self, width: int, source: str | Path) -> None:
        """Refuse visual tokens of another encoder's width in one line naming both widths."""
        expected = self.model.config.visual_dim
        if int(width) != expected:
            enc = (self.config.get("encoder") or {}).get("name") or "an unrecorded encoder"
            raise DataError(
                f"{source}: {int(width)}-d visual tokens, but the model in {self.path} expects "
                f"{expected}-d ({enc}'s); features from another encoder?"
            )

    def image_encoder(self, device: str | None = None):
        """The run's image encoder, rebuilt from the spec recorded at export (weights included)."""
        spec = self.config.get("encoder")
        if not spec or not spec.get("name"):
            raise DataError(f"{self.path / 'config.json'}: no image encoder recorded; cannot encode raw images")
        encoder = build_encoder(spec["name"], **(spec.get("settings") or {}))
        self.check_visual_dim(encoder.dim, f"encoder {spec['name']!r} {spec.get('settings') or {}}")
        return encoder.to(device or self.model.device).eval()

    def encode_images(self, paths, device: str | None = None):
        """(N, T, D) float32 visual tokens of image files, decoded and preprocessed as `extract`
        does; an unusable file (missing, corrupt, a decompression bomb) is an ImageError naming it."""
        encoder = self.image_encoder(device)
        pixels = torch.stack([load_pixels(p, encoder.preprocess) for p in paths])  # (N, 3, H, W)
        with torch.no_grad():
            tokens, _ = encoder(pixels.to(device or self.model.device))  # (N, T, D)
        return tokens.float()


def _lexicon_spec(config_dict: dict) -> str:
    # runs from before data.lexicon was required recorded none for the demo table
    return lexicon_spec(config_dict.get("lexicon") or (config_dict.get("data") or {}).get("lexicon"), default=DEMO)


def _encoder_spec(config_dict: dict) -> dict | None:
    """{"name", "settings"} of the image encoder, so `predict` can encode raw images.

    The features' own record comes first (the feature file's, else the shard manifest's): only
    it holds the settings, such as `extract --weights`, that rebuild the very same encoder.
    Else the config's `encoder` (a name or {"name","settings"}) or its data.encoder.
    """
    data = config_dict.get("data") or {}
    try:
        if data.get("features") and Path(data["features"]).exists():
            return FeatureStore(data["features"]).encoder_spec
        if data.get("shards"):  # a folder or a URL (sevlm.features.shards.locate)
            enc = (read_manifest(data["shards"])[1].get("features") or {}).get("encoder_config")
            if enc and enc.get("name"):
                return {"name": enc["name"], "settings": dict(enc.get("settings") or {})}
    except (SevlmError, OSError, KeyError):  # an unreadable cache must not block the export
        pass
    enc = config_dict.get("encoder") or data.get("encoder")
    if isinstance(enc, dict) and enc.get("name"):
        return {"name": enc["name"], "settings": dict(enc.get("settings") or {})}
    if isinstance(enc, str) and enc:
        return {"name": enc, "settings": dict(config_dict.get("encoder_settings") or {})}
    return None


def save_export(out_dir: str | Path, model, tokenizer, config_dict: dict | None = None, vocab=None) -> Path:
    """Write the export folder atomically (built beside it, then renamed into place).

    `config_dict` is the trainer's resolved config; `lexicon` (path or "demo") and `encoder`
    (a name or {"name", "settings"}) are read from its top level or its `data` section.
    `vocab`: the model's corpus VocabMap (None = GPT-2 ids).
    """
    config_dict = dict(config_dict or {})
    check_id_space(vocab, model.config.vocab_size, tokenizer, str(out_dir))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        # The decoder's weights go to decoder/ only, as transformers writes them; the rest here.
        state = {
            k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(DECODER_PREFIX)
        }
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        _save_hf_decoder(model.decoder, tmp / HF_DECODER)
        # every file transformers wrote (one, unless it shards a large decoder)
        decoder_files = sorted(p.relative_to(tmp).as_posix() for p in (tmp / HF_DECODER).glob("*.safetensors"))
        if not decoder_files:
            raise DataError(f"{out_dir}: transformers' save_pretrained wrote no safetensors file for the decoder")
        weights = {WEIGHTS: "", **{f: DECODER_PREFIX for f in decoder_files}}
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        write_json(tmp / "decoder_config.json", model.decoder.config.to_dict())
        if vocab is not None:
            vocab.save(tmp / VOCAB_FILE)
        write_json(
            tmp / "config.json",
            {
                "format": FORMAT,
                "sevlm_version": getattr(sevlm, "__version__", "unknown"),
                "model": dataclasses.asdict(model.config),
                "lexicon": _lexicon_spec(config_dict),
                "encoder": _encoder_spec(config_dict),
                "vocab": VOCAB_FILE if vocab is not None else None,
                "hf_decoder": HF_DECODER,
                "weights": weights,
                "weights_sha256": {f: sha256_file(tmp / f) for f in weights},
                "train": config_dict,
            },
        )
    return out_dir


def _save_hf_decoder(decoder, out_dir: Path) -> None:
    """The GPT2LMHeadModel as `save_pretrained` writes it, so transformers' own loader reads it
    (its key names, the tied lm_head stored once, safetensors metadata "pt")."""
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one file: no "Writing model shards" bar at every export
    try:
        decoder.save_pretrained(str(out_dir))
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def find_export(path: str | Path) -> Path:
    path = Path(path)
    for cand in (path, path / RUN_EXPORT):
        if (cand / "config.json").is_file() and (cand / WEIGHTS).is_file():
            return cand
    raise DataError(
        f"{path}: no exported model (expected model.safetensors + config.json here or in {path / RUN_EXPORT})"
    )


def _load_weights(path: Path, sha256: str | None) -> dict:
    """The state dict in `path`, refused when its sha256 differs from the recorded one (a
    truncated copy or a flipped bit) or safetensors cannot parse it."""
    if not path.is_file():
        raise DataError(f"{path}: missing weights (the export lists it); copy or export it again")
    if sha256 is not None and sha256_file(path) != sha256:
        raise DataError(
            f"{path}: damaged weights (sha256 differs from the one recorded at export); copy or export it again"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise DataError(f"{path}: unreadable weights ({e}); copy or export it again") from None


def weight_files(config: dict) -> dict[str, str]:
    """{file in the export: the prefix its keys take in SEVLM's state dict}, as config.json records it."""
    if config.get("format") == FORMAT_1:
        return {WEIGHTS: ""}
    return dict(config.get("weights") or {})


def inside_export(export: Path, name, what: str) -> Path:
    """`export / name`, refused unless it stays inside the export folder (config.json names its
    files; a copied or edited config must not point the loader at files elsewhere)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute():
        raise DataError(f"{export / 'config.json'}: {what} {name!r} is not a file name inside the export folder")
    path = export / name
    root = Path(os.path.realpath(export))
    if root != Path(os.path.realpath(path)) and root not in Path(os.path.realpath(path)).parents:
        raise DataError(
            f"{export / 'config.json'}: {what} {name!r} lies outside the export folder {export}; "
            "an export only loads its own files"
        )
    return path


def _load_state(export: Path, config: dict) -> dict:
    """SEVLM's state dict rebuilt from every weights file of the export, each checked against
    its recorded sha256 (FORMAT_1 records one string, for model.safetensors)."""
    files, sums = weight_files(config), config.get("weights_sha256")
    if not isinstance(sums, dict):
        sums = {WEIGHTS: sums}
    if WEIGHTS not in files:
        raise DataError(
            f'{export / "config.json"}: lists no {WEIGHTS} under "weights"; the export is damaged, export the run again'
        )
    state: dict = {}
    for name, prefix in files.items():
        for k, v in _load_weights(inside_export(export, name, "weights file"), sums.get(name)).items():
            if prefix + k in state:
                raise DataError(
                    f"{export / name}: {prefix + k} is also in another weights file of {export}; export the run again"
                )
            state[prefix + k] = v
    return state


def load_run(path: str | Path, device: str = "cpu", lexicon: str | None = None) -> LoadedRun:
    """Load an export folder (or a run folder containing `export/`) for inference.

    `lexicon` overrides the recorded lexicon (path or "demo"), e.g. when the run was
    trained on another machine.
    """
    export = find_export(path)
    config = read_json(export / "config.json")
    if config.get("format") not in (FORMAT, FORMAT_1):
        raise DataError(
            f"{export / 'config.json'}: unknown export format {config.get('format')!r} (expected {FORMAT} or "
            f"{FORMAT_1})"
        )
    if not isinstance(config.get("model"), dict):
        raise DataError(f'{export / "config.json"}: no "model" section; the export is damaged, export the run again')
    mcfg = from_dict(SEVLMConfig, saved_model_config(config["model"]), where=str(export / "config.json") + ":model")
    # The decoder is rebuilt from its stored architecture: weights come from the export, never the hub.
    decoder_config = GPT2Config.from_dict(read_json(export / "decoder_config.json"))
    tokenizer = load_tokenizer(export / "tokenizer")
    vocab = None
    if config.get("vocab"):
        vocab_path = inside_export(export, config["vocab"], "vocab file")
        if not vocab_path.is_file():
            raise DataError(
                f"{export / 'config.json'}: names the corpus vocabulary {config['vocab']!r}, but {vocab_path} is "
                "missing"
            )
        vocab = VocabMap.load(vocab_path)
    check_id_space(vocab, mcfg.vocab_size, tokenizer, str(export))
    try:
        lex = VADLexicon.load(lexicon or _lexicon_spec(config))
    except DataError as e:
        raise DataError(f"{export}: the run's VAD lexicon cannot be loaded ({e}); pass another with lexicon=") from None
    model = SEVLM(mcfg, decoder_config=decoder_config)
    state = _load_state(export, config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "decoder.lm_head.weight"]  # tied to wte, stored once
    if missing or unexpected:
        where = ", ".join(str(export / f) for f in weight_files(config))
        raise DataError(
            f"{where}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.decoder.tie_weights()
    model.to(torch.device(device)).eval()
    builder = SequenceBuilder(
        tokenizer, lex, max_len=mcfg.max_len, vocab=vocab, bos_prompt=mcfg.bos_prompt, vad_input=mcfg.vad_input
    )
    return LoadedRun(
        model=model, tokenizer=tokenizer, lexicon=lex, builder=builder, config=config, path=export, vocab=vocab
    )
