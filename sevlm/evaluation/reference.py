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

`sevlm retrieve --compare RUN ... --reference probe` puts both beside runs, with paired tests;
`tools/retrieval_reference.py` prints them on their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sevlm.data.folder import load_split_records
from sevlm.emotions import EMOTION_TO_INDEX, emotion_distribution
from sevlm.evaluation.inputs import entry_dominant
from sevlm.evaluation.retrieval import retrieval_report
from sevlm.features.hdf5 import FeatureStore


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
    return SplitData(
        pooled,
        np.asarray(dominant),
        np.asarray(votes, dtype=np.float32),
        texts,
        np.asarray(text_image),
        np.asarray(text_emotion),
    )


def logistic_probe(train: SplitData, val: SplitData, test: SplitData, cs=(1e-3, 1e-2, 1e-1, 1.0)) -> dict:
    """Standardised pooled features -> dominant emotion; C by validation accuracy (ties: the smaller C).
    "predicted" holds the emotion index it gives every test image (images without a dominant
    emotion included), for paired tests."""

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
    return {
        "accuracy": float(clf.score(xte, yte)),
        "n": int(len(yte)),
        "C": c,
        "val_accuracy": float(val_acc),
        "predicted": clf.predict(test.pooled).tolist(),
    }


def linear_clip(
    train: SplitData,
    test: SplitData,
    dim: int = 64,
    epochs: int = 300,
    temperature: float = 0.1,
    lr: float = 1e-2,
    seed: int = 0,
    embeddings: dict | None = None,
) -> dict:
    """The linear CLIP-style model (module docstring), scored like a run; `retrieval_report` of the
    test split. An `embeddings` dict receives its test embeddings ("image", "text", "emotion") and
    exact ranks ("ranks"), for paired tests (`sevlm.evaluation.comparison`)."""
    torch.manual_seed(seed)
    scaler = StandardScaler().fit(train.pooled)
    tfidf = TfidfVectorizer(min_df=2, sublinear_tf=True).fit(train.texts)

    def tensors(s: SplitData):
        return (
            torch.from_numpy(scaler.transform(s.pooled).astype(np.float32)),
            torch.from_numpy(tfidf.transform(s.texts).toarray().astype(np.float32)),
        )

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
        img, txt, emo = (F.normalize(x, dim=-1).numpy() for x in (w_img(img_te), w_txt(txt_te), emotions))
    ranks: dict = {}
    report = retrieval_report(img, txt, test.text_image, emo, test.dominant, ranks=ranks)
    if embeddings is not None:
        embeddings.update(image=img, text=txt, emotion=emo, ranks=ranks)
    report["settings"] = {
        "dim": dim,
        "epochs": epochs,
        "temperature": temperature,
        "lr": lr,
        "seed": seed,
        "tfidf_vocabulary": len(tfidf.vocabulary_),
    }
    return report


def majority_share(dominant: np.ndarray) -> float:
    known = dominant[dominant >= 0]
    return float(np.bincount(known).max() / len(known))


def reference_points(dataset_dir, features, split: str = "test", seed: int = 0, embeddings: dict | None = None) -> dict:
    """Both reference models on `split`, with the split's majority-class share; an `embeddings`
    dict receives the linear model's (`linear_clip`) and "image_ids", the split's images in order."""
    train, val = load_split_data(dataset_dir, features, "train"), load_split_data(dataset_dir, features, "val")
    test = load_split_data(dataset_dir, features, split)
    if embeddings is not None:
        embeddings["image_ids"] = list(load_split_records(dataset_dir, split))
    return {
        "split": split,
        "majority_class": majority_share(test.dominant),
        "chance": 1 / 9,
        "logistic_probe": logistic_probe(train, val, test),
        "linear_clip": linear_clip(train, test, seed=seed, embeddings=embeddings),
    }
