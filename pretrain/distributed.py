"""Data-parallel pretraining helpers (the process group itself: core.runtime): means over
ranks, gathering from ranks and synchronised BatchNorm on any device
(``torch.nn.SyncBatchNorm`` is CUDA-only; on CPU the statistics are summed with an
autograd-aware all-reduce instead)."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from core.runtime import rank_world


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    if rank_world()[1] > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= rank_world()[1]
    return x


@torch.no_grad()
def gather_from_ranks(x: torch.Tensor) -> torch.Tensor:
    """Every rank's x [n, ...] concatenated in rank order (no gradient; MoCo's
    ``concat_all_gather``); x itself outside torchrun."""
    world = rank_world()[1]
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of the ranks' output
    gradients (each rank's loss depends on every rank's input)."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics are those of the global batch across ranks: per-channel
    sums of x and x^2 and the count are all-reduced (with gradient), so N ranks of b samples
    normalise exactly like one process with N b samples."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-d input, got {x.dim()}-d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        C, dims = x.shape[1], [0, *range(2, x.dim())]
        stats = torch.cat([x.sum(dims), (x * x).sum(dims),
                           x.new_tensor([x.numel() // C], dtype=x.dtype)])
        stats = _AllReduceSum.apply(stats)
        count = stats[-1]
        mean = stats[:C] / count
        var = stats[C:2 * C] / count - mean * mean
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
        shape = [1, C] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `module` synchronised across ranks (SyncBatchNorm on CUDA)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            bn = AllReduceBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            bn.weight.requires_grad_(child.weight.requires_grad)
            bn.bias.requires_grad_(child.bias.requires_grad)
            setattr(module, name, bn)
        else:
            sync_batchnorm(child, device)
    return module
