"""Evaluation: coco-caption metrics and emotion scores (metrics), the Emo-Align classifier
(emo_classifier), FAISS retrieval on embeddings (retrieval) and from a run (embedding),
paired significance tests (significance), and reports with plots (report)."""
