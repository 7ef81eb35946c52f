"""A video that arrives in chunks (a camera, a stream): frames are encoded window by window as they come, and a
question can be asked at any moment, with the answer the whole clip received so far would give.

DINOv2 selection works on windows of `dino_window_size` frames, each on its own; only the hard cap (a uniform pick
among the survivors) and the decision whether selection runs at all (it runs when the video has at least as many
frames as the prompt's budget allows) depend on the whole video. So each complete window is scored when its last
frame arrives, and the frames it drops are forgotten once the video is long enough that every prompt triggers
selection (`LongVUVideoEncoder.any_prompt_budget`). Until then every frame is kept, as `encode_videos` keeps them.

Memory: one aggregator output per kept frame (`num_queries x aggregator_hidden_size` values in the model's dtype:
144 x 1024 x 2 bytes = 288 KiB in bfloat16 for the released checkpoints), plus the pixels of the window in progress
(fewer than `dino_window_size` frames) and, for short videos, every frame's aggregator output up to the largest frame
budget (about 127 frames for the released video checkpoints at 8192 tokens).

Example:

```python
>>> live = model.start_live_video(video_size=(720, 1280))
>>> for chunk in camera_chunks():                       # uint8 frames, as LongVUVideoProcessor returns them
...     live.append(chunk["pixel_values_videos"], chunk["pixel_values_videos_dino"])
...     out = model.generate(**question_ids, video_features=live.features(), max_new_tokens=32)
```
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from .configuration_longvu import CompressionSettings
from . import compression as C
from .video_features import EncodedVideo, LongVUVideoFeatures, model_fingerprint


class LongVULiveVideo:
    """Frames appended in chunks, encoded as DINOv2 windows complete; `features()` is what `encode_videos` would
    return for the frames so far (see the module docstring). Made by `LongVUModel.start_live_video`; `encoder` is the
    model's `LongVUVideoEncoder`."""

    def __init__(self, encoder, video_size: tuple[int, int], settings: CompressionSettings):
        self.encoder = encoder
        self.video_size = (int(video_size[0]), int(video_size[1]))
        self.settings = settings
        self.window = encoder.config.dino_window_size
        self.budget = encoder.any_prompt_budget(settings)  # whether selection runs, for any prompt
        self.num_frames = 0
        self.kept: dict[int, torch.Tensor] = {}  # frame index -> aggregator output, for the frames that may be used
        self.selected: list[torch.Tensor] = []  # the kept indices of each complete window
        self.pending_pixels: list[tuple[torch.Tensor, torch.Tensor]] = []  # the window in progress
        self._fingerprint = model_fingerprint(encoder)

    @property
    def largest_frame_budget(self) -> int:
        """The frames from which every prompt runs DINOv2 selection (`self.budget.selection_frame_budget`)."""
        return self.budget.selection_frame_budget

    # -- input ---------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def append(
        self,
        pixel_values_videos: torch.Tensor,
        pixel_values_videos_dino: torch.Tensor,
        video_sizes: torch.Tensor | tuple[int, int] | None = None,
        **kwargs,
    ) -> None:
        """Add frames (`(frames, 3, 384, 384)` and `(frames, 3, 378, 378)`, uint8 or normalised float, as the video
        processor returns them for this video); complete windows are encoded at once. `video_sizes`, when given
        (the processor returns it), must be this video's size; other processor outputs are ignored."""
        self._append(pixel_values_videos, pixel_values_videos_dino, video_sizes)

    # The work of `append` and `features`, undecorated so that mutation testing (tests/mutation/) reaches it.
    def _append(self, pixel_values_videos, pixel_values_videos_dino, video_sizes) -> None:
        if video_sizes is not None:
            size = tuple(int(v) for v in torch.as_tensor(video_sizes).flatten()[:2])
            if size != self.video_size:
                raise ValueError(
                    f"These frames come from a video of size {size} (height, width), but this live video is "
                    f"{self.video_size}: start another live video for them"
                )
        if pixel_values_videos.ndim == 5:
            pixel_values_videos, pixel_values_videos_dino = pixel_values_videos[0], pixel_values_videos_dino[0]
        if len(pixel_values_videos) != len(pixel_values_videos_dino):
            raise ValueError(
                f"`pixel_values_videos` holds {len(pixel_values_videos)} frames but `pixel_values_videos_dino` "
                f"{len(pixel_values_videos_dino)}"
            )
        base = self.encoder
        base.check_pixels(pixel_values_videos, base.config.vision_config.image_size, "pixel_values_videos")
        base.check_pixels(pixel_values_videos_dino, base.config.dino_image_size, "pixel_values_videos_dino")
        for frame, frame_dino in zip(pixel_values_videos, pixel_values_videos_dino):
            self.pending_pixels.append((frame, frame_dino))
            if len(self.pending_pixels) == self.window:
                self._close_window()

    def _close_window(self) -> None:
        self.selected.append(self._score_and_encode(self.pending_pixels, self.kept))
        self.num_frames += len(self.pending_pixels)
        self.pending_pixels = []
        if self.budget.runs_selection(self.num_frames):  # every prompt selects from now on: forget the rest
            keep = set(torch.cat(self.selected).tolist())
            self.kept = {index: value for index, value in self.kept.items() if index in keep}

    def _score_and_encode(self, frames: list[tuple[torch.Tensor, torch.Tensor]], store: dict) -> torch.Tensor:
        """Score one window (the frames after `self.num_frames`) and put the aggregator output of the frames that may
        be used into `store`: every frame while the video is shorter than the largest frame budget, else the ones
        selection keeps. Returns the (video) indices selection keeps in this window."""
        base = self.encoder
        pixels = torch.stack([f for f, _ in frames])
        dino = base.dino_features(torch.stack([d for _, d in frames]))
        kept_local = C.select_frames_in_windows(dino, self.settings.dino_threshold, self.window)[0]
        every_frame = not self.budget.runs_selection(self.num_frames + len(frames))
        encoded = torch.arange(len(frames)) if every_frame else kept_local
        siglip, _ = base.encode_siglip(pixels[encoded.to(pixels.device)])
        size_wh = base.size_as_reference_reads_it(self.video_size, is_video=True)
        sva = base.aggregate(siglip, dino[encoded.to(dino.device)], size_wh)
        for position, local in enumerate(encoded.tolist()):
            store[self.num_frames + local] = sva[position]
        return kept_local + self.num_frames

    # -- output --------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def features(self) -> LongVUVideoFeatures:
        """The video so far as `LongVUVideoFeatures` (the window in progress is scored as a shorter last window, as
        the one-shot path scores a video's last frames)."""
        return self._features()

    def _features(self) -> LongVUVideoFeatures:
        total = self.num_frames + len(self.pending_pixels)
        if total == 0:
            raise ValueError("No frame has arrived yet: append frames before asking")
        kept, selected = dict(self.kept), list(self.selected)
        if self.pending_pixels:  # scored as a shorter last window, in this snapshot only
            selected.append(self._score_and_encode(self.pending_pixels, kept))
        survivors = torch.cat(selected)
        config = self.encoder.config
        survivors = survivors[C.cap_selected_frames(
            torch.arange(len(survivors)), total, self.window, config.max_frames_after_selection
        )]
        if self.budget.runs_selection(total):
            candidates, all_frames_kept = survivors, False
        else:
            candidates, all_frames_kept = torch.arange(total), True
        sva = torch.stack([kept[int(index)] for index in candidates])
        encoded = EncodedVideo(total, self.video_size, candidates, sva, survivors, all_frames_kept)
        settings = {name: getattr(self.settings, name) for name in ("dino_threshold", "max_context_length",
                                                                    "context_margin")}
        return LongVUVideoFeatures([encoded], fingerprint=self._fingerprint, settings=settings)


def encode_video_stream(
    encoder, chunks: Iterable[dict], video_size: tuple[int, int] | None = None,
    compression_settings: CompressionSettings | dict | None = None, queue_chunks: int = 2,
) -> LongVUVideoFeatures:
    """Encode a video that arrives as chunks of preprocessed frames (`VideoChunks` from
    `LongVUVideoProcessor.iter_video_chunks`, or any iterable of dicts with `pixel_values_videos` and
    `pixel_values_videos_dino`): each chunk goes into a `LongVULiveVideo` as it arrives, so the features equal
    `encode_videos` on the whole video while the host holds only a few chunks of pixels. The chunks are produced
    in a background thread, at most `queue_chunks` ahead, so that decoding overlaps with the towers; on CUDA they
    are pinned there, then copied to the device without blocking, and `VideoChunks` are told the device
    (`VideoChunks.use_device`: torchcodec's GPU decoder where it has one)."""
    from ..processing.video_decoding import prefetch

    if video_size is None:
        video_size = getattr(chunks, "video_size", None)
        if video_size is None:
            raise ValueError("`video_size` (height, width) is needed when the chunks do not carry it")
    live = LongVULiveVideo(encoder, video_size, CompressionSettings.from_value(compression_settings).resolve(encoder.config))
    device = encoder.dino_tower.device
    pin = device.type == "cuda"
    use_device = getattr(chunks, "use_device", None)
    if use_device is not None and not getattr(chunks, "_consumed", False):
        # `VideoChunks` decode with torchcodec's GPU decoder when the towers are on CUDA (the CPU decoder otherwise, or
        # when that decoder cannot open the video).
        use_device(device)

    def staged(source: Iterable[dict]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for chunk in source:
            pixels, pixels_dino = chunk["pixel_values_videos"], chunk["pixel_values_videos_dino"]
            if pin:
                pixels, pixels_dino = pixels.pin_memory(), pixels_dino.pin_memory()
            yield pixels, pixels_dino

    for pixels, pixels_dino in prefetch(staged(chunks), depth=max(1, int(queue_chunks))):
        if pin:
            pixels = pixels.to(device, non_blocking=True)
            pixels_dino = pixels_dino.to(device, non_blocking=True)
        live.append(pixels, pixels_dino)
    return live.features()


__all__ = ["LongVULiveVideo", "encode_video_stream"]
