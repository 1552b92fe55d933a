"""Label-free health of a pretraining run: is the representation collapsing?

- ``projection_std``: the std over the batch of L2-normalised projections, averaged over
  dimensions (SimSiam, Chen & He 2021, Sec. 4.1): about 1/sqrt(D) for spread-out
  projections, 0 for a collapsed (constant) output.
- ``rankme``: the effective rank of an embedding matrix (Garrido et al. 2023, "RankMe",
  Eq. 1): exp of the entropy of its normalised singular values; D for a full-rank
  isotropic matrix, r for r equal singular values, 1 for constant embeddings.
- ``collapse_warning``: one readable line when either says the run has collapsed.

The loop keeps the last embeddings in an ``EmbeddingBuffer`` (RankMe needs more rows than a
batch gives) and never adds any of these to the loss.
"""
from __future__ import annotations

import math

import torch

RANKME_EPS = 1e-7  # Garrido et al. 2023, Eq. 1
COLLAPSED_STD_RATIO = 0.1  # projection_std * sqrt(D) below this: the output is ~constant
COLLAPSED_RANK = 1.5  # RankMe below this: every embedding points the same way


def as_rows(x: torch.Tensor, max_rows: int | None = None, generator=None) -> torch.Tensor:
    """[N, D] vectors, or a dense map [N, D, H, W] as N*H*W vectors (rows subsampled to
    `max_rows` at random when given)."""
    x = x.detach().float()
    if x.ndim == 4:
        x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    if x.ndim != 2:
        raise ValueError(f"expected [N, D] or [N, D, H, W], got {tuple(x.shape)}")
    if max_rows is not None and x.shape[0] > max_rows:
        keep = torch.randperm(x.shape[0], generator=generator, device="cpu")[:max_rows]
        x = x[keep.to(x.device)]
    return x


def projection_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the std over rows of L2-normalised rows. z: [N, D] or
    [N, D, H, W] (pixels as rows)."""
    z = torch.nn.functional.normalize(as_rows(z), dim=1)
    if z.shape[0] < 2:
        return math.nan
    return float(z.std(dim=0).mean())


def rankme(z: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe (Garrido et al. 2023, Eq. 1) of embeddings z [N, D] (or [N, D, H, W]):
    p_k = sigma_k / ||sigma||_1 + eps, RankMe = exp(-sum_k p_k log p_k), <= min(N, D)."""
    s = torch.linalg.svdvals(as_rows(z).double())
    if s.sum() <= 0:
        return 1.0  # all-zero embeddings: one (degenerate) direction at most
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def collapse_warning(std: float, dim: int, rank: float | None = None) -> str | None:
    """A warning line when the projections are ~constant (std * sqrt(dim) < 0.1 of the
    spread-out value) or the embeddings span ~one direction (RankMe < 1.5); else None."""
    reasons = []
    if math.isfinite(std) and std * math.sqrt(dim) < COLLAPSED_STD_RATIO:
        reasons.append(f"projection std {std:.2e} is < {COLLAPSED_STD_RATIO:g}/sqrt({dim}) "
                       f"(spread-out: ~{1 / math.sqrt(dim):.3f})")
    if rank is not None and math.isfinite(rank) and rank < COLLAPSED_RANK:
        reasons.append(f"RankMe {rank:.2f} < {COLLAPSED_RANK:g}")
    if not reasons:
        return None
    return ("the representation is collapsing: " + "; ".join(reasons)
            + ". Check the learning rate, the EMA momentum and the augmentations.")


class EmbeddingBuffer:
    """The last `size` embedding rows seen (RankMe over several steps: a batch of 16 pooled
    vectors can have rank 16 at most)."""

    def __init__(self, size: int = 2048, per_step: int = 256, seed: int = 0):
        self.size, self.per_step = size, per_step
        self.rows: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def add(self, z: torch.Tensor) -> None:
        self.rows.append(as_rows(z, self.per_step, self.generator).cpu())
        while sum(r.shape[0] for r in self.rows) - self.rows[0].shape[0] >= self.size:
            self.rows.pop(0)

    def rankme(self) -> float:
        return rankme(torch.cat(self.rows)[-self.size:]) if self.rows else math.nan

    def clear(self) -> None:
        self.rows.clear()
