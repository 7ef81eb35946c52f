"""Frame sampling and subtitles as the official LongVU evaluation scripts do them.

Video files are sampled by the LongVU video processor, whose options reproduce the official rules (docs/reference.md §1.2);
`video_sampling_kwargs` maps a protocol onto them:

- VideoMME, MLVU, EgoSchema: one frame every `round(round(avg_fps) / 0.5)` frames from frame 0; MLVU and EgoSchema then
  keep every `len // 1000`-th index when more than 1000 were sampled (`max_frames_mode="stride"`).
- MVBench: one frame every `round(avg_fps / 2)` frames, inside the clip's `(start, end)` seconds when the task gives
  them (`start_time`/`end_time`).

MVBench's TVQA task is a folder of JPEGs assumed to be 3 fps and numbered from `00001.jpg`; `load_frame_folder` reads
the ones the official script reads and hands them to the processor as an array.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .protocols import BenchmarkProtocol


def video_sampling_kwargs(protocol: BenchmarkProtocol, clip: tuple[float, float] | None = None) -> dict:
    """The video processor options that sample a video file the way `protocol` says."""
    kwargs = {"fps": protocol.sample_fps}
    if protocol.frame_cap is not None:
        kwargs.update(max_frames=protocol.frame_cap, max_frames_mode="stride")
    if clip is not None:
        kwargs.update(start_time=float(clip[0]), end_time=float(clip[1]))
    return kwargs


def frame_folder_indices(
    num_files: int, folder_fps: float, sample_fps: float, clip: tuple[float, float] | None = None
) -> list[int]:
    """1-based numbers of the JPEGs the official MVBench script reads from a frame folder.

    Example:

    ```python
    >>> frame_folder_indices(num_files=30, folder_fps=3, sample_fps=2, clip=(1.0, 4.0))
    [3, 5, 7, 9, 11]
    ```
    """
    start, end = clip if clip is not None else (-100000, 100000)
    start_index = max(1, round(start * folder_fps))
    end_index = min(round(end * folder_fps), num_files)
    indices = list(range(start_index, end_index, max(1, round(folder_fps / sample_fps))))
    if not indices:
        raise ValueError(f"The clip {clip} s holds no frame of a {num_files}-frame folder at {folder_fps} fps")
    return indices


def load_frame_folder(
    folder: str, folder_fps: float, sample_fps: float, clip: tuple[float, float] | None = None
) -> tuple[np.ndarray, list[int]]:
    """The frames `(T, H, W, 3)` uint8 the official MVBench script reads from a frame folder, and their numbers."""
    from PIL import Image

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Frame folder not found: {folder}")
    indices = frame_folder_indices(len(os.listdir(folder)), folder_fps, sample_fps, clip)
    frames = []
    for index in indices:
        path = os.path.join(folder, f"{index:05d}.jpg")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Frame not found: {path}")
        with Image.open(path) as image:
            frames.append(np.asarray(image.convert("RGB")))
    if len({frame.shape for frame in frames}) != 1:
        raise ValueError(f"The frames of {folder} do not all have the same size")
    return np.stack(frames), indices


# ---------------------------------------------------------------------------------------------------------------------
# Subtitles (VideoMME)
# ---------------------------------------------------------------------------------------------------------------------

_SRT_TIME = re.compile(r"(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})")


@dataclass
class SubtitleLine:
    start_ms: int
    end_ms: int
    text: str


def _srt_time_ms(value: str) -> int:
    match = _SRT_TIME.search(value)
    if match is None:
        raise ValueError(f"Not an SRT timestamp: {value!r}")
    hours, minutes, seconds, millis = match.groups()
    return ((int(hours) * 60 + int(minutes)) * 60 + int(seconds)) * 1000 + int(millis.ljust(3, "0"))


def read_srt(path: str) -> list[SubtitleLine]:
    """Parse an `.srt` file; lines of one cue are joined with a space (as the official script's `\\N` -> " ")."""
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        blocks = re.split(r"\n\s*\n", handle.read().replace("\r\n", "\n").replace("\r", "\n"))
    lines = []
    for block in blocks:
        rows = [row for row in block.strip().split("\n") if row.strip()]
        timing = next((i for i, row in enumerate(rows) if "-->" in row), None)
        if timing is None:
            continue
        start, end = rows[timing].split("-->", 1)
        lines.append(SubtitleLine(_srt_time_ms(start), _srt_time_ms(end), " ".join(rows[timing + 1 :]).strip()))
    return lines


def select_subtitles(
    lines: Sequence[SubtitleLine],
    frame_indices: Sequence[int],
    fps: float,
    count_tokens: Callable[[str], int] | None = None,
    token_limit: int = 6000,
) -> str:
    """The subtitles the official VideoMME script puts in the prompt for the sampled frames.

    For each sampled frame, the cue showing at that instant (at `round(fps)`), skipping empty cues, "[Music]",
    "[Applause]", repeats and cues contained in the previous one; if the result is longer than `token_limit` tokens,
    about 200 evenly spaced cues are kept. Returns the cues joined by newlines ("" if none).
    """
    fps = round(fps) or 1
    selected: list[str] = []
    for index in frame_indices:
        now_ms = int(round(index * (1000 / fps)))  # pysubs2.make_time(fps=, frames=)
        text = next((line.text for line in lines if line.start_ms < now_ms < line.end_ms), "")
        if not text.strip() or "[Music]" in text or "[Applause]" in text or text in selected:
            continue
        if selected and text in selected[-1]:
            continue
        selected.append(text)
    if count_tokens is not None and selected and count_tokens("\n".join(selected)) > token_limit:
        interval = max(1, len(selected) // 200)
        selected = selected[::interval]
    return "\n".join(selected)


__all__ = [
    "SubtitleLine",
    "frame_folder_indices",
    "load_frame_folder",
    "read_srt",
    "select_subtitles",
    "video_sampling_kwargs",
]
