"""The two inputs of `sevlm evaluate`, read and checked: the references (a split's grouped JSON,
as `sevlm prepare` writes it) and the predictions (JSON lines), lined up by image.

Bad input never yields a silent wrong score: broken JSON, missing keys, duplicate predictions
and (in strict mode) missing or unknown image ids raise a DataError naming the file and line.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sevlm.emotions import EMOTION_TO_INDEX, check_dominance_rule, dominant_emotion, dominant_from_distribution
from sevlm.errors import DataError
from sevlm.io import read_json


@dataclass(frozen=True)
class Reference:
    image_id: str
    emotions: tuple[str, ...]
    explanations: tuple[str, ...]
    dominant: str | None  # the dominant human emotion, or None when there is none
    image_name: str | None = None  # "<Style>/<painting>.jpg" under the dataset's images folder


@dataclass(frozen=True)
class Prediction:
    image_id: str
    emotion: str  # normalised (lower case, single spaces); may be outside EMOTIONS
    explanation: str
    line: int  # 1-based line in the predictions file, for error messages


def normalise_emotion(label: str) -> str:
    return " ".join(str(label).lower().split())


def entry_dominant(entry: dict, where: str = "", rule: str = "artemis") -> str | None:
    """An image's dominant emotion under `rule` (sevlm.emotions.DOMINANCE_RULES), recomputed
    from its votes: the `emotion_distribution` when present (`sevlm prepare` takes it over every
    vote, including annotations dropped for a too-short utterance). Without one, a stored
    `dominant_emotion` stands for the "artemis" rule, else the kept `emotions` are counted."""
    if entry.get("emotion_distribution") is not None:
        try:
            return dominant_from_distribution(entry["emotion_distribution"], rule)
        except (TypeError, ValueError, DataError) as e:
            raise DataError(f"{where}: bad emotion_distribution ({e})") from None
    if "dominant_emotion" in entry and rule == "artemis":
        dominant = entry["dominant_emotion"]
        if dominant is not None and dominant not in EMOTION_TO_INDEX:
            raise DataError(f"{where}: dominant_emotion {dominant!r} is not one of the 9 emotions")
        return dominant
    return dominant_emotion(entry.get("emotions") or [], rule)


def load_references(path: str | Path, dominance: str = "artemis") -> dict[str, Reference]:
    """Read the grouped `<split>.json` that `sevlm prepare` writes, checking every entry; each
    image's dominant emotion follows the `dominance` rule."""
    check_dominance_rule(dominance)
    path = Path(path)
    data = read_json(path)
    if isinstance(data, dict) and {"images", "annotations"} <= data.keys():
        grouped = path.with_name(path.name.replace("_coco.json", ".json")) if path.name.endswith("_coco.json") else None
        raise DataError(
            f"{path}: this is a COCO caption file (images + annotations, as `sevlm prepare` writes for "
            f"coco-caption), not the grouped references --references needs"
            + (f"; pass {grouped} instead" if grouped else "; pass the split's grouped JSON (e.g. DATASET/test.json)")
        )
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a non-empty JSON object {{image_id: entry}}")
    refs = {}
    for image_id, entry in data.items():
        where = f"{path}: image {image_id!r}"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: entry is not an object")
        emotions, explanations = entry.get("emotions"), entry.get("explanations")
        if not isinstance(explanations, list) or not explanations:
            raise DataError(f"{where}: 'explanations' must be a non-empty list")
        if not isinstance(emotions, list) or len(emotions) != len(explanations):
            raise DataError(f"{where}: 'emotions' must be a list as long as 'explanations'")
        for i, (emo, text) in enumerate(zip(emotions, explanations)):
            if emo not in EMOTION_TO_INDEX:
                raise DataError(f"{where}: annotation {i} has unknown emotion {emo!r}")
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: annotation {i} has an empty explanation")
        dominant = entry_dominant(entry, where, dominance)
        name = entry.get("image_name")
        refs[image_id] = Reference(
            image_id, tuple(emotions), tuple(explanations), dominant, name if isinstance(name, str) else None
        )
    return refs


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """json object_pairs_hook: a key given twice is an error, not a silent last-wins."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def load_predictions(path: str | Path) -> list[Prediction]:
    """Read JSON lines {"image_id", "emotion", "explanation"} (extra keys are ignored)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    preds: list[Prediction] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, object_pairs_hook=_no_duplicate_keys)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
            except _DuplicateKey as e:
                raise DataError(f"{path}:{lineno}: key {e.args[0]!r} appears twice; which one is meant?") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for key in ("image_id", "emotion", "explanation"):
                if key not in row:
                    raise DataError(f"{path}:{lineno}: missing key {key!r}")
                # emotion null: the generator found no valid label; scored as "not one of the 9"
                if not isinstance(row[key], str) and not (key == "emotion" and row[key] is None):
                    raise DataError(f"{path}:{lineno}: {key!r} must be a string, got {type(row[key]).__name__}")
            image_id = row["image_id"]
            if image_id in seen:
                raise DataError(
                    f"{path}:{lineno}: duplicate prediction for image {image_id!r} (first at line {seen[image_id]})"
                )
            seen[image_id] = lineno
            preds.append(Prediction(image_id, normalise_emotion(row["emotion"] or ""), row["explanation"], lineno))
    if not preds:
        raise DataError(f"{path}: no predictions")
    return preds


def align(
    predictions: list[Prediction],
    references: dict[str, Reference],
    predictions_path: str | Path = "<predictions>",
    strict: bool = True,
) -> tuple[list[Prediction], Counter]:
    """Keep predictions whose image is in the references; missing/unknown ids are errors when
    strict, otherwise dropped and counted (the report then also says the coverage)."""
    warnings: Counter = Counter()
    unknown = [p for p in predictions if p.image_id not in references]
    if unknown:
        if strict:
            p = unknown[0]
            raise DataError(
                f"{predictions_path}:{p.line}: image {p.image_id!r} is not in the references "
                f"({len(unknown)} such predictions; wrong split? rerun with --lenient to skip them)"
            )
        warnings["unknown_image_id"] = len(unknown)
    kept = [p for p in predictions if p.image_id in references]
    if not kept:
        raise DataError(f"{predictions_path}: no prediction matches an image of the references")
    predicted = {p.image_id for p in kept}
    missing = [i for i in references if i not in predicted]
    if missing:
        if strict:
            raise DataError(
                f"{predictions_path}: {len(missing)} of {len(references)} reference images have no "
                f"prediction, e.g. {missing[0]!r} (rerun with --lenient to score the rest)"
            )
        warnings["missing_prediction"] = len(missing)
    n_empty = sum(1 for p in kept if not p.explanation.strip())
    if n_empty:
        warnings["empty_explanation"] = n_empty
    n_bad = sum(1 for p in kept if p.emotion not in EMOTION_TO_INDEX)
    if n_bad:
        warnings["emotion_not_one_of_9"] = n_bad
    return kept, warnings


# Where the scored explanation starts (`sevlm evaluate --because`): after the first "because" (ours,
# as sevlm.generate.parse_output) or after the last one (the SEVLM authors' scoring: `split("because")[-1]`).
BECAUSE_RULES = ("first", "last")


def explanation_after(explanation: str, rule: str) -> str:
    """The explanation sevlm.generate.parse_output gave (text after the first "because"), cut after its last
    "because" with rule "last": "it is dark because she lost him" -> "she lost him"."""
    if rule not in BECAUSE_RULES:
        raise ValueError(f"because rule must be one of {', '.join(BECAUSE_RULES)}, got {rule!r}")
    if rule == "last":
        explanation = re.split(r"\bbecause\b", explanation, flags=re.IGNORECASE)[-1]
    return explanation.strip()
