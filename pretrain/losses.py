"""Loss functions of the pretraining methods, pure and shape-annotated."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .flow.geometry import warp


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL (Grill et al. 2020, Eq. 2): ||p~ - z~||^2 = 2 - 2 cos(p, z), mean over the batch.

    p: online prediction [B, C]; z: target projection [B, C] (no gradient flows into z).
    """
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


def dense_equivariance_loss(p1: torch.Tensor, z2: torch.Tensor, flow: torch.Tensor,
                            valid: torch.Tensor | None = None) -> torch.Tensor:
    """FlowE Eq. 5 (Algorithm 1): L = 1/|V| sum_{x in V} ||p~1(x) - p~2(x)||^2 with
    p2 = T^-1(z2), i.e. z2 sampled at x + flow(x).

    p1: online predictions of view 1 [B, C, H, W]; z2: target projections of view 2
    [B, C, H, W] (detached); flow: view 1 -> view 2 in pixels of this grid [B, 2, H, W];
    valid: bool [B, H, W], pixels whose correspondence exists (not occluded, in view 2);
    all pixels when None. Upsample p1 / z2 to the flow's grid (or downsample the flow, its
    vectors scaled) before calling. Each image is averaged over its own valid pixels and
    the batch over images, so the loss of a batch split across processes is the mean of
    the processes' losses (DistributedDataParallel's gradient average).
    """
    p2 = warp(z2.detach(), flow)
    per_pixel = (F.normalize(p1, dim=1) - F.normalize(p2, dim=1)).pow(2).sum(1)  # [B, H, W]
    if valid is None:
        return per_pixel.mean()
    valid = valid.to(per_pixel.dtype)
    return ((per_pixel * valid).sum((1, 2)) / valid.sum((1, 2)).clamp(min=1)).mean()


def pooled_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """PooDLe Eq. 2: L_pool = 1/K sum_k ||q(p_t,k) - p_t+dt,k||^2 with average pooling over
    the spatial dimensions, then normalisation (the BYOL loss of the pooled vectors).

    p: online predictions of the subcrops [B, K, C] (or [B, K, C, h, w], pooled here);
    z: target projections of the paired subcrops, same shape (detached).
    """
    if p.ndim == 5:
        p, z = p.mean((-2, -1)), z.mean((-2, -1))
    return byol_loss(p.flatten(0, 1), z.flatten(0, 1))


def infonce_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor,
                 temperature: float, reduction: str = "mean") -> torch.Tensor:
    """MoCo's InfoNCE (He et al. 2020, Eq. 1; authors' moco/builder.py):
    -log exp(q.k+ / t) / (exp(q.k+ / t) + sum_i exp(q.k_i / t)), mean over the batch
    (``reduction="none"``: per query [B]).

    q: queries [B, C]; k: their positive keys [B, C] (no gradient); queue: negative keys
    [C, K]; all L2-normalised. The positive is class 0 of a (1 + K)-way cross-entropy.
    """
    positive = (q * k.detach()).sum(dim=1, keepdim=True)  # [B, 1]
    negative = q @ queue.detach()  # [B, K]
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device),
                           reduction=reduction)


def pixel_consistency_loss(y: torch.Tensor, z: torch.Tensor,
                           positive: torch.Tensor) -> torch.Tensor:
    """PixPro's pixel-to-propagation consistency (Xie et al. 2021, Eq. 5) over the flow-
    tracked positives of PixPro-flow (Eq. 2): per image -2 sum_{(i, j) positive} cos(y_i,
    z_j) / |positives|, mean over the batch (authors' contrast/models/PixPro.py
    regression_loss: an image without positives adds 0, eps 1e-6).

    y: online propagated features of view 1 [N, C, h, w]; z: target projections of view 2
    [N, C, h', w'] (no gradient); positive: bool [N, h w, h' w'].
    """
    y = F.normalize(y.flatten(2), dim=1)  # [N, C, M1]
    z = F.normalize(z.detach().flatten(2), dim=1)  # [N, C, M2]
    cos = torch.bmm(y.transpose(1, 2), z)  # [N, M1, M2]
    pos = positive.to(cos.dtype)
    return -2 * ((cos * pos).sum((1, 2)) / (pos.sum((1, 2)) + 1e-6)).mean()


def dense_infonce_loss(q: torch.Tensor, k: torch.Tensor, q_feat: torch.Tensor,
                       k_feat: torch.Tensor, queue: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """DenseCL's dense contrastive loss (Wang et al. 2021, Eq. 2-3; authors'
    openselfsup/models/densecl.py L196-212): each query cell's positive is the key cell
    whose backbone feature is most similar (cosine argmax over the key grid), its negatives
    the dense queue; InfoNCE averaged over every cell of every image.

    q: dense query projections [N, D, S] and k: dense key projections [N, D, S] (S grid
    cells), both L2-normalised; q_feat / k_feat: backbone features [N, C, S], L2-normalised,
    for the correspondence only; queue: negative keys [D, K].
    """
    queries, positives = dense_pairs(q, k, q_feat, k_feat)
    return infonce_loss(queries, positives, queue, temperature)


def dense_pairs(q: torch.Tensor, k: torch.Tensor, q_feat: torch.Tensor,
                k_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DenseCL's (query cell, positive key cell) pairs of ``dense_infonce_loss``, as rows:
    queries [N S, D] and the key cells whose backbone features are most similar [N S, D]."""
    match = torch.bmm(q_feat.transpose(1, 2), k_feat).argmax(dim=2)  # [N, S]: key cell
    positive = torch.gather(k, 2, match[:, None].expand_as(k))  # [N, D, S]
    return q.transpose(1, 2).flatten(0, 1), positive.transpose(1, 2).flatten(0, 1)
