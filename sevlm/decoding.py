"""Decoding settings, free of torch so that configs can be checked without loading a model.

`sevlm.generate` uses them (and re-exports `DecodingConfig`); the trainer's `decoding` section,
`sevlm generate` / `sevlm predict` flags and the predictions' sidecar file all hold one.

Repetition controls look at the explanation only: the tokens after the first " because" that
follows the prompt. The prompt and the label are fixed scaffolding, not text a reader reads:
counting them would forbid explanations such as "the emotion in her face" (a bigram of the
prompt) or a second "because the", and ArtEmis's samplers likewise drop repeated bigrams
within the generated utterance alone.

The defaults (greedy, no_repeat_ngram 2, repetition_penalty 1.2) are, among the settings with
no repeated bigram and greedy decoding's emotion accuracy, the one with the best validation
CIDEr on the demo. Greedy decoding gives paintings of one emotion near-identical explanations,
so the demo config samples the explanation (top_p 0.9, temperature 0.4, seeded) and spells only
the training explanations' words (`corpus_words`: a small corpus-vocabulary model otherwise
glues BPE pieces into non-words). The tables behind these choices: docs/RESULTS.md (Decoding)
and docs/PIPELINE_NOTES.md.
Sampling never touches the label: it is a classification and is decoded greedily; only tokens
after " because" are drawn. Beam search ranks whole sequences, so it may trade the label for a
likelier explanation (docs/REFERENCE.md has what that cost).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sevlm.errors import ConfigError

STRATEGIES = ("greedy", "beam", "sample")


@dataclass(frozen=True)
class DecodingConfig:
    """How `generate` picks tokens. The defaults are the demo's, chosen on its validation split.

    strategy: "greedy" (argmax), "beam" (beam search, `num_beams` >= 2) or "sample".
    max_new_tokens: cap on generated tokens (the model's max_len caps it too).
    no_repeat_ngram: an explanation never repeats an n-gram of this many tokens (0 = off).
    repetition_penalty: CTRL-style penalty on tokens already in the explanation (1.0 = off):
        positive logits are divided by it, negative ones multiplied.
    length_penalty: beams are ranked by summed log-probability / length**length_penalty
        (0 = no normalisation, which favours short outputs).
    top_k, top_p, temperature: sampling filters (0 / 1.0 / 1.0 = off); "sample" only.
    corpus_words: the explanation spells only words of the training explanations, piece by
        piece as training saw them (needs a run trained on a corpus vocabulary); the label and
        prompt are untouched.
    seed: the sampling seed; each image draws from its own stream seeded by (seed, image id), so
        an image gets the same explanation at any batch size and beside any batch-mates.
    """

    strategy: str = "greedy"
    num_beams: int = 1
    max_new_tokens: int = 25
    no_repeat_ngram: int = 2
    repetition_penalty: float = 1.2
    length_penalty: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    seed: int = 0
    corpus_words: bool = False

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ConfigError:
            return ConfigError(f"decoding.{field}: {why} (got {getattr(self, field)!r})")

        if self.strategy not in STRATEGIES:
            raise bad("strategy", f"must be one of {', '.join(STRATEGIES)}")
        if self.strategy == "beam" and self.num_beams < 2:
            raise bad("num_beams", "beam search needs at least 2 beams")
        if self.strategy != "beam" and self.num_beams != 1:
            raise bad("num_beams", f"{self.strategy} decoding keeps one sequence per image; use strategy 'beam'")
        if self.max_new_tokens < 1:
            raise bad("max_new_tokens", "must be >= 1")
        if self.no_repeat_ngram < 0:
            raise bad("no_repeat_ngram", "must be >= 0 (0 = off)")
        if not self.repetition_penalty > 0:
            raise bad("repetition_penalty", "must be > 0 (1.0 = off)")
        if self.top_k < 0:
            raise bad("top_k", "must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "must be in (0, 1] (1.0 = off)")
        if not self.temperature > 0:
            raise bad("temperature", "must be > 0")
        if self.strategy != "sample":
            for field in ("top_k", "top_p", "temperature"):
                if getattr(self, field) != getattr(DecodingConfig, field):
                    raise bad(field, "applies to strategy 'sample' only")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def updated(self, **changes) -> "DecodingConfig":
        """A copy with `changes` (None values ignored), keeping the strategy and the beam count
        consistent: a beam count alone picks "beam" (> 1) or "greedy" (1); a non-beam strategy
        alone drops the beams; "beam" alone keeps the beams or takes 3."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "num_beams" in changes and "strategy" not in changes:
            changes["strategy"] = "beam" if changes["num_beams"] > 1 else "greedy"
        elif changes.get("strategy") not in (None, "beam") and "num_beams" not in changes:
            changes["num_beams"] = 1
        elif changes.get("strategy") == "beam" and "num_beams" not in changes and self.num_beams < 2:
            changes["num_beams"] = 3
        if changes.get("strategy", self.strategy) != "sample":
            # sampling filters of a sampling base would otherwise make a greedy/beam override invalid
            for field in ("top_k", "top_p", "temperature"):
                changes.setdefault(field, getattr(DecodingConfig, field))
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for logs: the strategy and every option that is not off."""
        parts = [
            self.strategy
            if self.strategy != "beam"
            else f"beam({self.num_beams}, length_penalty={self.length_penalty:g})"
        ]
        if self.no_repeat_ngram:
            parts.append(f"no_repeat_ngram={self.no_repeat_ngram}")
        if self.repetition_penalty != 1.0:
            parts.append(f"repetition_penalty={self.repetition_penalty:g}")
        if self.strategy == "sample":
            parts.append(f"top_k={self.top_k} top_p={self.top_p:g} temperature={self.temperature:g} seed={self.seed}")
        if self.corpus_words:
            parts.append("corpus_words")
        return " ".join(parts)
