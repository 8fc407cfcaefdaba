"""Names shared by every part of sevlm: the 9 ArtEmis emotions in canonical order."""

EMOTIONS = (
    "amusement",
    "awe",
    "contentment",
    "excitement",
    "anger",
    "disgust",
    "fear",
    "sadness",
    "something else",
)
EMOTION_TO_INDEX = {name: i for i, name in enumerate(EMOTIONS)}
NUM_EMOTIONS = len(EMOTIONS)
SPLITS = ("train", "val", "test")
