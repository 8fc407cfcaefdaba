"""SEVLMConfig: every model setting in one dataclass whose defaults build a small model that runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    n_prefix: int = 4
    # Paper ablation switches (baseline = all False but use_segments).
    use_segments: bool = True
    use_vad_input: bool = True
    use_vad_head: bool = True
    use_contrastive: bool = True
    vad_layers: int = 3
    vad_ffn: int = 128
    vad_dropout: float = 0.1
    vad_fuse: str = "explanation"  # fuse VAD into "explanation" positions (METHOD.md) or "all"
    contrastive_scorer: str = "cosine"  # "cosine" or "mlp" (the paper's scorer)
    contrastive_dim: int = 256
    temperature: float = 0.1
    w_cl: float = 1.0
    w_vad: float = 1.0
    max_len: int = 30
    # Tokenizer-derived ids (filled by `with_token_ids`; 0 means "not set").
    vocab_size: int = 0
    pad_id: int = 0
    eos_id: int = 0
    emotion_id: int = 0
    explanation_id: int = 0
    because_id: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("cross", "prefix", "none"):
            raise ValueError(f"mode must be 'cross', 'prefix' or 'none', got {self.mode!r}")
        if self.contrastive_scorer not in ("cosine", "mlp"):
            raise ValueError(f"contrastive_scorer must be 'cosine' or 'mlp', got {self.contrastive_scorer!r}")
        if self.vad_fuse not in ("explanation", "all"):
            raise ValueError(f"vad_fuse must be 'explanation' or 'all', got {self.vad_fuse!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        extra = self.n_prefix if self.mode == "prefix" else 0
        if self.decoder is None and self.max_len + extra > self.n_positions:
            raise ValueError(f"max_len + prefix ({self.max_len + extra}) exceeds n_positions={self.n_positions}")

    def with_token_ids(self, ids: Any) -> "SEVLMConfig":
        """A copy with the ids of a tokenizer (any object with the attributes of text.TokenIds)."""
        from dataclasses import replace

        return replace(
            self,
            vocab_size=ids.vocab_size,
            pad_id=ids.pad,
            eos_id=ids.eos,
            emotion_id=ids.emotion,
            explanation_id=ids.explanation,
            because_id=ids.because,
        )
