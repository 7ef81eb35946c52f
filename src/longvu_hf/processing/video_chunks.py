"""One video decoded and preprocessed chunk by chunk, for the model's streaming encoder.

`LongVUVideoProcessor.preprocess` returns every sampled frame of a video at once: about 0.95 MB of uint8 pixels per
frame for the two encoders, 3.4 GB for an hour at 1 fps. `VideoChunks` yields the same pixels (same sampling, same
pad + resize, bit for bit) a chunk at a time, so that `LongVUModel.encode_video_stream` can encode each chunk as it
arrives (DINOv2 window by window, see `modeling/live_video.py`) while the next one is decoded: the host holds the
chunk being decoded, the queued chunk and the chunk being encoded, whatever the length of the video.

Example:

```python
>>> chunks = processor.video_processor.iter_video_chunks("film.mp4", fps=1)
>>> chunks.num_frames, chunks.video_size          # known before any frame is decoded
(3600, (720, 1280))
>>> features = model.encode_video_stream(chunks)  # LongVUVideoFeatures, as model.encode_videos would give
```
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from .video_decoding import FrameBatch, FrameSource, decode_frames, open_gpu_decoder

if TYPE_CHECKING:
    from .video_processing_longvu import LongVUVideoProcessor

# One DINOv2 selection window of the released checkpoints (16 frames) per chunk by default: the encoder scores a window
# as soon as its last frame arrives, so larger chunks only raise the memory held at a time.
DEFAULT_CHUNK_FRAMES = 16


class VideoChunks:
    """The sampled frames of one video, preprocessed like `LongVUVideoProcessor.preprocess` and yielded in chunks of
    `chunk_frames` frames, each a dict with `pixel_values_videos` and `pixel_values_videos_dino`.

    Made by `LongVUVideoProcessor.iter_video_chunks`; what is known before decoding (`num_frames`, `video_size`,
    `frame_indices`, `timestamps`) is available at once. It can be iterated once; the input (a downloaded file, say)
    is released when iteration ends or `close()` is called.

    Example:

    ```python
    >>> chunks = video_processor.iter_video_chunks("clip.mp4", chunk_frames=16)
    >>> for chunk in chunks:
    ...     chunk["pixel_values_videos"].shape         # (up to 16, 3, 384, 384) uint8
    ```
    """

    def __init__(
        self, processor: LongVUVideoProcessor, source: FrameSource, frame_indices: np.ndarray, kwargs: dict,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    ):
        if chunk_frames < 1:
            raise ValueError(f"`chunk_frames` must be a positive integer, got {chunk_frames}")
        self._processor = processor
        self._source = source
        self._kwargs = kwargs
        self.frame_indices = np.asarray(frame_indices, dtype=np.int64)
        self.chunk_frames = int(chunk_frames)
        self.decode_device: torch.device | None = None
        self._consumed = False

    @property
    def num_frames(self) -> int:
        """The number of sampled frames the chunks hold in all."""
        return len(self.frame_indices)

    @property
    def video_size(self) -> tuple[int, int]:
        """(height, width) of the source video."""
        return self._source.frame_size

    @property
    def name(self) -> str:
        return self._source.name

    @property
    def timestamps(self) -> list[float] | None:
        """The time in seconds of each sampled frame, when the source knows its frame rate."""
        fps = self._source.metadata.fps
        if not fps:
            return None
        return [float(index) / float(fps) for index in self.frame_indices]

    def use_device(self, device: torch.device | str | None) -> None:
        """Tells the chunks where they will be encoded, before iterating: on a CUDA device the video is decoded by
        torchcodec's GPU decoder where torchcodec has one (the frames still arrive as host uint8; the GPU's colour
        conversion may differ from the CPU decoder's by a level here and there), else by the CPU decoder as before.
        Not yet run on a GPU: on machines without one this is the fail-over path."""
        if self._consumed:
            raise RuntimeError(f"The chunks of video {self.name} are already being iterated")
        self.decode_device = None if device is None else torch.device(device)

    def close(self) -> None:
        """Releases the input (a temporary download is deleted)."""
        media = getattr(self._source, "media", None)
        if media is not None:
            media.close()

    def __len__(self) -> int:
        """The number of chunks."""
        return -(-self.num_frames // self.chunk_frames)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._consumed:
            raise RuntimeError(f"The chunks of video {self.name} were already iterated; ask the processor again")
        self._consumed = True
        try:
            yield from self._chunks()
        finally:
            self.close()

    def _chunks(self) -> Iterator[dict[str, torch.Tensor]]:
        processor, kwargs = self._processor, self._kwargs
        if self.decode_device is not None and self.decode_device.type == "cuda":
            self._source = open_gpu_decoder(self._source, self.decode_device)
        # Decoded in background threads (several decoders with `decode_workers`) while this batch is resized.
        batches: Iterator[FrameBatch] = decode_frames(
            self._source, self.frame_indices, kwargs["decode_batch_size"], workers=kwargs["decode_workers"]
        )
        callback = processor.__dict__.get("_frame_progress_callback")
        pending: dict[int, np.ndarray] = {}
        start = 0
        for batch in batches:
            for slot, frame in batch:
                pending[slot] = frame
            if callback is not None:
                callback(len(batch))
            # Decoders deliver slots in order; a chunk is complete once every slot of it has arrived.
            while start < self.num_frames:
                stop = min(start + self.chunk_frames, self.num_frames)
                if any(slot not in pending for slot in range(start, stop)):
                    break
                yield self._preprocess_chunk([(slot, pending.pop(slot)) for slot in range(start, stop)], start)
                start = stop
        if start < self.num_frames:
            raise ValueError(
                f"Video {self.name}: the decoder delivered {start} of the {self.num_frames} sampled frames"
            )

    def _preprocess_chunk(self, pairs: FrameBatch, start: int) -> dict[str, torch.Tensor]:
        processor, kwargs = self._processor, self._kwargs
        frame_size = None if kwargs["do_resize"] else self.video_size  # do_resize=False keeps the frames' size
        outputs = processor._allocate_outputs(len(pairs), kwargs, frame_size=frame_size)
        processor._fill_outputs(iter([pairs]), outputs, -start, kwargs)
        data = {"pixel_values_videos": outputs[0], "pixel_values_videos_dino": outputs[1]}
        return processor._maybe_normalize(data, ("pixel_values_videos", "pixel_values_videos_dino"), kwargs)


__all__ = ["DEFAULT_CHUNK_FRAMES", "VideoChunks"]
