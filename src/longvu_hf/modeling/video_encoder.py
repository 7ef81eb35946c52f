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
"""LongVU's visual path as one object: the SigLIP and DINOv2 towers, DINOv2 frame selection, the Spatial Vision
Aggregator (SVA), the projector and the row-newline embedding, plus the per-prompt budget and the compression.

`LongVUModel` keeps it as `self.video_encoder` (as Qwen2.5-VL keeps `self.visual`) and only places its tokens in the
prompt; live video and serving engines use the same small API:

- `plan(text_length, num_visual, settings)`: a video's `VideoBudget` for one prompt, decided once per call and
  handed to the two steps below (it also says whether DINOv2 frame selection runs);
- `encode_video(...)`: the question-independent part (towers, selection, SVA) -> `EncodedVideo`;
- `compress_video(encoded, budget, query, settings)`: the question-dependent part -> tokens and `CompressionReport`;
- `encode_images(...)`: images (no temporal or token compression).

The checkpoints keep the key names of the first releases (`model.vision_tower.*`, ...): `longvu_key_renaming()`
(registered with transformers) maps them to `model.video_encoder.*` in `from_pretrained` and back in
`save_pretrained`; `LongVUModel`'s `load_state_dict` pre-hook does the same for plain state dicts (a Trainer resume).
The budget arithmetic itself is `video_token_budgets`, shared with the front ends' check (`longvu_hf.session`).
"""

from __future__ import annotations

import functools
import math
import re
import types
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers.modeling_outputs import BaseModelOutput

from . import compression as C
from .aggregator import LongVUVisionAggregator, window_key_mask
from .compression_report import CompressionReport, ImageCompressionReport, VideoBudget
from .configuration_longvu import CompressionSettings, LongVUConfig
from .live_video import LongVULiveVideo, encode_video_stream
from .video_features import EncodedVideo, LongVUVideoFeatures, model_fingerprint, settings_difference

# Normalised pixels stay within a few units (SigLIP: -1..1, DINOv2: about -2.1..2.6); values beyond this are raw 0..255.
_NORMALISED_PIXEL_LIMIT = 10.0
_ACCEPTED_FLOAT_PIXELS = (torch.float32, torch.float16, torch.bfloat16)

# The modules of the visual path, as the checkpoints of the first releases name them (directly under `LongVUModel`).
ENCODER_MODULES = ("vision_tower", "dino_tower", "vision_aggregator", "multi_modal_projector", "image_newline")


def longvu_key_renaming() -> list:
    """transformers' weight renamings that load checkpoints written with the visual modules directly under the model
    (`model.vision_tower.*`, or `vision_tower.*` for a saved `LongVUModel`) into `video_encoder.*`; `save_pretrained`
    applies them in reverse, so saved folders keep the first releases' key names."""
    from transformers.core_model_loading import WeightRenaming

    return [
        WeightRenaming(source_patterns=rf"(?<!video_encoder\.){name}" + (r"\." if name != "image_newline" else ""),
                       target_patterns=f"video_encoder.{name}" + ("." if name != "image_newline" else ""))
        for name in ENCODER_MODULES
    ]


# The same renaming as a regex -> replacement dict on `LongVUForConditionalGeneration` keys: for adapters saved by
# PEFT before the move (`base_model.model.model.vision_aggregator.*`, the `modules_to_save` copies: PEFT applies a
# model's `_checkpoint_conversion_mapping` to adapter keys, prefix removed) and for the converter.
LEGACY_KEY_MAPPING = {rf"^model\.(?=({'|'.join(ENCODER_MODULES)})\b)": "model.video_encoder."}


def module_key(checkpoint_key: str) -> str:
    """The parameter name in `LongVUForConditionalGeneration` of a key as checkpoints write it
    (`model.vision_tower.x` -> `model.video_encoder.vision_tower.x`; other keys unchanged)."""
    for pattern, replacement in LEGACY_KEY_MAPPING.items():
        checkpoint_key = re.sub(pattern, replacement, checkpoint_key)
    return checkpoint_key


def register_longvu_key_renaming() -> None:
    """Register `longvu_key_renaming` for the `longvu` model type (done when the modeling file is imported: by the
    package and by Hub remote code alike, so either can load the other's folders)."""
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping

    register_checkpoint_conversion_mapping("longvu", longvu_key_renaming(), overwrite=True)


def check_pixel_values(pixels: torch.Tensor, name: str) -> None:
    """Pixels come as the processor returns them: uint8 0..255 (normalised on the model's device) or float32/16/bf16
    already normalised. Anything else would be read wrongly without a word, so it is refused.

    Floats scaled to 0..1 (neither) are only warned about: normalised pixels of frames with no pixel darker than
    about mid-gray also lie within 0..1, so no rule on the values can refuse 0..1 floats without refusing some real
    normalised input. Real normalised videos almost always hold negative values (every dark pixel is one)."""
    expected = "uint8 (0..255, normalised by the model) or float32/float16/bfloat16 already normalised"
    if not isinstance(pixels, torch.Tensor):
        dtype = getattr(pixels, "dtype", None)
        raise ValueError(
            f"`{name}` is a {type(pixels).__module__}.{type(pixels).__name__}"
            + (f" of dtype {dtype}" if dtype is not None else "")
            + f", not a torch tensor; expected {expected} (`torch.from_numpy(...)`, or the processor with "
            "return_tensors=\"pt\")"
        )
    if pixels.dtype == torch.uint8:
        return
    if pixels.dtype not in _ACCEPTED_FLOAT_PIXELS:
        raise ValueError(f"`{name}` has dtype {pixels.dtype}; expected {expected}")
    if not pixels.numel():
        return
    low, high = (float(v) for v in torch.aminmax(pixels.detach()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"`{name}` holds NaN or infinite values; expected {expected}")
    if max(abs(low), abs(high)) > _NORMALISED_PIXEL_LIMIT:
        raise ValueError(
            f"`{name}` holds float values up to {max(abs(low), abs(high)):.0f}, which look like raw 0..255 "
            f"pixels; expected {expected} (the processor returns uint8)"
        )
    if 0.0 <= low and high <= 1.0:
        # One message per input name: Python shows a warning once per place and text.
        warnings.warn(
            f"`{name}` holds floats all within 0..1: pixels scaled to 0..1 are read as normalised values and give "
            f"wrong answers; pass {expected}. (Normalised frames with no pixel darker than mid-gray also lie within "
            "0..1: then ignore this.)",
            UserWarning,
            stacklevel=3,
        )


def call_settings(
    compression_settings: CompressionSettings | dict | None, max_visual_tokens: int | None = None
) -> CompressionSettings:
    """The one place a call's compression settings are made: `compression_settings` (a `CompressionSettings`, a dict
    of its fields or None), with the deprecated `max_visual_tokens=` argument folded in as
    `CompressionSettings.max_visual_tokens`. Giving both with different values is a ValueError."""
    settings = CompressionSettings.from_value(compression_settings)
    if max_visual_tokens is None:
        return settings
    warnings.warn(
        "`max_visual_tokens=` is deprecated: pass `compression_settings=CompressionSettings(max_visual_tokens=...)` "
        "(or `compression_settings={\"max_visual_tokens\": ...}`)",
        FutureWarning,
        stacklevel=4,
    )
    if settings.max_visual_tokens is not None and settings.max_visual_tokens != max_visual_tokens:
        raise ValueError(
            f"`max_visual_tokens={max_visual_tokens}` and `compression_settings.max_visual_tokens="
            f"{settings.max_visual_tokens}` disagree: pass the cap once, in `compression_settings`"
        )
    return CompressionSettings.from_value(settings, max_visual_tokens=max_visual_tokens)


def encoding_settings(settings: CompressionSettings) -> dict:
    """The settings encoded video features depend on (see `video_features.settings_difference`)."""
    return {name: getattr(settings, name) for name in ("dino_threshold", "max_context_length", "context_margin")}


def reference_dino_position_interpolation(config: LongVUConfig, embeddings: nn.Module, patch_embeds, height, width):
    """DINOv2 position-embedding interpolation exactly as transformers 4.42 computed it (what LongVU was trained with):
    bicubic with `scale_factor=(grid + 0.1) / sqrt(num_positions)` rather than `size=grid` (docs/reference.md §2.2)."""
    num_patches = patch_embeds.shape[1] - 1
    num_positions = embeddings.position_embeddings.shape[1] - 1
    # CODEPATH: every released checkpoint (Vision-CAIR/LongVU_Qwen2_7B, LongVU_Llama3_2_3B, LongVU_Llama3_2_1B and
    # their `_img` variants) keeps "reference", the interpolation its towers saw in training; "exact" (current
    # transformers) is for models trained or fine-tuned with it.
    if config.dino_position_interpolation != "reference" or (num_patches == num_positions and height == width):
        return type(embeddings).interpolate_pos_encoding(embeddings, patch_embeds, height, width)
    class_pos_embed = embeddings.position_embeddings[:, :1]
    patch_pos_embed = embeddings.position_embeddings[:, 1:]
    dim = patch_embeds.shape[-1]
    patch_size = config.dino_config.patch_size
    grid_h, grid_w = height // patch_size + 0.1, width // patch_size + 0.1
    side = int(math.sqrt(num_positions))
    patch_pos_embed = patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    target_dtype = patch_pos_embed.dtype
    patch_pos_embed = F.interpolate(
        patch_pos_embed.to(torch.float32),
        scale_factor=(float(grid_h / side), float(grid_w / side)),
        mode="bicubic",
        align_corners=False,
    ).to(target_dtype)
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos_embed, patch_pos_embed), dim=1)


def resize_feature_grid(features: torch.Tensor, grid_size: int) -> torch.Tensor:
    """`(frames, side*side, dim)` -> `(frames, grid*grid, dim)`, bilinear in float32 like the reference towers."""
    frames, tokens, dim = features.shape
    side = int(round(tokens**0.5))
    if side == grid_size:
        return features
    grid = features.view(frames, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(grid_size, grid_size), mode="bilinear", align_corners=False)
    return grid.to(features.dtype).permute(0, 2, 3, 1).reshape(frames, grid_size * grid_size, dim)


def join_tower_outputs(outputs: list[BaseModelOutput], stacked_frames: list[tuple[int, list[int]]] | None = None) -> dict:
    """The per-video tower outputs laid out like the pixels given (transformers' mixins compare the first dimension
    with the pixels'): concatenated along the frame dimension, or, for videos given stacked (`stacked_frames`: each
    video's frame count and encoded frames), stacked as `(videos, frames, ...)`, zero on the frames that frame
    selection dropped (they were never encoded)."""

    def place(tensors):
        if stacked_frames is None:
            return torch.cat(tensors)
        rows = []
        for tensor, (num_frames, encoded) in zip(tensors, stacked_frames):
            row = tensor.new_zeros((num_frames, *tensor.shape[1:]))
            row[torch.as_tensor(encoded, dtype=torch.long, device=tensor.device)] = tensor
            rows.append(row)
        return torch.stack(rows)

    def join(values):
        return tuple(map(place, zip(*values))) if values and values[0] is not None else None

    return {
        "last_hidden_state": place([o.last_hidden_state for o in outputs]) if outputs else None,
        "hidden_states": join([o.hidden_states for o in outputs]),
        "attentions": join([o.attentions for o in outputs]),
    }


class LongVUMultiModalProjector(nn.Module):
    """`mm_projector`: Linear(aggregator width -> LLM width), GELU, Linear(LLM width -> LLM width)."""

    def __init__(self, config: LongVUConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.linear_1 = nn.Linear(config.aggregator_hidden_size, hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


def selection_frame_budget(config, select_budget: int) -> int:
    """The frames a video may have before DINOv2 selection runs: the budget in frames of the resolution that
    selection counts (the low-resolution grid on video checkpoints)."""
    # CODEPATH: the released video checkpoints (`highres=True`: Vision-CAIR/LongVU_Qwen2_7B, LongVU_Llama3_2_3B,
    # LongVU_Llama3_2_1B) count frames at the low-resolution grid; stage-1 image checkpoints (`highres=False`) at the
    # full query grid.
    return C.frame_budget(select_budget, config.lowres_grid_size**2 if config.highres else config.num_queries)


def video_token_budgets(text_length: int, num_visual: int, settings: CompressionSettings) -> tuple[int, int]:
    """A video's `(select_budget, splice_budget)` for one prompt: `text_length` (the prompt's real tokens,
    placeholders included) shared by `num_visual` visual items, under resolved `settings` (docs/reference.md §3-§5).
    The one place the arithmetic lives: the model plans each video with it (`plan_video_budget`), front ends check a
    prompt's room with it (`longvu_hf.session.plan_budget`). A splice budget below 1: no room for the video."""
    text_only = text_length - num_visual
    context, margin = settings.max_context_length, settings.context_margin
    if settings.max_visual_tokens is not None:  # as if the context ended right after the cap, per video
        context = min(context, text_only + margin + settings.max_visual_tokens * num_visual)
    return (C.visual_budget(context, text_length, margin) // num_visual,
            C.visual_budget(context, text_only, margin) // num_visual)


def plan_video_budget(config, text_length: int, num_visual: int, settings: CompressionSettings) -> VideoBudget:
    """A video's `VideoBudget` for one prompt (`video_token_budgets`, and the frames at which selection runs)."""
    select_budget, splice_budget = video_token_budgets(text_length, num_visual, settings)
    return VideoBudget(select_budget, splice_budget, selection_frame_budget(config, select_budget))


class LongVUVideoEncoder(nn.Module):
    """LongVU's visual path: towers, DINOv2 frame selection, SVA, projector, budget and compression (see the module
    docstring). `LongVUModel.video_encoder` is one; live video and serving engines call it directly.

    Example:

    ```python
    >>> encoder = model.model.video_encoder               # in a LongVUForConditionalGeneration
    >>> settings = CompressionSettings().resolve(encoder.config)
    >>> budget = encoder.plan(text_length=40, num_visual=1, settings=settings)   # decided once
    >>> encoded, _ = encoder.encode_video(frames, frames_dino, (720, 1280), settings, budget)
    >>> tokens, report = encoder.compress_video(encoded, budget, query_embeds, settings)
    >>> report.path, report.frame_selection_ran == budget.runs_selection(len(frames))
    ```
    """

    def __init__(self, config: LongVUConfig):
        super().__init__()
        self.config = config
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.dino_tower = AutoModel.from_config(config.dino_config)
        self.dino_tower.embeddings.interpolate_pos_encoding = types.MethodType(
            functools.partial(reference_dino_position_interpolation, config), self.dino_tower.embeddings
        )
        # Never used by LongVU (it aggregates SigLIP's last layer before `post_layernorm`, and DINOv2 never masks):
        # frozen, so that they hold no optimizer state and DDP finds no parameter without a gradient.
        self.vision_tower.post_layernorm.requires_grad_(False)
        self.dino_tower.embeddings.mask_token.requires_grad_(False)
        self.vision_aggregator = LongVUVisionAggregator(config)
        self.multi_modal_projector = LongVUMultiModalProjector(config)
        self.image_newline = nn.Parameter(torch.zeros(config.text_config.hidden_size))

    # -- pixels ------------------------------------------------------------------------------------------------------

    def _normalize(self, pixels: torch.Tensor, mean, std, device, dtype) -> torch.Tensor:
        """uint8 pixels are rescaled and normalised here, on the model's device; float pixels are taken as given."""
        if pixels.device.type == "cpu" and torch.device(device).type == "cuda":
            pixels = pixels.pin_memory()  # lets the host-to-device copy of each chunk overlap with compute
        pixels = pixels.to(device, non_blocking=True)
        if pixels.dtype == torch.uint8:
            mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            pixels = (pixels.float() * (1 / 255.0) - mean) / std
        return pixels.to(dtype)

    def check_pixels(self, pixels: torch.Tensor, size: int, name: str) -> None:
        """Refuse (ValueError naming `name`) pixels that are not `(frames, 3, size, size)` of an accepted dtype."""
        check_pixel_values(pixels, name)  # first: it also refuses what is not a tensor (a numpy array)
        if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[-2:] != (size, size):
            raise ValueError(f"`{name}` must have shape (frames, 3, {size}, {size}), got {tuple(pixels.shape)}")

    def split_videos(
        self, pixel_values_videos, pixel_values_videos_dino, video_num_frames=None, video_sizes=None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """Per-video frames (SigLIP and DINOv2) and (height, width) sizes, checked; without `video_sizes`, the
        frames' own size."""
        if pixel_values_videos.ndim == 5:  # (videos, frames, 3, H, W): same length for all
            if video_num_frames is None:
                video_num_frames = torch.full((pixel_values_videos.shape[0],), pixel_values_videos.shape[1])
            pixel_values_videos = pixel_values_videos.flatten(0, 1)
            pixel_values_videos_dino = pixel_values_videos_dino.flatten(0, 1)
        if video_num_frames is None:
            video_num_frames = torch.tensor([pixel_values_videos.shape[0]])
        counts = [int(n) for n in torch.as_tensor(video_num_frames).flatten()]
        if any(n <= 0 for n in counts):
            raise ValueError(f"Every video needs at least one frame, got `video_num_frames`={counts}")
        for name, pixels in (("pixel_values_videos", pixel_values_videos), ("pixel_values_videos_dino", pixel_values_videos_dino)):
            if pixels.shape[0] != sum(counts):
                raise ValueError(
                    f"`{name}` holds {pixels.shape[0]} frames but `video_num_frames` sums to {sum(counts)}"
                )
        self.check_pixels(pixel_values_videos, self.config.vision_config.image_size, "pixel_values_videos")
        self.check_pixels(pixel_values_videos_dino, self.config.dino_image_size, "pixel_values_videos_dino")
        videos, videos_dino = list(pixel_values_videos.split(counts)), list(pixel_values_videos_dino.split(counts))
        if video_sizes is None:
            sizes = [(v.shape[-2], v.shape[-1]) for v in videos]
        else:
            sizes = [tuple(int(x) for x in size) for size in torch.as_tensor(video_sizes).tolist()]
        return videos, videos_dino, sizes

    def tower_output_flags(self, kwargs: dict) -> tuple[bool, bool]:
        """`output_hidden_states`/`output_attentions` for the SigLIP tower: the call's, else the tower config's."""
        vision = self.config.vision_config
        hidden = kwargs.get("output_hidden_states")
        attentions = kwargs.get("output_attentions")
        hidden = vision.output_hidden_states or self.config.output_hidden_states if hidden is None else hidden
        attentions = vision.output_attentions or self.config.output_attentions if attentions is None else attentions
        return bool(hidden), bool(attentions)

    # -- towers ------------------------------------------------------------------------------------------------------

    def siglip_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """SigLIP features of the last encoder layer (before `post_layernorm`), resized to the 24x24 grid."""
        return self.encode_siglip(pixels)[0]

    def encode_siglip(
        self, pixels: torch.Tensor, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> tuple[torch.Tensor, BaseModelOutput]:
        """SigLIP on `pixels` in chunks: the features resized to the 24x24 grid, and the tower's output, whose
        `last_hidden_state` is the last encoder layer (before `post_layernorm`, what LongVU aggregates) on the tower's
        own patch grid, with `hidden_states`/`attentions` of every layer when asked for."""
        tower = self.vision_tower
        last, grids, hidden_states, attentions = [], [], [], []
        for start in range(0, len(pixels), self.config.vision_chunk_size):
            chunk = self._normalize(
                pixels[start : start + self.config.vision_chunk_size],
                self.config.siglip_image_mean,
                self.config.siglip_image_std,
                tower.device,
                tower.dtype,
            )
            if output_hidden_states or output_attentions:
                out = tower(
                    pixel_values=chunk, output_hidden_states=True, output_attentions=output_attentions, return_dict=True
                )
                hidden = out.hidden_states[-1]  # the last layer before `post_layernorm`
                hidden_states.append(out.hidden_states if output_hidden_states else None)
                attentions.append(out.attentions)
            else:
                hidden = tower.encoder(inputs_embeds=tower.embeddings(chunk)).last_hidden_state
            last.append(hidden)
            grids.append(resize_feature_grid(hidden, self.config.encoder_grid_size))
        output = BaseModelOutput(
            last_hidden_state=torch.cat(last),
            hidden_states=tuple(map(torch.cat, zip(*hidden_states))) if output_hidden_states else None,
            attentions=tuple(map(torch.cat, zip(*attentions))) if output_attentions else None,
        )
        return torch.cat(grids), output

    def dino_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """DINOv2 features after the final LayerNorm, CLS dropped, resized to the 24x24 grid."""
        outputs = []
        for start in range(0, len(pixels), self.config.vision_chunk_size):
            outputs.append(self._dino_chunk(pixels[start : start + self.config.vision_chunk_size]))
        return torch.cat(outputs)

    def _dino_chunk(self, pixels: torch.Tensor) -> torch.Tensor:
        tower = self.dino_tower
        chunk = self._normalize(
            pixels, self.config.dino_image_mean, self.config.dino_image_std, tower.device, tower.dtype
        )
        hidden = tower(pixel_values=chunk).last_hidden_state[:, 1:]
        return resize_feature_grid(hidden, self.config.encoder_grid_size)

    def select_video_frames(
        self, pixels_dino: torch.Tensor, frame_budget: int, threshold: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """DINOv2 on every frame in chunks, then temporal reduction when the video exceeds `frame_budget` frames.

        Memory stays bounded on hour-long videos: windows never straddle chunks, each chunk's features are reduced to
        its kept frames at once, and once more frames survive than twice the final cap, the cached features are
        dropped and only the capped frames are re-encoded at the end.
        `threshold` defaults to the config's `dino_threshold`.
        Returns the kept frame indices, their DINO features, and whether the reduction ran.
        """
        num_frames = len(pixels_dino)
        if num_frames < frame_budget:
            return torch.arange(num_frames), self.dino_features(pixels_dino), False
        window = self.config.dino_window_size
        cap = self.config.max_frames_after_selection
        chunk_size = max(window, self.config.vision_chunk_size // window * window)  # whole windows per chunk
        chunks = (self._dino_chunk(pixels_dino[s : s + chunk_size]) for s in range(0, num_frames, chunk_size))
        threshold = self.config.dino_threshold if threshold is None else threshold
        selection = C.select_frames(chunks, threshold, window, cap, max_features_held=2 * cap)
        if selection.features is None:  # too many survivors to hold: re-encode only the capped frames
            return selection.indices, self.dino_features(pixels_dino[selection.indices.to(pixels_dino.device)]), True
        return selection.indices, selection.features, True

    # -- aggregation and projection ----------------------------------------------------------------------------------

    def size_as_reference_reads_it(self, size_hw: tuple[int, int], is_video: bool) -> tuple[int, int]:
        """The reference unpacks sizes as (width, height); it passes (height, width) for videos (a quirk the released
        video checkpoints were trained with) and (width, height) for images."""
        height, width = size_hw
        # CODEPATH: the released video checkpoints (Vision-CAIR/LongVU_Qwen2_7B, LongVU_Llama3_2_3B, LongVU_Llama3_2_1B)
        # were trained with "reference"; "exact" (unpad on the right axis, as the paper intends) is for new training.
        if is_video and self.config.video_size_convention == "reference":
            return (height, width)
        return (width, height)

    def aggregate(self, siglip: torch.Tensor, dino: torch.Tensor, size_wh: tuple[int, int]) -> torch.Tensor:
        """SVA over frames of one video (or one image) in chunks; returns `(frames, num_queries, width)`."""
        grid, query_grid = self.config.encoder_grid_size, self.config.query_grid_size
        content = C.padding_key_mask(grid, size_wh, device=siglip.device)
        window_mask = window_key_mask(content, query_grid)
        key_mask = torch.cat([window_mask, window_mask], dim=-1)
        chunk = self.config.vision_chunk_size
        return torch.cat(
            [
                self.vision_aggregator([siglip[s : s + chunk], dino[s : s + chunk]], key_mask)
                for s in range(0, len(siglip), chunk)
            ]
        )

    def project_frames(self, sva_output: torch.Tensor, size_wh: tuple[int, int], low_res: bool) -> torch.Tensor:
        """Project SVA features to the LLM, unpad and append row newlines; `(frames, tokens, hidden)`.

        With `low_res`, the SVA output is first resized bilinearly (float32, no antialias) to the low-res grid. The
        projector works token by token, so the padding is cut before projecting (the reference projects it too, then
        drops it).
        """
        frames = sva_output.shape[0]
        side = self.config.query_grid_size
        grid = sva_output.view(frames, side, side, -1)
        if low_res:
            low = self.config.lowres_grid_size
            grid = F.interpolate(grid.permute(0, 3, 1, 2).float(), size=(low, low), mode="bilinear", align_corners=False)
            grid = grid.to(sva_output.dtype).permute(0, 2, 3, 1)
            size_wh = C.lowres_original_size(size_wh, side, low)
        projected = self.multi_modal_projector(C.unpad_grid(grid, size_wh))
        return C.add_row_newlines(projected, self.image_newline)

    # -- the budget of a video for a prompt ----------------------------------------------------------------------------

    def _selection_frame_budget(self, select_budget: int) -> int:
        return selection_frame_budget(self.config, select_budget)

    def plan(self, text_length: int, num_visual: int, settings: CompressionSettings) -> VideoBudget:
        """A video's budget for one prompt (`plan_video_budget`), computed once per video, prompt and settings and
        passed to `encode_video` and `compress_video`. Refuses a prompt that leaves no room for the video."""
        budget = plan_video_budget(self.config, text_length, num_visual, settings)
        if budget.splice_budget <= 0:
            raise ValueError(
                f"The prompt alone ({text_length} tokens) leaves no room for the video in the context budget "
                f"of {settings.max_context_length} tokens (margin {settings.context_margin}); shorten the text or "
                "raise `max_context_length`"
            )
        return budget

    def any_prompt_budget(self, settings: CompressionSettings) -> VideoBudget:
        """The budget of the shortest prompt (its placeholder alone) with no per-video cap: the most frames any
        prompt allows under `settings`. A video with at least `selection_frame_budget` frames goes through DINOv2
        selection whatever the question; features encoded for any question (`encode_videos`, live video) use it."""
        select_budget = C.visual_budget(settings.max_context_length, 1, settings.context_margin)
        splice_budget = C.visual_budget(settings.max_context_length, 0, settings.context_margin)
        return VideoBudget(select_budget, splice_budget, self._selection_frame_budget(select_budget))

    # -- videos ------------------------------------------------------------------------------------------------------

    def encode_video(
        self, video: torch.Tensor, video_dino: torch.Tensor, size_hw: tuple[int, int], settings: CompressionSettings,
        budget: VideoBudget | None = None, output_hidden_states: bool = False, output_attentions: bool = False,
    ) -> tuple[EncodedVideo, BaseModelOutput]:
        """The question-independent part of one video: DINOv2 (and selection), SigLIP and the aggregator.

        With the call's `budget` (from `plan`), selection runs as the budget says and only the kept frames go
        through SigLIP. With `budget=None` (features for any question), a video long enough that every prompt
        triggers selection keeps the selected frames; a shorter one keeps every frame and records which ones
        selection would keep."""
        num_frames = len(video)
        for_any_prompt = budget is None
        if for_any_prompt:
            budget = self.any_prompt_budget(settings)
        if budget.runs_selection(num_frames):  # only the selected frames are encoded further
            candidates, dino, _ = self.select_video_frames(video_dino, 0, settings.dino_threshold)
            selected, all_frames_kept = candidates, False
        else:
            candidates, dino = torch.arange(num_frames), self.dino_features(video_dino)
            selected, all_frames_kept = candidates, True
            if for_any_prompt:  # also what selection would keep, for prompts that leave less room
                cfg = self.config
                selected = C.select_frames(
                    dino, settings.dino_threshold, cfg.dino_window_size, cfg.max_frames_after_selection
                ).indices
        siglip, tower_output = self.encode_siglip(
            video[candidates.to(video.device)], output_hidden_states, output_attentions
        )
        sva = self.aggregate(siglip, dino, self.size_as_reference_reads_it(size_hw, is_video=True))
        encoded = EncodedVideo(num_frames, tuple(size_hw), candidates, sva, selected, all_frames_kept)
        return encoded, tower_output

    def compress_video(
        self, encoded: EncodedVideo, budget: VideoBudget, query: torch.Tensor | None, settings: CompressionSettings
    ) -> tuple[torch.Tensor, CompressionReport]:
        """The question-dependent part of one video: which frames are kept (as `budget` says), resolution mixing by
        the `query` (the prompt's text embeddings after its last placeholder; None: the earliest frames keep full
        resolution) or STC. Returns the tokens and the compression report."""
        cfg = self.config
        full_tokens, low_tokens = cfg.num_queries, cfg.lowres_grid_size**2
        select_budget, splice_budget = budget.select_budget, budget.splice_budget
        selection_ran = budget.runs_selection(encoded.num_input_frames)
        kept, sva = encoded.frames_for(selection_ran)
        size_wh = self.size_as_reference_reads_it(encoded.size_hw, is_video=True)
        num_frames = encoded.num_input_frames

        mix_res, _ = C.resolution_flags(len(kept), select_budget, full_tokens, low_tokens)
        use_low = cfg.highres and mix_res
        frames = self.project_frames(sva, size_wh, low_res=use_low)
        visual_len = frames.shape[0] * frames.shape[1]
        path, high_positions, force_remove = "none", None, 0
        tokens_per_frame = [frames.shape[1]] * frames.shape[0]
        if use_low and full_tokens > low_tokens:
            high_per_frame = C.tokens_per_unpadded_frame(cfg.query_grid_size, size_wh)
            num_high = C.num_high_res_frames(splice_budget, visual_len, high_per_frame, frames.shape[1])
            if num_high >= 1:
                if query is None or len(query) == 0:  # no text to rank frames by: the earliest keep full resolution
                    high_positions = torch.arange(min(num_high, frames.shape[0]))
                else:
                    scores = C.query_frame_scores(frames, query.to(frames.device, frames.dtype))
                    high_positions = C.pick_high_res_frames(scores, num_high)
                # Only the upgraded frames are projected at full resolution.
                high = self.project_frames(sva[high_positions.to(sva.device)], size_wh, low_res=False)
                tokens, tokens_per_frame = C.mix_resolutions(high, frames, high_positions)
                path = "mix"
        if path != "mix":
            if splice_budget < visual_len:
                tokens, tokens_per_frame, force_remove = C.spatial_token_compression(
                    frames, settings.stc_threshold, cfg.stc_window_size, splice_budget
                )
                path = "stc"
            else:
                tokens = frames.flatten(0, 1)
        if high_positions is not None:
            high_res = kept[high_positions.cpu()].tolist()
        else:
            high_res = [] if use_low else kept.tolist()
        report = CompressionReport(
            num_input_frames=num_frames,
            kept_frame_indices=kept.tolist(),
            frame_selection_ran=selection_ran,
            high_res_frame_indices=high_res,
            tokens_per_frame=[int(t) for t in tokens_per_frame],
            path=path,
            num_visual_tokens=int(tokens.shape[0]),
            budget=int(splice_budget),
            stc_force_remove=int(force_remove),
        )
        return tokens, report

    # -- the videos of one call -------------------------------------------------------------------------------------

    def videos_of_call(
        self, pixel_values_videos, pixel_values_videos_dino, video_num_frames, video_sizes,
        video_features: LongVUVideoFeatures | None, settings: CompressionSettings,
    ) -> tuple[list[EncodedVideo | None], list[tuple[torch.Tensor, torch.Tensor, tuple[int, int]]]]:
        """A call's videos in placeholder order: one entry per video (its `EncodedVideo`, or None for a video given
        as pixels), and the pixel videos `(frames, DINOv2 frames, (height, width))` for the None entries, checked
        (features from another model or made with settings that cannot serve `settings` are refused)."""
        if video_features is None:
            if pixel_values_videos_dino is None:
                raise ValueError("`pixel_values_videos_dino` is required with `pixel_values_videos`")
            videos = self.split_videos(pixel_values_videos, pixel_values_videos_dino, video_num_frames, video_sizes)
            return [None] * len(videos[0]), list(zip(*videos))
        self.check_features(video_features, settings)
        entries = list(video_features)
        missing = sum(entry is None for entry in entries)
        videos = ([], [], [])
        if missing:
            if pixel_values_videos is None:
                raise ValueError(f"`video_features` leave {missing} video(s) to the pixels, but no `pixel_values_videos`")
            videos = self.split_videos(pixel_values_videos, pixel_values_videos_dino, video_num_frames, video_sizes)
        elif pixel_values_videos is not None:
            raise ValueError("`video_features` cover every video: do not pass `pixel_values_videos` as well")
        if len(videos[0]) != missing:
            raise ValueError(f"`video_features` leave {missing} video(s) to the pixels, which hold {len(videos[0])}")
        return entries, list(zip(*videos))

    def compress_videos(
        self, entries: list[EncodedVideo | None], pixel_videos: list, prompts: list, settings: CompressionSettings,
        output_hidden_states: bool = False, output_attentions: bool = False,
    ) -> tuple[list[torch.Tensor], list[CompressionReport], list[BaseModelOutput], list[tuple[int, list[int]]]]:
        """Each video of a call for its prompt (`prompts[i]`: a `VisualItemPrompt`): its budget planned
        once, the towers run on the pixel videos (the None entries, in order), then the compression. Returns the
        tokens and reports of every video, and the tower outputs and (frame count, encoded frames) of the pixel
        videos."""
        pixels = iter(pixel_videos)
        features, reports, tower_outputs, encoded_frames = [], [], [], []
        for encoded, prompt in zip(entries, prompts):
            budget = self.plan(prompt.text_length, prompt.num_visual, settings)  # before the towers run
            num_frames = None
            if encoded is None:
                video, video_dino, size_hw = next(pixels)
                encoded, tower_output = self.encode_video(
                    video, video_dino, size_hw, settings, budget, output_hidden_states, output_attentions
                )
                tower_outputs.append(tower_output)
                num_frames = len(video)
            tokens, report = self.compress_video(encoded, budget, prompt.query, settings)
            if num_frames is not None:  # the encoded frames of a video are the ones its report keeps
                encoded_frames.append((num_frames, report.kept_frame_indices))
            features.append(tokens)
            reports.append(report)
        return features, reports, tower_outputs, encoded_frames

    # -- videos encoded once -----------------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """What encoded features made by this encoder are checked against (see `video_features.model_fingerprint`)."""
        return model_fingerprint(self)

    @torch.no_grad()
    def encode_videos(
        self, pixel_values_videos: torch.Tensor, pixel_values_videos_dino: torch.Tensor,
        video_num_frames: torch.Tensor | None = None, video_sizes: torch.Tensor | None = None,
        compression_settings: CompressionSettings | dict | None = None,
    ) -> LongVUVideoFeatures:
        """Encode videos once for any question (`LongVUModel.encode_videos`)."""
        settings = CompressionSettings.from_value(compression_settings).resolve(self.config)
        videos, videos_dino, sizes = self.split_videos(
            pixel_values_videos, pixel_values_videos_dino, video_num_frames, video_sizes
        )
        encoded = [
            self.encode_video(video, video_dino, size_hw, settings)[0]
            for video, video_dino, size_hw in zip(videos, videos_dino, sizes)
        ]
        return LongVUVideoFeatures(encoded, fingerprint=self.fingerprint(), settings=encoding_settings(settings))

    def check_features(self, video_features: LongVUVideoFeatures, settings: CompressionSettings) -> None:
        """Refuse (ValueError) features made by another model, with another aggregator geometry, or with settings
        that cannot serve this call's."""
        if not isinstance(video_features, LongVUVideoFeatures):
            raise ValueError(f"`video_features` must come from `encode_videos`, got {type(video_features).__name__}")
        if video_features.fingerprint != self.fingerprint():
            raise ValueError(
                "`video_features` were encoded by another model (its config or its tower/aggregator weights differ): "
                "encode the videos again with this model"
            )
        # A features file checks itself on load; only the model knows the aggregator's output geometry.
        video_features.check_geometry(
            self.config.num_queries, self.config.aggregator_hidden_size, next(self.vision_aggregator.parameters()).dtype
        )
        problems = settings_difference(video_features.settings, encoding_settings(settings))
        if problems:
            raise ValueError(
                f"`video_features` were encoded with {'; '.join(problems)}: encode the videos again with this call's "
                "compression settings"
            )

    def start_live_video(
        self, video_size: tuple[int, int], compression_settings: CompressionSettings | dict | None = None
    ) -> LongVULiveVideo:
        """A video that arrives in chunks (`LongVUModel.start_live_video`)."""
        settings = CompressionSettings.from_value(compression_settings).resolve(self.config)
        return LongVULiveVideo(self, video_size, settings)

    def encode_video_stream(
        self, chunks, video_size: tuple[int, int] | None = None,
        compression_settings: CompressionSettings | dict | None = None,
    ) -> LongVUVideoFeatures:
        """One video given as chunks of frames (`LongVUModel.encode_video_stream`)."""
        return encode_video_stream(self, chunks, video_size, compression_settings)

    # -- images ------------------------------------------------------------------------------------------------------

    def encode_images(
        self, pixel_values: torch.Tensor, pixel_values_dino: torch.Tensor | None, image_sizes: torch.Tensor | None = None,
        output_hidden_states: bool = False, output_attentions: bool = False,
    ) -> tuple[list[torch.Tensor], list[ImageCompressionReport], BaseModelOutput]:
        """Images (no temporal or token compression): the full grid on image checkpoints, the low-resolution grid on
        video checkpoints (`highres=True`), as the reference does. Returns one `(tokens_i, hidden_size)` tensor and
        one report per image, and the SigLIP tower's output."""
        if pixel_values_dino is None:
            raise ValueError("`pixel_values_dino` is required with `pixel_values`")
        self.check_pixels(pixel_values, self.config.vision_config.image_size, "pixel_values")
        self.check_pixels(pixel_values_dino, self.config.dino_image_size, "pixel_values_dino")
        if pixel_values.shape[0] != pixel_values_dino.shape[0]:
            raise ValueError("`pixel_values` and `pixel_values_dino` must hold the same number of images")
        if image_sizes is None:
            image_sizes = torch.tensor([[pixel_values.shape[-2], pixel_values.shape[-1]]] * len(pixel_values))
        siglip, tower_output = self.encode_siglip(pixel_values, output_hidden_states, output_attentions)
        dino = self.dino_features(pixel_values_dino)
        features, reports = [], []
        for i, size_hw in enumerate(image_sizes.tolist()):
            size_wh = self.size_as_reference_reads_it(tuple(size_hw), is_video=False)
            sva = self.aggregate(siglip[i : i + 1], dino[i : i + 1], size_wh)
            tokens = self.project_frames(sva, size_wh, low_res=self.config.highres)[0]
            features.append(tokens)
            reports.append(ImageCompressionReport(num_visual_tokens=int(tokens.shape[0]), low_res=bool(self.config.highres)))
        return features, reports, tower_output


__all__ = ["LongVUVideoEncoder", "call_settings", "check_pixel_values", "longvu_key_renaming"]
