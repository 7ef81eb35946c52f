# Copyright 2026 The LongVU-HF Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""LongVU video processor: decoding, frame sampling and the two encoders' pad + resize.

LongVU feeds every frame to two vision encoders, each with its own preprocessing (docs/reference.md §1.3): SigLIP gets the
frame padded to a square with (127, 127, 127) and resized to 384², DINOv2 gets it padded with (123, 116, 103) and
resized to 378². This processor returns both as uint8 tensors (the model rescales and normalises them on its device,
4x less host memory than float32) together with the frame count and source size of every video. With
`do_rescale=True, do_normalize=True` it returns float32 pixels rescaled and normalised exactly as the model would do it.
Each `do_*` flag switches its own step, as in transformers' processors (`do_resize=False` keeps the frames' size,
`do_pad=False` stretches instead of padding, `do_rescale`/`do_normalize` apply one step each, `do_convert_rgb=False`
refuses frames that are not already RGB); the model takes only uint8 pixels or float pixels both rescaled and
normalised.

Frames are sampled like the reference: one frame every `round(average_fps / fps)` frames from frame 0 (fps=1 by
default, no cap), with the eval scripts' variants reachable through `fps`, `max_frames`, `start_time`/`end_time`.
Decoding is streamed: only the sampled frames are decoded (as far as the codec allows), and they are resized batch by
batch into preallocated outputs, so a one-hour video needs about the size of its outputs in memory, not of its frames.
"""

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import get_size_dict
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.utils import logging
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata, make_batched_videos

from ..modeling.configuration_longvu import DINO_IMAGE_MEAN, DINO_IMAGE_STD, SIGLIP_IMAGE_MEAN, SIGLIP_IMAGE_STD
from ..media_inputs import InputPolicy
from .frame_transforms import expand_to_square, fill_colour, pad_and_resize_pil, pad_and_resize_torch
from .video_chunks import DEFAULT_CHUNK_FRAMES, VideoChunks
from .video_decoding import FrameBatch, FrameSource, decode_frames, frame_rate, open_frame_source, to_uint8_hwc

logger = logging.get_logger(__name__)

RESIZE_BACKENDS = ("pil", "torch")
MAX_FRAMES_MODES = ("uniform", "stride")


def _resize_workers() -> int:
    """Threads resizing frames: one per two cores beyond the two the decoder uses, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, (cores - 2) // 2 + 1))


def _paths_to_str(videos: Any) -> Any:
    """pathlib paths -> str, at any nesting depth of lists (transformers' batching helpers only know str)."""
    if isinstance(videos, os.PathLike):
        return os.fspath(videos)
    if isinstance(videos, (list, tuple)):
        return type(videos)(_paths_to_str(video) for video in videos)
    return videos


def _first_non_rgb_frame(videos: Any) -> str | None:
    """What `do_convert_rgb=False` refuses: a description of the first in-memory frame that is not 3-channel RGB
    (grayscale, RGBA, a PIL image in another mode), or None. Channels are read as the frame sources read them (channels
    first when the third-last axis has 1, 3 or 4 entries and the last one not). Files, URLs and image files are decoded
    to RGB whatever the flag."""
    if videos is None or isinstance(videos, (str, os.PathLike)):
        return None
    if isinstance(videos, Image.Image):
        return None if videos.mode == "RGB" else f"a PIL image in mode {videos.mode!r}"
    if isinstance(videos, (list, tuple)):
        return next((found for found in map(_first_non_rgb_frame, videos) if found is not None), None)
    shape = tuple(getattr(videos, "shape", ()))
    if len(shape) < 2:
        return None
    if len(shape) == 2:
        return f"a grayscale frame of shape {shape}"
    channels_first = shape[-3] in (1, 3, 4) and shape[-1] not in (1, 3, 4)
    channels = shape[-3] if channels_first else shape[-1]
    return None if channels == 3 else f"frames with {channels} channels (shape {shape})"


class LongVUVideoProcessorKwargs(VideosKwargs, total=False):
    r"""
    dino_size (`dict[str, int]`, *optional*, defaults to `{"height": 378, "width": 378}`):
        Input size of the DINOv2 encoder (`size` is SigLIP's, 384).
    dino_image_mean (`list[float]`, *optional*, defaults to the ImageNet mean):
        DINOv2's normalisation mean; `int(255 * mean)` is also its padding colour.
    dino_image_std (`list[float]`, *optional*, defaults to the ImageNet std):
        DINOv2's normalisation std (used with `do_normalize=True`).
    default_fps (`float`, *optional*, defaults to 1.0):
        Sampling rate used when neither `fps` nor `num_frames` is given (the reference's 1 frame per second).
    max_frames (`int`, *optional*):
        Cap on the sampled frames per video. No cap by default, as in the reference.
    max_frames_mode (`str`, *optional*, defaults to `"uniform"`):
        How `max_frames` is applied: `"uniform"` keeps `max_frames` frames evenly spread over the sampled ones;
        `"stride"` keeps every `len // max_frames`-th sampled frame, like the MLVU/EgoSchema eval scripts (which can
        leave up to 2 * max_frames - 1 frames).
    start_time (`float`, *optional*):
        Start of the clip to sample, in seconds: first frame `max(0, round(start_time * fps))` (MVBench's rule).
    end_time (`float`, *optional*):
        End of the clip, in seconds: frames before `min(round(end_time * fps), num_frames - 1)` (MVBench's rule).
    video_backend (`str`, *optional*, defaults to `"auto"`):
        Decoder for files and URLs: `"pyav"`, `"torchcodec"`, `"decord"` or `"auto"` (the first one installed in that
        order).
    resize_backend (`str`, *optional*, defaults to `"pil"`):
        `"pil"` is bit-exact with the reference; `"torch"` resizes batches with torch (on `device` if given) and
        differs from PIL by at most a level or two on a few pixels in ten thousand.
    decode_batch_size (`int`, *optional*, defaults to 8):
        Frames decoded and resized together; bounds the memory held besides the outputs.
    decode_workers (`int`, *optional*):
        Decoders working on one video file at once, each on segments cut at keyframes; the frames are exactly the
        single decoder's. None (the default) is two (one on a single core: `default_decode_workers`); short videos
        and videos with a single keyframe use one.
    """

    dino_size: int | dict[str, int] | SizeDict | None
    dino_image_mean: float | list[float] | tuple[float, ...] | None
    dino_image_std: float | list[float] | tuple[float, ...] | None
    default_fps: int | float | None
    max_frames: int | None
    max_frames_mode: str | None
    start_time: int | float | None
    end_time: int | float | None
    video_backend: str | None
    resize_backend: str | None
    decode_batch_size: int | None
    decode_workers: int | None


def _reporting_progress(batches: Iterator[FrameBatch], callback: Callable[[int], None]) -> Iterator[FrameBatch]:
    """Hands on each batch, then reports its frames once the consumer asks for the next one (i.e. has resized it)."""
    for batch in batches:
        yield batch
        callback(len(batch))


def reference_frame_stride(average_fps: float, fps: float) -> int:
    """The reference's sampling step, in frames, for a target rate `fps` (docs/reference.md §1.2).

    `round(average_fps / fps)` as in the README, demo, training (fps=1) and MVBench (fps=2) code; for rates below 1
    fps the MLVU/EgoSchema/VideoMME scripts round the video's rate first: `round(round(average_fps) / fps)`. Python's
    `round` rounds halves to even (25 fps at 2 fps gives 12). Never less than 1.

    Example:

    ```python
    >>> reference_frame_stride(29.97, 1), reference_frame_stride(25.0, 2), reference_frame_stride(29.97, 0.5)
    (30, 12, 60)
    ```
    """
    if fps <= 0:
        raise ValueError(f"`fps` must be positive, got {fps}")
    step = round(round(average_fps) / fps) if fps < 1 else round(average_fps / fps)
    return max(1, int(step))


def sample_frame_indices(
    total_num_frames: int,
    average_fps: float | None,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    default_fps: float = 1.0,
    max_frames: int | None = None,
    max_frames_mode: str = "uniform",
    start_time: float | None = None,
    end_time: float | None = None,
    video_name: str = "the video",
) -> np.ndarray:
    """LongVU's frame sampling as a pure function (the eval scripts can call it directly).

    * default: one frame every `reference_frame_stride(average_fps, default_fps)` frames from the clip start;
    * `fps`: the same rule at that rate (the video's frame rate must be known); `num_frames`: `num_frames` frames
      spread evenly over the clip;
    * `average_fps=None` (frames without a frame rate) and no `fps`: every frame;
    * `start_time`/`end_time` (seconds): the clip, with MVBench's arithmetic;
    * `max_frames`: a cap applied last (`max_frames_mode`, see `LongVUVideoProcessorKwargs`).

    Example:

    ```python
    >>> sample_frame_indices(600, 29.97)[:4].tolist()
    [0, 30, 60, 90]
    >>> sample_frame_indices(500, 25.0, fps=2, start_time=2.0, end_time=7.5)[[0, -1]].tolist()
    [50, 182]
    ```
    """
    if total_num_frames <= 0:
        raise ValueError(f"{video_name} has no frames.")
    if fps is not None and num_frames is not None:
        raise ValueError("`fps` and `num_frames` are mutually exclusive: pass only one of them.")
    if max_frames_mode not in MAX_FRAMES_MODES:
        raise ValueError(f"`max_frames_mode` must be one of {MAX_FRAMES_MODES}, got {max_frames_mode!r}")

    start, end = 0, total_num_frames
    if start_time is not None or end_time is not None:
        if not average_fps:
            raise ValueError(f"`start_time`/`end_time` need the frame rate of {video_name}; pass `video_metadata`.")
        if start_time is not None:
            start = max(0, round(start_time * average_fps))
        if end_time is not None:
            end = min(round(end_time * average_fps), total_num_frames - 1)
        if end <= start:
            raise ValueError(
                f"The clip start_time={start_time}, end_time={end_time} of {video_name} holds no frame "
                f"(frames {start} to {end} of {total_num_frames})."
            )
    clip_length = end - start

    if num_frames is not None:
        if num_frames > clip_length:
            raise ValueError(
                f"Cannot sample num_frames={num_frames} from {video_name}, which has {clip_length} frames"
                + (" in the requested clip." if clip_length != total_num_frames else ".")
            )
        indices = start + np.arange(num_frames, dtype=np.int64) * clip_length // num_frames
    elif not average_fps:
        if fps is not None:
            raise ValueError(
                f"{video_name} has no known frame rate, so it cannot be sampled at `fps={fps}` (decoded frames, frame "
                "images and folders of frames carry none). Pass `num_frames` instead, or give its frame rate with "
                "`video_metadata={'fps': ...}`."
            )
        indices = np.arange(start, end, dtype=np.int64)
    else:
        rate = fps if fps is not None else default_fps
        step = reference_frame_stride(average_fps, rate)
        # A clip shorter than one step keeps its first frame, as the reference's `range(0, len(vr), step)` does.
        indices = np.arange(start, end, step, dtype=np.int64)

    if max_frames is not None and len(indices) > max_frames:
        if max_frames < 1:
            raise ValueError(f"`max_frames` must be at least 1, got {max_frames}")
        if max_frames_mode == "uniform":
            positions = np.round(np.linspace(0, len(indices) - 1, max_frames)).astype(np.int64)
        else:
            positions = np.arange(0, len(indices), len(indices) // max_frames)
        indices = indices[positions]
    return indices


class LongVUVideoProcessor(BaseVideoProcessor):
    r"""
    Video (and image) processor of LongVU: decodes and samples frames, then pads and resizes each frame for SigLIP
    (384²) and DINOv2 (378²) exactly as the reference does, and returns uint8 tensors that the model normalises.

    Outputs for videos (frames of all videos concatenated, Qwen2-VL style):

    - `pixel_values_videos`: (total frames, 3, 384, 384) uint8, or float32 rescaled and normalised with
      `do_rescale=True, do_normalize=True` (the model normalises uint8 pixels itself and takes float ones as they are;
      one flag without the other gives float32 pixels with that step alone, which the model cannot take);
    - `pixel_values_videos_dino`: (total frames, 3, 378, 378), same dtype;
    - `video_num_frames`: (num videos,) int64, the frames of each video;
    - `video_sizes`: (num videos, 2) int64, (height, width) of each source video;
    - `video_metadata` (with `return_metadata=True`): one `VideoMetadata` per video, `frames_indices` and
      `timestamps` included.

    `preprocess_images` gives `pixel_values`, `pixel_values_dino` and `image_sizes` the same way for still images.

    Videos can be file paths (mp4, mkv, webm, mov, avi, gif, ...), http(s) URLs, folders or lists of frame images,
    (T, H, W, C) / (T, C, H, W) arrays or tensors, or lists of PIL frames. Sampling is controlled by `fps`,
    `num_frames`, `max_frames`, `start_time`/`end_time` (see `LongVUVideoProcessorKwargs` and
    `sample_frame_indices`); `fps` and `num_frames` default to None and LongVU's 1-fps rule lives in
    `sample_frames`, so that passing either of them just works.

    Example:

    ```python
    >>> from longvu_hf import LongVUVideoProcessor
    >>> processor = LongVUVideoProcessor()
    >>> out = processor("clip.mp4", return_metadata=True)  # 1 frame per second, reference rule
    >>> out["pixel_values_videos"].shape, out["pixel_values_videos"].dtype, out["video_sizes"].tolist()
    (torch.Size([20, 3, 384, 384]), torch.uint8, [[36, 64]])
    >>> out["video_metadata"][0].timestamps[:3]
    [0.0, 1.001, 2.002]
    >>> processor("clip.mp4", fps=0.5, max_frames=1000, max_frames_mode="stride")  # the EgoSchema/MLVU rule
    ```
    """

    resample = PILImageResampling.BICUBIC
    size = {"height": 384, "width": 384}
    dino_size = {"height": 378, "width": 378}
    image_mean = SIGLIP_IMAGE_MEAN
    image_std = SIGLIP_IMAGE_STD
    dino_image_mean = DINO_IMAGE_MEAN
    dino_image_std = DINO_IMAGE_STD
    do_resize = True
    do_pad = True
    do_rescale = False
    do_normalize = False
    do_convert_rgb = True
    do_sample_frames = True
    fps = None
    num_frames = None
    default_fps = 1.0
    max_frames = None
    max_frames_mode = "uniform"
    start_time = None
    end_time = None
    video_backend = "auto"
    resize_backend = "pil"
    decode_batch_size = 8
    decode_workers = None
    return_metadata = False
    valid_kwargs = LongVUVideoProcessorKwargs
    model_input_names = ["pixel_values_videos", "pixel_values_videos_dino", "video_num_frames", "video_sizes"]
    image_input_names = ["pixel_values", "pixel_values_dino", "image_sizes"]

    def __init__(self, **kwargs: Unpack[LongVUVideoProcessorKwargs]):
        super().__init__(**kwargs)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """transformers' `save_pretrained`, plus the flat remote code and `auto_map`s that let the folder load with
        `trust_remote_code=True` where longvu-hf is not installed (`remote_code.py`)."""
        from ..remote_code import PROCESSOR_AUTO_MAP, save_with_remote_code

        # On the object too, as transformers' `custom_object_save` does: what is saved equals what is loaded back.
        self.auto_map = {"AutoVideoProcessor": PROCESSOR_AUTO_MAP["AutoVideoProcessor"]}
        return save_with_remote_code(super().save_pretrained, save_directory, push_to_hub, kwargs)

    @contextlib.contextmanager
    def frame_progress(self, callback: Callable[[int], None]) -> Iterator[None]:
        """Within the block, `callback(n)` is called each time `n` more video frames have been decoded and resized.

        Meant for progress bars on long videos, e.g. `with processor.frame_progress(bar.update): processor(path)`.
        The callback is not part of the processor's configuration (nothing is saved) and is removed on exit.
        """
        previous = self.__dict__.get("_frame_progress_callback")
        self._frame_progress_callback = callback
        try:
            yield
        finally:
            if previous is None:
                self.__dict__.pop("_frame_progress_callback", None)
            else:
                self._frame_progress_callback = previous

    # -- kwargs ------------------------------------------------------------------------------------------------------

    def _standardize_kwargs(self, dino_size=None, dino_image_mean=None, dino_image_std=None, **kwargs) -> dict:
        kwargs = super()._standardize_kwargs(**kwargs)
        if dino_size is not None and not isinstance(dino_size, SizeDict):
            dino_size = SizeDict(**get_size_dict(dino_size, param_name="dino_size"))
        kwargs["dino_size"] = dino_size
        kwargs["dino_image_mean"] = tuple(dino_image_mean) if isinstance(dino_image_mean, list) else dino_image_mean
        kwargs["dino_image_std"] = tuple(dino_image_std) if isinstance(dino_image_std, list) else dino_image_std
        return kwargs

    def _resolve_kwargs(self, kwargs: dict) -> dict:
        """Validates call-time kwargs and fills the missing ones from the instance (as `BaseVideoProcessor` does)."""
        from huggingface_hub.dataclasses import validate_typed_dict
        from transformers.image_utils import validate_kwargs

        validate_kwargs(
            captured_kwargs=kwargs.keys(),
            valid_processor_keys=list(self.valid_kwargs.__annotations__.keys()) + ["return_tensors"],
        )
        validate_typed_dict(self.valid_kwargs, kwargs)
        for name in self.valid_kwargs.__annotations__:
            kwargs.setdefault(name, getattr(self, name, None))
        kwargs = self._standardize_kwargs(**kwargs)
        if kwargs["resize_backend"] not in RESIZE_BACKENDS:
            raise ValueError(f"`resize_backend` must be one of {RESIZE_BACKENDS}, got {kwargs['resize_backend']!r}")
        for name in ("size", "dino_size"):
            side = kwargs[name]
            if side is None or side.height is None or side.height != side.width:
                raise ValueError(f"`{name}` must be a square {{'height': S, 'width': S}}, got {side}")
        if not kwargs["decode_batch_size"] or kwargs["decode_batch_size"] < 1:
            raise ValueError(f"`decode_batch_size` must be a positive integer, got {kwargs['decode_batch_size']}")
        workers = kwargs["decode_workers"]
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"`decode_workers` must be a positive integer or None, got {workers!r}")
        return kwargs

    def _encoder_targets(self, kwargs: dict) -> list[tuple[tuple[int, int, int], int]]:
        """(padding colour, output side) for SigLIP then DINOv2."""
        return [
            (fill_colour(kwargs["image_mean"]), int(kwargs["size"].height)),
            (fill_colour(kwargs["dino_image_mean"]), int(kwargs["dino_size"].height)),
        ]

    # -- sampling ----------------------------------------------------------------------------------------------------

    def sample_frames(
        self,
        metadata: VideoMetadata,
        num_frames: int | None = None,
        fps: int | float | None = None,
        max_frames: int | None = None,
        max_frames_mode: str | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
        default_fps: float | None = None,
        video_name: str = "the video",
        **kwargs,
    ) -> np.ndarray:
        """Frame indices to decode for one video: LongVU's reference rule by default (one frame every
        `round(average_fps)` frames from frame 0), see `sample_frame_indices` for the options. The frame rate is
        `metadata.fps`, or `total_num_frames / duration` when only the duration is known."""
        return sample_frame_indices(
            int(metadata.total_num_frames),
            frame_rate(metadata),
            fps=fps,
            num_frames=num_frames,
            default_fps=default_fps if default_fps is not None else self.default_fps,
            max_frames=max_frames,
            max_frames_mode=max_frames_mode or "uniform",
            start_time=start_time,
            end_time=end_time,
            video_name=video_name,
        )

    # -- videos ------------------------------------------------------------------------------------------------------

    def preprocess(self, videos: Any, **kwargs: Unpack[LongVUVideoProcessorKwargs]) -> BatchFeature:
        """Decodes, samples and preprocesses a video or a batch of videos (see the class docstring for the outputs)."""
        kwargs = self._resolve_kwargs(kwargs)
        do_convert_rgb, do_resize, do_pad = kwargs["do_convert_rgb"], kwargs["do_resize"], kwargs["do_pad"]
        do_rescale, do_normalize = kwargs["do_rescale"], kwargs["do_normalize"]
        if not do_convert_rgb:
            self._refuse_non_rgb(videos)
        sources = self._open_sources(videos, kwargs)

        frame_indices = [self._frame_indices(source, kwargs) for source in sources]

        # Outputs are allocated once, at their final size, and filled as frames arrive: no concatenation copies.
        total_frames = sum(len(indices) for indices in frame_indices)
        frame_size = None if do_resize else self._common_frame_size([source.frame_size for source in sources])
        outputs = self._allocate_outputs(
            total_frames, kwargs, do_resize=do_resize, do_pad=do_pad, frame_size=frame_size
        )
        offset = 0
        for source, indices in zip(sources, frame_indices):
            # Decoded in background threads while the previous batch is resized (video_decoding.decode_frames).
            batches = decode_frames(source, indices, kwargs["decode_batch_size"], workers=kwargs["decode_workers"])
            callback = self.__dict__.get("_frame_progress_callback")
            if callback is not None:
                batches = _reporting_progress(batches, callback)
            self._fill_outputs(batches, outputs, offset, kwargs, do_resize=do_resize, do_pad=do_pad)
            offset += len(indices)

        data = {
            "pixel_values_videos": outputs[0],
            "pixel_values_videos_dino": outputs[1],
            "video_num_frames": torch.tensor([len(indices) for indices in frame_indices], dtype=torch.long),
            "video_sizes": torch.tensor([source.frame_size for source in sources], dtype=torch.long),
        }
        data = self._maybe_normalize(
            data, ("pixel_values_videos", "pixel_values_videos_dino"), kwargs, do_rescale, do_normalize
        )
        if kwargs["return_metadata"]:
            metadata = []
            for source, indices in zip(sources, frame_indices):
                source.metadata.frames_indices = indices.tolist()
                metadata.append(source.metadata)
            data["video_metadata"] = metadata
        return BatchFeature(data=data, tensor_type=kwargs["return_tensors"], skip_tensor_conversion=["video_metadata"])

    def iter_video_chunks(
        self, video: Any, chunk_frames: int = DEFAULT_CHUNK_FRAMES, **kwargs: Unpack[LongVUVideoProcessorKwargs]
    ) -> VideoChunks:
        """One video's sampled frames, preprocessed exactly as `preprocess` does, but yielded `chunk_frames` at a
        time (`VideoChunks`), for `LongVUModel.encode_video_stream`: the host then holds a few chunks of pixels
        instead of the whole video. Frames are sampled and the video opened here; decoding starts on iteration."""
        kwargs = self._resolve_kwargs(kwargs)
        if not kwargs["do_convert_rgb"]:
            self._refuse_non_rgb(video)
        sources = self._open_sources(video, kwargs)
        if len(sources) != 1:
            for source in sources:
                if source.media is not None:
                    source.media.close()
            raise ValueError(f"`iter_video_chunks` takes one video, got {len(sources)}")
        (source,) = sources
        return VideoChunks(self, source, self._frame_indices(source, kwargs), kwargs, chunk_frames=chunk_frames)

    def _frame_indices(self, source: FrameSource, kwargs: dict) -> np.ndarray:
        """The frame indices to decode from one source, under the call's sampling options."""
        if kwargs["do_sample_frames"]:
            indices = self.sample_frames(
                source.metadata,
                num_frames=kwargs["num_frames"],
                fps=kwargs["fps"],
                max_frames=kwargs["max_frames"],
                max_frames_mode=kwargs["max_frames_mode"],
                start_time=kwargs["start_time"],
                end_time=kwargs["end_time"],
                default_fps=kwargs["default_fps"],
                video_name=f"Video {source.name}",
            )
        else:
            indices = np.arange(source.metadata.total_num_frames, dtype=np.int64)
        if len(indices) == 0:
            raise ValueError(f"No frame was sampled from video {source.name}.")
        return np.asarray(indices, dtype=np.int64)

    def _open_sources(self, videos: Any, kwargs: dict) -> list[FrameSource]:
        if videos is None:
            raise ValueError("No video was given.")
        if isinstance(videos, (list, tuple)) and len(videos) == 0:
            raise ValueError("`videos` is an empty list.")
        videos = _paths_to_str(videos)
        batch = make_batched_videos([videos] if isinstance(videos, str) else videos)
        metadata = kwargs.get("video_metadata")
        if metadata is None:
            metadata = [None] * len(batch)
        elif isinstance(metadata, (dict, VideoMetadata)):
            metadata = [metadata]
        elif isinstance(metadata, (list, tuple)) and metadata and isinstance(metadata[0], (list, tuple)):
            metadata = [entry for group in metadata for entry in group]
        if len(metadata) != len(batch):
            raise ValueError(
                f"Got {len(batch)} videos but {len(metadata)} `video_metadata` entries; pass one per video."
            )
        # Paths and URLs go through the input policy (media_inputs.resolve_media): the local user's own files and
        # public URLs (downloads are capped, bounded in time and deleted with their source). A public page resolves
        # its inputs under its own policy before they reach the processor.
        policy = InputPolicy.local_user()
        sources = []
        for position, (video, video_metadata) in enumerate(zip(batch, metadata)):
            is_location = isinstance(video, str) or (isinstance(video, (list, tuple)) and isinstance(video[0], str))
            name = None if is_location else f"#{position} (in-memory frames)"
            sources.append(open_frame_source(video, kwargs["video_backend"], video_metadata, name=name, policy=policy))
        return sources

    @staticmethod
    def _refuse_non_rgb(frames: Any) -> None:
        """`do_convert_rgb=False`: frames are not converted, and LongVU's encoders take RGB, so other frames are
        refused."""
        found = _first_non_rgb_frame(frames)
        if found is not None:
            raise ValueError(
                f"`do_convert_rgb=False` but the input holds {found}: LongVU's encoders take 3-channel RGB frames; "
                "pass `do_convert_rgb=True` (the default) to convert them."
            )

    @staticmethod
    def _common_frame_size(frame_sizes: list[tuple[int, int]]) -> tuple[int, int]:
        """`do_resize=False` keeps each frame's size, so all frames of a call must share one (they are stacked)."""
        sizes = sorted(set(frame_sizes))
        if len(sizes) != 1:
            raise ValueError(
                f"`do_resize=False` keeps each frame's size, so the frames of one call must share one; got (height, "
                f"width) sizes {sizes}. Pass `do_resize=True` (the default) or one size of frames per call."
            )
        return sizes[0]

    def _allocate_outputs(
        self,
        total_frames: int,
        kwargs: dict,
        do_resize: bool | None = None,
        do_pad: bool | None = None,
        frame_size: tuple[int, int] | None = None,
    ) -> list[torch.Tensor]:
        """Both encoders' uint8 outputs: `size`/`dino_size` squares, or with `do_resize=False` the frames' own
        `frame_size` (a square of its longer side with `do_pad`). Flags left None are the call's `kwargs`."""
        do_resize = kwargs["do_resize"] if do_resize is None else do_resize
        do_pad = kwargs["do_pad"] if do_pad is None else do_pad
        device = kwargs.get("device") if kwargs["resize_backend"] == "torch" else None
        if do_resize:
            shapes = [(side, side) for _, side in self._encoder_targets(kwargs)]
        elif frame_size is None:
            raise ValueError("`do_resize=False` needs the frames' size to allocate the outputs")
        else:
            height, width = frame_size
            shapes = [(max(height, width),) * 2 if do_pad else (height, width)] * 2
        return [torch.empty((total_frames, 3, *shape), dtype=torch.uint8, device=device) for shape in shapes]

    def _fill_outputs(
        self,
        batches: Iterator[FrameBatch],
        outputs: list[torch.Tensor],
        offset: int,
        kwargs,
        do_resize: bool | None = None,
        do_pad: bool | None = None,
    ) -> None:
        """Pads and resizes each frame for both encoders into `outputs` (from `offset`); flags left None are the
        call's `kwargs`."""
        targets = self._encoder_targets(kwargs)
        do_resize = bool(kwargs["do_resize"] if do_resize is None else do_resize)
        do_pad = bool(kwargs["do_pad"] if do_pad is None else do_pad)
        if not do_resize:  # frames keep their size: only padded to a square (each encoder's colour) with `do_pad`
            for batch in batches:
                for slot, frame in batch:
                    for output, (fill, _) in zip(outputs, targets):
                        canvas = np.asarray(expand_to_square(Image.fromarray(frame), fill)) if do_pad else frame
                        if canvas.shape[:2] != tuple(output.shape[-2:]):  # a folder of images of several sizes
                            raise ValueError(
                                f"`do_resize=False` keeps each frame's size, so the frames of one call must share "
                                f"one; a frame of (height, width) {tuple(frame.shape[:2])} differs from the first. "
                                "Pass `do_resize=True` (the default) or one size of frames per call."
                            )
                        output[offset + slot] = torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1)))
            return
        if kwargs["resize_backend"] == "pil":
            resample = int(kwargs["resample"]) if kwargs["resample"] is not None else int(PILImageResampling.BICUBIC)
            output_arrays = [output.numpy() for output in outputs]  # CPU uint8: write through numpy views

            def resize_frame(slot: int, frame: np.ndarray) -> None:
                image = Image.fromarray(frame)  # shared by both encoders
                for output, (fill, side) in zip(output_arrays, targets):
                    canvas = pad_and_resize_pil(image, fill, side, resample=resample, do_pad=do_pad)
                    output[offset + slot] = canvas.transpose(2, 0, 1)

            # PIL releases the GIL while resizing: on machines with cores to spare, frames are resized in parallel
            # (the decoder already keeps about two cores busy).
            workers = _resize_workers()
            if workers == 1:
                for batch in batches:
                    for slot, frame in batch:
                        resize_frame(slot, frame)
                return
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="longvu-resize") as pool:
                for batch in batches:
                    list(pool.map(lambda pair: resize_frame(*pair), batch))
            return
        device = kwargs.get("device")
        for batch in batches:
            # Frames of one video share a size; a folder of images may not, so group by shape.
            by_shape: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
            for slot, frame in batch:
                by_shape.setdefault(frame.shape, []).append((slot, frame))
            for group in by_shape.values():
                slots = torch.tensor([offset + slot for slot, _ in group], device=outputs[0].device)
                frames = torch.from_numpy(np.stack([frame for _, frame in group])).permute(0, 3, 1, 2)
                if device is not None:
                    frames = frames.to(device)
                for output, (fill, side) in zip(outputs, targets):
                    output[slots] = pad_and_resize_torch(frames, fill, side, do_pad=do_pad).to(output.device)

    def _maybe_normalize(
        self,
        data: dict,
        keys: Sequence[str],
        kwargs: dict,
        do_rescale: bool | None = None,
        do_normalize: bool | None = None,
    ) -> dict:
        """Moves the pixels to `device` if one was given; `do_rescale` makes them float32 times `rescale_factor`,
        `do_normalize` float32 `(pixels - mean) / std`. Both together are the very arithmetic the model applies to
        uint8 pixels, `(pixels * rescale_factor - mean) / std`; by default they stay uint8. Flags left None are the
        call's `kwargs`."""
        do_rescale = kwargs["do_rescale"] if do_rescale is None else do_rescale
        do_normalize = kwargs["do_normalize"] if do_normalize is None else do_normalize
        if kwargs.get("device") is not None:
            for key in keys:
                data[key] = data[key].to(kwargs["device"])
        if not (do_rescale or do_normalize):
            return data
        if bool(do_rescale) != bool(do_normalize):
            logger.warning_once(
                f"`do_rescale={do_rescale}` with `do_normalize={do_normalize}` gives float32 pixels with that step "
                "alone, which LongVU's model cannot take (it normalises uint8 pixels itself and reads float pixels as "
                "already rescaled and normalised): pass both, or neither for uint8 pixels, for model inputs."
            )
        stats = [(kwargs["image_mean"], kwargs["image_std"]), (kwargs["dino_image_mean"], kwargs["dino_image_std"])]
        for key, (mean, std) in zip(keys, stats):
            values = data[key].float()
            if do_rescale:
                values = values * float(kwargs["rescale_factor"])
            if do_normalize:
                mean_t = torch.tensor(mean, dtype=values.dtype, device=values.device).view(1, -1, 1, 1)
                std_t = torch.tensor(std, dtype=values.dtype, device=values.device).view(1, -1, 1, 1)
                values = (values - mean_t) / std_t
            data[key] = values
        return data

    # -- images ------------------------------------------------------------------------------------------------------

    def preprocess_images(self, images: Any, **kwargs) -> BatchFeature:
        """Preprocesses still images like one-frame videos: returns `pixel_values` (N, 3, 384, 384),
        `pixel_values_dino` (N, 3, 378, 378) (uint8, or normalised float32 with `do_rescale=True, do_normalize=True`)
        and `image_sizes` (N, 2) as (height, width).

        Example:

        ```python
        >>> out = LongVUVideoProcessor().preprocess_images(PIL.Image.new("RGB", (192, 108)))
        >>> out["pixel_values"].shape, out["image_sizes"].tolist()
        (torch.Size([1, 3, 384, 384]), [[108, 192]])
        ```
        """
        from transformers.image_utils import make_flat_list_of_images

        # Sampling and decoding options mean nothing for images.
        kwargs = {key: value for key, value in kwargs.items() if key in self.valid_kwargs.__annotations__}
        kwargs = self._resolve_kwargs(kwargs)
        if not kwargs["do_convert_rgb"]:
            self._refuse_non_rgb(images)
        if isinstance(images, str) or (isinstance(images, (list, tuple)) and images and isinstance(images[0], str)):
            images = self.fetch_images(images)
        flat = make_flat_list_of_images(images) if not isinstance(images, (list, tuple)) or images else []
        flat = [image for image in flat if image is not None]
        if not flat:
            raise ValueError("No image was given.")
        frames = [to_uint8_hwc(image) for image in flat]
        frame_size = None if kwargs["do_resize"] else self._common_frame_size([f.shape[:2] for f in frames])
        outputs = self._allocate_outputs(len(frames), kwargs, frame_size=frame_size)
        batch = list(enumerate(frames))
        self._fill_outputs(iter([batch]), outputs, 0, kwargs)
        data = {
            "pixel_values": outputs[0],
            "pixel_values_dino": outputs[1],
            "image_sizes": torch.tensor([frame.shape[:2] for frame in frames], dtype=torch.long),
        }
        data = self._maybe_normalize(data, ("pixel_values", "pixel_values_dino"), kwargs)
        return BatchFeature(data=data, tensor_type=kwargs["return_tensors"])

    # -- decoding API of BaseVideoProcessor --------------------------------------------------------------------------

    def fetch_images(self, image_url_or_urls: Any):
        """Image paths and URLs as RGB PIL images, read under `InputPolicy.local_user()` (`longvu_hf.media_inputs`:
        public URLs only, size-capped, a deadline) instead of transformers' unrestricted `load_image`; images already
        loaded pass through."""
        from ..media_inputs import load_image

        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, (str, os.PathLike)):
            return load_image(image_url_or_urls, InputPolicy.local_user())
        return image_url_or_urls

    def fetch_videos(self, video_url_or_urls: str | list[str] | list[list[str]], sample_indices_fn=None):
        """Decodes videos to (frames (T, H, W, 3) uint8, VideoMetadata), like `BaseVideoProcessor.fetch_videos`, but
        with this package's decoders (PyAV when torchcodec is unusable) and only the sampled frames. URLs and paths
        are resolved under `InputPolicy.local_user()` (`longvu_hf.media_inputs`)."""
        if isinstance(video_url_or_urls, list):
            return list(zip(*[self.fetch_videos(x, sample_indices_fn=sample_indices_fn) for x in video_url_or_urls]))
        source = open_frame_source(video_url_or_urls, self.video_backend, policy=InputPolicy.local_user())
        metadata = source.metadata
        if sample_indices_fn is not None:
            indices = np.asarray(sample_indices_fn(metadata=metadata), dtype=np.int64)
        else:
            indices = np.arange(metadata.total_num_frames, dtype=np.int64)
        frames = np.empty((len(indices), *source.frame_size, 3), dtype=np.uint8)
        for batch in source.iter_frames(indices, self.decode_batch_size):
            for slot, frame in batch:
                frames[slot] = frame
        metadata.frames_indices = indices.tolist()
        return frames, metadata


__all__ = [
    "LongVUVideoProcessor",
    "LongVUVideoProcessorKwargs",
    "reference_frame_stride",
    "sample_frame_indices",
]
