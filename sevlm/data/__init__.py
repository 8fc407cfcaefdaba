"""Data layer: annotation tables in (table), the dataset folder (folder), ArtEmis and generic
ingestion (artemis, generic) and the VAD lexicon (vad). The emotion rules live in
`sevlm.emotions`, the synthetic demo set in `sevlm.demo`."""

from sevlm.data.artemis import prepare_dataset
from sevlm.data.folder import load_split

__all__ = ["load_split", "prepare_dataset"]
