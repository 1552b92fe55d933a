import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from benchmarks.cli import main
from pretrain.data.samples import FramePairs, collate_samples
from pretrain.data.video import DECODERS, VideoSource
from pretrain.flow.cache import FlowCache, decode, encode


@pytest.fixture(scope="module")
def videos(tiny_root):
    return tiny_root / "bdd100k" / "videos"


@pytest.fixture
def videos_with_bad_files(videos, tmp_path):
    root = tmp_path / "videos"
    shutil.copytree(videos, root)
    good = sorted(root.rglob("*.mov"))[0]
    data = good.read_bytes()
    (root / "train" / "truncated.mov").write_bytes(data[: len(data) // 3])
    (root / "train" / "empty.mov").write_bytes(b"")
    (root / "train" / "notes.mp4").write_text("not a video")
    return root


@pytest.mark.parametrize("backend", sorted(DECODERS))
def test_bad_videos_are_skipped_and_counted(backend, videos_with_bad_files):
    with pytest.warns(UserWarning, match="empty.mov: zero bytes"):
        source = VideoSource(videos_with_bad_files, backend=backend)
    assert len(source) == 7
    pairs = FramePairs(source, dt_frames=(1, 3), repeats=2, seed=0)
    with pytest.warns(UserWarning, match="skipping video"):
        items = [pairs[i] for i in range(len(pairs))]
    assert all(it["frames"].shape[:2] == (2, 2) for it in items)
    assert {it["path"] for it in items}.isdisjoint(source.skipped)
    names = {p.split("/")[-1] for p in source.skipped}
    assert names == {"truncated.mov", "empty.mov", "notes.mp4"}
    assert "4 of 7 videos usable; skipped 3" in source.summary()
    batch = collate_samples(items)
    assert batch["frames"].shape[:3] == (7, 2, 2)
    # every draw of a bad file is in the items, whether this process knew it or not
    assert {p.split("/")[-1] for p in batch["skipped"]} == {"truncated.mov", "notes.mp4",
                                                          "empty.mov"}


def test_pairs_follow_dt_and_seed(videos, tiny_world):
    source = VideoSource(videos, backend="opencv")
    fps = tiny_world.fps
    pairs = FramePairs(source, dt_seconds=0.3, repeats=3, seed=1)
    item = pairs[0]
    assert (item["frame_index"][:, 1] - item["frame_index"][:, 0] == round(0.3 * fps)).all()
    assert torch.allclose(item["time"][:, 1] - item["time"][:, 0],
                          torch.full((3,), round(0.3 * fps) / fps, dtype=torch.float64))
    again = FramePairs(VideoSource(videos, backend="pyav"), dt_seconds=0.3, repeats=3, seed=1)
    assert torch.equal(again[0]["frame_index"], item["frame_index"])
    pairs.set_epoch(1)
    assert not torch.equal(pairs[0]["frame_index"], item["frame_index"])
    with pytest.raises(ValueError, match="exactly one"):
        FramePairs(source, dt_frames=2, dt_seconds=0.5)


def test_both_decoders_return_the_same_frames(videos):
    a = VideoSource(videos, backend="pyav")
    b = VideoSource(videos, backend="opencv")
    for idx in ([0, 5], [7, 11], [3]):
        for x, y in zip(a.read(1, idx), b.read(1, idx)):
            assert np.abs(x.astype(int) - y.astype(int)).mean() < 1.0


def test_cache_round_trip_is_within_the_recorded_error():
    g = torch.Generator().manual_seed(0)
    fwd = torch.randn(2, 30, 40, generator=g) * 20
    bwd = torch.randn(2, 30, 40, generator=g) * 20
    png, err = encode(fwd, bwd, step=1 / 16)
    f, b = decode(png, step=1 / 16)
    worst = max((f - fwd).abs().max(), (b - bwd).abs().max()).item()
    assert worst <= err["max_abs_error_px"] + 1e-6 <= 1 / 32 + 1e-6
    assert err["clipped"] == 0


def test_bench_flow_precompute_resume_info_show(videos, tmp_path, capsys):
    out = tmp_path / "cache"
    args = ["flow", "precompute", "--videos", str(videos), "--estimator", "gt", "--out",
            str(out), "--dt", "1", "2", "--every", "3"]
    assert main(args) == 0
    assert "cached 4 new and 0 earlier of 4 videos" in capsys.readouterr().out
    cache = FlowCache(out)
    info = cache.info()
    assert info["pairs"] > 0 and info["ratio"] < 0.1 and info["max_abs_error_px"] <= 1 / 16
    video = cache.videos()[0]
    meta = (out / video / "meta.json").stat().st_mtime_ns
    # a run killed mid-write left a temporary file; then an empty video and a folder
    # named like one appear among the videos
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = out / video / f".0_1.png.{dead.pid}.tmp"
    stale.write_bytes(b"half a file")
    more = tmp_path / "more_videos"
    shutil.copytree(videos, more)
    (more / "train" / "empty.mov").write_bytes(b"")
    (more / "train" / "folder.mov").mkdir()
    with pytest.warns(UserWarning):
        assert main([*args[:3], str(more), *args[4:]]) == 0  # resumes: nothing recomputed
    printed = capsys.readouterr().out
    assert "cached 0 new and 4 earlier of 5 videos" in printed
    assert "1 skipped, 1 not videos" in printed and "empty: skipped: zero bytes" in printed
    assert "folder.mov: a folder named like a video" in printed
    assert (out / video / "meta.json").stat().st_mtime_ns == meta and not stale.exists()
    assert main(["flow", "info", str(out)]) == 0
    assert "mean end-point error" in capsys.readouterr().out
    # the sampler draws cached pairs and carries their flow
    pairs = FramePairs(VideoSource(videos), flow_cache=cache, repeats=2)
    item = pairs[0]
    assert item["flow_fwd"].shape == (2, 1, 2, *item["frames"].shape[2:4])
    png = tmp_path / "show.png"
    assert main(["flow", "show", "--videos", str(videos), "--t", "2", "--dt", "1",
                 "--out", str(png)]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert png.is_file() and shown["warp_error"] < shown["no_warp_error"]
    assert main(["flow", "precompute", "--videos", str(videos), "--estimator", "dis",
                 "--out", str(out)]) == 2  # another estimator into the same cache
    assert "another --out" in capsys.readouterr().err
    for extra, says in ((["--estimator", "dis", "--iterations", "24"], "RAFT settings"),
                        (["--estimator", "raft_large", "--release", "x"], "--release: "),
                        (["--estimator", "raft_large"], "raft_large_C_T_V1-22a6c225.pth")):
        assert main(["flow", "precompute", "--videos", str(videos), "--out",
                     str(tmp_path / "never"), *extra]) == 2
        assert says in capsys.readouterr().err


def test_frame_folders_are_videos_too(videos, tmp_path):
    import cv2
    source = VideoSource(videos, backend="opencv")
    folder = tmp_path / "frames" / "clip0"
    folder.mkdir(parents=True)
    for k, frame in enumerate(source.read(0, list(range(8)))):
        cv2.imwrite(str(folder / f"{k:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    frames = VideoSource(tmp_path / "frames", frames_fps=10.0)
    assert len(frames) == 1 and frames.open(0).info.num_frames == 8
    item = FramePairs(frames, dt_seconds=0.2, repeats=2)[0]
    assert (item["frame_index"][:, 1] - item["frame_index"][:, 0] == 2).all()
    assert np.array_equal(item["frames"][0, 0].numpy(),
                          source.read(0, [int(item["frame_index"][0, 0])])[0])


def test_bad_videos_do_not_stop_dataloader_workers(videos_with_bad_files):
    pairs = FramePairs(VideoSource(videos_with_bad_files, backend="pyav"), dt_frames=2)
    loader = torch.utils.data.DataLoader(pairs, batch_size=4, num_workers=2,
                                         collate_fn=collate_samples)
    batches = list(loader)
    assert sum(len(b["video"]) for b in batches) == 7
    assert {p.split("/")[-1] for b in batches for p in b["skipped"]} == {
        "truncated.mov", "notes.mp4", "empty.mov"}
