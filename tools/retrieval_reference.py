"""Reference points for image-side retrieval: what the data allows, beside what a model retrieves.

On a dataset folder and its feature cache (the demo's, or any), two simple models of the
pooled image features, trained on the train split, scored on a test split exactly as
`sevlm retrieve` scores a run (`sevlm.evaluation.retrieval.retrieval_report`):

1. **Logistic-regression probe**: standardised pooled features -> dominant emotion
   (scikit-learn, C chosen on the validation split). Its accuracy on the test images with a
   dominant emotion is the ceiling a linear image embedding can reach for image->emotion.
2. **Linear CLIP-style model**: a linear map of the standardised pooled features, a linear map
   of the explanations' TF-IDF vectors, and a table of 9 emotion vectors, all into one
   normalised space, trained with a symmetric InfoNCE between each image and its explanations
   (in-batch negatives) plus image -> emotion cross-entropy against the image's vote shares.
   It gives image->explanation R@K and image->emotion accuracy from a model that sees only
   the pooled features and bag-of-words text.

With `--run RUN ...` each run's own figures (its `retrieval_<split>.json`, written by `sevlm
retrieve`, or computed when absent) are printed in the same table. The last line printed is one
JSON object with every figure.

    .venv/bin/python tools/retrieval_reference.py --dataset demo_out/dataset \\
        --features demo_out/features.h5 --run demo_out/run demo_out/run_no_image
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np  # noqa: E402

import sevlm  # noqa: F401  first: the passive OpenMP wait before torch loads OpenMP


@dataclass
class SplitData:
    pooled: np.ndarray  # [I, D] pooled image features
    dominant: np.ndarray  # [I] dominant emotion index, -1 for none
    votes: np.ndarray  # [I, 9] vote shares
    texts: list[str]  # [N] human explanations
    text_image: np.ndarray  # [N] image index of each explanation
    text_emotion: np.ndarray  # [N] the annotator's emotion


def load_split_data(dataset_dir, features, split: str) -> SplitData:
    """A split's pooled features (from the HDF5 cache), votes and explanations."""
    from sevlm.data.folder import load_split_records
    from sevlm.emotions import EMOTION_TO_INDEX, emotion_distribution
    from sevlm.evaluation.metrics import entry_dominant
    from sevlm.features.hdf5 import FeatureStore

    records = load_split_records(dataset_dir, split)
    store = FeatureStore(features)
    try:
        pooled = np.stack([store.pooled(store.index_of(r["image_name"])) for r in records.values()]).astype(np.float32)
    finally:
        store.close()
    dominant, votes, texts, text_image, text_emotion = [], [], [], [], []
    for k, (image_id, rec) in enumerate(records.items()):
        d = entry_dominant(rec, f"{dataset_dir}/{split}.json: image {image_id!r}")
        dominant.append(EMOTION_TO_INDEX[d] if d is not None else -1)
        votes.append(emotion_distribution(rec["emotions"]))
        texts += rec["explanations"]
        text_image += [k] * len(rec["explanations"])
        text_emotion += [EMOTION_TO_INDEX[e] for e in rec["emotions"]]
    return SplitData(pooled, np.asarray(dominant), np.asarray(votes, dtype=np.float32), texts,
                     np.asarray(text_image), np.asarray(text_emotion))


def logistic_probe(train: SplitData, val: SplitData, test: SplitData, cs=(1e-3, 1e-2, 1e-1, 1.0)) -> dict:
    """Standardised pooled features -> dominant emotion; C by validation accuracy (ties: the smaller C)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def known(s: SplitData):
        m = s.dominant >= 0
        return s.pooled[m], s.dominant[m]

    (xtr, ytr), (xva, yva), (xte, yte) = known(train), known(val), known(test)
    best = None
    for c in cs:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(xtr, ytr)
        acc = clf.score(xva, yva) if len(yva) else 0.0
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    val_acc, c, clf = best
    return {"accuracy": float(clf.score(xte, yte)), "n": int(len(yte)), "C": c, "val_accuracy": float(val_acc)}


def linear_clip(train: SplitData, test: SplitData, dim: int = 64, epochs: int = 300, temperature: float = 0.1,
                lr: float = 1e-2, seed: int = 0) -> dict:
    """The linear CLIP-style model (module docstring), scored like a run; `retrieval_report` of the test split."""
    import torch
    import torch.nn.functional as F
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import StandardScaler

    from sevlm.evaluation.retrieval import retrieval_report

    torch.manual_seed(seed)
    scaler = StandardScaler().fit(train.pooled)
    tfidf = TfidfVectorizer(min_df=2, sublinear_tf=True).fit(train.texts)

    def tensors(s: SplitData):
        return (torch.from_numpy(scaler.transform(s.pooled).astype(np.float32)),
                torch.from_numpy(tfidf.transform(s.texts).toarray().astype(np.float32)))

    (img_tr, txt_tr), (img_te, txt_te) = tensors(train), tensors(test)
    w_img = torch.nn.Linear(img_tr.shape[1], dim)
    w_txt = torch.nn.Linear(txt_tr.shape[1], dim)
    emotions = torch.nn.Parameter(torch.randn(train.votes.shape[1], dim) * 0.1)
    opt = torch.optim.Adam([*w_img.parameters(), *w_txt.parameters(), emotions], lr=lr, weight_decay=1e-4)
    text_image = torch.from_numpy(train.text_image)
    own = (text_image[None, :] == torch.arange(len(img_tr))[:, None]).float()  # [I, N] explanations of each image
    votes = torch.from_numpy(train.votes)
    for _ in range(epochs):  # full batch: the demo's train split is a few thousand texts
        i = F.normalize(w_img(img_tr), dim=-1)  # (I, E)
        t = F.normalize(w_txt(txt_tr), dim=-1)  # (N, E)
        e = F.normalize(emotions, dim=-1)  # (9, E)
        logits = i @ t.T / temperature  # (I, N)
        i2t = -(F.log_softmax(logits, dim=1) * own / own.sum(1, keepdim=True)).sum(1).mean()
        t2i = F.cross_entropy(logits.T, text_image)
        i2e = -(F.log_softmax(i @ e.T / temperature, dim=1) * votes).sum(1).mean()
        loss = (i2t + t2i) / 2 + i2e
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        report = retrieval_report(F.normalize(w_img(img_te), dim=-1).numpy(), F.normalize(w_txt(txt_te), dim=-1).numpy(),
                                  test.text_image, F.normalize(emotions, dim=-1).numpy(), test.dominant)
    report["settings"] = {"dim": dim, "epochs": epochs, "temperature": temperature, "lr": lr, "seed": seed,
                          "tfidf_vocabulary": len(tfidf.vocabulary_)}
    return report


def majority_share(dominant: np.ndarray) -> float:
    known = dominant[dominant >= 0]
    return float(np.bincount(known).max() / len(known))


def reference_points(dataset_dir, features, split: str = "test", seed: int = 0) -> dict:
    """Both reference models on `split`, with the split's majority-class share."""
    train, val = load_split_data(dataset_dir, features, "train"), load_split_data(dataset_dir, features, "val")
    test = load_split_data(dataset_dir, features, split)
    return {"split": split, "majority_class": majority_share(test.dominant), "chance": 1 / 9,
            "logistic_probe": logistic_probe(train, val, test), "linear_clip": linear_clip(train, test, seed=seed)}


def run_figures(run_dir, dataset_dir, features, split: str = "test") -> dict:
    """A run's retrieval report: its `retrieval_<split>.json` when `sevlm retrieve` wrote one, else computed."""
    saved = Path(run_dir) / f"retrieval_{split}.json"
    if saved.exists():
        return json.loads(saved.read_text(encoding="utf-8"))
    from sevlm.evaluation.retrieval import score_split
    from sevlm.export import load_run

    return score_split(load_run(run_dir), dataset_dir, split, features)


def row(name: str, report: dict) -> str:
    m = report["model"]
    i2x, i2e = m["image_to_explanation"], m["image_to_emotion"]["accuracy"]
    return f"| {name} | {i2e:.3f} | {i2x['R@1']:.3f} | {i2x['R@10']:.3f} | {m['explanation_to_image']['R@10']:.3f} |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, help="dataset folder (sevlm prepare --out)")
    ap.add_argument("--features", required=True, help="HDF5 feature cache (sevlm extract --out)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--run", nargs="*", default=[], help="run folders whose retrieval figures to print beside")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    ref = reference_points(args.dataset, args.features, args.split, args.seed)
    runs = {r: run_figures(r, args.dataset, args.features, args.split) for r in args.run}
    chance = ref["linear_clip"]["chance"]
    probe = ref["logistic_probe"]
    print(f"{args.split} split: {probe['n']} images with a dominant emotion; chance 0.111, "
          f"majority class {ref['majority_class']:.3f}")
    print("| model | image->emotion | image->expl R@1 | image->expl R@10 | expl->image R@10 |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| logistic-regression probe (C={probe['C']}) | {probe['accuracy']:.3f} | - | - | - |")
    print(row("linear CLIP-style (pooled features, TF-IDF)", ref["linear_clip"]))
    for name, rep in runs.items():
        print(row(name, rep))
    print(f"| exact chance | {1 / 9:.3f} | {chance['image_to_explanation']['R@1']:.3f} | "
          f"{chance['image_to_explanation']['R@10']:.3f} | {chance['explanation_to_image']['R@10']:.3f} |")
    print(json.dumps({"reference": ref, "runs": {k: v["model"] for k, v in runs.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
