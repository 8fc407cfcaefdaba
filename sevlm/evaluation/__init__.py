"""Evaluation: a predictions file scored (inputs, coco_caption, metrics, the Emo-Align classifiers
emo_classifier, emo_lstm and artemis_checkpoint) and reported (report, figures); retrieval on
embeddings (scoring, chance, retrieval with FAISS) and from a run (embedding, gallery, queries,
query_picture, comparison, reference); paired significance tests (significance) and the ablation
table (ablation)."""
