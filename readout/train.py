"""The one readout loop for every head, segmentation and detection alike: SGD with a poly
or warmup + step learning rate, bf16 autocast on CUDA, DistributedDataParallel under
torchrun, a checkpoint of the trainable part every N iterations with resume. The model
says how a training sample is drawn (``train_sample``, ``collate``), what it trains
(``trainable_state_dict``) and its loss (``training_losses``); evaluation is per task:
whole / sliding-window segmentation and COCO box metrics.

Batches are a pure function of (seed, iteration), so a resumed run sees exactly the data
an uninterrupted one would.
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from core.runtime import autocast, one_thread_worker, rank_world

from .backbone import save_checkpoint
from .coco_eval import coco_metrics, to_coco_results
from .metrics import SegmentationMetric
from .transforms import to_tensor

__all__ = ["ReadoutSchedule", "train_readout", "evaluate", "evaluate_detection", "predict",
           "learning_rate"]

CHECKPOINT_NAME = "readout_checkpoint.pth"


@dataclass(frozen=True)
class ReadoutSchedule:
    iterations: int
    batch_size: int  # global batch, split over DDP ranks
    lr: float
    momentum: float
    weight_decay: float
    flip: bool
    checkpoint_every: int
    schedule: str = "poly"  # "poly" or "step"
    poly_power: float = 0.9
    poly_min_lr: float = 0.0  # the poly decay's floor (mmsegmentation's PolyLR eta_min)
    lr_steps: tuple[int, ...] = ()  # iterations where a step schedule multiplies by gamma
    gamma: float = 0.1
    warmup_iterations: int = 0  # linear warmup from warmup_factor (detectron2's rule)
    warmup_factor: float = 0.001
    weight_decay_norm: float | None = None  # norm layers' decay (None: weight_decay)
    loss: str = "cross_entropy"  # segmentation: or "hard_pixel_mining" (top loss_top_k)
    loss_top_k: float = 0.2
    loss_average: str = "labelled"  # cross_entropy over labelled pixels, or "all_pixels"
    lr_sweep: tuple[float, ...] = ()  # one head per learning rate (model.head: HeadSweep)
    crop: tuple[int, int] | None = None  # segmentation samples only
    resize: dict | None = None
    num_workers: int = 0
    seed: int = 0


def learning_rate(s: ReadoutSchedule, iteration: int, base: float | None = None) -> float:
    """Poly: floor + (base - floor) (1 - it / total)^power (floor 0: DeepLab's; mmengine's
    PolyLR with eta_min, mmsegmentation's schedules). Step: base gamma^(number of steps
    passed). Both times detectron2's linear warmup factor f (1 - a) + a, a = it /
    warmup_iterations. The base is the schedule's lr, or a swept head's own."""
    base = s.lr if base is None else base
    if s.schedule == "poly":
        floor = min(s.poly_min_lr, base)
        lr = floor + (base - floor) * (1 - iteration / s.iterations) ** s.poly_power
    elif s.schedule == "step":
        lr = base * s.gamma ** bisect.bisect_right(sorted(s.lr_steps), iteration)
    else:
        raise ValueError(f"unknown schedule {s.schedule!r}; known: poly, step")
    if iteration < s.warmup_iterations:
        alpha = iteration / s.warmup_iterations
        lr *= s.warmup_factor * (1 - alpha) + alpha
    return lr


NORM_LAYERS = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm,
               torch.nn.LocalResponseNorm)


def parameter_groups(model, s: ReadoutSchedule) -> list[dict]:
    """The trainable parameters; with ``weight_decay_norm`` set, those of norm layers in a
    group of their own with that decay (detectron2 ``get_default_optimizer_params``,
    SOLVER.WEIGHT_DECAY_NORM). With ``lr_sweep``, the groups of each head, which carry its
    learning rate as ``base_lr``."""
    if not s.lr_sweep:
        return _groups(model, s)
    heads = model.head.heads
    if len(heads) != len(s.lr_sweep):
        raise ValueError(f"{len(heads)} heads for {len(s.lr_sweep)} swept learning rates")
    return [dict(group, base_lr=lr) for lr, head in zip(s.lr_sweep, heads)
            for group in _groups(head, s)]


def _groups(module, s: ReadoutSchedule) -> list[dict]:
    trainable = [p for p in module.parameters() if p.requires_grad]
    if s.weight_decay_norm is None:
        return [{"params": trainable}]
    norm = {id(p) for m in module.modules() if isinstance(m, NORM_LAYERS)
            for p in m.parameters(recurse=False)}
    return [{"params": [p for p in trainable if id(p) not in norm]},
            {"params": [p for p in trainable if id(p) in norm],
             "weight_decay": s.weight_decay_norm}]


class _TrainSamples(torch.utils.data.Dataset):
    """Sample k = (iteration * world + rank) * per_rank_batch + slot, seeded by (seed, k):
    an image drawn from `indices`, then the model's ``train_sample(item, rng, schedule)``."""

    def __init__(self, dataset, schedule: ReadoutSchedule, sample_fn, indices: list[int]):
        self.dataset, self.s, self.sample_fn, self.indices = dataset, schedule, sample_fn, indices

    def __len__(self):
        return 2 ** 62

    def __getitem__(self, k: int):
        rng = np.random.default_rng([self.s.seed, k])
        item = self.dataset[self.indices[int(rng.integers(len(self.indices)))]]
        return self.sample_fn(item, rng, self.s)


def sync_head_batchnorm(model, device) -> None:
    """Under DDP, the head's BatchNorm layers (ASPP, UperNet, the linear head's
    normalisation) take their statistics over every process's batch, as mmsegmentation's
    readout configs do (``norm_cfg=dict(type='SyncBN')``, configs/_base_/models/*.py): with
    batch 16 on 8 GPUs a plain BatchNorm would see 2 images. The frozen backbone and decoder
    keep theirs (eval mode, fixed statistics). SyncBatchNorm runs on CUDA only, so under
    gloo on CPU each process keeps its own statistics (DDP broadcasts rank 0's buffers)."""
    head = getattr(model, "head", None)
    if head is not None and torch.device(device).type == "cuda":
        model.head = torch.nn.SyncBatchNorm.convert_sync_batchnorm(head)


def train_readout(model, dataset, schedule: ReadoutSchedule, *, device, work_dir,
                  stop_after: int | None = None, progress: bool = True,
                  indices: list[int] | None = None) -> list[dict]:
    """Train the trainable part of `model`; resumes from ``work_dir/readout_checkpoint.pth``.

    Returns the loss curve [{"step", "loss", "lr"}] of all iterations (resumed ones from the
    checkpoint). `stop_after` ends this call after that iteration (a checkpoint is written),
    as a preempted job would. `indices`: the training images (default: the model's
    ``training_indices``; a learning-rate sweep holds some out).
    """
    device = torch.device(device)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    rank, size = rank_world()
    if schedule.batch_size % size:
        raise ValueError(f"batch size {schedule.batch_size} is not divisible by {size} ranks")
    per_rank = schedule.batch_size // size
    model.to(device).train()
    indices = model.training_indices(dataset) if indices is None else indices
    if not indices:
        raise ValueError(f"{getattr(dataset, 'name', 'dataset')}: no usable training images")
    if size > 1:
        sync_head_batchnorm(model, device)
    optimizer = torch.optim.SGD(parameter_groups(model, schedule), lr=schedule.lr,
                                momentum=schedule.momentum, weight_decay=schedule.weight_decay)
    net = model
    if size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)
    start, curve = 0, []
    ckpt_path = work_dir / CHECKPOINT_NAME
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        _load_trainable(model, state["trainable"], ckpt_path)
        optimizer.load_state_dict(state["optimizer"])
        start, curve = int(state["iteration"]), list(state["curve"])
        if rank == 0:
            print(f"resuming readout from iteration {start} ({ckpt_path})")
    end = schedule.iterations if stop_after is None else min(stop_after, schedule.iterations)
    if start >= end:
        return curve
    order = [((it * size + rank) * per_rank + slot) for it in range(start, end)
             for slot in range(per_rank)]
    loader = torch.utils.data.DataLoader(
        _TrainSamples(dataset, schedule, type(model).train_sample, indices),
        batch_size=per_rank, sampler=order, collate_fn=type(model).collate,
        num_workers=schedule.num_workers, persistent_workers=False,
        worker_init_fn=one_thread_worker)
    bar = tqdm(total=end - start, initial=0, desc="readout", disable=not progress or rank > 0,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    for it, batch in zip(range(start, end), loader):
        lr = learning_rate(schedule, it)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(schedule, it, group.get("base_lr"))
        # randomness inside the step (RPN / ROI box sampling, dropout) is a pure function of
        # (seed, iteration, rank) too, so a resumed run repeats it exactly
        torch.manual_seed(int(np.random.SeedSequence([schedule.seed, it, rank])
                              .generate_state(1)[0]))
        parts = model.training_losses(net, batch, device, schedule)
        loss = sum(parts.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"readout loss is {loss.item()} at iteration {it} "
                                     f"({ {k: float(v.detach()) for k, v in parts.items()} })")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        names = ["loss", *(parts if len(parts) > 1 else [])]
        values = torch.stack([loss.detach(), *(parts[k].detach() for k in names[1:])]).float()
        if size > 1:  # the curve shows the mean over ranks
            dist.all_reduce(values)
            values /= size
        curve.append({"step": it + 1, "lr": lr, **dict(zip(names, values.tolist()))})
        done = it + 1
        bar.update(1)
        bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}",
                        img_s=f"{(done - start) * schedule.batch_size / (time.perf_counter() - t0):.1f}")
        if rank == 0 and (done % schedule.checkpoint_every == 0 or done == end):
            save_checkpoint({"trainable": model.trainable_state_dict(),
                             "optimizer": optimizer.state_dict(), "iteration": done,
                             "curve": curve}, ckpt_path)
    bar.close()
    return curve


def _load_trainable(model, state: dict, path) -> None:
    own = model.trainable_state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path} does not belong to this readout (missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}); delete it to restart")
    model.load_state_dict(state, strict=False)


@torch.no_grad()
def predict(model, image: torch.Tensor, *, mode: str = "whole", crop=None,
            stride=None, resize=None) -> torch.Tensor:
    """Class map [H, W] for one normalised image [3, H, W]; ``slide`` averages the logits
    of crop windows taken every `stride` pixels (mmsegmentation's slide inference).
    `resize` (h, w): the whole image is predicted at exactly that size (bilinear, aspect not
    kept) and the logits resized back (detectron2's T.Resize test augmentation and
    sem_seg_postprocess)."""
    x = image[None]
    if mode == "whole" and resize is not None:
        H, W = x.shape[-2:]
        x = F.interpolate(x, size=tuple(resize), mode="bilinear", align_corners=False)
        logits = model(x)["out"].float()
        return F.interpolate(logits, size=(H, W), mode="bilinear",
                             align_corners=False)[0].argmax(0)
    if mode == "whole":
        return model(x)["out"][0].argmax(0)
    if mode != "slide":
        raise ValueError(f"unknown eval mode {mode!r}; known: whole, slide")
    H, W = x.shape[-2:]
    ch, cw = min(crop[0], H), min(crop[1], W)
    sh, sw = stride
    ys = list(range(0, max(H - ch, 0) + 1, sh))
    xs = list(range(0, max(W - cw, 0) + 1, sw))
    ys += [H - ch] if ys[-1] != H - ch else []
    xs += [W - cw] if xs[-1] != W - cw else []
    logits = count = None
    for y in ys:
        for xx in xs:
            out = model(x[..., y:y + ch, xx:xx + cw])["out"][0].float()
            if logits is None:
                logits = out.new_zeros((out.shape[0], H, W))
                count = out.new_zeros((1, H, W))
            logits[:, y:y + ch, xx:xx + cw] += out
            count[:, y:y + ch, xx:xx + cw] += 1
    return (logits / count).argmax(0)


def evaluate(model, dataset, *, num_classes: int, device, mode: str = "whole", crop=None,
             stride=None, resize=None, class_groups=None, progress: bool = True) -> dict:
    """Metrics over `dataset` (sharded over DDP ranks, confusion matrices summed)."""
    device = torch.device(device)
    model.to(device).eval()
    rank, size = rank_world()
    metric = SegmentationMetric(num_classes, class_groups=class_groups)
    indices = range(rank, len(dataset), size)
    for i in tqdm(indices, desc="evaluate", disable=not progress or rank > 0):
        item = dataset[i]
        with autocast(device):
            pred = predict(model, to_tensor(item["image"]).to(device), mode=mode, crop=crop,
                           stride=stride, resize=resize)
        label = torch.from_numpy(item["label"])
        metric.update(pred.cpu(), label)
    if size > 1:
        cm = metric.confusion.to(device)
        dist.all_reduce(cm)
        metric.confusion = cm.cpu()
    return metric.compute()


@torch.no_grad()
def evaluate_detection(model, dataset, *, device, progress: bool = True) -> dict:
    """COCO box metrics of `model` on a detection dataset (its ``coco`` dict is the ground
    truth); images are sharded over DDP ranks and the detections gathered."""
    device = torch.device(device)
    model.to(device).eval()
    rank, size = rank_world()
    results = []
    for i in tqdm(range(rank, len(dataset), size), desc="evaluate",
                  disable=not progress or rank > 0):
        item = dataset[i]
        with autocast(device):
            (det,) = model([to_tensor(item["image"]).to(device)])
        results += to_coco_results(item["image_id"], det["boxes"].float().cpu(),
                                   det["labels"].cpu(), det["scores"].float().cpu())
    if size > 1:
        gathered = [None] * size
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    return coco_metrics(dataset.coco, results)
