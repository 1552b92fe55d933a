"""Helpers that several test modules share."""
import socket
from pathlib import Path

SUITE = "cityscapes_linear"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smoke_run(ckpt, root, runs, uri, *extra) -> int:
    """`bench run` of the smoke-scale cityscapes_linear suite, in-process."""
    from benchmarks.cli import main
    return main(["run", "--suite", SUITE, "--checkpoint", str(ckpt), "--data-root", str(root),
                 "--scale", "smoke", "--device", "cpu", "--out", str(runs),
                 "--tracking-uri", uri, *extra])


def truncated_but_opening_copy(video, out, keep: float = 0.5) -> None:
    """`video` re-encoded with its index first (faststart) and cut to `keep` of its bytes:
    it opens and its first frames decode, later frames fail (a download cut short)."""
    import av
    with av.open(str(video)) as src:
        stream = src.streams.video[0]
        rate = int(round(stream.average_rate or 10))
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(stream)]
    tmp = str(out) + ".full.mp4"
    with av.open(tmp, "w", options={"movflags": "faststart"}) as dst:
        enc = dst.add_stream("mpeg4", rate=rate)
        enc.height, enc.width = frames[0].shape[:2]
        enc.pix_fmt = "yuv420p"
        for frame in frames:
            dst.mux(enc.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        dst.mux(enc.encode())
    data = open(tmp, "rb").read()
    open(out, "wb").write(data[: int(len(data) * keep)])
    import os
    os.unlink(tmp)


def lighter_detector(model, rois: int = 64, proposals: int = 100):
    """Fewer sampled RoIs per training image and fewer test proposals than detectron2's 512
    and 1,000: a C4 box head runs res5 on each, which dominates a CPU test's time. What the
    tests check (losses, which modules train, resume, COCO output) does not depend on it."""
    model.roi_heads.fg_bg_sampler.batch_size_per_image = rois
    model.rpn._post_nms_top_n = {**model.rpn._post_nms_top_n, "testing": proposals}
    return model


def authors_poodle_decoder(*, channels: int = 2048, lateral_channels=(1024, 512),
                           width: int = 256):
    """PooDLe's spatial decoder written to the authors' definition
    (agentic-learning-ai-lab/poodle src/models/poodle.py, Poodle.__init__): torchvision
    Bottlenecks ``decoder_blocks`` (``Bottleneck(2048, 512, base_width=32)``: width 256)
    and 1x1 convs with bias ``decoder_laterals``; its state-dict keys are the authors'."""
    import torch
    from torchvision.models.resnet import Bottleneck
    blocks = torch.nn.ModuleList(Bottleneck(channels, channels // 4,
                                            base_width=64 * width * 4 // channels)
                                 for _ in lateral_channels)
    laterals = torch.nn.ModuleList(torch.nn.Conv2d(c, channels, 1) for c in lateral_channels)
    return torch.nn.ModuleDict({"decoder_blocks": blocks, "decoder_laterals": laterals})


def authors_poodle_decode(decoder, feats: list):
    """The authors' forward (Poodle.forward): from the last feature, per level block ->
    2x bilinear upsampling -> + lateral of the feature before."""
    import torch.nn.functional as F
    z = feats[-1]
    for i, lateral in enumerate(decoder["decoder_laterals"]):
        z = decoder["decoder_blocks"][i](z)
        z = F.interpolate(z, scale_factor=2, mode="bilinear", align_corners=False)
        z = z + lateral(feats[-i - 2])
    return z


def tiny_store(tiny_root) -> Path:
    """The tiny world's videos tracked on their exact flow into a trajectory store, for the
    methods whose samples are ``tracks`` (built once per session: later calls resume it)."""
    from pretrain.data.video import VideoSource
    from pretrain.flow.trajectory_store import build_store
    store = Path(tiny_root) / "trajectories"
    build_store(VideoSource(Path(tiny_root) / "bdd100k" / "videos"), store, estimator="gt",
                progress=False)
    return store


def data_overrides(name: str, tiny_root) -> list[str]:
    """What a method's smoke preset needs beyond itself on the tiny world: a trajectory
    store, and for the methods that start from a checkpoint (PiCO's family) a random-init
    ResNet-18 as their frozen MoCo-v2 encoder."""
    from pretrain.config import model_keys
    from pretrain.methods import METHODS
    out = []
    if METHODS[name].samples == "tracks":
        out.append(f"data.trajectories={tiny_store(tiny_root)}")
    if "init" in model_keys(name):
        from readout.backbone import save_checkpoint, scratch_checkpoint
        init = Path(tiny_root) / "init_resnet18.pth"
        if not init.is_file():
            save_checkpoint(scratch_checkpoint("resnet18", seed=0), init)
        out.append(f"model.init={init}")
    return out
