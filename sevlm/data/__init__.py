"""Data layer: ArtEmis and generic ingestion (artemis, generic) and the VAD lexicon (vad).
The synthetic demo set lives in `sevlm.demo`."""

from sevlm.data.artemis import prepare_dataset
from sevlm.data.folder import load_split
from sevlm.emotions import dominant_emotion

__all__ = ["dominant_emotion", "load_split", "prepare_dataset"]
