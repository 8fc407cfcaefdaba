"""Data layer: ArtEmis ingestion (artemis), the VAD lexicon (vad) and the synthetic demo set (demo)."""

from sevlm.data.artemis import dominant_emotion, load_split, prepare_dataset

__all__ = ["dominant_emotion", "load_split", "prepare_dataset", "make_demo_data"]


def __getattr__(name):
    # demo pulls in PIL and numpy drawing code; load it only when asked for.
    if name == "make_demo_data":
        from sevlm.data.demo import make_demo_data

        return make_demo_data
    raise AttributeError(f"module 'sevlm.data' has no attribute {name!r}")
