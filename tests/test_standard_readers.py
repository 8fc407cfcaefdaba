"""Every artifact read by the tool its users already have, never by sevlm: transformers
(`GPT2LMHeadModel`, `AutoTokenizer`), DeepSpeed's `zero_to_fp32`, TensorBoard's
`EventAccumulator`, `webdataset` and `tarfile`, `h5py`, `faiss` and `pycocotools`.

One tiny run is built through the command line (prepare, extract, shard, train, retrieve). Each
artifact has a `check_*` function asserting what a user of the standard tool relies on, with
sevlm only as the reference the standard read is compared with; a few checks also run on a
broken copy of their artifact, where they must fail.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sevlm.cli import main

QUERY = "a calm blue sky"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """A tiny dataset, feature cache, shards (5 samples each), 3-step run and a retrieval cache."""
    root = tmp_path_factory.mktemp("standard_readers")
    raw, ds, feats, shards, run = root / "raw", root / "dataset", root / "features.h5", root / "shards", root / "run"
    steps = [
        ["demo-data", "--out", raw, "--n-images", 30, "--image-size", 32],
        [
            "prepare",
            "--artemis-csv",
            raw / "artemis_dataset_release_v0.csv",
            "--protocol",
            "sevlm",
            "--images",
            raw / "images",
            "--out",
            ds,
        ],
        ["extract", "--dataset", ds, "--encoder", "tiny-random", "--out", feats, "--workers", 0],
        *(
            ["shard", "--features", feats, "--dataset", ds, "--split", s, "--out", shards, "--samples-per-shard", 5]
            for s in ("train", "val")
        ),
        [
            "train",
            "--config",
            "tiny",
            "--out",
            run,
            f"data.dataset_dir={ds}",
            f"data.features={feats}",
            "schedule.max_steps=3",
            "schedule.val_every=0",
        ],
        # an approximate index is the kind kept on disk (a flat one is rebuilt from the gallery)
        [
            "retrieve",
            "--run",
            run,
            "--split",
            "test",
            "--out",
            root / "query.json",
            "--query",
            QUERY,
            "--index",
            "hnsw",
        ],
    ]
    for argv in steps:
        assert main([str(a) for a in argv]) == 0, argv
    return {"root": root, "dataset": ds, "features": feats, "shards": shards, "run": run, "query": root / "query.json"}


@pytest.fixture(scope="module")
def sevlm_run(built):
    from sevlm.export import load_run

    return load_run(built["run"])


def _json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _copy(src: Path, dst: Path) -> Path:
    (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    return dst


# ---- export/decoder: transformers' GPT2LMHeadModel ------------------------------------------------
def check_hf_decoder(export: Path, reference: dict):
    """Load export/decoder with stock transformers; its weights must be `reference`, sevlm's
    decoder state dict (lm_head tied to wte). -> the stock model."""
    from transformers import GPT2LMHeadModel

    stock, info = GPT2LMHeadModel.from_pretrained(str(export / "decoder"), output_loading_info=True)
    # transformers only warns about missing weights and initialises them at random: check it
    problems = {k: sorted(v) for k, v in info.items() if v}
    assert not problems, f"{export / 'decoder'}: GPT2LMHeadModel.from_pretrained reports {problems}"
    assert stock.config.add_cross_attention and not stock.training
    assert stock.lm_head.weight.data_ptr() == stock.transformer.wte.weight.data_ptr()  # tied, as in sevlm
    state = stock.state_dict()
    assert sorted(state) == sorted(reference), f"{export / 'decoder'}: other keys than sevlm's decoder"
    for k, v in state.items():
        assert torch.equal(v, reference[k]), f"{export / 'decoder'}: {k} differs from sevlm's decoder.{k}"
    vocab = export / "vocab.json"
    if vocab.exists():  # a corpus-vocabulary model: its rows are vocab.json's compact ids
        assert stock.config.vocab_size == len(_json(vocab)["gpt2_ids"]) + 1
    return stock


def _batch(run, built, n: int = 3) -> dict:
    """An eval batch of test images (features read with h5py) built by the run's own builder."""
    import h5py

    records = _json(built["dataset"] / "test.json")
    with h5py.File(built["features"], "r") as f:
        row = {name: i for i, name in enumerate(f["names"].asstr()[()])}
        samples = [
            {
                "image_id": k,
                "tokens": f["tokens"][row[r["image_name"]]],
                "emotions": r["emotions"],
                "explanations": r["explanations"],
            }
            for k, r in sorted(records.items())[:n]
        ]
    return run.builder.collate_eval(samples)


def test_hf_decoder_loads_into_stock_gpt2_with_sevlms_logits(built, sevlm_run):
    from sevlm.text import model_inputs

    model = sevlm_run.model
    stock = check_hf_decoder(built["run"] / "export", model.decoder.state_dict())
    batch = _batch(sevlm_run, built)
    with torch.no_grad():
        expected = model(**model_inputs(batch)).logits  # (B, T, V)
        # what SEVLM feeds its decoder: fused token embeddings and projected visual tokens
        embeds, _ = model.embed_tokens(batch["input_ids"], batch["segment_ids"], batch["vad"])
        enc = model.visual_context(batch["visual"], batch["seq_image"])["encoder_hidden_states"]
        got = stock(inputs_embeds=embeds, attention_mask=batch["attention_mask"], encoder_hidden_states=enc).logits
        torch.testing.assert_close(got, expected)
        # and given token ids, the stock model is sevlm's decoder itself
        ids = batch["input_ids"]
        torch.testing.assert_close(
            stock(input_ids=ids, encoder_hidden_states=enc).logits,
            model.decoder(input_ids=ids, encoder_hidden_states=enc).logits,
        )


def test_broken_hf_decoder_fails_the_check(built, sevlm_run, tmp_path):
    from safetensors.torch import load_file, save_file

    export = _copy(built["run"] / "export", tmp_path / "export")
    path = export / "decoder" / "model.safetensors"
    state = load_file(str(path))
    state["transformer.h.0.attn.c_proj.weight_renamed"] = state.pop("transformer.h.0.attn.c_proj.weight")
    save_file(state, str(path), metadata={"format": "pt"})
    with pytest.raises(AssertionError, match="missing_keys.*transformer.h.0.attn.c_proj.weight"):
        check_hf_decoder(export, sevlm_run.model.decoder.state_dict())


# ---- export/tokenizer: AutoTokenizer ---------------------------------------------------------------
def test_tokenizer_loads_with_autotokenizer_and_tokenizes_like_sevlm(built, sevlm_run):
    from transformers import AutoTokenizer

    from sevlm.vocab import EMOTION_TOKEN, EXPLANATION_TOKEN, PAD_TOKEN, load_tokenizer, sequence_text

    export = built["run"] / "export"
    tok = AutoTokenizer.from_pretrained(str(export / "tokenizer"))
    shipped = load_tokenizer()  # what the run was trained with (the tiny config names no tokenizer)
    assert len(tok) == len(shipped) == len(sevlm_run.tokenizer)
    assert tok.pad_token == PAD_TOKEN and {PAD_TOKEN, EMOTION_TOKEN, EXPLANATION_TOKEN} <= set(tok.all_special_tokens)
    for t in (PAD_TOKEN, EMOTION_TOKEN, EXPLANATION_TOKEN, tok.eos_token):
        assert tok.convert_tokens_to_ids(t) == shipped.convert_tokens_to_ids(t)
    texts = [
        "the emotion is awe because the vast golden sky makes me feel small",
        f"{EMOTION_TOKEN} the emotion is fear{EXPLANATION_TOKEN} because a dark storm<pad><|endoftext|>",
        "Ünïcode café — naïve 12,345 tokens!",
    ]
    assert tok(texts)["input_ids"] == shipped(texts)["input_ids"] == sevlm_run.tokenizer(texts)["input_ids"]
    # GPT-2 ids -> the model's ids with export/vocab.json read as plain JSON (compact id k+1 is gpt2_ids[k])
    compact = {g: i + 1 for i, g in enumerate(_json(export / "vocab.json")["gpt2_ids"])}
    emotion, explanation = "awe", "the sky is bright"
    gpt2 = tok(sequence_text(emotion, explanation), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    seq = sevlm_run.builder.encode(emotion, explanation)
    assert [compact.get(g, 0) for g in gpt2] == seq["input_ids"][: int(seq["attention_mask"].sum())].tolist()


# ---- checkpoints/: DeepSpeed's zero_to_fp32 ---------------------------------------------------------
def _exported_weights(export: Path) -> dict[str, tuple]:
    """{SEVLM key: (tensor, file)}: the union of the export's weights files, as config.json lists
    them with the prefix each file's keys take (decoder/model.safetensors: "decoder.")."""
    from safetensors.torch import load_file

    files = _json(export / "config.json")["weights"]
    assert files == {"model.safetensors": "", "decoder/model.safetensors": "decoder."}, f"{export}: weights {files}"
    out: dict[str, tuple] = {}
    for name, prefix in files.items():
        for k, v in load_file(str(export / name)).items():
            assert prefix + k not in out, f"{export / name}: {prefix + k} stored twice"
            out[prefix + k] = (v, export / name)
    return out


def _same_weights(consolidated: dict, export: Path, where: str) -> None:
    exported = _exported_weights(export)
    consolidated = dict(consolidated)
    tied = consolidated.pop("decoder.lm_head.weight")  # tied to wte; the export stores it once
    assert torch.equal(tied, consolidated["decoder.transformer.wte.weight"])
    assert sorted(consolidated) == sorted(exported), (
        f"{where}: keys differ from {export}'s weights: {sorted(set(consolidated) ^ set(exported))[:5]}"
    )
    for k, (v, file) in exported.items():
        assert torch.equal(consolidated[k].float(), v), f"{where}: {k} differs from {file}"


def check_checkpoint(run_dir: Path, export: Path) -> None:
    """zero_to_fp32 of the checkpoint the export was written at gives the export's weights."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt = run_dir / "checkpoints"
    tag = _json(ckpt / "pointers.json")["best_accuracy"]  # export/ is the best-accuracy model
    assert int(tag.removeprefix("step")) == _json(export / "config.json")["train"]["step"]
    _same_weights(get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag), export, f"{ckpt / tag}")


def test_zero_to_fp32_gives_the_exported_weights(built):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run_dir = built["run"]
    check_checkpoint(run_dir, run_dir / "export")
    # DeepSpeed's own `latest` file names the last tag (here the same step)
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == _json(ckpt / "pointers.json")["last"]
    _same_weights(get_fp32_state_dict_from_zero_checkpoint(str(ckpt)), run_dir / "export", f"{ckpt} (latest)")


def test_zero_to_fp32_script_gives_the_exported_weights(built, tmp_path):
    """The script DeepSpeed copies beside the checkpoints, as its users run it. Its default
    output (pytorch_model.bin), read with torch.load(weights_only=True): `--safe_serialization`
    refuses any model with tied weights (DeepSpeed's limitation, deepspeedai/DeepSpeed#8376)."""
    ckpt = built["run"] / "checkpoints"
    tag = _json(ckpt / "pointers.json")["best_accuracy"]
    out = subprocess.run(
        [sys.executable, str(ckpt / "zero_to_fp32.py"), str(ckpt), str(tmp_path / "fp32"), "-t", tag],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    state = torch.load(tmp_path / "fp32" / "pytorch_model.bin", weights_only=True)
    _same_weights(state, built["run"] / "export", "zero_to_fp32.py")


@pytest.mark.parametrize(
    "name, key",
    [("model.safetensors", "visual_proj.0.bias"), ("decoder/model.safetensors", "transformer.h.0.attn.c_proj.bias")],
)
def test_checkpoint_check_fails_on_other_weights(built, tmp_path, name, key):
    from safetensors.torch import load_file, save_file

    run_dir = _copy(built["run"], tmp_path / "run")
    path = run_dir / "export" / name
    state = load_file(str(path))
    state[key] = state[key] + 1e-3  # an export of other weights
    save_file(state, str(path))
    prefix = _json(run_dir / "export" / "config.json")["weights"][name]
    with pytest.raises(AssertionError, match=re.escape(f"{prefix + key} differs from {path}")):
        check_checkpoint(run_dir, run_dir / "export")


# ---- tb/: TensorBoard --------------------------------------------------------------------------------
def test_tensorboard_lists_the_scalars_of_log_jsonl(built):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = built["run"]
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    got = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    want: dict[str, list] = {}
    for line in (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "event" in row:  # the run's summary rows (done: best metrics) are log.jsonl only, not curves
            continue
        prefix = "val" if any(k.startswith("val_") for k in row) else "train"  # validation rows
        for k, v in row.items():  # `time` (every row's wall clock) is TensorBoard's own wall_time, not a scalar
            if (
                k not in ("step", "time")
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
            ):
                want.setdefault(f"{prefix}/{k}", []).append((row["step"], float(np.float32(v))))  # TB stores float32
    assert sorted(got) == sorted(want)
    assert {"train/loss", "train/lm_loss", "val/val_loss", "val/val_accuracy"} <= set(got)
    for tag in want:
        assert got[tag] == want[tag], tag


# ---- shards: webdataset and tarfile ------------------------------------------------------------------
SAMPLE_FILES = {"tokens.npy", "pooled.npy", "json"}
SAMPLE_JSON = {"image_id", "image_name", "emotions", "explanations", "emotion_distribution", "dominant_emotion"}


def check_shards(shard_dir: Path, split: str) -> dict[str, tuple]:
    """Every sample of a split read by tarfile and by a plain webdataset.WebDataset, as the manifest
    (read as JSON) lists them. -> {key: (tokens, pooled, json)}."""
    import webdataset as wds

    manifest = _json(shard_dir / "manifest.json")
    entry, (T, D) = manifest["splits"][split], manifest["features"]["token_shape"]
    samples: dict[str, tuple] = {}
    for sh in entry["shards"]:
        path = shard_dir / sh["name"]
        with tarfile.open(path) as tar:  # the plain tar format
            members = tar.getmembers()
            assert all(m.isfile() for m in members), path
            files: dict[str, dict[str, bytes]] = {}
            for m in members:
                key, ext = m.name.split(".", 1)
                files.setdefault(key, {})[ext] = tar.extractfile(m).read()
        assert len(files) == sh["num_samples"], (
            f"{path}: tarfile reads {len(files)} samples, the manifest lists {sh['num_samples']}"
        )
        for key, f in files.items():
            assert set(f) == SAMPLE_FILES, f"{path}: sample {key} holds {sorted(f)}"
            tokens, pooled = np.load(io.BytesIO(f["tokens.npy"])), np.load(io.BytesIO(f["pooled.npy"]))
            meta = json.loads(f["json"])
            assert tokens.dtype == pooled.dtype == np.float16 and tokens.shape == (T, D) and pooled.shape == (D,), key
            assert set(meta) == SAMPLE_JSON, f"{path}: sample {key} json keys {sorted(meta)}"
            samples[key] = (tokens, pooled, meta)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sh["sha256"] and path.stat().st_size == sh["bytes"], (
            path
        )
    assert len(samples) == entry["num_samples"], (
        f"{shard_dir}: {len(samples)} samples, the manifest says {entry['num_samples']}"
    )

    urls = [str(shard_dir / sh["name"]) for sh in entry["shards"]]
    read = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False).decode()}
    assert sorted(read) == sorted(samples), f"{shard_dir}: webdataset reads {len(read)} samples, tarfile {len(samples)}"
    for key, (tokens, pooled, meta) in samples.items():
        s = read[key]
        assert np.array_equal(s["tokens.npy"], tokens) and np.array_equal(s["pooled.npy"], pooled) and s["json"] == meta
    return samples


def test_shards_read_by_webdataset_and_tarfile(built):
    records = _json(built["dataset"] / "train.json")
    samples = check_shards(built["shards"], "train")
    by_id = {meta["image_id"]: meta for _, _, meta in samples.values()}
    assert sorted(by_id) == sorted(records)  # every image of the split once (none failed extraction)
    for image_id, meta in by_id.items():
        rec = records[image_id]
        assert {k: meta[k] for k in SAMPLE_JSON - {"image_id"}} == {k: rec[k] for k in SAMPLE_JSON - {"image_id"}}
    check_shards(built["shards"], "val")


def test_shard_missing_a_sample_fails_the_check(built, tmp_path):
    shards = _copy(built["shards"], tmp_path / "shards")
    path = shards / _json(shards / "manifest.json")["splits"]["train"]["shards"][0]["name"]
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    last = members[-1][0].name.split(".", 1)[0]
    with tarfile.open(path, "w") as tar:  # the shard rewritten without its last sample
        for m, data in members:
            if not m.name.startswith(last + "."):
                tar.addfile(m, io.BytesIO(data))
    with pytest.raises(AssertionError, match="tarfile reads 4 samples, the manifest lists 5"):
        check_shards(shards, "train")


# ---- features: h5py ------------------------------------------------------------------------------------
def check_features(path: Path, dataset_dir: Path) -> dict[str, tuple]:
    """tokens / pooled / names and the attributes, as the README documents them. -> {name: (tokens, pooled)}"""
    import h5py

    with h5py.File(path, "r") as f:
        for name in ("tokens", "pooled", "names", "failed/names", "failed/reasons"):
            assert name in f, f"{path}: no {name!r} dataset (has {sorted(f)})"
        names = list(f["names"].asstr()[()])
        failed = list(f["failed/names"].asstr()[()])
        T, D = (int(x) for x in f.attrs["token_shape"])
        n = len(names)
        assert f["tokens"].shape == (n, T, D) and f["tokens"].dtype == np.float16 and f["tokens"].chunks == (1, T, D)
        assert f["pooled"].shape == (n, D) and f["pooled"].dtype == np.float16
        assert names == sorted(names) and len(f["failed/reasons"]) == len(failed)
        a = f.attrs
        assert a["encoder"] == json.loads(a["encoder_config"])["name"] and isinstance(a["weights_source"], str)
        assert a["dtype"] == "float16" and isinstance(json.loads(a["preprocessing"]), dict)
        assert {"torch", "h5py", "numpy"} <= set(json.loads(a["versions"]))
        assert len(a["image_list_sha256"]) == 64 and bool(a["complete"])
        out = {name: (f["tokens"][i], f["pooled"][i]) for i, name in enumerate(names)}
    listed = {r["image_name"] for s in ("train", "val", "test") for r in _json(dataset_dir / f"{s}.json").values()}
    assert set(names) | set(failed) == listed, f"{path}: names differ from the dataset's images"
    return out


def test_features_read_by_h5py(built):
    features = check_features(built["features"], built["dataset"])
    assert len(features) == 30
    # the same numbers as the shards, each read by its own standard tool
    for tokens, pooled, meta in check_shards(built["shards"], "train").values():
        assert np.array_equal(features[meta["image_name"]][0], tokens)
        assert np.array_equal(features[meta["image_name"]][1], pooled)


def test_features_without_pooled_fail_the_check(built, tmp_path):
    import h5py

    path = _copy(built["features"], tmp_path / "features.h5")
    with h5py.File(path, "r+") as f:
        f.move("pooled", "pool")
    with pytest.raises(AssertionError, match="no 'pooled' dataset"):
        check_features(path, built["dataset"])


# ---- retrieval_cache/: FAISS ----------------------------------------------------------------------------
def test_faiss_index_read_by_faiss_gives_sevlms_neighbours(built, sevlm_run):
    import faiss

    from sevlm.evaluation.embedding import embed_query_text
    from sevlm.evaluation.retrieval import Index, IndexOptions
    from sevlm.evaluation.scoring import normalize

    folder = built["run"] / "retrieval_cache" / "test-images"
    (index_file,) = folder.glob("index-*.faiss")
    with np.load(folder / "gallery.npz") as z:
        gallery = z["gallery"]
    names = _json(folder / "names.json")
    index = faiss.read_index(str(index_file))
    assert (index.ntotal, index.d) == gallery.shape and len(names) == len(gallery)
    k = index.ntotal
    _, ids = index.search(gallery, k)
    _, sevlm_ids = Index.load(index_file, IndexOptions(kind="hnsw", use_gpu=False)).search(gallery, k)
    assert np.array_equal(ids, sevlm_ids)
    assert np.array_equal(ids, np.argsort(-(gallery @ gallery.T), axis=1))  # exact on a gallery this small
    # the query `sevlm retrieve` answered, searched in the index as faiss reads it
    q = normalize(embed_query_text(sevlm_run, QUERY))
    (answer,) = _json(built["query"])["queries"]  # one query asked
    top = answer["results"]
    _, ids = index.search(q, len(top))
    assert [names[i]["image_id"] for i in ids[0]] == [r["image_id"] for r in top]


# ---- <split>_coco.json: pycocotools ---------------------------------------------------------------------
def check_coco(dataset_dir: Path, split: str) -> None:
    from pycocotools.coco import COCO

    records = _json(dataset_dir / f"{split}.json")
    coco = COCO(str(dataset_dir / f"{split}_coco.json"))
    ids = sorted(coco.getImgIds())
    assert len(ids) == len(records), (
        f"{split}_coco.json: pycocotools finds {len(ids)} images, the split has {len(records)}"
    )
    mapping = coco.dataset["image_id_to_coco_id"]
    for image_id, rec in records.items():
        (img,) = coco.loadImgs(mapping[image_id])
        assert img["file_name"] == rec["image_name"]
        assert [a["caption"] for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))] == rec["explanations"]
    # predictions in COCO's result format, as coco-caption's evaluation loads them
    res = coco.loadRes([{"image_id": i, "caption": "a calm sky"} for i in ids])
    assert sorted(res.getImgIds()) == ids and len(res.getAnnIds()) == len(ids)


def test_coco_references_load_in_pycocotools(built):
    for split in ("train", "val", "test"):
        check_coco(built["dataset"], split)


def test_coco_without_images_fails_the_check(built, tmp_path):
    ds = _copy(built["dataset"], tmp_path / "dataset")
    coco = _json(ds / "test_coco.json")
    del coco["images"]
    (ds / "test_coco.json").write_text(json.dumps(coco), encoding="utf-8")
    with pytest.raises(AssertionError, match="pycocotools finds 0 images"):
        check_coco(ds, "test")
