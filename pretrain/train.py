"""The one pretraining loop for every method (the contract it calls: pretrain.methods.base):
LARS, SGD or AdamW with warmup + cosine, the method's hooks before the forward pass and
after the optimizer step (EMA targets, queues), CPU threads per process (core.runtime),
DistributedDataParallel under torchrun with optional synchronised BatchNorm, bf16 autocast
on CUDA, per-step deterministic seeding, atomic checkpoints with automatic resume, a stop
on a non-finite loss that keeps the last good checkpoint, a progress bar with loss and
pairs/s, periodic and final backbone export in the
``flowssl-backbone/1`` contract, and the run's health in the curve (each loss term, gradient
norm, projection std, the spread of each head output, RankMe, mask fraction, queue gap;
``pretrain.health``) with a collapse warning.

Step k's global batch (which videos, which frames, every view's randomness) is a pure
function of (seed, k, sample index): a resumed run repeats an uninterrupted one exactly
(CPU), and N processes each taking 1/N of the batch see the same samples as one process.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core.io import remove_stale_temporaries
from core.runtime import (autocast, limit_threads, one_thread_worker, rank_world,
                          threads_per_process)

from .checkpoint import backbone_checkpoint, write_checkpoint
from .distributed import mean_over_ranks, sync_batchnorm
from .health import EmbeddingBuffer, collapse_warning, output_spreads, projection_std
from .methods.base import StepContext
from .optim import LARS, warmup_cosine

STATE_NAME = "pretrain_state.pth"
BACKBONE_NAME = "backbone.pth"


@dataclass(frozen=True)
class PretrainSchedule:
    steps: int
    batch_size: int  # samples (frame pairs, clips) per step, over all processes
    optimizer: str  # "lars", "sgd" or "adamw"
    lr: float
    weight_decay: float
    warmup_steps: int = 0
    checkpoint_every: int = 500
    export_every: int = 0  # also write exports/backbone_step<k>.pth every k steps (0: off)
    seed: int = 0


OPTIMIZERS = ("lars", "sgd", "adamw")


def adamw_groups(named_params) -> list[dict]:
    """The PooDLe authors' AdamW groups (timm 0.3.2 ``add_weight_decay``, called by
    agentic-learning-ai-lab/poodle src/train.py): no weight decay on biases and 1-D
    parameters (BatchNorm), the schedule's on the rest."""
    decay, no_decay = [], []
    for name, p in named_params:
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay}]


def make_optimizer(named_params, s: PretrainSchedule) -> torch.optim.Optimizer:
    """named_params: the trainable (name, parameter) pairs."""
    params = [p for _, p in named_params]
    if s.optimizer == "lars":
        return LARS(params, lr=s.lr, weight_decay=s.weight_decay)
    if s.optimizer == "sgd":  # MoCo (facebookresearch/moco main_moco.py): momentum 0.9
        return torch.optim.SGD(params, lr=s.lr, momentum=0.9, weight_decay=s.weight_decay)
    if s.optimizer == "adamw":  # PooDLe src/train.py: betas (0.9, 0.999), eps 1e-6 (fp32)
        return torch.optim.AdamW(adamw_groups(named_params), lr=s.lr,
                                 weight_decay=s.weight_decay, betas=(0.9, 0.999), eps=1e-6)
    raise ValueError(f"unknown optimizer {s.optimizer!r}; known: {', '.join(OPTIMIZERS)}")


def _step_seed(*key: int) -> int:
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


def sample_rngs(seed: int, step: int, samples) -> list[np.random.Generator]:
    """One generator per global sample index: a pair's views depend on (seed, step, sample)
    only, not on the process or the loader worker that makes them."""
    return [np.random.default_rng([seed, step, 2, j]) for j in samples]


class StepBatches(torch.utils.data.Dataset):
    """Item k = this rank's share of step k's batch: frames [n, K, 3, H, W] floats in [0, 1]
    (K frames per sample: 2 for pairs, ``clip_frames`` for clips), their video paths and
    frame indices, and with a flow cache the flows between consecutive frames
    [n, K-1, 2, H, W]. Indexed by step, so DataLoader workers decode ahead without changing
    what is drawn.

    With a `view_maker` (the method's, plain data) the item holds the views instead of the
    frames, made here, i.e. in the loader workers, whenever the flow they need is at hand:
    none needed, a flow cache, or `flow`, an estimator that runs on the CPU (the synthetic
    world's exact flow, DIS, Farneback). Otherwise (RAFT on the device) the loop estimates
    the flow for the whole batch and makes the views."""

    def __init__(self, samples, schedule: PretrainSchedule, rank: int = 0, world: int = 1, *,
                 view_maker=None, needs_flow: bool = False, flow=None):
        if schedule.batch_size % world:
            raise ValueError(f"batch_size {schedule.batch_size} is not divisible by the "
                             f"{world} processes")
        self.data, self.s, self.rank, self.world = samples, schedule, rank, world
        self.view_maker, self.needs_flow, self.flow = view_maker, needs_flow, flow

    def __len__(self) -> int:
        return self.s.steps

    def __getitem__(self, step: int) -> dict:
        s, per_item = self.s, self.data.repeats
        local = s.batch_size // self.world
        first = self.rank * local
        samples = range(first, first + local)  # global sample indices of this rank
        videos = np.random.default_rng([s.seed, step, 1]).integers(
            len(self.data), size=math.ceil(s.batch_size / per_item))
        self.data.set_epoch(step)  # a video's samples differ from step to step
        needed = sorted({j // per_item for j in samples})
        items = {i: self.data[int(videos[i])] for i in needed}
        pick = [(items[j // per_item], j % per_item) for j in samples]
        frames = torch.stack([it["frames"][r] for it, r in pick]).permute(0, 1, 4, 2, 3)
        out = {"frames": frames.float() / 255, "samples": list(samples),
               "skipped": [path for i in needed for path in items[i]["skipped"]],
               "videos": [it["path"] for it, _ in pick],
               "frame_index": [it["frame_index"][r].tolist() for it, r in pick]}
        for key in ("flow_fwd", "flow_bwd", *VIEW_INPUTS):
            if key in pick[0][0]:
                out[key] = torch.stack([it[key][r] for it, r in pick])
        if self.view_maker is None:
            return out
        flows = {}
        if self.needs_flow:
            if "flow_fwd" not in out and self.flow is None:
                return out  # the loop estimates the flow on the device
            flows = dict(zip(("flow_fwd", "flow_bwd"), _flows(out, self.flow)))
            for key in flows:
                out.pop(key, None)
        out["views"] = self.view_maker(out.pop("frames"),
                                       sample_rngs(s.seed, step, out["samples"]), **flows,
                                       **view_inputs(out, pop=True))
        return out


# item tensors besides frames and flow that reach the view maker by name (TrackedFrames)
VIEW_INPUTS = ("points",)


def view_inputs(batch: dict, pop: bool = False) -> dict:
    return {k: batch.pop(k) if pop else batch[k] for k in VIEW_INPUTS if k in batch}


def _flows(batch: dict, estimator) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward flow between consecutive frames: [n, K-1, 2, H, W] each, from
    the batch (a flow cache) or estimated for the whole batch, one frame step at a time."""
    if "flow_fwd" in batch:
        return batch["flow_fwd"], batch["flow_bwd"]
    if estimator is None:
        raise ValueError("this method needs flow: give a flow estimator or a flow cache")
    frames, index = batch["frames"], batch["frame_index"]
    fwd, bwd = [], []
    for k in range(frames.shape[1] - 1):
        meta = {"videos": batch["videos"], "frames1": [ix[k] for ix in index],
                "frames2": [ix[k + 1] for ix in index]}
        back = {**meta, "frames1": meta["frames2"], "frames2": meta["frames1"]}
        fwd.append(estimator(frames[:, k], frames[:, k + 1], **meta).cpu())
        bwd.append(estimator(frames[:, k + 1], frames[:, k], **back).cpu())
    return torch.stack(fwd, 1), torch.stack(bwd, 1)


def grad_norm(params) -> float:
    """L2 norm of all gradients together (after DDP's all-reduce: the same on every rank)."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


class Health:
    """Per-step health values from what the method observed (``Method.observe``): the spread
    of each declared head output (``pretrain.health``) and the first one's projection std
    every step, RankMe every `every` steps over the last embeddings, the method's scalars
    (mask fractions, queue gaps), and a collapse warning (logged once) when a spread falls
    far below its value at the run's first step. `curve`: the steps already done (a resumed
    run keeps its first step as the reference)."""

    def __init__(self, every: int, seed: int, log, curve: list[dict] | None = None,
                 watched: tuple[str, ...] | None = None):
        self.every, self.log = every, log
        self.watched = watched  # the outputs the warning reads (None: every output)
        self.buffer = EmbeddingBuffer(seed=seed)
        curve = curve or []
        self.warned = any(c.get("collapse_warning") for c in curve)
        self.first = ({k: v for k, v in curve[0].items() if k.startswith("spread_")}
                      if curve else None)
        self.last_rank: float | None = None

    def values(self, observed: dict, step: int, last: bool) -> dict[str, float]:
        out = {}
        outputs = observed.get("outputs") or {}
        if outputs:
            z = next(iter(outputs.values()))
            out["proj_std"] = float(mean_over_ranks(torch.tensor(projection_std(z))))
        spreads = {key: float(mean_over_ranks(torch.tensor(value)))
                   for name, z in outputs.items()
                   for key, value in output_spreads(name, z).items()}
        out.update(spreads)
        if self.first is None and spreads:
            self.first = dict(spreads)
        for name, value in observed.items():
            if name not in ("outputs", "embeddings"):
                out[name] = float(mean_over_ranks(value.float()))
        rank = None
        if observed.get("embeddings") is not None:
            self.buffer.add(observed["embeddings"])
            if self.every and ((step + 1) % self.every == 0 or last):
                out["rankme"] = self.last_rank = rank = self.buffer.rankme()
        if not self.warned and (spreads or rank is not None):
            # a dense map is read with its pixels as rows; its per-image mean (`_pooled`)
            # is logged only: a healthy dense head (DenseCL's, measured) gives every image
            # about the same mean while its pixels spread out
            read = {k: v for k, v in spreads.items() if not k.endswith("_pooled")
                    and (self.watched is None or k.removeprefix("spread_") in self.watched)}
            warning = collapse_warning(read, self.first or {}, rank)
            if warning:
                self.warned = True
                out["collapse_warning"] = 1.0
                self.log(f"WARNING step {step + 1}: {warning}")
        return out


def export_backbone(method, path, *, schedule, steps_done: int, samples, config) -> Path:
    return write_checkpoint(backbone_checkpoint(
        arch=method.encoder.arch, state_dict=method.backbone_state_dict(),
        decoder=method.decoder_entry(), method=method.name,
        pretrain_data=str(getattr(samples.source, "root", "")),
        epochs=steps_done * schedule.batch_size / max(1, len(samples) * samples.repeats),
        iterations=steps_done, config={**(config or {}), "schedule": asdict(schedule)},
        **({"deviations": method.deviations()} if method.deviations() else {})), path)


def pretrain(method, samples, schedule: PretrainSchedule, *, out_dir, device="cpu",
             estimator=None, config: dict | None = None, stop_after: int | None = None,
             workers: int = 0, sync_bn: bool = False, progress: bool = True,
             log=print, health_every: int = 10, on_export=None) -> list[dict]:
    """Train `method` on `samples` (``pretrain.data.samples``: the method's sample kind,
    pairs or clips); resumes from ``out_dir/pretrain_state.pth``.
    Under torchrun every process calls this; rank 0 writes. Returns the curve (loss terms
    and health, mean over processes; RankMe every `health_every` steps); writes
    ``out_dir/backbone.pth`` when the schedule is done. ``on_export(path, step)`` is called
    (rank 0) after each periodic export, e.g. to evaluate it."""
    device = torch.device(device)
    rank, world = rank_world()
    threads = limit_threads(threads_per_process())
    if rank == 0:
        log(f"{threads} CPU thread(s) per process for torch and OpenCV"
            + (f", 1 in each of {workers} loader worker(s)" if workers else ""))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        remove_stale_temporaries(out_dir, recursive=True, log=log)
    if sync_bn and world > 1:
        for name, child in method.named_children():
            if name not in method.local_batchnorm:
                setattr(method, name, sync_batchnorm(child, device))
    method.to(device).train()
    params = method.trainable_parameters()
    optimizer = make_optimizer(method.trainable_named_parameters(), schedule)
    start, curve = 0, []
    skipped: dict[str, int] = {}  # video reads that failed (this process), kept on resume
    state_path = out_dir / STATE_NAME
    if state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        start, curve = int(state["step"]), list(state["curve"])
        skipped = dict(state.get("skipped", {}))
        log(f"resuming pretraining from step {start} ({state_path})")
    model = method
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=method.find_unused_parameters)
    end = schedule.steps if stop_after is None else min(stop_after, schedule.steps)
    cpu_flow = estimator if getattr(estimator, "on_cpu", False) else None
    batches = StepBatches(samples, schedule, rank, world, view_maker=method.view_maker,
                          needs_flow=method.needs_flow, flow=cpu_flow)
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, num_workers=workers,
        sampler=range(start, end), persistent_workers=False, worker_init_fn=one_thread_worker,
        multiprocessing_context="spawn" if workers else None)
    bar = tqdm(total=end - start, desc=f"pretrain {method.name}",
               disable=not progress or rank != 0)
    health = Health(health_every, schedule.seed, tqdm.write if progress and rank == 0 else log,
                    curve=curve, watched=method.watched_outputs())
    t0 = time.perf_counter()
    for step, batch in zip(range(start, end), loader):
        lr = warmup_cosine(step, schedule.steps, base=schedule.lr, warmup=schedule.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(_step_seed(schedule.seed, step, rank))
        ctx = StepContext(step=step, total=schedule.steps, seed=schedule.seed)
        method.before_step(ctx)
        views = batch.get("views")
        if views is None:  # the flow is estimated here (RAFT on the device)
            flows = {}
            if method.needs_flow:
                flows["flow_fwd"], flows["flow_bwd"] = _flows(batch, estimator)
            views = method.make_views(batch["frames"],
                                      sample_rngs(schedule.seed, step, batch["samples"]),
                                      **flows, **view_inputs(batch))
        views = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                 for k, v in views.items()}
        with autocast(device):
            parts = model(views)
        observed = method.pop_observed()
        loss = sum(parts.values()).float()
        if not torch.isfinite(mean_over_ranks(loss)):
            raise FloatingPointError(f"pretraining loss is not finite at step {step}; the "
                                     f"last good state is {state_path}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = grad_norm(params)
        optimizer.step()
        hooked = method.after_step(ctx)
        record = {"step": step + 1, "loss": float(mean_over_ranks(loss)), "lr": lr, **hooked}
        record.update({k: float(mean_over_ranks(v.float())) for k, v in parts.items()})
        record["grad_norm"] = norm
        for path in batch["skipped"]:
            skipped[path] = skipped.get(path, 0) + 1
        record["skipped_videos"] = float(mean_over_ranks(
            torch.tensor(float(len(batch["skipped"]))))) * world
        record.update(health.values(observed, step, last=step + 1 == end))
        curve.append(record)
        rate = (step + 1 - start) * schedule.batch_size / (time.perf_counter() - t0)
        record["pairs_per_s"] = rate
        bar.update(1)
        shown = {"loss": f"{record['loss']:.4f}"}
        if "proj_std" in record:
            shown["std"] = f"{record['proj_std']:.3f}"
        if health.last_rank is not None:
            shown["rank"] = f"{health.last_rank:.1f}"
        bar.set_postfix(**shown, pairs_s=f"{rate:.1f}")
        if rank == 0 and ((step + 1) % schedule.checkpoint_every == 0 or step + 1 == end):
            write_checkpoint({"method": method.state_dict(), "optimizer": optimizer.state_dict(),
                              "step": step + 1, "curve": curve, "skipped": skipped},
                             state_path)
        if rank == 0 and schedule.export_every and (step + 1) % schedule.export_every == 0:
            path = export_backbone(method, out_dir / "exports" / f"backbone_step{step + 1:07d}.pth",
                                   schedule=schedule, steps_done=step + 1, samples=samples,
                                   config=config)
            if on_export is not None:
                on_export(path, step + 1)
    bar.close()
    if skipped:
        log(f"skipped {sum(skipped.values())} failed video read(s) since step 1 (another "
            f"video was drawn each time): " + "; ".join(
                f"{Path(p).name} x{n}" for p, n in sorted(skipped.items())))
    already_exported = start == schedule.steps and (out_dir / BACKBONE_NAME).is_file()
    if rank == 0 and len(curve) == schedule.steps and not already_exported:
        export_backbone(method, out_dir / BACKBONE_NAME, schedule=schedule,
                        steps_done=schedule.steps, samples=samples, config=config)
    return curve
