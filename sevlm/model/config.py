"""SEVLMConfig: every model setting in one dataclass whose defaults build a small model that runs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

CHOICES = {
    "mode": ("cross", "prefix", "none"),
    "contrastive_scorer": ("cosine", "mlp"),
    "vad_fuse": ("explanation", "all", "explanation+position"),
    "fusion_init": ("identity", "normal"),
    "contrastive_features": ("text", "image"),
    "mlp_scorer_inputs": ("projected", "raw"),
    "vad_input": ("word", "piece"),
    "visual_negative": ("image", "explanation"),
}


# What a model config saved by an older sevlm meant for keys it lacks: the behaviour it was trained
# with, where that differs from today's default (an export or a run folder from before the
# alignment head has none, and loads with `w_align` 0).
SAVED_DEFAULTS = {"w_align": 0.0}


def saved_model_config(model: dict) -> dict:
    """A saved config's `model` section with SAVED_DEFAULTS filled in where it lacks them."""
    return {**SAVED_DEFAULTS, **model}


@dataclass
class SEVLMConfig:
    # Decoder: a GPT-2-family hub name or local directory, or None for a random GPT-2 of
    # the size below (tests, the CPU demo, benchmarks).
    decoder: str | None = None
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_positions: int = 64
    dropout: float = 0.1
    # How the decoder sees the image: "cross" (cross-attention in every block, the paper),
    # "prefix" (ClipCap-style prefix embeddings), "none" (text only: the no-image control).
    mode: str = "cross"
    visual_dim: int = 768
    # Visual tokens pass a linear + layer norm projection before cross-attention (ours); False
    # feeds them as they are (the authors': CLIP's 768-wide tokens into distilgpt2's 768-wide
    # cross-attention), which needs visual_dim == the decoder's width (checked where the width
    # is known: train.resolve.build_model_config and the SEVLM constructor).
    visual_projection: bool = True
    n_prefix: int = 4
    # Paper ablation switches (baseline = all False but use_segments).
    use_segments: bool = True
    use_vad_input: bool = True
    use_vad_head: bool = True
    use_contrastive: bool = True
    vad_layers: int = 3
    vad_ffn: int = 128
    vad_dropout: float = 0.1
    # The authors' VAD encoder adds each layer's input to its output again, around the
    # layer's own (post-norm) residuals; ours does not.
    vad_residual: bool = False
    # The authors' VAD encoder is bidirectional: every position attends to every other one of the
    # whole (padded) sequence, so position t sees the VAD of the token it predicts. Ours is causal.
    # Generation with it recomputes every position at every step (no cache), as the authors' did.
    vad_bidirectional: bool = False
    # The VAD input of a token: "word" (ours: the word as far as it is written at that token,
    # looked up exactly) or "piece" (the authors': each BPE piece looked up on its own,
    # lemmatised; the same values are the VAD head's target).
    vad_input: str = "word"
    # Where VAD is fused: "explanation" (explanation-segment token embeddings; the decoder adds
    # positions after), "all" (every position), "explanation+position" (the authors': the
    # explanation segment's token + position embedding goes through the fusion).
    vad_fuse: str = "explanation"
    # Fusion W_f [x; v] + b at start: "identity" (on x: a pretrained decoder starts unchanged)
    # or "normal" (N(0, 0.02), zero bias: the authors', a new layer of their GPT-2).
    fusion_init: str = "identity"
    # Where the contrastive text features come from: "text" (text-only passes, the explanation
    # tokens alone: what retrieval indexes) or "image" (the image-conditioned training pass,
    # the authors': the loss then also trains cross-attention and the visual projection).
    contrastive_features: str = "text"
    contrastive_scorer: str = "cosine"  # "cosine" or "mlp" (the paper's scorer)
    # What the MLP scorer reads: "projected" (the normalised projections retrieval uses) or
    # "raw" (the mean visual token and the mean hidden states, the authors').
    mlp_scorer_inputs: str = "projected"
    # The ternary loss's visual negative: "image" (ours: the anchor's text with another image of the
    # batch) or "explanation" (the authors': the anchor's image and emotion with the explanation in
    # the same pair slot of another image).
    visual_negative: str = "image"
    contrastive_dim: int = 256
    temperature: float = 0.1
    w_cl: float = 1.0
    w_vad: float = 1.0
    # The CLIP-style alignment loss of the contrastive head (model/contrastive.py): image ->
    # 9 emotions and image <-> explanation over the batch. 0 = the authors' ternary loss alone.
    w_align: float = 1.0
    max_len: int = 30
    bos_prompt: bool = False  # a BOS token before the prompt (the authors' layout)
    # Tokenizer-derived ids (filled by `with_token_ids`; 0 means "not set").
    vocab_size: int = 0
    pad_id: int = 0
    eos_id: int = 0
    emotion_id: int = 0
    explanation_id: int = 0
    because_id: int = 0

    def __post_init__(self) -> None:
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                names = [repr(a) for a in allowed]
                raise ValueError(f"{key} must be {', '.join(names[:-1])} or {names[-1]}, got {getattr(self, key)!r}")
        if self.mlp_scorer_inputs == "raw" and self.contrastive_scorer != "mlp":
            raise ValueError("mlp_scorer_inputs='raw' needs contrastive_scorer='mlp' (cosines need one shared space)")
        if not self.visual_projection and self.mode != "cross":
            raise ValueError(f"visual_projection=False is for mode='cross' (got mode={self.mode!r})")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        extra = self.n_prefix if self.mode == "prefix" else 0
        if self.decoder is None and self.max_len + extra > self.n_positions:
            raise ValueError(f"max_len + prefix ({self.max_len + extra}) exceeds n_positions={self.n_positions}")

    def with_token_ids(self, ids: Any) -> "SEVLMConfig":
        """A copy with the ids of a tokenizer (any object with the attributes of vocab.TokenIds)."""
        return replace(
            self,
            vocab_size=ids.vocab_size,
            pad_id=ids.pad,
            eos_id=ids.eos,
            emotion_id=ids.emotion,
            explanation_id=ids.explanation,
            because_id=ids.because,
        )
