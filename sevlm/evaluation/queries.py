"""Many retrieval queries against one embedded gallery, each answer with its ground truth.

A query is a text (embedded as an explanation) or an image file (encoded with the run's image
encoder). Each searches one gallery side of a split: its `images` or its human `explanations`.
The galleries are embedded once per process (and cached in `cache_dir`, see
`sevlm.evaluation.gallery.load_gallery`), so 20 queries cost about what one does. Every
neighbour carries the ground truth of its painting (the annotators' emotions, the dominant
emotion, the first human explanation), so a user can judge it without opening `test.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sevlm.data.folder import load_split_records
from sevlm.emotions import EMOTIONS
from sevlm.errors import ConfigError, DataError
from sevlm.evaluation import embedding
from sevlm.evaluation.gallery import load_gallery, retrieval_space
from sevlm.evaluation.inputs import entry_dominant
from sevlm.evaluation.retrieval import IndexOptions
from sevlm.evaluation.scoring import normalize, recall_vs_exact

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TARGETS = ("images", "explanations")


@dataclass(frozen=True)
class Query:
    kind: str  # "text" | "image"
    value: str  # the text, or the image file's path
    source: str  # where it came from, for error messages: "--query 2", "q.txt line 3"

    @property
    def default_target(self) -> str:
        """Text searches paintings, an image searches explanations (the cross-modal directions)."""
        return "images" if self.kind == "text" else "explanations"


def read_queries(path: str | Path) -> list[Query]:
    """One query per line of a UTF-8 text file; blank lines and lines starting with '#' are skipped.

    A line is an image when it is prefixed `image:`, or is the path of an existing file, or has no
    space and ends in an image suffix (.jpg, .png, ...); `text:` forces a text. A relative image
    path is taken from the current folder, else from the file's folder.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: queries file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the queries file ({e})") from None
    out = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path} line {n}"
        low = line.lower()
        if low.startswith("text:"):
            kind, value = "text", line[5:].strip()
        elif low.startswith("image:"):
            kind, value = "image", line[6:].strip()
        elif (
            Path(line).is_file() or (path.parent / line).is_file() or (" " not in line and low.endswith(IMAGE_SUFFIXES))
        ):
            kind, value = "image", line
        else:
            kind, value = "text", line
        if not value:
            raise DataError(f"{where}: empty {kind} query")
        if kind == "image" and not Path(value).is_file():
            if not (path.parent / value).is_file():
                raise DataError(f"{where}: image file not found: {value}")
            value = str(path.parent / value)
        out.append(Query(kind, value, where))
    if not out:
        raise DataError(f"{path}: no queries (one text or image path per line)")
    return out


def ground_truth(record: dict, where: str) -> dict:
    """{"emotions", "dominant_emotion", "explanation"} of one split record (the first human explanation)."""
    exps = record.get("explanations") or []
    return {
        "emotions": list(record.get("emotions") or []),
        "dominant_emotion": entry_dominant(record, where),
        "explanation": exps[0] if exps else None,
    }


def _match_split_image(path: str, by_name: dict[str, str]) -> str | None:
    """The split's image id whose image_name is a path suffix of `path` (Style/painting.jpg), or None."""
    parts = Path(path).resolve().parts
    for k in range(1, min(4, len(parts)) + 1):
        image_id = by_name.get("/".join(parts[-k:]))
        if image_id is not None:
            return image_id
    return None


def embed_queries(run, queries: list[Query], batch_size: int = 64) -> np.ndarray:
    """[Q, E] L2-normalised embeddings, in order; a bad query fails here, before any gallery is embedded."""
    out: list[np.ndarray | None] = [None] * len(queries)
    for i, q in enumerate(queries):
        if q.kind == "text":
            if not q.value.strip():
                raise ConfigError(f"{q.source}: empty text; give the words to search for")
            out[i] = embedding.embed_query_text(run, q.value)
    images = [i for i, q in enumerate(queries) if q.kind == "image"]
    for s in range(0, len(images), batch_size):  # one encoder, batched
        chunk = images[s : s + batch_size]
        emb = embedding.embed_image_files(run, [queries[i].value for i in chunk])  # (b, E)
        for i, e in zip(chunk, emb):
            out[i] = e[None]
    return normalize(np.concatenate(out))


def search_queries(
    run,
    dataset_dir,
    split: str,
    features,
    queries: list[Query],
    target: str | None = None,
    top: int = 10,
    options=None,
    batch_size: int = 64,
    cache_dir=None,
    progress: bool = True,
) -> dict:
    """Answer every query against the split's galleries, each embedded once.

    `target` ("images" | "explanations") applies to every query; None: each query's default
    (text -> images, image -> explanations). Returns {"embedding_space", "index": {side: ...},
    "gallery_cache": {side: ...}, "queries": [{"query", "kind", "source", "target", "results":
    [{"rank", "score", "image_id"[, "explanation", "explanation_emotion"], "image_name", "ground_truth"}],
    "emotions": the 9 by score[, "image_id", "ground_truth" of a query image from the split]}]}.
    """
    options = options or IndexOptions()
    if not queries:
        raise ConfigError("no queries: give --query, --query-image or --queries FILE")
    if target is not None and target not in TARGETS:
        raise ConfigError(f"--target: expected one of {', '.join(TARGETS)}, got {target!r}")
    q_emb = embed_queries(run, queries, batch_size)  # [Q, E]
    records = load_split_records(dataset_dir, split)
    where = f"{dataset_dir}/{split}.json"
    truth = {i: ground_truth(r, f"{where}: image {i!r}") for i, r in records.items()}
    by_name = {r["image_name"]: i for i, r in records.items()}
    targets = [target or q.default_target for q in queries]
    galleries, indexes, caches = {}, {}, {}
    for side in dict.fromkeys(targets):
        gallery, emotions, names, cache, index = load_gallery(
            run,
            dataset_dir,
            split,
            features,
            side,
            options,
            batch_size=batch_size,
            cache_dir=cache_dir,
            progress=progress,
        )
        galleries[side], indexes[side], caches[side] = (gallery, emotions, names), index, cache
    answers, exact = [], {}
    for side in indexes:
        rows = [i for i, t in enumerate(targets) if t == side]
        scores, ids = indexes[side].search(q_emb[rows], top)  # [q, k] each
        gallery, emotions, names = galleries[side]
        if indexes[side].options.kind != "flat":  # what the approximate search missed, on these very queries
            exact[side] = recall_vs_exact(q_emb[rows], gallery, ids, sorted({1, min(top, 10), top}))
        emo_scores = q_emb[rows] @ emotions.T  # [q, 9]
        for j, i in enumerate(rows):
            results = [
                {
                    "rank": r + 1,
                    "score": float(s),
                    **names[g],
                    "image_name": records[names[g]["image_id"]]["image_name"],
                    "ground_truth": truth[names[g]["image_id"]],
                }
                for r, (s, g) in enumerate(zip(scores[j], ids[j]))
                if g >= 0
            ]
            answers.append(
                (
                    i,
                    {
                        "results": results,
                        "emotions": [
                            {"emotion": EMOTIONS[k], "score": float(emo_scores[j, k])}
                            for k in np.argsort(-emo_scores[j])
                        ],
                    },
                )
            )
    out_queries = []
    for i, answer in sorted(answers, key=lambda a: a[0]):
        q = queries[i]
        entry = {
            "query": q.value if q.kind == "text" else {"image": q.value},
            "kind": q.kind,
            "source": q.source,
            "target": targets[i],
            **answer,
        }
        if q.kind == "image" and (image_id := _match_split_image(q.value, by_name)) is not None:
            entry["image_id"], entry["ground_truth"] = image_id, truth[image_id]
        out_queries.append(entry)
    space = retrieval_space(run.model)
    uses_images = any(t == "images" for t in targets) or any(q.kind == "image" for q in queries)
    return {
        "embedding_space": space,
        "image_side_untrained_warning": uses_images and not space["image_side_trained"],
        "index": {
            s: {**ix.describe(), **({"recall_vs_exact": exact[s]} if s in exact else {})} for s, ix in indexes.items()
        },
        "gallery_cache": caches,
        "queries": out_queries,
    }
