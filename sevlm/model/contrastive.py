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

The scorer reads the normalised projections that retrieval indexes, or, with the MLP scorer
and `raw_inputs` (the authors'), the unprojected features: the mean visual token and the
emotion / explanation hidden-state means. The projections are then not trained by this
loss, so retrieval embeddings from such a model are untrained.
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


class ContrastiveHead(nn.Module):
    def __init__(self, visual_dim: int, text_dim: int, dim: int, scorer: str = "cosine", temperature: float = 0.1,
                 raw_inputs: bool = False):
        super().__init__()
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

    def embed_image(self, visual: torch.Tensor) -> torch.Tensor:
        """visual tokens (B, N, D) -> normalised (B, E), from the mean of the tokens."""
        return F.normalize(self.img_proj(visual.mean(dim=1)), dim=-1)

    def embed_text(self, emo_feat: torch.Tensor, exp_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.emo_proj(emo_feat), dim=-1), F.normalize(self.exp_proj(exp_feat), dim=-1)

    def scorer_inputs(self, visual: torch.Tensor, emo_feat: torch.Tensor, exp_feat: torch.Tensor):
        """(image (I, .), emotion (B, .), explanation (B, .)) as `loss` takes them."""
        if self.raw_inputs:
            return visual.mean(dim=1), emo_feat, exp_feat
        return (self.embed_image(visual), *self.embed_text(emo_feat, exp_feat))

    def score(self, img: torch.Tensor, emo: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
        if self.scorer == "mlp":
            return self.mlp(torch.cat([img, emo, exp], dim=-1)).squeeze(-1)
        return cosine_score(img, emo, exp) / self.temperature

    def loss(
        self,
        img: torch.Tensor,  # (I, E) normalised image embeddings
        emo: torch.Tensor,  # (B, E) per sequence
        exp: torch.Tensor,  # (B, E)
        seq_image: torch.Tensor,  # (B,)
        pair_valid: torch.Tensor,  # (I,) bool
        visual_negative: torch.Tensor | None = None,  # (I,)
    ) -> torch.Tensor:
        anchors, partner, neg, image = ternary_candidates(seq_image, pair_valid, visual_negative)
        if anchors.numel() == 0:
            return img.sum() * 0.0 + emo.sum() * 0.0 + exp.sum() * 0.0  # keeps the graph, no signal
        e, x = emo[anchors], exp[anchors]
        cands = [self.score(img[image], e, x), self.score(img[image], e, exp[partner])]
        if neg is not None:
            cands.append(self.score(img[neg], e, x))
        scores = torch.stack(cands, dim=1)  # (A, 2 or 3), positive first
        return F.cross_entropy(scores, torch.zeros(len(anchors), dtype=torch.long, device=scores.device))
