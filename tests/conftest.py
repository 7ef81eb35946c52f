"""Shared pytest helpers: real tiny video files (PyAV) and a tiny offline tokenizer.

Use them as fixtures (`make_video`, `tiny_tokenizer`, `make_tiny_tokenizer`) or import the plain functions
(`from conftest import make_video, make_tiny_tokenizer`).
"""

from __future__ import annotations

import os
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Let the tests import the package without installing it.
_SRC = Path(__file__).resolve().parents[1] / "src"
if str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from longvu_hf.tiny import tiny_tokenizer as tiny_tokenizer_of_the_package  # noqa: E402

GOLDEN_DIR = Path(__file__).resolve().parent / "fixtures" / "golden"


def frame_pattern(index: int, width: int, height: int) -> np.ndarray:
    """The content `make_video` writes for frame `index`: a horizontal gradient whose level encodes the index
    (so frames can be identified after lossy encoding), plus a vertical bar that moves with it."""
    level = (index * 37) % 200 + 28
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[..., 0] = level
    frame[..., 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    frame[..., 2] = 255 - level
    bar = (index * 3) % max(width - 4, 1)
    frame[:, bar : bar + 4] = 255
    return frame


def frame_level(frame: np.ndarray) -> float:
    """Reads back the red level `frame_pattern` wrote (away from the moving bar)."""
    return float(np.median(frame[..., 0]))


def make_video(
    path: str | os.PathLike,
    fps: float | Fraction = 8,
    num_frames: int = 16,
    width: int = 64,
    height: int = 36,
    codec: str | None = None,
    gop: int | None = None,
    x264_params: str | None = None,
) -> Path:
    """Writes a real video file with PyAV: `num_frames` distinct frames (see `frame_pattern`) at `fps`.

    The container comes from the suffix (.mp4, .mkv, .mov, .avi, .webm, .gif); the codec defaults to H.264
    (MPEG-4 part 2 for .avi, VP9 for .webm, GIF for .gif). Sizes must be even for yuv420p codecs. `x264_params`
    (H.264 only) is passed to x264 as is (`keyint=10:bframes=2`, ...).
    """
    import av

    path = Path(path)
    suffix = path.suffix.lower()
    codec = codec or {".avi": "mpeg4", ".webm": "libvpx-vp9", ".gif": "gif"}.get(suffix, "libx264")
    rate = Fraction(fps) if isinstance(fps, (int, Fraction)) else Fraction(str(fps))
    ntsc = Fraction(round(float(fps) * 1.001) * 1000, 1001)
    if not float(fps).is_integer() and abs(float(ntsc) - float(fps)) < 0.01:
        rate = ntsc  # 29.97 -> 30000/1001, as cameras write it
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        if codec == "libx264":
            # Lossless-ish and small: frames stay identifiable.
            stream.options = {"crf": "10", "preset": "ultrafast"}
            if x264_params:
                stream.options["x264-params"] = x264_params
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(index, width, height), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(name="make_video")
def make_video_fixture():
    """The `make_video(path, fps, num_frames, width, height)` helper, as a fixture."""
    return make_video


# ----------------------------------------------------------------------------------------------------------------------
# Tiny tokenizer
# ----------------------------------------------------------------------------------------------------------------------

# The package's offline tokenizer (`longvu_hf.tiny.tiny_tokenizer`): control tokens, placeholders, a few words.
make_tiny_tokenizer = tiny_tokenizer_of_the_package


@pytest.fixture(name="make_tiny_tokenizer")
def make_tiny_tokenizer_fixture():
    """The `make_tiny_tokenizer(...)` factory, as a fixture."""
    return make_tiny_tokenizer


@pytest.fixture
def tiny_tokenizer():
    """A fresh tiny tokenizer (see `make_tiny_tokenizer`)."""
    return make_tiny_tokenizer()


# ----------------------------------------------------------------------------------------------------------------------
# Heavy tests: their own CI step, so that the README's test command stays within its time on 2 cores
# ----------------------------------------------------------------------------------------------------------------------

HEAVY_ENV = "LONGVU_RUN_HEAVY"


def pytest_configure(config):
    config.addinivalue_line("markers", f"heavy: long-running; runs with {HEAVY_ENV}=1 (its own step of .ci/run)")


def pytest_collection_modifyitems(config, items):
    if os.environ.get(HEAVY_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"heavy: its own CI step runs it ({HEAVY_ENV}=1 python -m pytest -m heavy tests)")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)
