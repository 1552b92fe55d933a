"""Optical flow estimators, registered by name: ``get_estimator(name, **kw)`` returns a
callable ``(img1, img2, **meta) -> flow`` on batches: images float [B, 3, H, W] in [0, 1],
flow float32 [B, 2, H, W] in pixels, x first, img1(p) ~ img2(p + flow(p)).

- ``dis`` (OpenCV DIS, the CPU default) and ``farneback`` run per image on the CPU;
- ``raft_large`` / ``raft_small`` (torchvision) run batched, on CUDA when present, with
  weights from a local file (nothing is downloaded);
- ``gt`` reads the synthetic world's exact flow and needs ``meta``: which video, which frames.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from core.values import Range

from ..registry import registry
from .geometry import chain

ESTIMATORS, register_estimator, estimator_class = registry("flow estimator")


def get_estimator(name: str, **kwargs):
    """An estimator instance; an unknown name lists the registered ones."""
    return estimator_class(name)(**kwargs)


FLOW_SPEC_KEYS = ("estimator", "release", "iterations")
ITERATIONS = Range(1, whole=True)


def flow_spec(value) -> dict:
    """A config's ``flow`` as a mapping: ``"dis"`` -> {"estimator": "dis"};
    ``{estimator: raft_large, release: C_T_V1, iterations: 24}`` as it is; ``"cache:DIR"``
    -> {"cache": DIR}. Raises ValueError naming what is wrong."""
    if isinstance(value, str):
        if value.startswith("cache:"):
            return {"cache": value[len("cache:"):]}
        value = {"estimator": value}
    if not isinstance(value, dict):
        raise ValueError(f"a flow estimator name, cache:DIR or a mapping with keys "
                         f"{', '.join(FLOW_SPEC_KEYS)}, got {value!r}")
    unknown = sorted(set(value) - set(FLOW_SPEC_KEYS))
    if unknown or "estimator" not in value:
        raise ValueError(f"keys {', '.join(FLOW_SPEC_KEYS)} (estimator required), got "
                         f"{', '.join(sorted(value))}")
    name = value["estimator"]
    estimator_class(name)  # unknown: lists the known ones
    if not name.startswith("raft") and set(value) - {"estimator"}:
        raise ValueError(f"release and iterations are RAFT settings; {name} takes none")
    if "release" in value:
        check_raft_release(name, value["release"])
    iterations = value.get("iterations", 1)
    if iterations not in ITERATIONS:
        raise ValueError(f"iterations: a whole number {ITERATIONS}, got {iterations!r}")
    return dict(value)


def to_gray_uint8(images: torch.Tensor) -> list[np.ndarray]:
    rgb = (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu()
    return [cv2.cvtColor(np.ascontiguousarray(x.numpy()), cv2.COLOR_RGB2GRAY) for x in rgb]


class OpenCVFlow:
    """Base of the per-image OpenCV estimators (threads inside OpenCV, not over images)."""
    on_cpu = True  # runs in DataLoader workers (pretrain.train.StepBatches)

    def _one(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, img1: torch.Tensor, img2: torch.Tensor, **meta) -> torch.Tensor:
        flows = [self._one(a, b) for a, b in zip(to_gray_uint8(img1), to_gray_uint8(img2))]
        return torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2).contiguous().float()


@register_estimator("dis")
class DISFlow(OpenCVFlow):
    """OpenCV's Dense Inverse Search (Kroeger et al. 2016), preset ultrafast|fast|medium."""

    PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
               "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}

    def __init__(self, *, preset: str = "medium"):
        if preset not in self.PRESETS:
            raise KeyError(f"DIS preset {preset!r}; known: {', '.join(self.PRESETS)}")
        self.preset = preset
        self._dis = None  # OpenCV objects do not pickle: made in the process that runs it

    def _one(self, a, b):
        if self._dis is None:
            self._dis = cv2.DISOpticalFlow_create(self.PRESETS[self.preset])
        return self._dis.calc(a, b, None)

    def __getstate__(self):
        return {"preset": self.preset, "_dis": None}


@register_estimator("farneback")
class FarnebackFlow(OpenCVFlow):
    """OpenCV Farneback (pyramid scale 0.5, 5 levels, window 15, 3 iterations, poly 5/1.1)."""

    def _one(self, a, b):
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 5, 15, 3, 5, 1.1, 0)


TORCHVISION_MODELS = "https://download.pytorch.org/models/"
# torchvision's RAFT weights by release (torchvision/models/optical_flow/raft.py); the part
# after the dash is the start of the file's sha256, checked when the file is loaded
RAFT_RELEASES = {
    "raft_large": {"C_T_V1": "raft_large_C_T_V1-22a6c225.pth",
                   "C_T_V2": "raft_large_C_T_V2-1bb1363a.pth",
                   "C_T_SKHT_V1": "raft_large_C_T_SKHT_V1-0b8c9e55.pth",
                   "C_T_SKHT_V2": "raft_large_C_T_SKHT_V2-ff5fadd5.pth",
                   "C_T_SKHT_K_V1": "raft_large_C_T_SKHT_K_V1-4a6a5039.pth",
                   "C_T_SKHT_K_V2": "raft_large_C_T_SKHT_K_V2-b5c70766.pth"},
    "raft_small": {"C_T_V1": "raft_small_C_T_V1-ad48884c.pth",
                   "C_T_V2": "raft_small_C_T_V2-01064c6d.pth"},
}
# The authors' flow: RAFT trained on FlyingChairs + FlyingThings ("raft-things.pth" in
# PooDLe's code, "raft-small.pth" in PixPro-flow's); torchvision's C_T_V1 are those weights
# ported from the RAFT authors.
DEFAULT_RAFT_RELEASE = "C_T_V1"
_MISSING = object()


def raft_weights_url(arch: str, release: str) -> str:
    return TORCHVISION_MODELS + RAFT_RELEASES[arch][release]


def check_raft_release(arch: str, release: str) -> None:
    if release not in RAFT_RELEASES[arch]:
        raise ValueError(f"{arch} weights release {release!r}: one of "
                         f"{', '.join(RAFT_RELEASES[arch])}")


class RAFTFlow:
    """torchvision RAFT with the weights of `release` (RAFT_RELEASES) from the local file
    ``weights`` (download it on a machine with internet; its sha256 is checked against the
    release), or ``weights=None`` for random init (tests only); ``iterations`` = RAFT's
    recurrent updates (PooDLe 24, PooDLe's FlowE 30, torchvision's default 12)."""

    arch = ""

    def __init__(self, *, weights=_MISSING, release: str = DEFAULT_RAFT_RELEASE,
                 device: str | None = None, iterations: int = 12):
        import torchvision.models.optical_flow as of
        check_raft_release(self.arch, release)
        url = raft_weights_url(self.arch, release)
        if weights is _MISSING:
            raise ValueError(
                f"{self.name} needs local weights: download {url} (torchvision's {self.name} "
                f"{release} weights) and pass weights=PATH (CLI: --flow-weights PATH); "
                f"nothing is downloaded at run time")
        self.model = getattr(of, self.arch)(weights=None)
        if weights is not None:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"RAFT weights {path} do not exist; get them from {url}")
            _check_sha256(path, RAFT_RELEASES[self.arch][release], url)
            self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.iterations = iterations

    @torch.no_grad()
    def __call__(self, img1: torch.Tensor, img2: torch.Tensor, **meta) -> torch.Tensor:
        H, W = img1.shape[-2:]
        scale = max(1.0, 128 / min(H, W))  # its correlation pyramid needs sides >= 128
        h, w = round(H * scale), round(W * scale)
        pad = (0, (-w) % 8, 0, (-h) % 8)  # and sides divisible by 8
        a, b = (F.pad(F.interpolate(x.to(self.device).float(), size=(h, w), mode="bilinear",
                                    align_corners=False) * 2 - 1, pad, mode="replicate")
                for x in (img1, img2))
        flow = self.model(a, b, num_flow_updates=self.iterations)[-1][..., :h, :w]
        if scale > 1:
            flow = F.interpolate(flow, size=(H, W), mode="bilinear", align_corners=False)
            flow = flow * torch.tensor([W / w, H / h], device=flow.device).view(1, 2, 1, 1)
        return flow.float().cpu()


def _check_sha256(path: Path, expected_name: str, url: str) -> None:
    import hashlib
    prefix = expected_name.rsplit("-", 1)[1].split(".")[0]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(prefix):
        raise ValueError(f"{path} is not {expected_name} (sha256 {digest[:8]}..., expected "
                         f"{prefix}...): download {url}, or set the flow release to the file "
                         f"you have")


@register_estimator("raft_large")
class RAFTLarge(RAFTFlow):
    arch = "raft_large"


@register_estimator("raft_small")
class RAFTSmall(RAFTFlow):
    arch = "raft_small"


@register_estimator("gt")
class GroundTruthFlow:
    """The synthetic world's exact flow (``bdd100k/flow_gt/<split>/<video>.npz``, consecutive
    frames, chained for larger steps). Called with ``videos`` (video file paths under
    ``bdd100k/videos/<split>/``), ``frames1`` and ``frames2`` (frame indices) per item."""
    on_cpu = True

    def __init__(self, *, cache_size: int = 8):
        self._cache: dict[str, dict] = {}  # video -> flows as stored (int16, 1/32 px)
        self.cache_size = cache_size
        self._last: dict = {}  # the pairs of the last call: its reverse call reuses them

    def flow_file(self, video) -> Path:
        video = Path(video)
        path = video.parents[2] / "flow_gt" / video.parent.name / f"{video.stem}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"no ground-truth flow {path} for {video} (only the "
                                    f"synthetic world has it: bench data synth)")
        return path

    def pair(self, video, t1: int, t2: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(flow t1 -> t2, flow t2 -> t1) as [2, H, W], t1 < t2."""
        key = str(video)
        if (key, t1, t2) in self._last:
            return self._last[key, t1, t2]
        if key not in self._cache:
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = read_flow_gt(self.flow_file(video), dequantize=False)
        gt = self._cache[key]
        if not 0 <= t1 < t2 <= len(gt["flow_fwd"]):
            raise ValueError(f"{video}: ground truth covers frames 0..{len(gt['flow_fwd'])}, "
                             f"asked {t1} -> {t2}")

        def steps(name, ts):
            return [gt[name][t][None].float() * gt["scale"] for t in ts]

        fwd, _ = chain(steps("flow_fwd", range(t1, t2)))
        bwd, _ = chain(steps("flow_bwd", reversed(range(t1, t2))))
        return fwd[0], bwd[0]

    def __call__(self, img1, img2, *, videos, frames1, frames2, **meta) -> torch.Tensor:
        out, pairs = [], {}
        for v, a, b in zip(videos, frames1, frames2):
            key = (str(v), min(a, b), max(a, b))
            pairs[key] = self.pair(*key)
            out.append(pairs[key][0] if a < b else pairs[key][1])
        self._last = pairs  # a method asks for t1 -> t2, then for t2 -> t1 of the same pairs
        return torch.stack(out)


def read_flow_gt(path, dequantize: bool = True) -> dict[str, torch.Tensor]:
    """flow_gt npz -> {"flow_fwd", "flow_bwd": float32 [T-1, 2, H, W] pixels, "occlusion_fwd",
    "occlusion_bwd": bool [T-1, H, W], "fps", "scale"} (the layout ``bench data synth``
    writes). ``dequantize=False`` keeps the stored int16 (pixels = value * scale): a quarter
    of the memory, for caches."""
    with np.load(path) as z:
        scale = float(z["scale"])

        def flows(name):
            x = torch.from_numpy(z[name]).permute(0, 3, 1, 2).contiguous()
            return x.float() * scale if dequantize else x

        return {"flow_fwd": flows("flow_fwd"), "flow_bwd": flows("flow_bwd"),
                "occlusion_fwd": torch.from_numpy(z["occlusion_fwd"]),
                "occlusion_bwd": torch.from_numpy(z["occlusion_bwd"]), "fps": float(z["fps"]),
                "scale": 1.0 if dequantize else scale}
