"""Data layer: annotation tables in (table), the dataset folder (folder), the prepare-time split
(split), ArtEmis and generic ingestion (artemis, generic) and the VAD lexicon (vad). The emotion
rules live in `sevlm.emotions`, the synthetic demo set in `sevlm.demo`. Nothing is imported here,
so reading a dataset or the lexicon does not load the ArtEmis preparation path."""
