"""A picture of a frame pair for people to look at: frame 1 | frame 2 | forward flow
(colour wheel: hue = direction, saturation = speed) | consistency mask (white = trusted)
| |frame 1 - warped frame 2| on trusted pixels."""
from __future__ import annotations

import numpy as np
import torch
from torchvision.utils import flow_to_image

from .geometry import consistency_mask, warp


def flow_panel(image1: np.ndarray, image2: np.ndarray, flow_fwd: torch.Tensor,
               flow_bwd: torch.Tensor, *, alpha1: float = 0.01, alpha2: float = 0.5) -> dict:
    """uint8 RGB images [H, W, 3] and flows [2, H, W] -> {"image": uint8 [H, 5W, 3],
    "trusted": fraction of trusted pixels, "warp_error": mean |I1 - warp(I2)| (0-255) on
    them, "no_warp_error": the same without warping}."""
    a, b = (torch.from_numpy(x).permute(2, 0, 1)[None].float() for x in (image1, image2))
    mask = consistency_mask(flow_fwd[None], flow_bwd[None], alpha1=alpha1, alpha2=alpha2)[0]
    err = (a - warp(b, flow_fwd[None])).abs().mean(1)[0]
    err_img = (err.clamp(0, 255) * mask).round().byte()
    tiles = [image1, image2, flow_to_image(flow_fwd.float()).permute(1, 2, 0).numpy(),
             np.repeat((mask.numpy() * 255).astype(np.uint8)[..., None], 3, axis=2),
             np.repeat(err_img.numpy()[..., None], 3, axis=2)]
    trusted = mask.float().mean().item()
    return {"image": np.concatenate(tiles, axis=1), "trusted": trusted,
            "warp_error": err[mask].mean().item() if trusted else float("nan"),
            "no_warp_error": (a - b).abs().mean(1)[0][mask].mean().item() if trusted
            else float("nan")}
