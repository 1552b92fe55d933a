"""The one readout loop for every segmentation head: SGD + poly LR, random resize / crop /
flip, ignore index 255, bf16 autocast on CUDA, DistributedDataParallel under torchrun,
a head checkpoint every N iterations with resume, and whole / sliding-window evaluation.

Batches are a pure function of (seed, iteration), so a resumed run sees exactly the data
an uninterrupted one would.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from .backbone import save_checkpoint
from .metrics import SegmentationMetric
from .transforms import IGNORE_INDEX, to_tensor, train_transform

CHECKPOINT_NAME = "readout_checkpoint.pth"


@dataclass(frozen=True)
class ReadoutSchedule:
    iterations: int
    batch_size: int  # global batch, split over DDP ranks
    lr: float
    momentum: float
    weight_decay: float
    poly_power: float
    crop: tuple[int, int]
    resize: dict | None
    flip: bool
    checkpoint_every: int
    num_workers: int = 0
    seed: int = 0


class _TrainSamples(torch.utils.data.Dataset):
    """Sample k = (iteration * world + rank) * per_rank_batch + slot, seeded by (seed, k)."""

    def __init__(self, dataset, schedule: ReadoutSchedule):
        self.dataset, self.s = dataset, schedule

    def __len__(self):
        return 2 ** 62

    def __getitem__(self, k: int):
        rng = np.random.default_rng([self.s.seed, k])
        item = self.dataset[int(rng.integers(len(self.dataset)))]
        return train_transform(item["image"], item["label"], rng, resize=self.s.resize,
                               crop=tuple(self.s.crop), flip=self.s.flip)


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def poly_lr(base: float, iteration: int, total: int, power: float) -> float:
    return base * (1 - iteration / total) ** power


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def train_readout(model, dataset, schedule: ReadoutSchedule, *, device, work_dir,
                  stop_after: int | None = None, progress: bool = True) -> list[dict]:
    """Train the trainable part of `model`; resumes from ``work_dir/readout_checkpoint.pth``.

    Returns the loss curve [{"step", "loss", "lr"}] of all iterations (resumed ones from the
    checkpoint). `stop_after` ends this call after that iteration (a checkpoint is written),
    as a preempted job would.
    """
    device = torch.device(device)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    rank, size = world()
    if schedule.batch_size % size:
        raise ValueError(f"batch size {schedule.batch_size} is not divisible by {size} ranks")
    per_rank = schedule.batch_size // size
    model.to(device).train()
    params = model.trainable_parameters()
    optimizer = torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum,
                                weight_decay=schedule.weight_decay)
    net = model
    if size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)
    start, curve = 0, []
    ckpt_path = work_dir / CHECKPOINT_NAME
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        _load_trainable(model, state["trainable"])
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
        _TrainSamples(dataset, schedule), batch_size=per_rank, sampler=order,
        num_workers=schedule.num_workers, persistent_workers=False)
    bar = tqdm(total=end - start, initial=0, desc="readout", disable=not progress or rank > 0,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    for it, (images, labels) in zip(range(start, end), loader):
        lr = poly_lr(schedule.lr, it, schedule.iterations, schedule.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, labels = images.to(device, non_blocking=True), labels.to(device)
        with _autocast(device):
            out = net(images)
        loss = F.cross_entropy(out["out"].float(), labels, ignore_index=IGNORE_INDEX)
        if "aux" in out:
            loss = loss + model.head.aux_weight * F.cross_entropy(
                out["aux"].float(), labels, ignore_index=IGNORE_INDEX)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"readout loss is {loss.item()} at iteration {it}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        curve.append({"step": it + 1, "loss": float(loss.detach()), "lr": lr})
        done = it + 1
        bar.update(1)
        bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}",
                        img_s=f"{(done - start) * schedule.batch_size / (time.perf_counter() - t0):.1f}")
        if rank == 0 and (done % schedule.checkpoint_every == 0 or done == end):
            save_checkpoint({"trainable": _trainable_state(model),
                             "optimizer": optimizer.state_dict(), "iteration": done,
                             "curve": curve}, ckpt_path)
    bar.close()
    return curve


def _trainable_state(model) -> dict:
    """The head's tensors (parameters and BN buffers), plus everything when finetuning."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if model.train_backbone or k.startswith("head.")}


def _load_trainable(model, state: dict) -> None:
    missing = set(_trainable_state(model)) - set(state)
    if missing:
        raise ValueError(f"readout checkpoint lacks {sorted(missing)[:5]}")
    model.load_state_dict(state, strict=False)


@torch.no_grad()
def predict(model, image: torch.Tensor, *, mode: str = "whole", crop=None,
            stride=None) -> torch.Tensor:
    """Class map [H, W] for one normalised image [3, H, W]; ``slide`` averages the logits
    of crop windows taken every `stride` pixels (mmsegmentation's slide inference)."""
    x = image[None]
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
             stride=None, class_groups=None, progress: bool = True) -> dict:
    """Metrics over `dataset` (sharded over DDP ranks, confusion matrices summed)."""
    device = torch.device(device)
    model.to(device).eval()
    rank, size = world()
    metric = SegmentationMetric(num_classes, class_groups=class_groups)
    indices = range(rank, len(dataset), size)
    for i in tqdm(indices, desc="evaluate", disable=not progress or rank > 0):
        item = dataset[i]
        with _autocast(device):
            pred = predict(model, to_tensor(item["image"]).to(device), mode=mode, crop=crop,
                           stride=stride)
        label = torch.from_numpy(item["label"])
        metric.update(pred.cpu(), label)
    if size > 1:
        cm = metric.confusion.to(device)
        dist.all_reduce(cm)
        metric.confusion = cm.cpu()
    return metric.compute()


def init_distributed() -> None:
    """Start the process group under torchrun (NCCL on GPU, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
