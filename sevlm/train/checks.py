"""Mistakes a user can make, caught before any training work starts, with clear messages.

- no VAD lexicon named (data.lexicon), or a missing lexicon file;
- a pretrained decoder that cannot be loaded (offline, not cached);
- a split file missing from the dataset folder;
- a feature cache (or shards) built with another encoder than the config names;
- shards written from another dataset (their manifest's dataset hash differs);
- a micro-batch that cannot fit in memory (a rough, deliberately generous estimate).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GPT2Config

from sevlm.data.folder import load_split_records
from sevlm.data.vad import DEMO, DEMO_DATA, VADLexicon
from sevlm.errors import ConfigError, DataError
from sevlm.features.hdf5 import FeatureStore
from sevlm.features.shards import manifest_bytes, read_manifest
from sevlm.io import read_json, sha256_file


@dataclass
class FeatureInfo:
    source: str  # "features" or "shards"
    path: Path | str  # shards may be a URL
    encoder: str | None
    num_tokens: int | None
    dim: int | None
    image_preprocess: str = "encoder"  # how the encoder's pixels were made (encoders.IMAGE_PREPROCESSING)


def _image_preprocess(encoder_config) -> str:
    """The image preprocessing an artifact's recorded encoder config names (older ones: the encoder's own)."""
    if isinstance(encoder_config, str):
        try:
            encoder_config = json.loads(encoder_config)
        except ValueError:
            encoder_config = None
    settings = encoder_config.get("settings") if isinstance(encoder_config, dict) else None
    return (settings or {}).get("image_preprocess", "encoder")


def check_lexicon(lexicon: str | None) -> None:
    """A VAD lexicon is named: the demo table only where a config or the user says so."""
    if not lexicon:
        raise ConfigError(
            "data.lexicon is not set: give the NRC-VAD lexicon file, data.lexicon=/path/to/NRC-VAD-Lexicon.txt, "
            "or data.lexicon=demo for the small table shipped for the synthetic demo data"
        )
    if lexicon not in (DEMO, DEMO_DATA) and not Path(lexicon).is_file():
        raise DataError(f"{lexicon}: VAD lexicon file not found (data.lexicon)")


def is_demo_dataset(dataset_dir: str) -> bool:
    """Whether a dataset folder was prepared from `sevlm demo-data` output (its CSV sits beside a
    demo_info.json that says it is synthetic)."""
    try:
        manifest = json.loads((Path(dataset_dir) / "manifest.json").read_text(encoding="utf-8"))
        csv = Path(manifest["sources"]["artemis_csv"]["path"])
        return json.loads((csv.parent / "demo_info.json").read_text(encoding="utf-8")).get("synthetic") is True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def train_texts(dataset_dir: str, split: str) -> list[str]:
    """The explanations of a split: the text the lexicon's coverage is measured on."""
    return [x for r in load_split_records(dataset_dir, split).values() for x in r.get("explanations", [])]


def resolve_lexicon(lexicon: str | None, dataset_dir: str, split: str) -> str | None:
    """The lexicon a new run records. DEMO_DATA (the demo and tiny configs) becomes the demo table
    on the synthetic demo data; on another dataset it is refused, naming the fix and how little
    of the data's words the demo table knows."""
    if lexicon != DEMO_DATA:
        return lexicon
    if is_demo_dataset(dataset_dir):
        return DEMO
    known, total = VADLexicon.demo().coverage(train_texts(dataset_dir, split))
    raise ConfigError(
        f"{dataset_dir} is not the synthetic demo data, and this config's lexicon is the {len(VADLexicon.demo())}-word "
        f"demo table made for it (it knows {known} of the {total} distinct words of the {split} split's text): give "
        "the NRC-VAD lexicon, data.lexicon=/path/to/NRC-VAD-Lexicon.txt, or data.lexicon=demo to train with the "
        "demo table anyway"
    )


def check_decoder(decoder: str | None) -> None:
    """A pretrained decoder's config can be loaded (hub cache, network or a local folder)."""
    if decoder is None:
        return
    try:
        GPT2Config.from_pretrained(decoder, local_files_only=True)  # cached or a folder: no network wait
        return
    except (OSError, ValueError):
        pass
    try:
        GPT2Config.from_pretrained(decoder)
    except (OSError, ValueError) as e:  # offline and not cached, a missing folder, a malformed name
        raise decoder_error(decoder, e) from None


def decoder_error(decoder: str, e: Exception) -> ConfigError:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ConfigError(
        f"model.decoder={decoder!r} cannot be loaded: {reason} (download it once with network "
        "access, or give a local folder)"
    )


def check_splits(dataset_dir: str, splits: list[str]) -> None:
    if not dataset_dir:
        raise ConfigError("data.dataset_dir is not set (the folder written by `sevlm prepare`)")
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found (data.dataset_dir)")
    for split in splits:
        if not (root / f"{split}.json").exists():
            have = sorted(p.stem for p in root.glob("*.json") if not p.stem.endswith("_coco") and p.stem != "manifest")
            raise DataError(
                f"{root / f'{split}.json'}: split {split!r} not found in the dataset folder "
                f"(have: {', '.join(have) or 'none'})"
            )
        path = root / f"{split}.json"
        if path.stat().st_size <= 16 and not read_json(path):  # "{}": cheap to tell without reading a big split
            raise DataError(
                f"{path}: split {split!r} has no images; prepare the dataset again, or train with "
                f"another data.{'val' if split != splits[0] else 'train'}_split"
            )


def _token_shape(value) -> tuple[int | None, int | None]:
    try:
        T, D = value
        return int(T), int(D)
    except (TypeError, ValueError):
        return None, None


def data_source(features: str | None, shards: str | None, source: str | None = None) -> str:
    """The one source a run reads, training and validation alike: "features" or "shards"."""
    if source is None:
        if features and shards:
            raise ConfigError(
                f"data.features={features} and data.shards={shards} are both set, but a run reads one source "
                "(training and validation alike): drop one, or say which with data.source=shards or "
                "data.source=features"
            )
        if not features and not shards:
            raise ConfigError(
                "set data.features (an HDF5 feature cache, `sevlm extract`) or data.shards "
                "(a shard folder, `sevlm shard --split train val`)"
            )
        return "features" if features else "shards"
    if source == "features" and not features:
        raise ConfigError("data.source=features but data.features is not set (the HDF5 cache of `sevlm extract`)")
    if source == "shards" and not shards:
        raise ConfigError("data.source=shards but data.shards is not set (the folder of `sevlm shard`)")
    return source


def feature_info(
    features: str | None, shards: str | None, source: str | None = None, read_timeout: float = 60.0
) -> FeatureInfo:
    """Where the visual tokens come from and what encoder produced them (from the artifact)."""
    source = data_source(features, shards, source)
    if source == "features":
        path = Path(features)
        if not path.exists():
            raise DataError(f"{path}: feature cache not found (data.features); build it with `sevlm extract`")
        store = FeatureStore(path)  # refuses incomplete or foreign files with its own message
        attrs = dict(store.attrs)
        store.close()
        T, D = _token_shape(attrs.get("token_shape"))
        return FeatureInfo("features", path, attrs.get("encoder"), T, D, _image_preprocess(attrs.get("encoder_config")))
    # a folder, a URL or a WebDataset URL pattern (sevlm.features.shards.locate)
    feats = read_manifest(shards, read_timeout)[1].get("features") or {}
    T, D = _token_shape(feats.get("token_shape"))
    return FeatureInfo("shards", shards, feats.get("encoder"), T, D, _image_preprocess(feats.get("encoder_config")))


def check_encoder(info: FeatureInfo, expected: str | None) -> None:
    if expected and info.encoder != expected:
        raise DataError(
            f"{info.path}: {info.source} were built with encoder {info.encoder!r} but the config names "
            f"{expected!r} (data.encoder); re-extract features with --encoder {expected} or change data.encoder"
        )


def check_image_preprocess(info: FeatureInfo, expected: str | None) -> None:
    if expected and info.image_preprocess != expected:
        raise DataError(
            f"{info.path}: {info.source} were extracted with image preprocessing {info.image_preprocess!r} but the "
            f"config names {expected!r} (data.image_preprocess); re-extract with `sevlm extract --image-preprocess "
            f"{expected}` or change data.image_preprocess"
        )


def check_run(cfg) -> tuple[FeatureInfo, str | None]:
    """What can be checked of `cfg` (a TrainConfig) before any process group, model or data loading
    work -> (the facts of its features, the lexicon setting to record: `resolve_lexicon`)."""
    data = cfg.data
    check_lexicon(data.lexicon)
    check_splits(data.dataset_dir, [data.train_split, data.val_split])
    lexicon = resolve_lexicon(data.lexicon, data.dataset_dir, data.train_split)
    info = check_features(data)
    check_decoder(cfg.model.decoder)
    return info, lexicon


def check_features(data) -> FeatureInfo:
    """The feature cache or shards that `data` (a DataConfig) names, checked against the config."""
    info = feature_info(data.features, data.shards, data.source, data.read_timeout)
    check_encoder(info, data.encoder)
    check_image_preprocess(info, data.image_preprocess)
    if info.source == "shards":
        check_shards(data.shards, data.dataset_dir, [data.train_split, data.val_split], data.read_timeout)
    return info


def check_shards(shards: str, dataset_dir: str, splits: list[str], read_timeout: float = 60.0) -> None:
    """Every split is in the shards, cut from this dataset (the sha256 of its manifest.json)."""
    manifest_path, m = read_manifest(shards, read_timeout)
    have = m.get("splits") or {}
    ours_path = Path(dataset_dir) / "manifest.json"
    ours = sha256_file(ours_path) if ours_path.exists() else None
    for split in splits:
        if split not in have:
            raise DataError(
                f"{manifest_path}: no shards for split {split!r} (have: {', '.join(have) or 'none'}); a run "
                f"from shards reads its validation split from them too: write it with "
                f"`sevlm shard --features F.h5 --dataset {dataset_dir} --split {split} --out {shards}`"
            )
        recorded = (have[split].get("dataset") or {}).get("manifest_sha256")
        if recorded and ours and recorded != ours:
            raise DataError(
                f"{manifest_path}: the {split!r} shards were written from another dataset "
                f"(dataset manifest sha256 {recorded[:12]}... != {ours_path}: {ours[:12]}...); "
                "rebuild them with `sevlm shard` or point data.dataset_dir at their dataset"
            )


CONTENT = "content-sha256:"  # a feature cache's fingerprint covers its content (older runs: attributes + size)


def legacy_features_fingerprint(path) -> str:
    """The fingerprint sevlm recorded for a feature cache before it covered the content."""
    store = FeatureStore(path)
    attrs = {k: str(v) for k, v in store.attrs.items()}
    store.close()
    return hashlib.sha256(json.dumps([attrs, Path(path).stat().st_size], sort_keys=True).encode()).hexdigest()


def data_fingerprint(data) -> dict[str, str]:
    """What a run trains on, as hashes (recorded in each checkpoint, compared on --resume): the
    split files, and the feature cache's content (`FeatureStore.content_sha256`: every row read
    through its checksums, so a damaged image is named here), or the shard manifest (which holds
    every shard's sha256)."""
    root = Path(data.dataset_dir)
    out = {
        f"{root / f'{s}.json'} (data.dataset_dir)": sha256_file(root / f"{s}.json")
        for s in (data.train_split, data.val_split)
    }
    if data_source(data.features, data.shards, data.source) == "features":
        store = FeatureStore(data.features)
        try:
            out[f"{data.features} (data.features)"] = CONTENT + store.content_sha256()
        finally:
            store.close()
    else:
        where, raw = manifest_bytes(data.shards, data.read_timeout)
        out[f"{where} (data.shards)"] = hashlib.sha256(raw).hexdigest()
    return out


RUN_CONFIG_KEY = "config.json (the run folder's)"


def check_unchanged(recorded: dict[str, str] | None, current: dict[str, str], run_dir) -> None:
    """Refuse to resume a run whose config or data changed since its checkpoint, naming what changed."""
    if recorded is None:  # no finished checkpoint: the run starts over
        return
    # older checkpoints keyed the run's config.json by its path as typed when the run started
    recorded = {
        (RUN_CONFIG_KEY if k.endswith("config.json") and "(data." not in k else k): v for k, v in recorded.items()
    }
    for k, v in recorded.items():  # a run from before content fingerprints: compare as it was recorded
        if k.endswith(" (data.features)") and not v.startswith(CONTENT) and str(current.get(k, "")).startswith(CONTENT):
            current = {**current, k: legacy_features_fingerprint(k[: -len(" (data.features)")])}
    changed = [k for k in sorted(set(recorded) | set(current)) if recorded.get(k) != current.get(k)]
    if changed:
        raise ConfigError(
            f"--resume {run_dir}: changed since the run started: {'; '.join(changed)}; restore them, "
            "or start a new run (another --out)"
        )


def check_split_features(dataset, split: str, features: str) -> None:
    """A split whose images are (nearly) all missing from the cache means a cache of another dataset."""
    missing = getattr(dataset, "missing", {}) or {}
    if len(dataset) == 0 and not missing:
        raise DataError(
            f"split {split!r} has no images (its split file is empty); prepare the dataset again "
            "or train with another data.val_split"
        )
    if len(dataset) == 0:
        first = next(iter(missing), None)
        raise DataError(
            f"{features}: none of the images of split {split!r} has features"
            + (f" (first: {first!r}: {missing[first]})" if first else "")
            + "; was the cache built from another dataset folder?"
        )


# ---- memory ----------------------------------------------------------------------------------
def available_memory_bytes(device: str) -> int | None:
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        return int(total)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _proc_status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (Linux) in bytes; None where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 where unknown)."""
    return _proc_status_bytes("VmRSS") or 0


def peak_resident_bytes() -> int | None:
    """The largest resident set of this process image. Linux's VmHWM, not getrusage's ru_maxrss:
    execve keeps ru_maxrss across the exec, so a child started by a large parent (a test runner, a
    study) would report the parent's peak as its own."""
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource  # Unix only

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak * (1 if sys.platform == "darwin" else 1024)
    except (ImportError, OSError):
        return None


def peak_memory_gib(device: str) -> float | None:
    """The measured peak of this process: the GPU's peak allocation, else the largest resident set."""
    if device == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    peak = peak_resident_bytes()
    return None if peak is None else round(peak / 2**30, 2)


def estimate_memory_bytes(
    n_params: int,
    micro_batch: int,
    seq_len: int,
    n_layer: int,
    n_embd: int,
    n_head: int,
    vocab_size: int,
    n_visual: int,
    visual_dim: int,
    precision: str,
    world_size: int = 1,
    zero_stage: int = 2,
) -> int:
    """Peak training memory of one rank: weights, grads, Adam state, activations, logits.

    Activations follow Korthikanti et al. (2022): ~ T*h*(34 + 5*a*T/h) bytes per sequence
    and layer in 16-bit, doubled for fp32, plus the cross-attention over the visual tokens.
    """
    half = precision in ("fp16", "bf16")
    wbytes = 2 if half else 4
    shard = world_size if zero_stage >= 1 else 1
    gshard = world_size if zero_stage >= 2 else 1
    states = n_params * wbytes  # working weights
    states += n_params * (4 if half else 0) // shard  # fp32 master copy
    states += n_params * 8 // shard  # Adam moments
    states += n_params * 4 // gshard + n_params * wbytes  # gradients (partitioned + the full working ones)
    seqs = 2 * micro_batch  # two annotations per image
    T, h, a, V = seq_len, n_embd, n_head, n_visual
    per_layer = T * h * (34 + 5 * a * T / h)  # self-attention + MLP
    per_layer += T * h * 10 + 5 * a * T * V + 4 * V * h  # cross-attention (queries over visual tokens)
    acts = seqs * n_layer * per_layer * (1 if half else 2)
    acts += micro_batch * V * visual_dim * 4  # the visual tokens themselves
    logits = seqs * T * vocab_size * 4 * 3  # logits, log-softmax and its gradient in fp32
    return int(states + acts + logits)


def estimate_model_memory(model, resolved, visual_tokens: int) -> int:
    """`estimate_memory_bytes` for an SEVLM model trained under `resolved` (sevlm.train.resolve)."""
    dec, cfg = model.decoder.config, model.config
    n_params = sum(p.numel() for p in model.parameters())
    stage = resolved.ds_config.get("zero_optimization", {}).get("stage", 0)
    return estimate_memory_bytes(
        n_params,
        resolved.micro,
        cfg.max_len,
        dec.n_layer,
        model.n_embd,
        dec.n_head,
        cfg.vocab_size,
        visual_tokens,
        cfg.visual_dim,
        resolved.precision,
        resolved.world,
        stage,
    )


def check_model_memory(model, resolved, visual_tokens: int, budget_gb: float | None) -> int:
    """What training `model` adds to this process, checked against the budget -> the process's
    expected peak: on a CPU what it holds already (torch, the data, the model) plus what training
    adds; on a GPU the device memory training takes."""
    added = estimate_model_memory(model, resolved, visual_tokens)
    check_memory(added, resolved.device, budget_gb, resolved.micro)
    return added + (resident_bytes() if resolved.device == "cpu" else 0)


def check_memory(estimate: int, device: str, budget_gb: float | None, micro_batch: int) -> None:
    budget = int(budget_gb * 2**30) if budget_gb else available_memory_bytes(device)
    if budget is None:
        return
    if estimate > 0.9 * budget:
        where = "max_memory_gb" if budget_gb else ("GPU memory" if device == "cuda" else "available RAM")
        raise ConfigError(
            f"schedule.micro_batch={micro_batch} needs about {estimate / 2**30:.1f} GiB per process but "
            f"{where} is {budget / 2**30:.1f} GiB; lower schedule.micro_batch and raise "
            "schedule.grad_accum to keep the global batch"
        )
