"""MP4 frames in and out with PyAV (FFmpeg): decode the frames at given times, append frames to an encoder.

Both sides work one episode at a time, so memory holds one episode's frames of one camera, never a whole video.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from .store import DatasetError


class VideoError(DatasetError):
    """A video file that is missing, unreadable, or holds fewer frames than its index says."""


def decode_frames(
    path: Path, times: np.ndarray, fps: float, size: tuple[int, int] | None = None, what: str = ""
) -> np.ndarray:
    """Decode the frames shown at ``times`` (seconds in the file, ascending) -> uint8 (T, H, W, 3) RGB.

    A frame matches a time within half a frame period (``0.5 / fps``). ``size`` = (H, W) resizes while converting
    to RGB (FFmpeg's bilinear swscale). A time with no frame raises :class:`VideoError` naming the file, the first
    missing time and how far the video goes, e.g. a video shorter than its Parquet index.
    """
    import av

    if not path.is_file():
        raise VideoError(f"{path}: video file missing{what}")
    times = np.asarray(times, dtype=np.float64)
    tol = 0.5 / fps
    frames: list[np.ndarray] = []
    last = None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if times[0] > tol:  # several episodes per file (v3.0): jump to the keyframe before the first time
                container.seek(int((times[0] - tol) / stream.time_base), stream=stream, backward=True)
            kwargs = {"format": "rgb24"} if size is None else {"format": "rgb24", "height": size[0], "width": size[1]}
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else None
                if t is None:
                    continue
                last = t
                k = len(frames)
                if t < times[k] - tol:
                    continue
                if t > times[k] + tol:
                    raise VideoError(f"{path}: no frame at t={times[k]:.4f}s{what} (next frame at {t:.4f}s)")
                frames.append(frame.to_ndarray(**kwargs))
                if len(frames) == len(times):
                    break
    except (av.error.FFmpegError, IndexError) as e:
        raise VideoError(f"{path}: cannot decode video{what} ({e})") from None
    if len(frames) < len(times):
        ends = "has no frames" if last is None else f"ends at t={last:.4f}s"
        raise VideoError(
            f"{path}: video is shorter than its Parquet index{what}: {len(frames)} of {len(times)} frames found, the "
            f"video {ends} but the index needs t={times[-1]:.4f}s"
        )
    return np.stack(frames)


class VideoWriter:
    """Append uint8 (T, H, W, 3) RGB frames to one MP4 at ``fps``; frame ``i`` is shown at ``i / fps`` seconds.

    ``codec`` e.g. ``libsvtav1`` (LeRobot's default), ``libx264``; ``options`` go to the encoder (``crf``, ``g``).
    """

    def __init__(self, path: Path, fps: int, height: int, width: int, codec: str = "libsvtav1",
                 pix_fmt: str = "yuv420p", options: dict[str, str] | None = None):
        import av

        if codec == "libsvtav1":  # SVT-AV1 prints ~20 info lines per video unless told otherwise (read at start)
            os.environ.setdefault("SVT_LOG", "1")  # errors only
        if height % 2 or width % 2:
            raise VideoError(f"{path}: {pix_fmt} video needs even frame sizes, got {height}x{width}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.frames = 0
        self.bytes = 0  # encoded bytes so far (the MP4 file itself appears only once its header is written)
        self._container = av.open(str(path), "w")
        try:
            self._stream = self._container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        except (av.error.FFmpegError, ValueError) as e:
            self._container.close()
            raise VideoError(f"{path}: video codec {codec!r} is not available in this FFmpeg build ({e})") from None
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, pix_fmt
        self._stream.time_base = Fraction(1, 1) / Fraction(fps).limit_denominator(1000)
        self._stream.options = dict(options or {})

    def write(self, images: np.ndarray) -> None:
        """Append uint8 (T, H, W, 3) frames."""
        import av

        for img in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.frames
            self.frames += 1
            packets = self._stream.encode(frame)
            self.bytes += sum(p.size for p in packets)
            self._container.mux(packets)

    def close(self) -> None:
        self._container.mux(self._stream.encode(None))
        self._container.close()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays of one shape (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)
