"""Video sources: folders of video files (BDD100K ``videos/{train,val}/*.mov``, Walking Tours
``.mp4``, any mp4/mov/mkv/avi) and folders of extracted frames, read by frame index.

Two decoders, both seeking to the keyframe before the first wanted frame and decoding
forward, converting to RGB only the frames asked for: ``pyav`` (PyAV/FFmpeg, one decoder
thread) and ``opencv`` (``VideoCapture`` seek + ``grab``). ``benchmarks/speed/
pair_sampling.py`` measures them; ``auto`` picks PyAV when it is installed.

A file that cannot be opened or decoded raises ``VideoError``; the pair sampler skips and
counts such files, so a bad video never kills a DataLoader worker or a run.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

VIDEO_EXTENSIONS = (".mov", ".mp4", ".mkv", ".avi", ".webm")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


class VideoError(RuntimeError):
    """A video file that cannot be opened or decoded (zero bytes, truncated, not a video)."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    height: int
    width: int


def _pyav_available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "pyav" if _pyav_available() else "opencv"
    if backend not in DECODERS:
        raise KeyError(f"unknown video backend {backend!r}; known: auto, {', '.join(DECODERS)}")
    return backend


class PyAVDecoder:
    """One open container; ``read(indices)`` seeks to the keyframe before the first index
    and decodes forward, converting only the wanted frames."""

    def __init__(self, path: str):
        import av
        try:
            self.container = av.open(str(path))
            self.stream = self.container.streams.video[0]
        except (av.error.FFmpegError, IndexError, OSError) as e:
            raise VideoError(f"{path}: cannot open ({e})") from None
        self.stream.thread_type = "SLICE"
        s = self.stream
        self.time_base = float(s.time_base)
        self.start = s.start_time or 0
        self.fps = float(s.average_rate or s.guessed_rate or 0)
        n = s.frames
        if not n and s.duration:
            n = int(round(float(s.duration * s.time_base) * self.fps))
        if not n or not self.fps:
            raise VideoError(f"{path}: no frame count or frame rate in the container")
        self.info = VideoInfo(str(path), int(n), self.fps, s.codec_context.height,
                              s.codec_context.width)
        self.path = str(path)

    def _index(self, frame) -> int:
        return int(round((frame.pts - self.start) * self.time_base * self.fps))

    def read(self, indices: list[int]) -> list[np.ndarray]:
        import av
        wanted = sorted(set(indices))
        out: dict[int, np.ndarray] = {}
        try:
            target = int(wanted[0] / self.fps / self.time_base) + self.start
            self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
            for frame in self.container.decode(self.stream):
                if frame.pts is None:
                    continue
                k = self._index(frame)
                if k in wanted and k not in out:
                    out[k] = frame.to_ndarray(format="rgb24")
                if k >= wanted[-1]:
                    break
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise VideoError(f"{self.path}: decoding failed near frame {wanted[0]} ({e})") from None
        missing = [k for k in wanted if k not in out]
        if missing:
            raise VideoError(f"{self.path}: frames {missing[:5]} could not be decoded "
                             f"(truncated file?)")
        return [out[k] for k in indices]

    def close(self):
        self.container.close()


class OpenCVDecoder:
    """``cv2.VideoCapture``: seek with CAP_PROP_POS_FRAMES, ``grab`` up to each wanted frame."""

    def __init__(self, path: str):
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise VideoError(f"{path}: cannot open")
        n = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(self.cap.get(cv2.CAP_PROP_FPS))
        if n <= 0 or fps <= 0:
            raise VideoError(f"{path}: no frame count or frame rate in the container")
        self.info = VideoInfo(str(path), n, fps, int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                              int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)))
        self.path = str(path)
        self.position = None  # next frame index the capture will return

    def read(self, indices: list[int]) -> list[np.ndarray]:
        wanted = sorted(set(indices))
        out = {}
        if self.position is None or not (self.position <= wanted[0] < self.position + 8):
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, wanted[0])
            self.position = wanted[0]
        for k in wanted:
            while self.position < k:
                if not self.cap.grab():
                    raise VideoError(f"{self.path}: frame {self.position} could not be decoded")
                self.position += 1
            ok, bgr = self.cap.read()
            if not ok:
                raise VideoError(f"{self.path}: frame {k} could not be decoded (truncated file?)")
            self.position += 1
            out[k] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return [out[k] for k in indices]

    def close(self):
        self.cap.release()


class FrameFolderDecoder:
    """A folder of extracted frames (sorted by name) standing for one video at `fps`."""

    def __init__(self, path: str, fps: float = 30.0):
        self.files = sorted(p for p in Path(path).iterdir()
                            if p.suffix.lower() in FRAME_EXTENSIONS)
        if not self.files:
            raise VideoError(f"{path}: no frames ({', '.join(FRAME_EXTENSIONS)})")
        first = cv2.imread(str(self.files[0]), cv2.IMREAD_COLOR)
        if first is None:
            raise VideoError(f"{self.files[0]}: not an image")
        self.info = VideoInfo(str(path), len(self.files), float(fps), *first.shape[:2])
        self.path = str(path)

    def read(self, indices: list[int]) -> list[np.ndarray]:
        out = []
        for k in indices:
            bgr = cv2.imread(str(self.files[k]), cv2.IMREAD_COLOR)
            if bgr is None:
                raise VideoError(f"{self.files[k]}: cannot read")
            out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        return out

    def close(self):
        pass


DECODERS = {"pyav": PyAVDecoder, "opencv": OpenCVDecoder}


class VideoSource:
    """The videos under `root` (recursively): video files and folders of frames (a folder
    whose direct children are frames). Zero-byte files are skipped at listing time; files
    that fail to open or decode later are skipped when met, warned about once and counted
    in ``skipped``.

    What is drawn never depends on what a process has met before (a DataLoader worker, a
    resumed run): ``is_bad`` holds only files that can never be read (zero bytes, will not
    open), which fail the same way every time; a file that opens but fails on some frames
    (truncated) is tried again each time, so whether a read succeeds is a function of the
    file and the frames alone.

    ``open(i)`` keeps up to `keep_open` decoders open per process (re-opening a container
    costs more than a seek).
    """

    def __init__(self, root, *, backend: str = "auto", frames_fps: float = 30.0,
                 keep_open: int = 4):
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"video folder {self.root} does not exist")
        self.backend = resolve_backend(backend)
        self.frames_fps = frames_fps
        self.keep_open = keep_open
        self.skipped: dict[str, str] = {}  # every file that failed, for the report
        self.unreadable: set[str] = set()  # files that fail whatever frames are asked for
        self.ignored: dict[str, str] = {}  # paths named like videos that are not (reported)
        self.items: list[Path] = []
        candidates = [self.root] if self.root.is_file() else sorted(self.root.rglob("*"))
        for p in candidates:
            if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
                self.items.append(p)
                if p.stat().st_size == 0:
                    self._skip(p, "zero bytes")
                    self.unreadable.add(str(p))
            elif p.is_dir() and any(c.suffix.lower() in FRAME_EXTENSIONS for c in p.iterdir()):
                self.items.append(p)
            elif p.is_dir() and p.suffix.lower() in VIDEO_EXTENSIONS:
                self.ignored[str(p)] = "a folder named like a video, without frames in it"
                warnings.warn(f"ignoring {p}: {self.ignored[str(p)]}", stacklevel=2)
        self._open: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        return self.items[i].stem

    def _skip(self, path, why: str) -> None:
        if str(path) not in self.skipped:
            self.skipped[str(path)] = why
            warnings.warn(f"skipping video {path}: {why}", stacklevel=3)

    def is_bad(self, i: int) -> bool:
        """True for a file that can never be read (see the class docstring)."""
        return str(self.items[i]) in self.unreadable

    def open(self, i: int):
        """The decoder of video `i` (raises VideoError and records the file as skipped)."""
        if i in self._open:
            return self._open[i]
        path = self.items[i]
        try:
            if path.is_dir():
                dec = FrameFolderDecoder(path, self.frames_fps)
            else:
                dec = DECODERS[self.backend](path)
        except VideoError as e:
            self._skip(path, str(e))
            self.unreadable.add(str(path))
            raise
        if len(self._open) >= self.keep_open:
            self._open.pop(next(iter(self._open))).close()
        self._open[i] = dec
        return dec

    def read(self, i: int, indices: list[int]) -> list[np.ndarray]:
        try:
            return self.open(i).read(indices)
        except VideoError as e:
            self._skip(self.items[i], str(e))
            self._open.pop(i, None)
            raise

    def summary(self) -> str:
        return (f"{len(self.items) - len(self.skipped)} of {len(self.items)} videos usable"
                + (f"; skipped {len(self.skipped)}: " + "; ".join(
                    f"{Path(p).name} ({why})" for p, why in self.skipped.items())
                   if self.skipped else "")
                + (f"; ignored {len(self.ignored)}: " + "; ".join(
                    f"{Path(p).name} ({why})" for p, why in self.ignored.items())
                   if self.ignored else ""))

    def __getstate__(self):  # decoders stay in the process that opened them
        return {**self.__dict__, "_open": {}}
