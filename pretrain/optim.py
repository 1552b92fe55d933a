"""Optimizers and schedules of the pretraining recipes."""
from __future__ import annotations

import math

import torch


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as BYOL / FlowE use it: SGD with momentum where each weight
    tensor's update is scaled by the trust ratio eta ||w|| / ||g + wd w||; biases and
    BatchNorm parameters (1-d tensors) get no weight decay and no adaptation."""

    def __init__(self, params, *, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if p.ndim > 1:
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = p.norm(), g.norm()
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g * trust
                buf = self.state[p].get("momentum")
                if buf is None:
                    buf = self.state[p]["momentum"] = torch.clone(g)
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


def warmup_cosine(step: int, total: int, *, base: float, warmup: int = 0,
                  final: float = 0.0) -> float:
    """Linear warmup base k / warmup from 0 over `warmup` steps, then cosine decay to `final`
    at `total`: BYOL's learning_schedule (google-deepmind/deepmind-research
    byol/utils/schedules.py) and PooDLe's adjust_learning_rate (src/utils/lr_sched.py), whose
    first step has learning rate 0."""
    if step < warmup:
        return base * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (base - final) * 0.5 * (1 + math.cos(math.pi * progress))


def ema_momentum(step: int, total: int, *, base: float = 0.996) -> float:
    """BYOL Sec. 3.2: tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, from 0.996 to 1."""
    return 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2


@torch.no_grad()
def ema_update(target: torch.nn.Module, online: torch.nn.Module, tau: float) -> None:
    """target <- tau target + (1 - tau) online, for parameters (BYOL Sec. 3.1). The target's
    BatchNorm statistics are its own: they move when the target runs in train mode."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(tau).add_(o.detach(), alpha=1 - tau)
