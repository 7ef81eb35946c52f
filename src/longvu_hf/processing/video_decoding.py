"""Streaming frame sources for the LongVU video processor.

A frame source opens a video once to read its metadata (frame count, average fps, size) and then yields only the frames
it is asked for, in small batches of RGB uint8 `(H, W, 3)` arrays, so that a long video never sits in memory at full
resolution. Sources exist for video files and URLs (PyAV, torchcodec, decord), folders or lists of frame images, and
in-memory arrays/tensors.

Paths and URLs are resolved by `longvu_hf.media_inputs.resolve_media` under an `InputPolicy` (the local user's by
default) before any decoder sees them, and PyAV opens every container with the `file` protocol only and an allow-list
of container formats (`media_inputs.open_container`), so no file can make FFmpeg open another input.

Frame index `i` always means the `i`-th frame in presentation order, as decord (the reference decoder) counts them.

`decode_frames` runs the decoding in background threads, ahead of the caller by a bounded number of batches. With
`workers > 1` (the processor's `decode_workers`) a video file is decoded by several decoders at once, each opening the
file itself under the same restrictions: the sampled frames are cut at keyframes into segments dealt out to the
workers in turn, and merged back in order, so the frames are exactly the single decoder's. FFmpeg releases the GIL
while decoding (PyAV, torchcodec; decord calls it through ctypes), so threads suffice. `open_gpu_decoder` swaps in
torchcodec's CUDA decoder for a video to be encoded on CUDA, falling back to the CPU decoder where it cannot open one.

Example:

```python
>>> source = open_frame_source("clip.mp4")
>>> source.metadata.total_num_frames, source.metadata.fps
(600, 29.97002997002997)
>>> for batch in source.iter_frames(np.array([0, 30, 60]), batch_size=2):
...     [(slot, frame.shape) for slot, frame in batch]
[(0, (36, 64, 3)), (1, (36, 64, 3))]
[(2, (36, 64, 3))]
```
"""

from __future__ import annotations

import bisect
import copy
import io
import os
import queue
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from transformers.utils import is_av_available, is_decord_available, is_torchcodec_available, logging
from transformers.video_utils import VideoMetadata

from ..media_inputs import IMAGE_EXTENSIONS, InputPolicy, MediaSource, load_image, open_container, resolve_media

logger = logging.get_logger(__name__)

VIDEO_BACKENDS = ("pyav", "torchcodec", "decord")
# "auto" tries these in order. PyAV comes first because its decoder below skips the non-reference frames it does not
# need and seeks over whole GOPs, which measured ~40% less CPU than torchcodec on 1-fps sampling (benchmarks/README.md).
AUTO_BACKEND_ORDER = ("pyav", "torchcodec", "decord")

# A batch is a list of (slot, frame): `slot` is the position in the requested index array, `frame` is (H, W, 3) uint8.
FrameBatch = list[tuple[int, np.ndarray]]


class FrameSource:
    """Base class: `metadata` describes the whole video; `iter_frames` yields the requested frames batch by batch."""

    name: str
    metadata: VideoMetadata
    media: MediaSource | None = None  # the resolved input, kept while the source lives (a download is deleted after)

    def iter_frames(self, indices: np.ndarray, batch_size: int) -> Iterator[FrameBatch]:
        raise NotImplementedError

    def keyframe_indices(self) -> list[int] | None:
        """The presentation indices of the video's keyframes, sorted, where the decoder knows them; None when it
        does not (the video is then decoded by one worker)."""
        return None

    def worker_source(self, workers: int) -> FrameSource:
        """A source that decodes the same frames as this one, from another thread at the same time as this one
        (one of `workers` decoding the video together). Only sources with `keyframe_indices` need it."""
        raise NotImplementedError

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the source frames."""
        return int(self.metadata.height), int(self.metadata.width)


def _batched(pairs: Iterator[tuple[int, np.ndarray]], batch_size: int) -> Iterator[FrameBatch]:
    batch: FrameBatch = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _slots_by_index(indices: np.ndarray) -> dict[int, list[int]]:
    """Frame index -> the output slots that want it (an index may be requested twice)."""
    slots: dict[int, list[int]] = {}
    for slot, index in enumerate(np.asarray(indices).tolist()):
        slots.setdefault(int(index), []).append(slot)
    return slots


# --------------------------------------------------------------------------------------------------------------------
# In-memory videos
# --------------------------------------------------------------------------------------------------------------------


def _is_channels_first(array: Any) -> bool:
    """Whether a frame (C, H, W) or video (T, C, H, W) puts channels first (ambiguous shapes count as last)."""
    shape = tuple(array.shape)
    return shape[-3] in (1, 3, 4) and shape[-1] not in (1, 3, 4)


def to_uint8_hwc(frame: Any, channels_first: bool | None = None) -> np.ndarray:
    """Converts one frame (PIL image, (H, W, C) or (C, H, W) array/tensor, uint8 or float) to RGB uint8 (H, W, 3)."""
    from PIL import Image

    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    if hasattr(frame, "detach"):  # torch tensor
        frame = frame.detach().cpu().numpy()
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.ndim != 3:
        raise ValueError(f"A video frame must have 2 or 3 dimensions, got shape {tuple(frame.shape)}")
    if channels_first is None:
        channels_first = _is_channels_first(frame)
    if channels_first:
        frame = frame.transpose(1, 2, 0)
    if frame.dtype != np.uint8:
        frame = frame.astype(np.float32)
        # Frames already scaled to [0, 1] (e.g. from ToTensor) are brought back to [0, 255].
        if frame.size and frame.max() <= 1.0:
            frame = frame * 255.0
        frame = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    elif frame.shape[-1] == 4:
        frame = np.asarray(Image.fromarray(np.ascontiguousarray(frame), "RGBA").convert("RGB"))
    return frame


class ArrayFrameSource(FrameSource):
    """A decoded video: a (T, H, W, C) / (T, C, H, W) array or tensor, or a list of frames (PIL images or arrays)."""

    def __init__(self, video: Any, name: str, metadata: VideoMetadata | dict | None = None):
        self.name = name
        self._video = video
        num_frames = len(video)
        if num_frames == 0:
            raise ValueError(f"Video {name} has no frames.")
        # One decision for the whole video, so that a tiny frame cannot be misread.
        self._channels_first = _is_channels_first(video) if getattr(video, "ndim", 0) == 4 else None
        first = to_uint8_hwc(video[0], self._channels_first)
        height, width = first.shape[:2]
        self.metadata = VideoMetadata(
            total_num_frames=num_frames, width=width, height=height, video_backend="array", **_timing(metadata)
        )
        _complete_timing(self.metadata)

    def iter_frames(self, indices: np.ndarray, batch_size: int) -> Iterator[FrameBatch]:
        pairs = (
            (slot, to_uint8_hwc(self._video[int(index)], self._channels_first))
            for slot, index in enumerate(np.asarray(indices))
        )
        return _batched(pairs, batch_size)


def _timing(metadata: VideoMetadata | dict | None) -> dict:
    """The frame rate (and duration) a user gave for frames that carry none; sizes and counts come from the frames."""
    given = {} if metadata is None else {key: value for key, value in dict(metadata).items() if value is not None}
    return {key: given[key] for key in ("fps", "duration") if key in given}


def frame_rate(metadata: VideoMetadata | dict) -> float | None:
    """The average frame rate of a video: `fps`, else `total_num_frames / duration`, else None (unknown)."""
    fps, duration, total = (metadata.get(key) for key in ("fps", "duration", "total_num_frames"))
    if fps:
        return float(fps)
    if duration and total:
        return float(total) / float(duration)
    return None


def _complete_timing(metadata: VideoMetadata) -> None:
    """Fills `fps` from the duration, or `duration` from the frame rate, when only one of them is known."""
    if not metadata.fps:
        metadata.fps = frame_rate(metadata)
    if metadata.fps and not metadata.duration:
        metadata.duration = metadata.total_num_frames / float(metadata.fps)


def _natural_key(name: str) -> list:
    # "frame2.jpg" sorts before "frame10.jpg".
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class ImageSequenceFrameSource(FrameSource):
    """A video stored as image files: a folder (files sorted by name) or an explicit list of paths/URLs."""

    def __init__(
        self,
        images: str | Sequence[str],
        name: str,
        metadata: VideoMetadata | dict | None = None,
        policy: InputPolicy | None = None,
    ):
        self.name = name
        self._policy = policy or InputPolicy.local_user()
        if isinstance(images, str):
            files = [
                os.path.join(images, entry)
                for entry in os.listdir(images)
                if entry.lower().endswith(IMAGE_EXTENSIONS) and not entry.startswith(".")
            ]
            self._images = sorted(files, key=lambda path: _natural_key(os.path.basename(path)))
        else:
            self._images = list(images)
        if not self._images:
            raise ValueError(f"Frame folder {name} holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
        first = self._load(0)
        self.metadata = VideoMetadata(
            total_num_frames=len(self._images),
            width=first.shape[1],
            height=first.shape[0],
            video_backend="images",
            **_timing(metadata),
        )
        _complete_timing(self.metadata)

    def _load(self, index: int) -> np.ndarray:
        location = self._images[index]
        if not isinstance(location, str):
            return to_uint8_hwc(location)
        # URLs are fetched, and paths opened, under the input policy (media_inputs), never directly.
        return np.asarray(load_image(location, self._policy, f"'{location}' (frame {index} of video {self.name})"))

    def iter_frames(self, indices: np.ndarray, batch_size: int) -> Iterator[FrameBatch]:
        pairs = ((slot, self._load(int(index))) for slot, index in enumerate(np.asarray(indices)))
        return _batched(pairs, batch_size)


# --------------------------------------------------------------------------------------------------------------------
# Video files: PyAV
# --------------------------------------------------------------------------------------------------------------------


class _RestartSequential(Exception):
    """Internal: the fast PyAV path met something it cannot handle safely; decode again, sequentially."""


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class PyAVFrameSource(FrameSource):
    """Decodes a video file with PyAV, decoding as few frames as the codec allows.

    Opening the file demuxes it once (no decoding) to learn every packet's timestamp: this gives the exact frame count
    (also for containers without one in the header, such as mkv/webm) and the presentation index of each packet. While
    decoding, the frames nobody asked for are skipped when no other frame references them (`skip_frame=NONREF`), and
    whole GOPs are jumped over by seeking to the keyframe before the next requested frame. If a file's timestamps are
    missing, duplicated or inconsistent, it falls back to plain sequential decoding, which is always exact.
    """

    def __init__(self, source: str | bytes, name: str, threads: bool = True):
        import av

        self.name = name
        self._source = source
        self._threads = threads
        self._thread_count = 0  # FFmpeg's choice (one per core); a share of the cores for parallel workers
        with self._open() as container:
            stream = self._video_stream(container)
            header_frames = int(stream.frames or 0)
            average_rate = stream.average_rate or stream.guessed_rate
            width, height = int(stream.codec_context.width), int(stream.codec_context.height)
            try:
                packet_pts, keyframes = self._scan_packets(container, stream)
            except av.error.FFmpegError as error:
                message = f"Video {name} is corrupt: reading its packets failed ({_describe(error)})."
                raise ValueError(message) from error

        if not packet_pts:
            raise ValueError(f"Video {name} has no frames.")
        if header_frames and len(packet_pts) < header_frames:
            raise ValueError(
                f"Video {name} is truncated or corrupt: its header lists {header_frames} frames but only "
                f"{len(packet_pts)} could be read."
            )
        total = len(packet_pts)
        self._pts_to_rank: dict[int, int] | None = None
        if all(pts is not None for pts in packet_pts) and len(set(packet_pts)) == total:
            ordered = sorted(packet_pts)
            self._pts_to_rank = {pts: rank for rank, pts in enumerate(ordered)}
            self._pts_to_decode_pos = {pts: pos for pos, pts in enumerate(packet_pts)}
            # Keyframes as (presentation rank, decode position, pts), sorted by rank, to find where to seek.
            self._keyframes = sorted(
                (self._pts_to_rank[pts], pos, pts) for pos, (pts, key) in enumerate(zip(packet_pts, keyframes)) if key
            )
        fps = float(average_rate) if average_rate else None
        self.metadata = VideoMetadata(
            total_num_frames=total,
            fps=fps,
            width=width,
            height=height,
            duration=total / fps if fps else None,
            video_backend="pyav",
        )

    # -- opening -----------------------------------------------------------------------------------------------------

    def _open(self):
        # The file itself and nothing else: `file` protocol only, allowed container formats only (media_inputs).
        source = io.BytesIO(self._source) if isinstance(self._source, bytes) else self._source
        return open_container(source, self.name)

    def _video_stream(self, container):
        if not container.streams.video:
            raise ValueError(f"Video {self.name} has no video stream (no frames to decode).")
        stream = container.streams.video[0]
        codec_context = stream.codec_context
        if codec_context is None or getattr(codec_context, "codec", None) is None:
            raise ValueError(
                f"Video {self.name} uses an unsupported codec: FFmpeg has no decoder for its video stream."
            )
        if not codec_context.width or not codec_context.height:
            codec_name = getattr(codec_context, "name", None) or "unknown"
            raise ValueError(
                f"Video {self.name}: unsupported or unreadable codec '{codec_name}' (no frame size could be read)."
            )
        return stream

    @staticmethod
    def _scan_packets(container, stream) -> tuple[list[int | None], list[bool]]:
        packet_pts, keyframes = [], []
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet at the end
                continue
            packet_pts.append(packet.pts)
            keyframes.append(bool(packet.is_keyframe))
        return packet_pts, keyframes

    def _configure_decoder(self, stream) -> None:
        if self._threads:
            stream.thread_type = "AUTO"  # frame + slice threads: FFmpeg decodes on every core
            if self._thread_count:
                stream.thread_count = self._thread_count

    def keyframe_indices(self) -> list[int] | None:
        if self._pts_to_rank is None:  # timestamps unusable: only sequential decoding is exact
            return None
        return [rank for rank, _, _ in self._keyframes]

    def worker_source(self, workers: int) -> PyAVFrameSource:
        # Every call of `iter_frames` opens its own container (with `open_container`'s restrictions) and only reads
        # the packet tables scanned once here, so workers share this scan; each gets its share of FFmpeg's threads.
        worker = copy.copy(self)
        worker._thread_count = _threads_per_worker(workers)
        return worker

    # -- decoding ----------------------------------------------------------------------------------------------------

    def iter_frames(self, indices: np.ndarray, batch_size: int) -> Iterator[FrameBatch]:
        return _batched(self._iter_pairs(np.asarray(indices)), batch_size)

    def _iter_pairs(self, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        import av

        slots = _slots_by_index(indices)
        delivered: set[int] = set()
        try:
            if self._pts_to_rank is not None:
                try:
                    for index, frame in self._decode_skipping(slots):
                        delivered.add(index)
                        for slot in slots[index]:
                            yield slot, frame
                except _RestartSequential:
                    pass
            if len(delivered) < len(slots):
                for index, frame in self._decode_sequential(slots, skip=delivered):
                    delivered.add(index)
                    for slot in slots[index]:
                        yield slot, frame
        except av.error.FFmpegError as error:
            raise ValueError(f"Video {self.name} is corrupt: decoding failed ({_describe(error)}).") from error
        missing = sorted(set(slots) - delivered)
        if missing:
            raise ValueError(
                f"Video {self.name} is truncated or corrupt: frame {missing[0]} (of {self.metadata.total_num_frames} "
                f"listed) could not be decoded."
            )

    def _decode_skipping(self, slots: dict[int, list[int]]) -> Iterator[tuple[int, np.ndarray]]:
        """Decodes the wanted frames, skipping unneeded non-reference frames and seeking over unneeded GOPs.

        Every seek goes to a keyframe after every earlier seek's keyframe (a demuxer whose seeks land early is then
        decoded forward, never sent back to the same keyframe), so there are at most as many seeks as keyframes and
        the loop always ends."""
        wanted_set = set(slots)
        pending = sorted(wanted_set, reverse=True)  # pending[-1] is the next frame to deliver
        key_ranks = [rank for rank, _, _ in self._keyframes]
        pts_to_rank, pts_to_pos = self._pts_to_rank, self._pts_to_decode_pos
        with self._open() as container:
            stream = container.streams.video[0]
            self._configure_decoder(stream)
            codec_context = stream.codec_context
            next_pos = 0  # decode position of the next packet the demuxer returns
            sought_pos = -1  # decode position of the last keyframe sought: the next seek must go further
            seek_to = self._seek_target(pending[-1], key_ranks, next_pos)
            while pending:
                # After a seek, the first packet must be the keyframe sought (or an earlier one).
                expected_key_pos = None
                if seek_to is not None:
                    _, expected_key_pos, key_pts = seek_to
                    sought_pos = expected_key_pos
                    container.seek(key_pts, stream=stream, backward=True, any_frame=False)
                    codec_context.flush_buffers()
                seek_to = None
                for packet in container.demux(stream):
                    if packet.size:
                        packet_pos = pts_to_pos.get(packet.pts)
                        if packet_pos is None:
                            raise _RestartSequential
                        if expected_key_pos is not None and packet_pos > expected_key_pos:
                            raise _RestartSequential  # the seek landed after the keyframe we need
                        expected_key_pos = None
                        next_pos = packet_pos + 1
                        # Frames nobody wants are skipped when no other frame references them.
                        codec_context.skip_frame = "DEFAULT" if pts_to_rank[packet.pts] in wanted_set else "NONREF"
                    for frame in codec_context.decode(packet):
                        rank = pts_to_rank.get(frame.pts)
                        if rank is None:
                            raise _RestartSequential
                        if rank == pending[-1]:
                            pending.pop()
                            yield rank, frame.to_ndarray(format="rgb24")
                            if not pending:
                                return
                        elif rank in wanted_set and rank > pending[-1]:
                            raise _RestartSequential  # a wanted frame went missing
                    # Jump over whole GOPs that hold no wanted frame.
                    seek_to = self._seek_target(pending[-1], key_ranks, max(next_pos, sought_pos + 1))
                    if seek_to is not None:
                        break
                if seek_to is None:
                    break  # end of stream
            if pending:
                raise _RestartSequential

    def _seek_target(self, rank: int, key_ranks: list[int], next_pos: int) -> tuple[int, int, int] | None:
        """The keyframe to seek to before decoding frame `rank`, or None when decoding on is as good."""
        position = bisect.bisect_right(key_ranks, rank) - 1
        if position < 0:
            return None
        keyframe = self._keyframes[position]
        # Seeking flushes the decoder: only worth it when it skips packets (and the keyframe is ahead of us).
        return keyframe if keyframe[1] > next_pos else None

    def _decode_sequential(self, slots: dict[int, list[int]], skip: set[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Decodes every frame in order and counts them: slow but exact for any file."""
        last = max(slots)
        with self._open() as container:
            stream = container.streams.video[0]
            self._configure_decoder(stream)
            for index, frame in enumerate(container.decode(stream)):
                if index in slots and index not in skip:
                    yield index, frame.to_ndarray(format="rgb24")
                if index >= last:
                    return


# --------------------------------------------------------------------------------------------------------------------
# Video files: torchcodec and decord
# --------------------------------------------------------------------------------------------------------------------


def _check_with_pyav(source: str | bytes, name: str) -> None:
    """torchcodec and decord open files with FFmpeg's defaults (every protocol and demuxer): the container is opened
    with PyAV's restrictions first, so that a playlist or concat list never reaches them."""
    with open_container(io.BytesIO(source) if isinstance(source, bytes) else source, name):
        pass


class TorchCodecFrameSource(FrameSource):
    """Decodes with torchcodec (`seek_mode="exact"`: a demux scan gives exact frame indices).

    `device="cuda"` decodes on the GPU (NVDEC) and copies the decoded frames to the host; its colour conversion is
    the GPU's, so its pixels may differ slightly from the CPU decoder's. `open_gpu_decoder` falls back to the CPU
    decoder where there is none."""

    def __init__(self, source: str | bytes, name: str, device: str | None = None, threads: int = 0):
        from torchcodec.decoders import VideoDecoder

        self.name = name
        self._source = source
        self.device = device or "cpu"
        _check_with_pyav(source, name)
        try:
            self._decoder = VideoDecoder(
                source, seek_mode="exact", num_ffmpeg_threads=threads, dimension_order="NHWC", device=self.device
            )
        except Exception as error:  # torchcodec raises RuntimeError/ValueError with FFmpeg's message
            raise ValueError(
                f"Could not open video {name}: not a readable video file, or it is truncated or corrupt "
                f"({_describe(error)})."
            ) from error
        meta = self._decoder.metadata
        total = int(meta.num_frames or 0)
        if total == 0:
            raise ValueError(f"Video {name} has no frames.")
        header = getattr(meta, "num_frames_from_header", None)
        if header and total < header:
            raise ValueError(
                f"Video {name} is truncated or corrupt: its header lists {header} frames but only {total} could "
                "be read."
            )
        fps = float(meta.average_fps) if meta.average_fps else None
        self.metadata = VideoMetadata(
            total_num_frames=total,
            fps=fps,
            width=int(meta.width),
            height=int(meta.height),
            duration=total / fps if fps else None,
            video_backend="torchcodec",
        )

    def keyframe_indices(self) -> list[int] | None:
        if self.device != "cpu":
            return None  # one GPU decoder: NVDEC is not shared out among threads here
        try:  # torchcodec has no public name for it yet
            return sorted(int(index) for index in self._decoder._get_key_frame_indices())
        except Exception:
            return None

    def worker_source(self, workers: int) -> TorchCodecFrameSource:
        # A decoder of its own (torchcodec's decoders are not shared between threads), opened after the same PyAV
        # check as this one.
        return TorchCodecFrameSource(self._source, self.name, threads=_threads_per_worker(workers))

    def iter_frames(self, indices: np.ndarray, batch_size: int) -> Iterator[FrameBatch]:
        indices = np.asarray(indices)
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            try:
                frames = self._decoder.get_frames_at(indices=chunk.tolist()).data.cpu().numpy()
            except Exception as error:
                raise ValueError(f"Video {self.name} is corrupt: decoding failed ({_describe(error)}).") from error
            yield [(start + offset, frames[offset]) for offset in range(len(chunk))]


class DecordFrameSource(FrameSource):
    """Decodes with decord, the reference implementation's decoder (`VideoReader(..., num_threads=1)`)."""

    def __init__(self, source: str | bytes, name: str):
        import decord

        self.name = name
        self._source = source
        _check_with_pyav(source, name)
        try:
            self._reader = decord.VideoReader(
                io.BytesIO(source) if isinstance(source, bytes) else source, ctx=decord.cpu(0), num_threads=1
            )
        except Exception as error:  # decord raises DECORDError (a RuntimeError)
            raise ValueError(
                f"Could not open video {name}: not a readable video file, or it is truncated or corrupt "
                f"({_describe(error)})."
            ) from error
        total = len(self._reader)
        if total == 0:
            raise ValueError(f"Video {name} has no frames.")
        height, width = self._reader[0].shape[:2]
        self._reader.seek(0)
        fps = float(self._reader.get_avg_fps()) or None
        self.metadata = VideoMetadata(
            total_num_frames=total,
            fps=fps,
            width=int(width),
            height=int(height),
            duration=total / fps if fps else None,
            video_backend="decord",
        )

    def keyframe_indices(self) -> list[int] | None:
        try:
            return sorted(int(index) for index in self._reader.get_key_indices())
        except Exception:
            return None

    def worker_source(self, workers: int) -> DecordFrameSource:
        # A reader of its own (a VideoReader keeps its position), opened after the same PyAV check as this one.
        return DecordFrameSource(self._source, self.name)

    def iter_frames(self, indices: np.ndarray, batch_size: int) -> Iterator[FrameBatch]:
        indices = np.asarray(indices)
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            try:
                frames = self._reader.get_batch(chunk.tolist()).asnumpy()
            except Exception as error:
                raise ValueError(f"Video {self.name} is corrupt: decoding failed ({_describe(error)}).") from error
            yield [(start + offset, frames[offset]) for offset in range(len(chunk))]


# --------------------------------------------------------------------------------------------------------------------
# Opening anything
# --------------------------------------------------------------------------------------------------------------------


def _backend_usable(backend: str) -> bool:
    if backend == "pyav":
        return is_av_available()
    if backend == "decord":
        return is_decord_available()
    if backend == "torchcodec" and is_torchcodec_available():
        try:
            from transformers.utils import is_torchcodec_usable  # transformers >= 5.23
        except ImportError:
            try:  # older 5.x: torchcodec loads FFmpeg's shared libraries on import of its decoders
                import torchcodec.decoders  # noqa: F401
            except Exception:
                return False
            return True
        return is_torchcodec_usable(decode="video")  # needs FFmpeg's shared libraries next to it
    return False


BACKEND_INSTALL_HINTS = {
    "pyav": "video_backend='pyav' needs PyAV: pip install av (installed with longvu-hf)",
    "torchcodec": "video_backend='torchcodec' needs torchcodec and FFmpeg's shared libraries: "
    "pip install 'longvu-hf[torchcodec]' (and FFmpeg 4-7, e.g. apt-get install ffmpeg)",
    "decord": "video_backend='decord' needs decord: pip install 'longvu-hf[decord]'",
}


def available_video_backends() -> list[str]:
    """The file decoders usable here, in the order "auto" tries them."""
    return [backend for backend in AUTO_BACKEND_ORDER if _backend_usable(backend)]


def _auto_backend() -> str:
    # The first usable one, without loading the others (loading torchcodec costs a few hundred ms).
    for backend in AUTO_BACKEND_ORDER:
        if _backend_usable(backend):
            return backend
    raise ImportError(
        "Decoding video files needs PyAV (pip install av, installed with longvu-hf), torchcodec "
        "(pip install 'longvu-hf[torchcodec]') or decord (pip install 'longvu-hf[decord]')"
    )


def open_video_file(
    location: str | MediaSource, backend: str | None = None, name: str | None = None,
    policy: InputPolicy | None = None,
) -> FrameSource:
    """Opens a video file path or http(s) URL with `backend` ("pyav", "torchcodec", "decord", or None/"auto").

    The location is resolved by `resolve_media` under `policy` (default: `InputPolicy.local_user()`): a URL is
    downloaded to a private temporary file that lives as long as the returned source."""
    if isinstance(location, MediaSource):
        media = location
    else:
        media = resolve_media(location, policy or InputPolicy.local_user())
    if backend in (None, "auto"):
        backend = _auto_backend()
    if backend not in VIDEO_BACKENDS:
        raise ValueError(f"`video_backend` must be one of {('auto',) + VIDEO_BACKENDS}, got {backend!r}")
    if not _backend_usable(backend):
        raise ImportError(BACKEND_INSTALL_HINTS[backend])
    if media.kind != "video":
        raise ValueError(f"Video '{media.display_name}' is a folder of frames, not a video file")
    name = name or f"'{media.display_name}'"
    source: FrameSource
    if backend == "pyav":
        source = PyAVFrameSource(str(media.path), name)
    elif backend == "torchcodec":
        source = TorchCodecFrameSource(str(media.path), name)
    else:
        source = DecordFrameSource(str(media.path), name)
    source.media = media  # keeps a downloaded file until the source is gone (MediaSource deletes it then)
    return source


def open_frame_source(
    video: Any,
    backend: str | None = None,
    metadata: VideoMetadata | dict | None = None,
    name: str | None = None,
    policy: InputPolicy | None = None,
) -> FrameSource:
    """Opens any supported video input: a file path, URL, folder of frame images, list of frame paths/URLs,
    (T, H, W, C)/(T, C, H, W) array or tensor, a list of frames, or a `MediaSource` already resolved.

    Paths, URLs and frame lists are resolved under `policy` (default: `InputPolicy.local_user()`, the user's own
    files and public URLs); see `longvu_hf.media_inputs`."""
    policy = policy or InputPolicy.local_user()
    if isinstance(video, os.PathLike):
        video = os.fspath(video)
    if isinstance(video, str):
        video = resolve_media(video, policy)
    if isinstance(video, MediaSource):
        if video.kind == "frames":
            source: FrameSource = ImageSequenceFrameSource(
                str(video.path), name or f"'{video.display_name}'", metadata, policy
            )
            source.media = video
            return source
        source = open_video_file(video, backend, name)
        if metadata is not None:
            # e.g. a user-given fps for a stream without one; what the file says otherwise wins.
            for key, value in dict(metadata).items():
                if value is not None and getattr(source.metadata, key, None) is None and key != "frames_indices":
                    setattr(source.metadata, key, value)
            _complete_timing(source.metadata)
        return source
    if isinstance(video, (list, tuple)) and video and isinstance(video[0], str):
        default_name = f"(list of {len(video)} frame images, the first '{video[0]}')"
        return ImageSequenceFrameSource(list(video), name or default_name, metadata, policy)
    return ArrayFrameSource(video, name or "(array)", metadata)


class _Background:
    """An iterator run in a daemon thread, at most `depth` items ahead of its consumer (a bounded queue); its error is
    re-raised in the consumer. `close()` stops the thread (and closes the iterator, e.g. its open container)."""

    FINISHED = object()

    def __init__(self, items: Iterator[Any], depth: int, name: str):
        self._buffer: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(self.FINISHED)
        except BaseException as error:  # handed to the consumer
            self._put(error)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def next(self) -> Any:
        """The next item, or `FINISHED`; raises what the iterator raised."""
        item = self._buffer.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        # Drain so that a producer blocked on put() sees the stop.
        while self._thread.is_alive():
            try:
                self._buffer.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


def prefetch(batches: Iterator[FrameBatch], depth: int = 2) -> Iterator[FrameBatch]:
    """Runs a frame iterator in a background thread, `depth` batches ahead, so that decoding (which releases the GIL
    in FFmpeg) overlaps with resizing in the caller. Errors are re-raised in the caller."""
    worker = _Background(batches, depth, "longvu-video-decode")
    try:
        while (item := worker.next()) is not _Background.FINISHED:
            yield item
    finally:
        worker.close()


# --------------------------------------------------------------------------------------------------------------------
# Several decoders at once
# --------------------------------------------------------------------------------------------------------------------

# Two decoders by default (one on a single core). Measured on 2 cores (benchmarks/parallel_decoding.py, README "Speed
# and memory"): 2 workers delivered 1.2-1.4x the sampled frames per second of one decoder for the same CPU time
# (FFmpeg's own threads leave the demuxing and the RGB conversion of each frame serial). 4 workers were faster still,
# but each worker buffers its own batches of frames (memory grows with the workers and the frame size), and on a
# shared machine part of that gain was CPU taken from other jobs.
MAX_AUTO_WORKERS = 2


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_decode_workers() -> int:
    """The workers `decode_workers=None` uses on this machine."""
    return max(1, min(MAX_AUTO_WORKERS, _cores()))


def _threads_per_worker(workers: int) -> int:
    """FFmpeg threads of one of `workers` parallel decoders: the cores shared out among them, but at least two, so
    that each worker keeps FFmpeg's frame threads (workers of a single thread each were no faster than one decoder in
    a trial on 2 cores)."""
    return max(2, _cores() // max(1, workers))


def plan_decode_workers(
    indices: np.ndarray, keyframes: Sequence[int] | None, workers: int, segment_frames: int
) -> list[np.ndarray]:
    """The output slots each of up to `workers` decoders delivers: the sampled frames are cut at keyframes into
    segments of at least `segment_frames` frames, and the segments dealt out in turn (worker `w` decodes segments
    `w, w + W, w + 2W, ...`, seeking over the others), so that the workers advance through the video together and the
    frames come back in order a few segments at a time. One worker (all the slots) when the video has a single
    keyframe, too few sampled frames for two segments, or indices out of order."""
    indices = np.asarray(indices, dtype=np.int64)
    everything = [np.arange(len(indices))]
    if workers <= 1 or not keyframes or len(keyframes) < 2 or len(indices) < 2 * segment_frames:
        return everything
    if np.any(np.diff(indices) < 0):
        return everything
    gop = np.searchsorted(np.asarray(keyframes, dtype=np.int64), indices, side="right")
    segments, start = [], 0
    for slot in range(1, len(indices)):
        # A segment ends where a new GOP starts once it holds enough frames: no GOP is decoded by two workers.
        if slot - start >= segment_frames and gop[slot] != gop[slot - 1]:
            segments.append(np.arange(start, slot))
            start = slot
    segments.append(np.arange(start, len(indices)))
    workers = min(workers, len(segments))
    if workers <= 1:
        return everything
    return [np.concatenate(segments[worker::workers]) for worker in range(workers)]


def _worker_batches(
    source: FrameSource, workers: int, indices: np.ndarray, slots: np.ndarray, batch_size: int
) -> Iterator[FrameBatch]:
    """One worker's frames, with the slots of the whole request (runs in the worker's thread)."""
    worker = source.worker_source(workers)
    for batch in worker.iter_frames(indices[slots], batch_size):
        yield [(int(slots[local]), frame) for local, frame in batch]


def decode_frames(
    source: FrameSource, indices: np.ndarray, batch_size: int, workers: int | None = 1, depth: int = 1
) -> Iterator[FrameBatch]:
    """The frames `source.iter_frames(indices, batch_size)` gives, in the same batches of slots in the same order,
    decoded ahead in background threads: one decoder `depth` batches ahead (`prefetch`), or for a video file with
    `workers > 1` (None: `default_decode_workers()`) several decoders on segments cut at keyframes
    (`plan_decode_workers`), each at most `depth` batches ahead of the frames delivered: about
    `workers * (depth + 3) * batch_size` decoded frames exist at a time. Each worker opens the file itself, with the
    same restrictions (`open_container`); an error of any worker is raised when its frames are due. In-memory frames
    are not decoded: they are returned as they are."""
    indices = np.asarray(indices, dtype=np.int64)
    if source.metadata.video_backend == "array":
        return source.iter_frames(indices, batch_size)
    workers = default_decode_workers() if workers is None else int(workers)
    plan = [np.arange(len(indices))]
    if workers > 1:
        plan = plan_decode_workers(indices, source.keyframe_indices(), workers, segment_frames=batch_size)
    if len(plan) == 1:
        return prefetch(source.iter_frames(indices, batch_size), depth=depth)
    return _merge_workers(source, indices, plan, batch_size, depth)


def _merge_workers(
    source: FrameSource, indices: np.ndarray, plan: list[np.ndarray], batch_size: int, depth: int
) -> Iterator[FrameBatch]:
    owner = np.empty(len(indices), dtype=np.int64)
    for worker, slots in enumerate(plan):
        owner[slots] = worker
    workers = [
        _Background(_worker_batches(source, len(plan), indices, slots, batch_size), depth, f"longvu-decode-{worker}")
        for worker, slots in enumerate(plan)
    ]
    try:
        ready: dict[int, np.ndarray] = {}
        batch: FrameBatch = []
        for slot in range(len(indices)):
            while slot not in ready:
                item = workers[owner[slot]].next()
                if item is _Background.FINISHED:
                    if batch:
                        yield batch
                    return  # a decoder that delivered fewer frames: the caller reports the missing ones
                ready.update(item)
            batch.append((slot, ready.pop(slot)))
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
    finally:
        for worker in workers:
            worker.close()


def open_gpu_decoder(source: FrameSource, device: Any) -> FrameSource:
    """torchcodec's CUDA decoder for the file of `source` when `device` is a CUDA device and torchcodec can decode
    there; otherwise (a CPU device, no torchcodec, no CUDA, or a decoder that counts the frames differently) `source`
    itself, with a log line saying why. Untested on a GPU so far: on CPU machines this is the fail-over path."""
    import torch

    device = torch.device(device) if device is not None else torch.device("cpu")
    media = getattr(source, "media", None)
    if device.type != "cuda" or media is None or media.kind != "video":
        return source
    if getattr(source, "device", "cpu") != "cpu":
        return source  # already on the GPU
    if not _backend_usable("torchcodec"):
        logger.info("Video %s: decoded on the CPU (torchcodec, which has the GPU decoder, is not usable)", source.name)
        return source
    try:
        gpu = TorchCodecFrameSource(str(media.path), source.name, device=str(device))
    except Exception as error:  # no CUDA in this torch/torchcodec build, no NVDEC for this codec, ...
        logger.info("Video %s: decoded on the CPU (torchcodec's CUDA decoder failed: %s)", source.name, error)
        return source
    if gpu.metadata.total_num_frames != source.metadata.total_num_frames:
        logger.info("Video %s: decoded on the CPU (the GPU decoder counts %d frames, the CPU one %d)", source.name,
                    gpu.metadata.total_num_frames, source.metadata.total_num_frames)
        return source
    gpu.media = media
    gpu.metadata = source.metadata  # the sampling was decided on this metadata
    return gpu


__all__ = [
    "ArrayFrameSource",
    "DecordFrameSource",
    "FrameSource",
    "ImageSequenceFrameSource",
    "PyAVFrameSource",
    "TorchCodecFrameSource",
    "VIDEO_BACKENDS",
    "available_video_backends",
    "decode_frames",
    "default_decode_workers",
    "frame_rate",
    "plan_decode_workers",
    "open_frame_source",
    "open_gpu_decoder",
    "open_video_file",
    "prefetch",
    "to_uint8_hwc",
]
