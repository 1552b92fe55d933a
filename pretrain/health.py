"""Label-free health of a pretraining run: is the representation collapsing?

- ``spread``: 1 - the mean cosine between distinct rows (L2-normalised outputs of a head):
  1 for orthogonal outputs, 0 for a constant (collapsed) output. What a method's heads give
  at initialisation is far from 1 (a dense map's pixels, or pooled ReLU features, have mean
  pairwise cosines of 0.3-0.9 there), so the collapse test is relative to the run's own
  first step (``collapse_warning``).
- ``projection_std``: the std over the batch of L2-normalised projections, averaged over
  dimensions (SimSiam, Chen & He 2021, Sec. 4.1): about 1/sqrt(D) for spread-out
  projections, 0 for a collapsed output (about sqrt(spread / D)).
- ``rankme``: the effective rank of an embedding matrix (Garrido et al. 2023, "RankMe",
  Eq. 1): exp of the entropy of its normalised singular values; D for a full-rank
  isotropic matrix, r for r equal singular values, 1 for constant embeddings.
- ``queue_gap`` (contrastive methods with a queue): mean cos(q, k+) - mean cos(q, queue):
  0 when the positive is no closer than a negative (the loss then sits at its chance value
  log(K + 1)); meaningful once the queue holds only real keys (``queue_full`` = 1: before
  that, random initial keys make the loss low and rising, as in MoCo's own code).

Which head outputs a method's signals read is declared beside the method
(``Method.health_outputs``). The loop keeps the last embeddings in an ``EmbeddingBuffer``
(RankMe needs more rows than a batch gives) and never adds any of these to the loss.
"""
from __future__ import annotations

import math

import torch

RANKME_EPS = 1e-7  # Garrido et al. 2023, Eq. 1
COLLAPSED_RANK = 1.5  # RankMe below this: every embedding points the same way
# a head output has collapsed when its spread falls below this fraction of its spread at
# the run's first step, or below COLLAPSED_SPREAD (mean pairwise cosine > 0.999) at all
COLLAPSE_FRACTION = 0.1
COLLAPSED_SPREAD = 1e-3


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


def spread(z: torch.Tensor) -> float:
    """1 - the mean cosine over pairs of distinct rows of z [N, D] (or [N, D, H, W], pixels
    as rows): sum_{i != j} cos(z_i, z_j) = ||sum_i u_i||^2 - N for the unit rows u."""
    u = torch.nn.functional.normalize(as_rows(z).double(), dim=1)
    n = u.shape[0]
    if n < 2:
        return math.nan
    mean_cos = (u.sum(0).square().sum() - n) / (n * (n - 1))
    return float(1 - mean_cos)


def output_spreads(name: str, z: torch.Tensor) -> dict[str, float]:
    """``spread_<name>`` of a head's output; for a dense map [N, D, H, W] the pixels as rows
    (is every pixel the same?) and ``spread_<name>_pooled`` of its per-image mean (is every
    image the same?)."""
    out = {f"spread_{name}": spread(z)}
    if z.ndim == 4:
        out[f"spread_{name}_pooled"] = spread(z.detach().float().mean(dim=(2, 3)))
    return out


def collapse_warning(spreads: dict[str, float], first: dict[str, float],
                     rank: float | None = None) -> str | None:
    """A warning line when a head output's spread fell below COLLAPSE_FRACTION of its value
    at the run's first step (or below COLLAPSED_SPREAD), or the embeddings span ~one
    direction (RankMe < COLLAPSED_RANK); else None."""
    reasons = []
    for name, value in spreads.items():
        start = first.get(name, value)
        if math.isfinite(value) and value < max(COLLAPSED_SPREAD, COLLAPSE_FRACTION * start):
            reasons.append(f"{name} {value:.2e} (mean pairwise cosine {1 - value:.4f}; "
                           f"{start:.3f} at the first step)")
    if rank is not None and math.isfinite(rank) and rank < COLLAPSED_RANK:
        reasons.append(f"RankMe {rank:.2f} < {COLLAPSED_RANK:g}")
    if not reasons:
        return None
    return ("the representation is collapsing: " + "; ".join(reasons)
            + ". Check the learning rate, the EMA momentum and the augmentations.")


def queue_health(filled: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """The share of a queue of `size` keys that holds real keys (`filled` of them; random
    unit vectors before: the loss starts low and rises as they go), and the InfoNCE of a
    model at chance, log(K + 1)."""
    return {"queue_full": filled.float() / size,
            "chance_loss": torch.tensor(math.log(size + 1))}


def queue_gap(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
    """mean cos(q, k+) - mean cos(q, queue) of L2-normalised queries q [n, C], their keys
    k [n, C] and a queue [C, K] (a detached scalar)."""
    with torch.no_grad():
        q, k = q.detach().float(), k.detach().float()
        return (q * k).sum(1).mean() - (q @ queue.float()).mean()


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
