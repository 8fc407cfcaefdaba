"""Data layer: ArtEmis and generic ingestion (artemis, generic) and the VAD lexicon (vad).
The synthetic demo set lives in `sevlm.demo`."""

from sevlm.data.artemis import dominant_emotion, load_split, prepare_dataset

__all__ = ["dominant_emotion", "load_split", "prepare_dataset"]
