"""SEVLM: a GPT-2 decoder (transformers' GPT2LMHeadModel, wrapped, never forked) that reads
cached visual tokens and a causal VAD emotion signal, plus VAD and contrastive heads.

Batches (from sevlm.text.SequenceBuilder), B sequences of length T over I images:
  input_ids, attention_mask, labels, segment_ids (B, T); vad, vad_target (B, T, 3);
  vad_mask, vad_target_mask (B, T); visual (I, N, D); seq_image (B,) image of each sequence;
  pair_valid, visual_negative (I,) for the contrastive loss.

With `w_align` > 0 the alignment head (model/contrastive.py) is the retrieval space, trained
with each image's vote shares (`image_votes`, (I, 9)); without it, the ternary head's projections.

Contrastive text features are masked means of final hidden states: the emotion feature over
the emotion segment (prompt + label), the explanation feature over the explanation's own
tokens (after " because"). With `contrastive_features="text"` each comes from a text-only
pass over those tokens alone (positions from 0), so an explanation's feature does not
depend on the label it was written under, nor on the image; retrieval embeds text this way
in every setting. With "image" they come from the image-conditioned training pass (the
authors').
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from sevlm.model.config import SEVLMConfig
from sevlm.model.contrastive import ContrastiveHead
from sevlm.model.decoder import build_decoder
from sevlm.model.emotion_encoder import EmotionEncoder, VADCache, reorder_vad_cache
from sevlm.model.losses import masked_mean, target_cross_entropy


@dataclass
class SEVLMOutput:
    """Losses, and the per-position logits on demand.

    The training loss needs the LM head only at target positions, so `logits` (B, T, V), the
    largest tensor of a step, is computed from `hidden` the first time it is read.
    """

    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    cl_loss: torch.Tensor | None
    vad_loss: torch.Tensor | None
    align_loss: torch.Tensor | None = None
    hidden: torch.Tensor | None = field(default=None, repr=False)  # (B, T, E) final hidden states
    lm_head: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    _logits: torch.Tensor | None = field(default=None, repr=False)

    @property
    def logits(self) -> torch.Tensor:
        """(B, T, V), computed once on first access (autograd applies as at that access)."""
        if self._logits is None:
            self._logits = self.lm_head(self.hidden)
        return self._logits


@dataclass
class DecodeState:
    """What incremental decoding carries between steps: both caches."""

    cache: Any  # transformers Cache (DynamicCache / EncoderDecoderCache)
    vad_cache: VADCache | None

    def reorder(self, index: torch.Tensor) -> "DecodeState":
        self.cache.reorder_cache(index)
        if self.vad_cache is not None:
            self.vad_cache = reorder_vad_cache(self.vad_cache, index)
        return self


class SEVLM(nn.Module):
    def __init__(self, config: SEVLMConfig, decoder_config: Any = None):
        super().__init__()
        if not config.vocab_size:
            raise ValueError(
                "SEVLMConfig has no tokenizer ids: use config.with_token_ids(TokenIds.from_tokenizer(tok))"
            )
        self.config = config
        self.decoder = build_decoder(config, decoder_config)
        E = self.decoder.config.n_embd
        self.n_embd = E
        if config.mode == "cross" and not config.visual_projection:
            if config.visual_dim != E:
                raise ValueError(
                    f"visual_projection=False: the visual tokens ({config.visual_dim} wide) go to "
                    f"cross-attention as they are, which needs the decoder's width {E}"
                )
            self.visual_proj = nn.Identity()  # the authors': CLIP tokens as they are
        elif config.mode == "cross":
            self.visual_proj = nn.Sequential(nn.Linear(config.visual_dim, E), nn.LayerNorm(E))
        elif config.mode == "prefix":
            # ClipCap: pooled visual feature -> n_prefix embeddings
            self.prefix_proj = nn.Sequential(
                nn.Linear(config.visual_dim, E * config.n_prefix // 2),
                nn.Tanh(),
                nn.Linear(E * config.n_prefix // 2, E * config.n_prefix),
            )
        if config.use_vad_input:
            self.emotion_encoder = EmotionEncoder(
                config.max_len,
                config.vad_layers,
                config.vad_ffn,
                config.vad_dropout,
                config.vad_residual,
                config.vad_bidirectional,
            )
            self.fusion = nn.Linear(E + 3, E)  # W_f [x_t ; v_t] + b
            with torch.no_grad():
                self.fusion.weight.normal_(0.0, 0.02)
                self.fusion.bias.zero_()
                if config.fusion_init == "identity":  # a pretrained decoder starts unchanged
                    self.fusion.weight[:, :E].copy_(torch.eye(E))
        if config.use_vad_head:
            self.vad_head = nn.Linear(E, 3)
        if config.use_contrastive:
            self.contrastive = ContrastiveHead(
                config.visual_dim,
                E,
                config.contrastive_dim,
                config.contrastive_scorer,
                config.temperature,
                raw_inputs=config.mlp_scorer_inputs == "raw",
                align=config.w_align > 0 and config.mode != "none",
                visual_negative=config.visual_negative,
            )

    # ---- pieces -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.decoder.transformer.wte.weight.device

    def embed_tokens(
        self,
        input_ids: torch.Tensor,  # (B, t)
        segment_ids: torch.Tensor | None = None,  # (B, t)
        vad: torch.Tensor | None = None,  # (B, t, 3)
        vad_cache: VADCache | None = None,
        start: int = 0,  # decoder position of the first token (prefix and cache included)
    ) -> tuple[torch.Tensor, VADCache | None]:
        """Input embeddings: word (+ segment) embedding, fused with the causal VAD encoding."""
        wte = self.decoder.transformer.wte
        x = wte(input_ids)  # (B, t, E)
        if self.config.use_segments and segment_ids is not None:
            x = x + wte(segment_ids)
        new_cache = None
        if self.config.use_vad_input:
            if vad is None:
                vad = x.new_zeros(*input_ids.shape, 3)
            v, new_cache = self.emotion_encoder(vad.to(x.dtype), vad_cache)  # (B, t, 3)
            if self.config.vad_fuse == "explanation+position":
                # The decoder adds the position embedding p after: feed W_f [x + p; v] + b - p.
                p = self.decoder.transformer.wpe(torch.arange(start, start + x.shape[1], device=x.device))
                fused = self.fusion(torch.cat([x + p, v], dim=-1)) - p
            else:
                fused = self.fusion(torch.cat([x, v], dim=-1))  # (B, t, E)
            if self.config.vad_fuse != "all" and segment_ids is not None:
                x = torch.where((segment_ids == self.config.explanation_id).unsqueeze(-1), fused, x)
            else:
                x = fused
        return x, new_cache

    def visual_context(self, visual: torch.Tensor | None, seq_image: torch.Tensor | None = None) -> dict:
        """What the decoder attends to, per sequence: encoder states (cross) or prefix embeddings."""
        if visual is None or self.config.mode == "none":
            return {}
        visual = visual.to(self.decoder.dtype)
        if self.config.mode == "cross":
            enc = self.visual_proj(visual)  # (I, N, E): projected once per image, shared by its sequences
            return {"encoder_hidden_states": enc if seq_image is None else enc[seq_image]}
        prefix = self.prefix_proj(visual.mean(dim=1)).view(visual.shape[0], self.config.n_prefix, self.n_embd)
        return {"prefix": prefix if seq_image is None else prefix[seq_image]}  # (B, P, E)

    def run_decoder(
        self,
        embeds: torch.Tensor,  # (B, t, E)
        attention_mask: torch.Tensor | None,
        context: dict,
        cache: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """Final hidden states (B, t, E) for the text positions, and the updated KV cache."""
        prefix = context.get("prefix")
        n_prefix = 0
        if prefix is not None and cache is None:  # the prefix enters once, at the first step
            n_prefix = prefix.shape[1]
            embeds = torch.cat([prefix, embeds], dim=1)  # (B, P+t, E)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask.new_ones(prefix.shape[:2]), attention_mask], dim=1)
        out = self.decoder.transformer(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            encoder_hidden_states=context.get("encoder_hidden_states"),
            cache=cache,
            use_cache=use_cache,
        )
        return out.last_hidden_state[:, n_prefix:], out.cache

    def feature_masks(self, segment_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """(emotion segment, explanation's own tokens) masks (B, T): the explanation segment
        minus its first position, the " because" that ends the label."""
        valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(segment_ids, dtype=torch.bool)
        exp = valid & (segment_ids == self.config.explanation_id)
        return valid & (segment_ids == self.config.emotion_id), exp & (exp.cumsum(1) > 1)

    def _text_pass(
        self, keep: torch.Tensor, input_ids: torch.Tensor, segment_ids: torch.Tensor, vad: torch.Tensor | None
    ) -> torch.Tensor:
        """Masked-mean final hidden state (B, E) of a text-only pass over the tokens where
        `keep` (B, T) is true, moved to the front of each row so their positions start at 0."""
        order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices  # kept tokens first, in order
        idx = order[:, : max(int(keep.sum(1).max()), 1)]  # (B, L)
        mask = keep.gather(1, idx)
        v = vad.gather(1, idx.unsqueeze(-1).expand(-1, -1, 3)) if vad is not None else None
        embeds, _ = self.embed_tokens(input_ids.gather(1, idx), segment_ids.gather(1, idx), v)
        attend = mask.clone()
        attend[:, 0] = True  # a row with no kept token attends somewhere (no NaN); its mean is still zero
        h, _ = self.run_decoder(embeds, attend.long(), {})
        return masked_mean(h, mask)

    def text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        segment_ids: torch.Tensor,
        vad: torch.Tensor | None = None,
    ):
        """Emotion and explanation features (B, E) from text-only passes (no image), each over
        its own tokens alone: the same explanation gives the same feature under any label."""
        emo_mask, exp_mask = self.feature_masks(segment_ids, attention_mask)
        return (
            self._text_pass(emo_mask, input_ids, segment_ids, vad),
            self._text_pass(exp_mask, input_ids, segment_ids, vad),
        )

    @torch.no_grad()
    def _retrieval_features(self, input_ids, attention_mask, segment_ids, vad) -> torch.Tensor:
        """Explanation features (B, E) as retrieval computes them: a text-only pass in eval mode
        (no dropout), detached, so the alignment head trains no decoder weight and learns the
        very features retrieval embeds."""
        was_training = self.training
        self.eval()
        try:
            _, exp_m = self.feature_masks(segment_ids, attention_mask)
            return self._text_pass(exp_m, input_ids, segment_ids, vad)
        finally:
            self.train(was_training)

    # ---- training forward ---------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        vad: torch.Tensor | None = None,
        vad_mask: torch.Tensor | None = None,
        vad_target: torch.Tensor | None = None,
        vad_target_mask: torch.Tensor | None = None,
        visual: torch.Tensor | None = None,
        seq_image: torch.Tensor | None = None,
        pair_valid: torch.Tensor | None = None,
        visual_negative: torch.Tensor | None = None,
        image_votes: torch.Tensor | None = None,  # (I, 9) vote shares, for the alignment loss
    ) -> SEVLMOutput:
        cfg = self.config
        context = self.visual_context(visual, seq_image)
        start = context["prefix"].shape[1] if "prefix" in context else 0
        embeds, _ = self.embed_tokens(input_ids, segment_ids, vad, start=start)
        h, _ = self.run_decoder(embeds, attention_mask, context)  # (B, T, E)

        lm_loss = cl_loss = vad_loss = align_loss = None
        if labels is not None:
            # The LM head (E x V, V ~ 50k) dominates a step: apply it only where the shifted
            # label is a target. Same mean as cross_entropy(ignore_index=-100) over all positions.
            target = labels[:, 1:]  # (B, T-1): the label of position t is token t+1
            keep = target != -100
            rows = self.decoder.lm_head(h[:, :-1][keep])  # (n, V), n = number of targets
            lm_loss = target_cross_entropy(rows.float(), target[keep])
        if cfg.use_vad_head and vad_target is not None and vad_target_mask is not None:
            pred = self.vad_head(h[:, :-1])  # (B, T-1, 3): the VAD of token t+1
            m = vad_target_mask[:, 1:].to(pred.dtype)  # (B, T-1)
            se = ((pred.float() - vad_target[:, 1:].float()) ** 2).mean(-1)  # (B, T-1)
            vad_loss = (se * m).sum() / m.sum().clamp(min=1.0)
        if cfg.use_contrastive and pair_valid is not None and visual is not None and segment_ids is not None:
            sees_image = cfg.mode != "none"  # the no-image control trains no image signal here either
            if cfg.contrastive_features == "image":
                emo_m, exp_m = self.feature_masks(segment_ids, attention_mask)
                emo_f, exp_f = masked_mean(h, emo_m), masked_mean(h, exp_m)
            else:
                emo_f, exp_f = self.text_features(input_ids, attention_mask, segment_ids, vad)
            img, emo, exp = self.contrastive.scorer_inputs(visual.to(h.dtype), emo_f, exp_f)
            cl_loss = self.contrastive.loss(
                img, emo, exp, seq_image, pair_valid, visual_negative, with_image=sees_image
            )
            if self.contrastive.align is not None and image_votes is not None:
                head = self.contrastive.align
                explanations = head.embed_explanation(
                    self._retrieval_features(input_ids, attention_mask, segment_ids, vad)
                )
                align_loss = head.loss(head.embed_image(visual.to(h.dtype)), explanations, seq_image, image_votes)

        loss = None
        parts = [(lm_loss, 1.0), (cl_loss, cfg.w_cl), (vad_loss, cfg.w_vad), (align_loss, cfg.w_align)]
        if any(p is not None for p, _ in parts):
            loss = sum(w * p for p, w in parts if p is not None)
        return SEVLMOutput(
            loss, lm_loss, cl_loss, vad_loss, align_loss=align_loss, hidden=h, lm_head=self.decoder.lm_head
        )

    # ---- inference ------------------------------------------------------------------------
    def decode_step(
        self,
        input_ids: torch.Tensor,  # (B, t): the prompt at the first step, then one token
        segment_ids: torch.Tensor | None,
        vad: torch.Tensor | None,  # (B, t, 3)
        context: dict,
        state: DecodeState | None = None,
    ) -> tuple[torch.Tensor, DecodeState]:
        """Next-token logits (B, V) after the new positions, reusing both caches; returns the updated state."""
        if state is not None:
            start = state.cache.get_seq_length()
        else:
            start = context["prefix"].shape[1] if "prefix" in context else 0
        embeds, vad_cache = self.embed_tokens(input_ids, segment_ids, vad, state.vad_cache if state else None, start)
        h, cache = self.run_decoder(embeds, None, context, state.cache if state else None, use_cache=True)
        return self.decoder.lm_head(h[:, -1]), DecodeState(cache, vad_cache)  # only the last position is needed

    @torch.no_grad()
    def embed_images(self, visual: torch.Tensor) -> torch.Tensor:
        """visual tokens (B, N, D) -> normalised (B, E) retrieval embeddings."""
        if not self.config.use_contrastive:
            raise ValueError("this model has no contrastive head (use_contrastive=False)")
        return self.retrieval_head().embed_image(visual.to(self.device, self.decoder.dtype)).float()

    @torch.no_grad()
    def embed_texts(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        segment_ids: torch.Tensor,
        vad: torch.Tensor | None = None,
        **_batch: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences (from SequenceBuilder) -> the ternary head's normalised (emotion (B, E),
        explanation (B, E)) projections: what its loss scores. Retrieval embeds with
        `embed_explanations` and `embed_emotions`, which are these without an alignment head."""
        if not self.config.use_contrastive:
            raise ValueError("this model has no contrastive head (use_contrastive=False)")
        emo, exp = self.contrastive.embed_text(*self.text_features(input_ids, attention_mask, segment_ids, vad))
        return emo.float(), exp.float()

    @torch.no_grad()
    def embed_explanations(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        segment_ids: torch.Tensor,
        vad: torch.Tensor | None = None,
        **_batch: Any,
    ) -> torch.Tensor:
        """Sequences -> normalised retrieval embeddings (B, E) of their explanations. Text only:
        the result depends on no image (nor on the label), so it can be indexed."""
        return self.retrieval_head().embed_explanation(
            self._retrieval_features(input_ids, attention_mask, segment_ids, vad)
        )

    @torch.no_grad()
    def embed_emotions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        segment_ids: torch.Tensor,
        vad: torch.Tensor | None = None,
        **_batch: Any,
    ) -> torch.Tensor:
        """The 9 emotions' normalised retrieval embeddings (9, E), given their sequences "the
        emotion is <label> because ..." in EMOTIONS order: the alignment head's emotion vectors,
        or without one the ternary head's projection of each sequence's emotion segment."""
        if self.retrieval_head() is self.contrastive:
            return self.embed_texts(input_ids, attention_mask, segment_ids, vad)[0]
        return self.contrastive.align.embed_emotions()

    def retrieval_head(self):
        """The head whose projections retrieval embeds with: the alignment head, else the ternary head."""
        if not self.config.use_contrastive:
            raise ValueError("this model has no contrastive head (use_contrastive=False)")
        return self.contrastive.align if self.contrastive.align is not None else self.contrastive

    # ---- optimiser ----------------------------------------------------------------------------
    def param_groups(
        self, decoder_lr: float, emotion_lr: float, weight_decay: float = 0.0, heads_lr: float | None = None
    ) -> list[dict]:
        """AdamW groups: decoder side at decoder_lr, VAD encoder at emotion_lr, fusion and heads at
        heads_lr (None: emotion_lr); no weight decay on biases, norms and embeddings."""
        head_prefixes = ("fusion.", "vad_head.", "contrastive.")
        groups: dict[tuple[str, bool], list] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            side = (
                "emotion"
                if name.startswith("emotion_encoder.")
                else "heads"
                if name.startswith(head_prefixes)
                else "decoder"
            )
            decay = p.ndim >= 2 and "wte" not in name and "wpe" not in name and ".pos." not in name
            groups.setdefault((side, decay), []).append(p)
        out = []
        for (side, decay), params in sorted(groups.items()):
            out.append(
                {
                    "name": f"{side}{'' if decay else '_no_decay'}",
                    "params": params,
                    "lr": {"decoder": decoder_lr, "emotion": emotion_lr}.get(
                        side, emotion_lr if heads_lr is None else heads_lr
                    ),
                    "weight_decay": weight_decay if decay else 0.0,
                }
            )
        return out

    def num_parameters(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name, p in self.named_parameters():
            counts[name.split(".")[0]] = counts.get(name.split(".")[0], 0) + p.numel()
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts
