"""The SEVLM model: tensors in, a typed output out (imports only torch and transformers)."""

from sevlm.model.config import SEVLMConfig
from sevlm.model.contrastive import ContrastiveHead, cosine_score
from sevlm.model.emotion_encoder import EmotionEncoder
from sevlm.model.losses import masked_mean
from sevlm.model.model import SEVLM, DecodeState, SEVLMOutput

__all__ = [
    "SEVLM",
    "SEVLMConfig",
    "SEVLMOutput",
    "DecodeState",
    "EmotionEncoder",
    "ContrastiveHead",
    "cosine_score",
    "masked_mean",
]
