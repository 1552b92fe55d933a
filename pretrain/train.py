"""The one pretraining loop for every method: LARS or AdamW with warmup + cosine, the BYOL
EMA target (0.996 -> 1), per-step deterministic seeding, atomic checkpoints with automatic
resume, a stop on a non-finite loss that keeps the last good checkpoint, a progress bar
with loss and pairs/s, and the backbone export in the ``flowssl-backbone/1`` contract.

Every step draws its videos, pairs, views and in-step randomness from (seed, step), so a
resumed run repeats an uninterrupted one exactly (CPU).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import backbone_checkpoint, write_checkpoint
from .optim import LARS, ema_momentum, warmup_cosine

STATE_NAME = "pretrain_state.pth"


@dataclass(frozen=True)
class PretrainSchedule:
    steps: int
    batch_size: int  # frame pairs per step
    optimizer: str  # "lars" or "adamw"
    lr: float
    weight_decay: float
    warmup_steps: int = 0
    ema_base: float = 0.996
    checkpoint_every: int = 500
    seed: int = 0


def make_optimizer(params, s: PretrainSchedule) -> torch.optim.Optimizer:
    if s.optimizer == "lars":
        return LARS(params, lr=s.lr, weight_decay=s.weight_decay)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    raise ValueError(f"unknown optimizer {s.optimizer!r}; known: lars, adamw")


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def draw_batch(pairs, s: PretrainSchedule, step: int) -> dict:
    """Frame pairs of one step: [N, 3, H, W] floats in [0, 1] for both frames, plus meta."""
    rng = np.random.default_rng([s.seed, step, 1])
    per_item = pairs.repeats
    items = [pairs[int(j)] for j in rng.integers(len(pairs), size=math.ceil(s.batch_size / per_item))]
    frames = torch.cat([it["frames"] for it in items])[:s.batch_size]  # [N, 2, H, W, 3]
    frames = frames.permute(0, 1, 4, 2, 3).float() / 255
    index = torch.cat([it["frame_index"] for it in items])[:s.batch_size]
    out = {"frames1": frames[:, 0], "frames2": frames[:, 1],
           "videos": [it["path"] for it in items for _ in range(per_item)][:s.batch_size],
           "frames_index1": index[:, 0].tolist(), "frames_index2": index[:, 1].tolist()}
    if "flow_fwd" in items[0]:
        out["flow_fwd"] = torch.cat([it["flow_fwd"] for it in items])[:s.batch_size]
        out["flow_bwd"] = torch.cat([it["flow_bwd"] for it in items])[:s.batch_size]
    return out


def _flows(batch: dict, estimator) -> tuple[torch.Tensor, torch.Tensor]:
    if "flow_fwd" in batch:
        return batch["flow_fwd"], batch["flow_bwd"]
    if estimator is None:
        raise ValueError("this method needs flow: give a flow estimator or a flow cache")
    meta = {"videos": batch["videos"], "frames1": batch["frames_index1"],
            "frames2": batch["frames_index2"]}
    back = {**meta, "frames1": meta["frames2"], "frames2": meta["frames1"]}
    return (estimator(batch["frames1"], batch["frames2"], **meta),
            estimator(batch["frames2"], batch["frames1"], **back))


def pretrain(method, pairs, schedule: PretrainSchedule, *, out_dir, device="cpu",
             estimator=None, config: dict | None = None, stop_after: int | None = None,
             progress: bool = True, log=print) -> list[dict]:
    """Train `method` on `pairs` (a FramePairs); resumes from ``out_dir/pretrain_state.pth``.
    Returns the loss curve; writes ``out_dir/backbone.pth`` when the schedule is done."""
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    method.to(device).train()
    params = [p for m in method.online_modules() for p in m.parameters()]
    optimizer = make_optimizer(params, schedule)
    start, curve = 0, []
    state_path = out_dir / STATE_NAME
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        start, curve = int(state["step"]), list(state["curve"])
        log(f"resuming pretraining from step {start} ({state_path})")
    end = schedule.steps if stop_after is None else min(stop_after, schedule.steps)
    bar = tqdm(total=end - start, desc=f"pretrain {method.name}", disable=not progress)
    t0 = time.perf_counter()
    for step in range(start, end):
        lr = warmup_cosine(step, schedule.steps, base=schedule.lr, warmup=schedule.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = draw_batch(pairs, schedule, step)
        rng = np.random.default_rng([schedule.seed, step, 2])
        torch.manual_seed(_step_seed(schedule.seed, step))
        kwargs = {}
        if method.needs_flow:
            kwargs["flow_fwd"], kwargs["flow_bwd"] = _flows(batch, estimator)
        views = method.make_views(batch["frames1"], batch["frames2"], rng, **kwargs)
        views = {k: v.to(device) if torch.is_tensor(v) else v for k, v in views.items()}
        parts = method.losses(views)
        loss = sum(parts.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining loss is {loss.item()} at step {step}; the "
                                     f"last good state is {state_path}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tau = ema_momentum(step, schedule.steps, base=schedule.ema_base)
        method.update_target(tau)
        curve.append({"step": step + 1, "loss": float(loss.detach()), "lr": lr, "tau": tau})
        bar.update(1)
        bar.set_postfix(loss=f"{curve[-1]['loss']:.4f}", pairs_s=f"{(step + 1 - start) * schedule.batch_size / (time.perf_counter() - t0):.1f}")
        if (step + 1) % schedule.checkpoint_every == 0 or step + 1 == end:
            write_checkpoint({"method": method.state_dict(), "optimizer": optimizer.state_dict(),
                              "step": step + 1, "curve": curve}, state_path)
    bar.close()
    if len(curve) == schedule.steps:
        write_checkpoint(backbone_checkpoint(
            arch=method.encoder.arch, state_dict=method.backbone_state_dict(),
            method=method.name, pretrain_data=str(getattr(pairs.source, "root", "")),
            epochs=schedule.steps * schedule.batch_size / max(1, len(pairs) * pairs.repeats),
            iterations=schedule.steps, config={**(config or {}), **asdict(schedule)}),
            out_dir / "backbone.pth")
    return curve
