"""`sevlm retrieve` end to end on a tiny random model, a tiny feature cache and real tokenizer files."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sevlm.emotions import EMOTIONS


def retrieve_cli(argv: list[str]) -> int:
    from sevlm.commands import retrieve

    parser = argparse.ArgumentParser()
    retrieve.add_arguments(parser)
    return retrieve.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from sevlm.data.vad import VADLexicon
    from sevlm.emotions import dominant_emotion
    from sevlm.export import save_export
    from sevlm.features.hdf5_writer import extract_features
    from sevlm.model import SEVLM, SEVLMConfig
    from sevlm.text import SequenceBuilder
    from sevlm.vocab import load_tokenizer

    root = tmp_path_factory.mktemp("retrieve")
    images, ds = root / "images", root / "ds"
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2), ("test", 6)):
        data = {}
        for i in range(n):
            name = f"Style/{split}-{i}.jpg"
            (images / "Style").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(images / name)
            emos = [EMOTIONS[i % 9], EMOTIONS[i % 9], EMOTIONS[(i + 1) % 9]]
            data[f"Style/{split}-{i}"] = {
                "image_name": name,
                "emotions": emos,
                "explanations": [f"the {w} sky looks calm" for w in ("blue", "grey", "red")],
                "dominant_emotion": dominant_emotion(emos),
            }
        ds.mkdir(exist_ok=True)
        (ds / f"{split}.json").write_text(json.dumps(data))
    features = root / "f.h5"
    extract_features(images, ds, "tiny-random", features, batch_size=8, progress=False)
    tok = load_tokenizer()
    builder = SequenceBuilder(tok, VADLexicon.demo(), max_len=20)
    torch.manual_seed(0)
    cfg = dict(n_layer=1, n_embd=32, n_head=2, visual_dim=32, contrastive_dim=16, max_len=20, n_positions=32)
    model = SEVLM(SEVLMConfig(**cfg).with_token_ids(builder.ids))
    save_export(
        root / "run" / "export",
        model,
        tok,
        {"data": {"dataset_dir": str(ds), "features": str(features), "encoder": "tiny-random", "lexicon": "demo"}},
    )
    # the no-image control: no loss reads the image, so its image side stays untrained
    none = SEVLM(SEVLMConfig(**cfg, mode="none").with_token_ids(builder.ids))
    save_export(
        root / "run_none" / "export",
        none,
        tok,
        {"data": {"dataset_dir": str(ds), "features": str(features), "encoder": "tiny-random", "lexicon": "demo"}},
    )
    return root


def test_retrieve_scores_model_and_chance(tiny_run):
    out = tiny_run / "R.json"
    assert retrieve_cli(["--run", str(tiny_run / "run"), "--split", "test", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    for system in ("model", "chance"):
        i2t, t2i = r[system]["image_to_explanation"], r[system]["explanation_to_image"]
        assert (
            i2t["n_queries"] == 6 and i2t["gallery_size"] == 18 and t2i["n_queries"] == 18 and t2i["gallery_size"] == 6
        )
        assert all(0 <= i2t[f"R@{k}"] <= 1 for k in (1, 5, 10)) and t2i["R@10"] == 1.0  # only 6 images
        assert r[system]["image_to_emotion"]["n"] == 6
    assert r["model"]["index"] == {"kind": "flat", "device": "cpu", "size": 18, "dim": 16}
    assert r["chance"]["image_to_explanation"]["R@1"] == pytest.approx(3 / 18)  # 3 of 18 explanations per image
    assert r["chance"]["explanation_to_image"]["median_rank"] == 3.5 and "random_embeddings" not in r
    md = (tiny_run / "R.md").read_text()
    assert "| image to explanation | chance | 0.1667 |" in md and "| image to emotion |" in md
    assert (tiny_run / r["figures"]["recall_curves"]).exists()


@pytest.mark.slow
def test_retrieve_queries(tiny_run):
    out = tiny_run / "q.json"
    assert (
        retrieve_cli(["--run", str(tiny_run / "run"), "--out", str(out), "--query", "a calm blue sky", "--top", "3"])
        == 0
    )
    r = json.loads(out.read_text())["queries"][0]
    assert [x["rank"] for x in r["results"]] == [1, 2, 3] and r["results"][0]["image_id"].startswith("Style/test-")
    assert sorted(e["emotion"] for e in r["emotions"]) == sorted(EMOTIONS)
    scores = [x["score"] for x in r["results"]]
    assert scores == sorted(scores, reverse=True)
    img = tiny_run / "images" / "Style" / "test-2.jpg"
    assert (
        retrieve_cli(["--run", str(tiny_run / "run"), "--out", str(out), "--query-image", str(img), "--index", "hnsw"])
        == 0
    )
    r = json.loads(out.read_text())
    assert r["index"]["explanations"]["kind"] == "hnsw"
    r = r["queries"][0]
    assert len(r["results"]) == 10 and "explanation" in r["results"][0]


def test_retrieve_bad_image(tiny_run):
    from sevlm.errors import DataError

    with pytest.raises(DataError, match=r"nope\.jpg: file not found"):
        retrieve_cli(
            [
                "--run",
                str(tiny_run / "run"),
                "--out",
                str(tiny_run / "x.json"),
                "--query-image",
                str(tiny_run / "nope.jpg"),
            ]
        )


@pytest.mark.slow
def test_evaluate_run_generates_then_scores(tiny_run):
    from sevlm.cli import main

    out = tiny_run / "eval" / "REPORT.json"
    assert (
        main(["evaluate", "--run", str(tiny_run / "run"), "--split", "test", "--out", str(out)]) == 0
    )  # dataset from the run
    preds = (tiny_run / "eval" / "predictions_test.jsonl").read_text().splitlines()
    assert len(preds) == 6
    rep = json.loads(out.read_text())
    assert rep["n_predictions"] == 6 and rep["coverage"] == 1.0 and "BLEU-4" in rep and "emo_align" in rep


def test_emotion_embedding_ignores_the_filler_and_queries_are_normalised(tiny_run):
    from sevlm.evaluation import embedding as EM
    from sevlm.export import load_run

    run = load_run(tiny_run / "run")
    emo = EM.embed_emotions(run)
    # the tiny run has an alignment head: its emotion vectors, whatever the sequences' text
    np.testing.assert_allclose(emo, run.model.contrastive.align.embed_emotions().detach().numpy(), atol=1e-6)
    a = run.model.embed_texts(
        **run.builder._stack(
            [run.builder.encode("awe", EM.FILLER), run.builder.encode("awe", "a long and different explanation")]
        )
    )[0]
    np.testing.assert_allclose(a[0], a[1], atol=1e-5)  # the emotion segment precedes " because"
    assert emo.shape == (9, 16) and np.allclose(np.linalg.norm(emo, axis=1), 1, atol=1e-5)
    q = EM.embed_query_text(run, "a calm sky")
    assert q.shape == (1, 16) and np.linalg.norm(q) == pytest.approx(1, abs=1e-5)
    labelled = EM.embed_query_text(run, "the emotion is fear because a calm sky")
    direct = EM._embed_sequences(run, [("fear", "a calm sky")], 1, "t", False)
    np.testing.assert_allclose(labelled, direct, atol=1e-5)


@pytest.mark.slow
def test_query_reuses_the_cached_gallery_until_model_split_or_features_change(tiny_run, tmp_path, monkeypatch):
    import os
    import shutil

    from sevlm.evaluation import embedding as EM
    from sevlm.export import load_run, save_export

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run / "run" / "export", run_dir / "export")  # not the cache of earlier tests
    calls = []
    real = EM.embed_split
    monkeypatch.setattr(EM, "embed_split", lambda *a, **k: calls.append(k) or real(*a, **k))
    out = tmp_path / "q.json"

    def query(*extra):
        assert retrieve_cli(["--run", str(run_dir), "--out", str(out), "--query", "a calm blue sky", *extra]) == 0
        return json.loads(out.read_text())

    first, second = query(), query()
    assert (
        len(calls) == 1
        and not first["gallery_cache"]["images"]["reused"]
        and second["gallery_cache"]["images"]["reused"]
    )
    assert second["queries"] == first["queries"]
    assert second["gallery_cache"]["images"]["path"] == str(run_dir / "retrieval_cache" / "test-images")
    query("--no-cache")
    assert len(calls) == 2

    # an approximate index is cached too and gives the same answer when loaded
    hnsw = [query("--index", "hnsw") for _ in range(2)]
    assert len(calls) == 2 and hnsw[1]["queries"] == hnsw[0]["queries"]
    assert len(list((run_dir / "retrieval_cache" / "test-images").glob("index-*.faiss"))) == 1

    features = json.loads((run_dir / "export" / "config.json").read_text())["train"]["data"]["features"]
    st = os.stat(features)
    os.utime(features, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # features rewritten
    try:
        assert not query()["gallery_cache"]["images"]["reused"] and len(calls) == 3
    finally:
        os.utime(features, ns=(st.st_atime_ns, st.st_mtime_ns))

    run = load_run(run_dir)  # new weights, same everything else
    with torch.no_grad():
        next(run.model.parameters()).add_(0.5)
    save_export(run_dir / "export", run.model, run.tokenizer, run.config["train"])
    changed = query()
    assert not changed["gallery_cache"]["images"]["reused"] and len(calls) == 4
    assert query()["gallery_cache"]["images"]["reused"] and len(calls) == 4


def test_query_image_caches_the_explanation_gallery(tiny_run, tmp_path):
    img = tiny_run / "images" / "Style" / "test-2.jpg"
    out = tmp_path / "qi.json"
    cache = tmp_path / "cache"
    for reused in (False, True):
        assert (
            retrieve_cli(
                [
                    "--run",
                    str(tiny_run / "run"),
                    "--out",
                    str(out),
                    "--query-image",
                    str(img),
                    "--cache-dir",
                    str(cache),
                ]
            )
            == 0
        )
        r = json.loads(out.read_text())
        assert r["gallery_cache"] == {"explanations": {"path": str(cache / "test-explanations"), "reused": reused}}
    names = json.loads((cache / "test-explanations" / "names.json").read_text())
    assert len(names) == 18 and names[0] == {
        "image_id": "Style/test-0",
        "explanation": "the blue sky looks calm",
        "explanation_emotion": EMOTIONS[0],
    }


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--top", "0", "--query", "calm sky"], "--top: must be >= 1, got 0"),
        (["--query", ""], "--query: empty text"),
        (["--query", "   "], "--query: empty text"),
    ],
)
def test_retrieve_bad_arguments_are_one_line_errors(tiny_run, tmp_path, capsys, argv, message):
    from sevlm.cli import main

    out = tmp_path / "q.json"
    assert main(["retrieve", "--run", str(tiny_run / "run"), "--split", "test", "--out", str(out), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"sevlm retrieve: error: {message}" or (
        err.startswith(f"sevlm retrieve: error: {message}") and "\n" not in err
    )
    assert not out.exists()  # "" no longer falls through to scoring the whole split


def test_nan_features_name_the_image(tiny_run, tmp_path):
    import shutil

    import h5py

    from sevlm.errors import DataError

    features = tmp_path / "f.h5"
    shutil.copy(tiny_run / "f.h5", features)
    with h5py.File(features, "r+") as f:
        names = [n.decode() for n in f["names"][()]]
        row = names.index("Style/test-2.jpg")
        tok = f["tokens"][row]
        tok[0, 0] = np.nan
        f["tokens"][row] = tok
    with pytest.raises(DataError, match=r"f\.h5: image 'Style/test-2.jpg' has NaN or inf features"):
        retrieve_cli(
            [
                "--run",
                str(tiny_run / "run"),
                "--split",
                "test",
                "--features",
                str(features),
                "--out",
                str(tmp_path / "R.json"),
            ]
        )


def test_many_queries_answer_in_one_process_with_ground_truth_and_a_gallery_picture(tiny_run, tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from sevlm.evaluation import embedding as EM
    from sevlm.evaluation.query_picture import GALLERY_PANEL_PX

    calls = []
    real = EM.embed_split
    monkeypatch.setattr(EM, "embed_split", lambda *a, **k: calls.append(k) or real(*a, **k))
    (tmp_path / "img").mkdir()
    Image.open(tiny_run / "images" / "Style" / "test-4.jpg").save(tmp_path / "img" / "copy.png")
    qfile = tmp_path / "q.txt"
    qfile.write_text(
        "# probes\n\na calm blue sky\nimg/copy.png\ntext: a.jpg\n\n" + f"{tiny_run}/images/Style/test-2.jpg\n"
    )
    out, png = tmp_path / "q.json", tmp_path / "g.png"
    assert (
        retrieve_cli(
            [
                "--run",
                str(tiny_run / "run"),
                "--out",
                str(out),
                "--no-cache",
                "--top",
                "4",
                "--query",
                "the red sky",
                "--queries",
                str(qfile),
                "--gallery-image",
                str(png),
                "--images",
                str(tiny_run / "images"),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert [(q["source"], q["kind"], q["target"]) for q in r["queries"]] == [
        ("--query 1", "text", "images"),
        (f"{qfile} line 3", "text", "images"),
        (f"{qfile} line 4", "image", "explanations"),
        (f"{qfile} line 5", "text", "images"),
        (f"{qfile} line 7", "image", "explanations"),
    ]
    assert r["queries"][3]["query"] == "a.jpg" and r["queries"][2]["query"] == {
        "image": str(tmp_path / "img" / "copy.png")
    }
    assert len(calls) == 2  # one gallery per side, whatever the number of queries
    test = json.loads((tiny_run / "ds" / "test.json").read_text())
    for q in r["queries"]:
        assert len(q["results"]) == 4
        for res in q["results"]:
            rec = test[res["image_id"]]
            assert res["ground_truth"] == {
                "emotions": rec["emotions"],
                "dominant_emotion": rec["dominant_emotion"],
                "explanation": rec["explanations"][0],
            }
            if q["target"] == "explanations":
                k = rec["explanations"].index(res["explanation"])
                assert res["explanation_emotion"] == rec["emotions"][k]
    # a query image from the split is recognised, with its own ground truth; a copy elsewhere is not
    assert (
        r["queries"][4]["image_id"] == "Style/test-2"
        and r["queries"][4]["ground_truth"]["dominant_emotion"] == EMOTIONS[2]
    )
    assert "image_id" not in r["queries"][2]
    with PILImage.open(png) as im:  # one row per query, a column for the query and each of the 4 results
        assert im.size == (5 * GALLERY_PANEL_PX[0], 5 * GALLERY_PANEL_PX[1])
    assert r["gallery_image"] == str(png)


def test_image_to_image_search_finds_the_painting_itself(tiny_run, tmp_path):
    out = tmp_path / "q.json"
    img = tiny_run / "images" / "Style" / "test-3.jpg"
    assert (
        retrieve_cli(
            [
                "--run",
                str(tiny_run / "run"),
                "--out",
                str(out),
                "--no-cache",
                "--query-image",
                str(img),
                "--target",
                "images",
                "--top",
                "6",
            ]
        )
        == 0
    )
    q = json.loads(out.read_text())["queries"][0]
    assert q["target"] == "images" and len(q["results"]) == 6 and "explanation" not in q["results"][0]
    # the file is encoded as `extract` encoded it, so its gallery twin scores a cosine of 1
    assert q["results"][0]["image_id"] == "Style/test-3" and q["results"][0]["score"] == pytest.approx(1, abs=1e-4)
    assert q["results"][1]["score"] < 1 - 1e-3


def test_queries_warn_when_the_image_side_is_untrained(tiny_run, tmp_path, capsys):
    out = tmp_path / "q.json"
    base = ["--run", str(tiny_run / "run_none"), "--out", str(out), "--no-cache"]
    assert retrieve_cli([*base, "--query", "a calm sky"]) == 0  # text -> images: image side involved
    err = capsys.readouterr().err
    assert (
        "warning:" in err and "no-image control" in err and json.loads(out.read_text())["image_side_untrained_warning"]
    )
    assert retrieve_cli([*base, "--query", "a calm sky", "--target", "explanations"]) == 0  # text -> text only
    assert "no-image control" not in capsys.readouterr().err
    assert retrieve_cli(["--run", str(tiny_run / "run"), "--out", str(out), "--no-cache", "--query", "a calm sky"]) == 0
    assert "warning" not in capsys.readouterr().err and not json.loads(out.read_text())["image_side_untrained_warning"]


def test_read_queries_kinds_and_errors(tmp_path):
    from sevlm.errors import DataError
    from sevlm.evaluation.queries import Query, read_queries

    (tmp_path / "p.jpg").write_bytes(b"x")
    f = tmp_path / "q.txt"
    f.write_text("a sky\np.jpg\nimage: p.jpg\ntext: p.jpg\n# note\n")
    assert read_queries(f) == [
        Query("text", "a sky", f"{f} line 1"),
        Query("image", str(tmp_path / "p.jpg"), f"{f} line 2"),
        Query("image", str(tmp_path / "p.jpg"), f"{f} line 3"),
        Query("text", "p.jpg", f"{f} line 4"),
    ]
    f.write_text("a sky\nnope.png\n")
    with pytest.raises(DataError, match=rf"^{f} line 2: image file not found: nope.png$"):
        read_queries(f)
    f.write_text("# only a comment\n\n")
    with pytest.raises(DataError, match="no queries"):
        read_queries(f)
    with pytest.raises(DataError, match=r"missing.txt: queries file not found"):
        read_queries(tmp_path / "missing.txt")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--target", "images"], "--target/--gallery-image: give queries"),
        (["--query", "sky", "--query", " "], "--query 2: empty text"),
        (["--index", "ivf", "--nprobe", "0"], "--nprobe: must be >= 1, got 0"),
        (["--tune", "0.9"], "--tune: the flat index is exact"),
        (["--index", "hnsw", "--tune", "0.9", "--query", "sky"], "--tune: only when scoring a split"),
        (["--reference", "probe"], "--reference: only with --compare"),
    ],
)
def test_query_argument_errors_are_one_line(tiny_run, tmp_path, capsys, argv, message):
    from sevlm.cli import main

    out = tmp_path / "q.json"
    assert main(["retrieve", "--run", str(tiny_run / "run"), "--out", str(out), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sevlm retrieve: error: {message}") and "\n" not in err and not out.exists()


def test_scoring_writes_per_query_ranks_and_exported_embeddings_reproduce_them(tiny_run, tmp_path):
    import faiss

    out, export = tmp_path / "R.json", tmp_path / "emb"
    assert retrieve_cli(["--run", str(tiny_run / "run"), "--out", str(out), "--export-embeddings", str(export)]) == 0
    r = json.loads(out.read_text())
    lines = [json.loads(x) for x in (tmp_path / r["ranks_file"]).read_text().splitlines()]
    by = {
        d: [x for x in lines if x["direction"] == d]
        for d in ("image_to_emotion", "image_to_explanation", "explanation_to_image")
    }
    assert [len(v) for v in by.values()] == [6, 6, 18]
    m = r["model"]
    assert np.mean([x["rank"] <= 1 for x in by["image_to_explanation"]]) == pytest.approx(
        m["image_to_explanation"]["R@1"]
    )
    assert np.mean([x["rank"] <= 5 for x in by["explanation_to_image"]]) == pytest.approx(
        m["explanation_to_image"]["R@5"]
    )
    assert np.mean([x["rank"] == 1 for x in by["image_to_emotion"]]) == pytest.approx(m["image_to_emotion"]["accuracy"])

    ids = json.loads((export / "ids.json").read_text())
    images, texts, emotions = (np.load(export / f"{n}.npy") for n in ("images", "explanations", "emotions"))
    text_image = np.load(export / "explanation_image.npy")
    assert (
        images.shape == (6, 16) and texts.shape == (18, 16) and emotions.shape == (9, 16) and images.dtype == np.float32
    )
    assert ids["images"] == [x["image_id"] for x in by["image_to_explanation"]] and ids["emotions"] == list(EMOTIONS)
    assert ids["explanations"] == [x["explanation"] for x in by["explanation_to_image"]]
    assert np.load(export / "image_dominant.npy").tolist() == [
        EMOTIONS.index(x["dominant_emotion"]) for x in by["image_to_emotion"]
    ]

    # a FAISS flat index over the exported arrays ranks as `sevlm retrieve` did: 1 + the number of
    # wrong items scoring at least as high as the best correct one (the tiny run's explanations
    # repeat, so ties, which count against the query)
    def faiss_ranks(queries, gallery, correct):  # correct(q, gallery ids [N]) -> bool mask
        index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(gallery)
        scores, order = index.search(queries, len(gallery))  # [Q, N], best first
        ranks = []
        for q in range(len(queries)):
            ok = correct(q, order[q])
            ranks.append(1 + int((scores[q][~ok] >= scores[q][ok].max()).sum()))
        return ranks

    assert faiss_ranks(images, texts, lambda q, ids: text_image[ids] == q) == [
        x["rank"] for x in by["image_to_explanation"]
    ]
    assert faiss_ranks(texts, images, lambda q, ids: ids == text_image[q]) == [
        x["rank"] for x in by["explanation_to_image"]
    ]
    nearest = (images @ emotions.T).argmax(axis=1)
    assert [EMOTIONS[k] for k in nearest] == [x["nearest_emotion"] for x in by["image_to_emotion"]]
    # the report breaks the figures down and draws them
    per = m["image_to_emotion"]["per_emotion"]
    assert sum(g["n"] for g in per.values()) == 6 and sum(g.get("correct", 0) for g in per.values()) == round(
        m["image_to_emotion"]["accuracy"] * 6
    )
    assert set(r["figures"]) == {"recall_curves", "image_to_emotion_confusion", "embedding_map"}
    assert all((tmp_path / p).read_bytes()[:4] == b"\x89PNG" for p in r["figures"].values())
    assert "| dominant emotion | n | correct |" in (tmp_path / "R.md").read_text()


def test_recall_plot_draws_each_direction_and_system_apart(tiny_run, tmp_path, monkeypatch):
    from sevlm.evaluation import figures as RP

    figs = []
    real = RP._save
    monkeypatch.setattr(RP, "_save", lambda fig, path: figs.append(fig) or real(fig, path))
    result = {
        s: {d: {"recall_curve": {"1": 0.1, "10": 0.5}} for d in ("image_to_explanation", "explanation_to_image")}
        for s in ("model", "chance")
    }
    RP.plot_recall_curves(result, tmp_path / "r.png")
    lines = figs[0].axes[0].get_lines()
    styles = {(line.get_label(), line.get_color(), line.get_linestyle()) for line in lines}
    assert len(lines) == 4 and len({s[0] for s in styles}) == 4 and len({s[1:] for s in styles}) == 4
    assert len({line.get_color() for line in lines if "(model)" in line.get_label()}) == 2  # directions differ


@pytest.fixture(scope="module")
def trained_and_untrained(tmp_path_factory):
    """Two tiny runs on one dataset whose paintings are coloured by their dominant emotion: one
    whose image side (alignment head: image projection and emotion vectors) is trained on the
    train split's features, and the no-image control, whose image side is untrained."""
    from sevlm.data.vad import VADLexicon
    from sevlm.emotions import dominant_emotion
    from sevlm.export import save_export
    from sevlm.features.hdf5 import FeatureStore
    from sevlm.features.hdf5_writer import extract_features
    from sevlm.model import SEVLM, SEVLMConfig
    from sevlm.text import SequenceBuilder
    from sevlm.vocab import load_tokenizer

    root = tmp_path_factory.mktemp("compare")
    images, ds = root / "images", root / "ds"
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (9, 3))
    for split, per in (("train", 5), ("val", 1), ("test", 5)):
        data = {}
        for i in range(9 * per):
            k, name = i % 9, f"Art/{split}-{i}.png"
            pixels = np.clip(palette[k] + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            (images / "Art").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(images / name)
            emos = [EMOTIONS[k], EMOTIONS[k], EMOTIONS[(k + 1) % 9]]
            data[f"Art/{split}-{i}"] = {
                "image_name": name,
                "emotions": emos,
                "dominant_emotion": dominant_emotion(emos),
                "explanations": [f"the colour number {i} makes me feel {e}" for e in emos],
            }
        ds.mkdir(exist_ok=True)
        (ds / f"{split}.json").write_text(json.dumps(data))
    features = root / "f.h5"
    extract_features(images, ds, "tiny-random", features, batch_size=32, progress=False)
    tok = load_tokenizer()
    builder = SequenceBuilder(tok, VADLexicon.demo(), max_len=24)
    cfg = dict(n_layer=1, n_embd=32, n_head=2, visual_dim=32, contrastive_dim=16, max_len=24, n_positions=32)
    meta = {"data": {"dataset_dir": str(ds), "features": str(features), "encoder": "tiny-random", "lexicon": "demo"}}
    torch.manual_seed(0)
    model = SEVLM(SEVLMConfig(**cfg).with_token_ids(builder.ids))
    train = json.loads((ds / "train.json").read_text())
    store = FeatureStore(features)
    visual = torch.from_numpy(
        np.stack([store.tokens(store.index_of(r["image_name"])) for r in train.values()]).astype(np.float32)
    )
    store.close()
    target = torch.tensor([EMOTIONS.index(r["dominant_emotion"]) for r in train.values()])
    head = model.contrastive.align
    opt = torch.optim.Adam([*head.img_proj.parameters(), head.emotions], lr=0.05)
    for _ in range(150):  # image -> dominant emotion, as the alignment loss trains it
        loss = torch.nn.functional.cross_entropy(head.embed_image(visual) @ head.embed_emotions().T / 0.1, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_export(root / "trained" / "export", model, tok, meta)
    torch.manual_seed(0)
    save_export(
        root / "control" / "export", SEVLM(SEVLMConfig(**cfg, mode="none").with_token_ids(builder.ids)), tok, meta
    )
    return root


def test_compare_finds_a_trained_image_side_significantly_better(trained_and_untrained, tmp_path, capsys):
    root = trained_and_untrained
    out = tmp_path / "C.json"
    assert (
        retrieve_cli(
            ["--compare", str(root / "trained"), str(root / "control"), "--out", str(out), "--resamples", "500"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["split_images"] == 45 and [x["name"] for x in r["rows"]] == [str(root / "trained"), str(root / "control")]
    trained, control = r["rows"]
    assert trained["figures"]["image_to_emotion"] > 0.8 and "against_first" not in trained
    assert control["image_side_trained"] is False
    test = control["against_first"]["image_to_emotion"]
    assert test["delta"] == pytest.approx(
        control["figures"]["image_to_emotion"] - trained["figures"]["image_to_emotion"]
    )
    assert test["delta"] < -0.5 and test["p_bootstrap"] < 0.01 and test["p_permutation"] < 0.01
    assert set(control["against_first"]) == {
        "image_to_emotion",
        *(f"{d} R@{k}" for d in ("image_to_explanation", "explanation_to_image") for k in (1, 5, 10)),
    }
    # the figures are the scoring report's, and chance is the exact level
    single = tmp_path / "R.json"
    assert retrieve_cli(["--run", str(root / "trained"), "--out", str(single)]) == 0
    m = json.loads(single.read_text())["model"]
    assert trained["figures"]["image_to_emotion"] == pytest.approx(m["image_to_emotion"]["accuracy"])
    assert trained["figures"]["explanation_to_image R@5"] == pytest.approx(m["explanation_to_image"]["R@5"])
    assert trained["figures"]["image_to_explanation R@10"] == pytest.approx(m["image_to_explanation"]["R@10"])
    assert r["chance"]["image_to_emotion"] == pytest.approx(1 / 9)
    # one table: a row per run and chance, p-values in the cells
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2 + 1 and "(image side untrained)" in table[3] and "p=0.00" in table[3]
    assert (tmp_path / "C.md").read_text().count("| exact chance |") == 1


def test_compare_refuses_runs_whose_split_holds_other_images(trained_and_untrained, tiny_run, tmp_path):
    from sevlm.errors import DataError

    with pytest.raises(DataError, match=r"--compare needs the same images"):
        retrieve_cli(["--compare", str(trained_and_untrained / "trained"), str(tiny_run / "run"), "--resamples", "100"])


def test_compare_adds_the_reference_probes_as_rows(trained_and_untrained, tmp_path):
    root = trained_and_untrained
    out = tmp_path / "C.json"
    assert (
        retrieve_cli(
            [
                "--compare",
                str(root / "trained"),
                str(root / "control"),
                "--reference",
                "probe",
                "--out",
                str(out),
                "--resamples",
                "200",
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"].split(" (")[0] for r in rows[2:]] == [
        "reference: logistic-regression probe",
        "reference: linear CLIP-style",
    ]
    probe, clip = rows[2], rows[3]
    assert set(probe["figures"]) == set(probe["against_first"]) == {"image_to_emotion"}
    assert probe["figures"]["image_to_emotion"] > 0.8  # colours name the emotion: a linear probe reads them
    assert len(clip["figures"]) == 7 and all(0 <= v <= 1 for v in clip["figures"].values())
    assert "| reference: logistic-regression probe" in (tmp_path / "C.md").read_text()


def test_scoring_with_an_approximate_index_reports_recall_against_exact(tiny_run, tmp_path, capsys):
    out = tmp_path / "R.json"
    assert retrieve_cli(["--run", str(tiny_run / "run"), "--out", str(out), "--index", "ivfpq", "--pq-m", "4"]) == 0
    r = json.loads(out.read_text())
    m = r["model"]
    assert (
        m["index"]["kind"] == "ivfpq" and m["index"]["pq_m"] == 4 and m["index"]["pq_bits"] < 8
    )  # 18 texts: few codes
    for d in ("image_to_explanation", "explanation_to_image"):
        assert set(m[d]["recall_vs_exact"]) == {"R@1", "R@5", "R@10"}
        assert all(0 <= v <= 1 for v in m[d]["recall_vs_exact"].values())
    assert "search, recall against the exact search: R@1" in capsys.readouterr().out
    assert (
        "image to explanation: ivfpq search's recall against the exact search: R@1" in (tmp_path / "R.md").read_text()
    )
    assert (
        retrieve_cli(
            ["--run", str(tiny_run / "run"), "--out", str(out), "--index", "ivf", "--nprobe", "1", "--tune", "0.95"]
        )
        == 0
    )
    m = json.loads(out.read_text())["model"]
    tuned = m["image_to_explanation"]["tuned"]  # 18 explanations: one cell, so nprobe=1 is all of it
    assert (
        tuned["chosen"] == "nprobe=1"
        and tuned["reached"]
        and m["image_to_explanation"]["recall_vs_exact"]["R@10"] == 1.0
    )


def test_queries_on_an_approximate_index_report_recall_against_exact(tiny_run, tmp_path):
    out = tmp_path / "q.json"
    assert (
        retrieve_cli(
            [
                "--run",
                str(tiny_run / "run"),
                "--out",
                str(out),
                "--no-cache",
                "--index",
                "hnsw",
                "--query",
                "a calm sky",
                "--query",
                "a red sky",
                "--top",
                "3",
            ]
        )
        == 0
    )
    ix = json.loads(out.read_text())["index"]["images"]
    assert ix["kind"] == "hnsw" and ix["recall_vs_exact"] == {"R@1": 1.0, "R@3": 1.0}  # 6 images: HNSW is exact here
