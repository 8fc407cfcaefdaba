"""The contrastive head: image, emotion and explanation features in one normalised space.

Ternary loss per anchor sequence s (image i, emotion e_s, explanation x_s), over
{positive, emotional negative, visual negative}:
- positive:           (i,     e_s, x_s)
- emotional negative: (i,     e_s, x_s')  x_s' = the same image's explanation written with a
                                          different emotion (the pair's other sequence)
- visual negative:    (i',    e_s, x_s)   the anchor's text with another image of the batch
                                          (a derangement), i.e. an explanation of another image
The visual negative swaps the image rather than the explanation so that, with the cosine
scorer (sum of the three pairwise cosines), the image-emotion term is trained too (with the
explanation swapped it would be the same for all three candidates and cancel).
Loss = -log softmax(scores)[positive], averaged over anchors of images with a valid pair.
With `visual_negative="explanation"` (the authors') the visual negative is (i, e_s, x_j): the
anchor's image and emotion with the explanation in the same pair slot (2i' or 2i'+1) of the
derangement's image i'.

The scorer reads the normalised projections that retrieval indexes, or, with the MLP scorer
and `raw_inputs` (the authors'), the unprojected features: the mean visual token and the
emotion / explanation hidden-state means. The projections are then not trained by this
loss, so retrieval embeddings from such a model are untrained.

Alignment head (ours, weight `w_align`; 0 = none, the authors' ternary loss alone): the
retrieval space. A projection of the mean visual token, a projection of the explanation's
text-only feature, and a table of 9 emotion vectors, trained CLIP-style over the batch:
- image -> emotion: cross-entropy of each image's cosines to the 9 emotion vectors against
  the image's vote shares over the 9 emotions;
- image <-> explanation: a symmetric InfoNCE between the batch's images and its
  explanations, an image's own explanations its positives, every other one a negative.
The explanation features reach it detached and as retrieval computes them (eval mode): it
trains nothing of the decoder, so the language model is not traded for retrieval.
Why a head of its own: the ternary loss gives each image one visual negative and never
compares it with the 9 emotions as retrieval does, and its image side collapsed; emotion vectors
of its own because the decoder's "the emotion is <label>" feature moves while the decoder
trains (the designs tried and their figures: docs/RESULTS.md, Retrieval).
Scores are computed in float32 whatever the training precision: bf16's 8 bits make a cosine
sum over a temperature of 0.1 too coarse to rank with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cosine_score(img: torch.Tensor, emo: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
    """Sum of pairwise cosines of normalised embeddings (..., E) -> (...)."""
    return (img * exp).sum(-1) + (img * emo).sum(-1) + (emo * exp).sum(-1)


def ternary_candidates(seq_image: torch.Tensor, pair_valid: torch.Tensor, visual_negative: torch.Tensor | None):
    """Index tensors for the candidates of every anchor sequence of a valid pair.

    Returns (anchors (A,), partner (A,), neg_image (A,) or None, image (A,)): `partner` is
    the other sequence of the anchor's image, `neg_image` the visual negative's image.
    Sequences come in pairs 2i, 2i+1 for image i (text.SequenceBuilder.collate).
    """
    B = seq_image.shape[0]
    anchors = torch.arange(B, device=seq_image.device)
    anchors = anchors[pair_valid[seq_image]]
    partner = anchors ^ 1  # 2i <-> 2i+1
    image = seq_image[anchors]
    neg = None
    n_img = pair_valid.shape[0]
    if n_img >= 2:
        if visual_negative is None or (visual_negative < 0).any():
            visual_negative = (torch.arange(n_img, device=seq_image.device) + 1) % n_img
        neg = visual_negative[image]
    return anchors, partner, neg, image


class _Embeddings(nn.Module):
    """What both heads embed alike, given their `img_proj` and `exp_proj`."""

    def embed_image(self, visual: torch.Tensor) -> torch.Tensor:
        """visual tokens (B, N, D) -> normalised float32 (B, E), from the mean of the tokens."""
        return F.normalize(self.img_proj(visual.mean(dim=1)).float(), dim=-1)

    def embed_explanation(self, exp_feat: torch.Tensor) -> torch.Tensor:
        """Explanation features (B, C) -> normalised float32 (B, E)."""
        return F.normalize(self.exp_proj(exp_feat).float(), dim=-1)


class AlignmentHead(_Embeddings):
    """The retrieval space of a model with `w_align` > 0 (module docstring)."""

    def __init__(self, visual_dim: int, text_dim: int, dim: int, temperature: float = 0.1, n_emotions: int = 9):
        super().__init__()
        self.img_proj = nn.Linear(visual_dim, dim)
        self.exp_proj = nn.Linear(text_dim, dim)
        self.emotions = nn.Parameter(torch.randn(n_emotions, dim) * 0.02)  # (9, E), EMOTIONS order
        self.temperature = temperature

    def embed_emotions(self) -> torch.Tensor:
        """The 9 emotion vectors, normalised float32 (9, E)."""
        return F.normalize(self.emotions.float(), dim=-1)

    def loss(
        self,
        img: torch.Tensor,  # (I, E) normalised image embeddings
        exp: torch.Tensor,  # (B, E) normalised explanation embeddings
        seq_image: torch.Tensor,  # (B,) image of each explanation
        votes: torch.Tensor,  # (I, 9) each image's vote shares
    ) -> torch.Tensor:
        """Image -> emotion cross-entropy against the vote shares, plus the symmetric image <->
        explanation InfoNCE (module docstring), in float32."""
        img, exp = img.float(), exp.float()
        i2e = -(F.log_softmax(img @ self.embed_emotions().T / self.temperature, dim=1) * votes.float()).sum(1).mean()
        logits = img @ exp.T / self.temperature  # (I, B)
        own = (seq_image[None, :] == torch.arange(len(img), device=img.device)[:, None]).float()  # (I, B)
        i2x = -(F.log_softmax(logits, dim=1) * own / own.sum(1, keepdim=True).clamp(min=1.0)).sum(1).mean()
        x2i = F.cross_entropy(logits.T, seq_image)
        return i2e + (i2x + x2i) / 2


class ContrastiveHead(_Embeddings):
    def __init__(
        self,
        visual_dim: int,
        text_dim: int,
        dim: int,
        scorer: str = "cosine",
        temperature: float = 0.1,
        raw_inputs: bool = False,
        align: bool = False,
        visual_negative: str = "image",
    ):
        super().__init__()
        self.visual_negative = visual_negative  # "image" (ours) or "explanation" (the authors')
        self.raw_inputs = raw_inputs  # MLP scorer only (SEVLMConfig checks)
        self.img_proj = nn.Linear(visual_dim, dim)
        self.emo_proj = nn.Linear(text_dim, dim)
        self.exp_proj = nn.Linear(text_dim, dim)
        self.scorer = scorer
        self.temperature = temperature
        if scorer == "mlp":
            # the paper's scorer: [f_img; f_emo; f_exp] -> 4 hidden layers -> 1
            h, width = text_dim, visual_dim + 2 * text_dim if raw_inputs else 3 * dim
            self.mlp = nn.Sequential(
                nn.Linear(width, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1),
            )  # fmt: skip
        self.align = AlignmentHead(visual_dim, text_dim, dim, temperature) if align else None

    def embed_text(self, emo_feat: torch.Tensor, exp_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Emotion and explanation features -> normalised float32 (B, E) each."""
        return F.normalize(self.emo_proj(emo_feat).float(), dim=-1), self.embed_explanation(exp_feat)

    def scorer_inputs(self, visual: torch.Tensor, emo_feat: torch.Tensor, exp_feat: torch.Tensor):
        """(image (I, .), emotion (B, .), explanation (B, .)) as `loss` takes them."""
        if self.raw_inputs:
            return visual.mean(dim=1), emo_feat, exp_feat
        return (self.embed_image(visual), *self.embed_text(emo_feat, exp_feat))

    def score(self, img: torch.Tensor, emo: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
        """Scores (...) in float32."""
        if self.scorer == "mlp":
            x = torch.cat([img, emo, exp], dim=-1)
            return self.mlp(x.to(self.mlp[0].weight.dtype)).squeeze(-1).float()
        return cosine_score(img.float(), emo.float(), exp.float()) / self.temperature

    def loss(
        self,
        img: torch.Tensor,  # (I, E) normalised image embeddings
        emo: torch.Tensor,  # (B, E) per sequence
        exp: torch.Tensor,  # (B, E)
        seq_image: torch.Tensor,  # (B,)
        pair_valid: torch.Tensor,  # (I,) bool
        visual_negative: torch.Tensor | None = None,  # (I,)
        with_image: bool = True,
    ) -> torch.Tensor:
        """The ternary loss; `with_image=False` (the no-image control) leaves the image out: its
        terms are zero, so only the emotional negative remains and no image signal is trained."""
        anchors, partner, neg, image = ternary_candidates(seq_image, pair_valid, visual_negative)
        if not with_image:
            img, neg = torch.zeros_like(img), None
        if anchors.numel() == 0:
            return img.sum() * 0.0 + emo.sum() * 0.0 + exp.sum() * 0.0  # keeps the graph, no signal
        e, x = emo[anchors], exp[anchors]
        cands = [self.score(img[image], e, x), self.score(img[image], e, exp[partner])]
        if neg is not None and self.visual_negative == "explanation":
            cands.append(self.score(img[image], e, exp[2 * neg + (anchors & 1)]))  # another image's text, same slot
        elif neg is not None:
            cands.append(self.score(img[neg], e, x))
        scores = torch.stack(cands, dim=1)  # (A, 2 or 3), positive first
        return F.cross_entropy(scores, torch.zeros(len(anchors), dtype=torch.long, device=scores.device))
