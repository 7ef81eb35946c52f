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
"""LongVU configuration (`LongVUConfig`) and the per-call compression settings (`CompressionSettings`).

It sits beside `modeling_longvu.py`, as in a transformers model folder; `longvu_hf.configuration_longvu` re-exports it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto import CONFIG_MAPPING
from transformers.utils import auto_docstring

SIGLIP_IMAGE_MEAN = (0.5, 0.5, 0.5)
SIGLIP_IMAGE_STD = (0.5, 0.5, 0.5)
DINO_IMAGE_MEAN = (0.485, 0.456, 0.406)
DINO_IMAGE_STD = (0.229, 0.224, 0.225)

VIDEO_SIZE_CONVENTIONS = ("reference", "exact")
DINO_POSITION_INTERPOLATIONS = ("reference", "exact")


def _default_vision_config() -> dict:
    # google/siglip-so400m-patch14-384, vision part only (the MAP head is unused by LongVU).
    return {
        "model_type": "siglip_vision_model",
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 384,
        "patch_size": 14,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vision_use_head": False,
    }


def _default_dino_config() -> dict:
    # facebook/dinov2-giant (trained at 518 px, run at 378 px by LongVU).
    return {
        "model_type": "dinov2",
        "hidden_size": 1536,
        "num_hidden_layers": 40,
        "num_attention_heads": 24,
        "mlp_ratio": 4,
        "use_swiglu_ffn": True,
        "image_size": 518,
        "patch_size": 14,
        "layer_norm_eps": 1e-6,
    }


def _default_text_config() -> dict:
    # Qwen2-7B-Instruct, as in Vision-CAIR/LongVU_Qwen2_7B.
    return {
        "model_type": "qwen2",
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    }


def _build_sub_config(value, default: dict) -> PreTrainedConfig:
    if value is None:
        value = default
    if isinstance(value, PreTrainedConfig):
        return value
    value = dict(value)
    model_type = value.pop("model_type", default["model_type"])
    return CONFIG_MAPPING[model_type](**value)


@auto_docstring(
    custom_intro="""
    Configuration of a LongVU model: a SigLIP tower, a DINOv2 tower, the Spatial Vision Aggregator (SVA), a projector
    and a Qwen2 or Llama language model, plus every knob of LongVU's spatiotemporal compression.

    The defaults are those of the released video checkpoint `Vision-CAIR/LongVU_Qwen2_7B`, quirks of the official code
    included (see `docs/reference.md`); each quirk is a named field whose documented alternative follows the paper.
    """,
    checkpoint="Vision-CAIR/LongVU_Qwen2_7B",
)
@strict
class LongVUConfig(PreTrainedConfig):
    r"""
    text_config (`dict` or `PreTrainedConfig`, *optional*):
        The LLM (Qwen2 or Llama); Qwen2-7B-Instruct by default.
    vision_config (`dict` or `PreTrainedConfig`, *optional*):
        The SigLIP vision tower (384 px, patch 14); google/siglip-so400m-patch14-384 by default.
    dino_config (`dict` or `PreTrainedConfig`, *optional*):
        The DINOv2 tower (run at `dino_image_size`); facebook/dinov2-giant by default.
    video_token_index (`int`, *optional*, defaults to 151656):
        Id of the one placeholder token written per video.
    image_token_index (`int`, *optional*, defaults to 151655):
        Id of the one placeholder token written per image.
    dino_image_size (`int`, *optional*, defaults to 378):
        Input size of the DINOv2 tower.
    encoder_grid_size (`int`, *optional*, defaults to 24):
        Both towers' 27x27 patch grids are resized bilinearly to this grid.
    aggregator_hidden_size (`int`, *optional*, defaults to 1024):
        SVA width.
    aggregator_num_layers (`int`, *optional*, defaults to 3):
        SVA cross-attention layers.
    aggregator_num_heads (`int`, *optional*, defaults to 16):
        SVA attention heads.
    num_queries (`int`, *optional*, defaults to 144):
        SVA queries (= visual tokens before newlines) per frame: 144 for video checkpoints, 576 for image (`_img`)
        checkpoints.
    highres (`bool`, *optional*, defaults to `True`):
        Enables the low-resolution copy and the query-based high/low resolution mixing (video checkpoints). On a video
        checkpoint a single image then takes the low-resolution path, as in the reference.
    lowres_grid_size (`int`, *optional*, defaults to 8):
        Side of the low-resolution grid (8, i.e. 64 tokens per frame).
    dino_threshold (`float`, *optional*, defaults to 0.83):
        Frames whose mean DINOv2 cosine similarity to their window is >= this are dropped.
    dino_window_size (`int`, *optional*, defaults to 16):
        Frames per DINO window (16 in the code; the paper describes 8). The middle frame of every window is always
        kept.
    max_frames_after_selection (`int`, *optional*, defaults to 400):
        Hard cap on the frames kept by DINO selection (uniform subsampling).
    stc_window_size (`int`, *optional*, defaults to 8):
        Frames per spatial token compression chunk; the first frame is the anchor.
    stc_threshold (`float`, *optional*, defaults to 0.7):
        Tokens whose cosine similarity to the anchor's token at the same position is >= this are dropped (0.7 in
        `LongVU_Qwen2_7B`, 0.8 in the Llama releases and training; the paper quotes 0.75).
    max_context_length (`int`, *optional*, defaults to 8192):
        The LLM context budget the compression fits the sequence into (`tokenizer_model_max_length` in the official
        config).
    context_margin (`int`, *optional*, defaults to 16):
        Tokens left free for the answer (`inference_max_length`).
    video_size_convention (`str`, *optional*, defaults to `"reference"`):
        `"reference"` reproduces the official code, which passes a video's (height, width) where (width, height) is
        expected, so a landscape video is unpadded on the wrong axis (the released video checkpoints were trained that
        way). `"exact"` unpads on the right axis, as the paper intends.
    dino_position_interpolation (`str`, *optional*, defaults to `"reference"`):
        `"reference"` interpolates DINOv2's position embeddings as transformers 4.42 did (bicubic with
        `scale_factor=(grid + 0.1) / 37`), which is what the checkpoints saw; `"exact"` uses current transformers
        (`size=grid`).
    vision_chunk_size (`int`, *optional*, defaults to 64):
        Frames per tower forward pass (bounds activation memory on long videos).
    siglip_image_mean (`list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`):
        SigLIP's normalisation mean, applied on the model's device to uint8 pixel inputs.
    siglip_image_std (`list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`):
        SigLIP's normalisation std.
    dino_image_mean (`list[float]`, *optional*, defaults to the ImageNet mean):
        DINOv2's normalisation mean.
    dino_image_std (`list[float]`, *optional*, defaults to the ImageNet std):
        DINOv2's normalisation std.
    tie_word_embeddings (`bool`, *optional*):
        Whether the LM head shares the input embeddings; by default, what the text config says (`False` for every
        released checkpoint).

    Example:

    ```python
    >>> from longvu_hf import LongVUConfig, LongVUForConditionalGeneration
    >>> config = LongVUConfig()  # the Qwen2-7B video release
    >>> config.stc_threshold, config.max_context_length
    (0.7, 8192)
    ```
    """

    model_type = "longvu"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig, "dino_config": AutoConfig}
    attribute_map = {"video_token_id": "video_token_index", "image_token_id": "image_token_index"}

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    dino_config: dict | PreTrainedConfig | None = None
    video_token_index: int = 151656
    image_token_index: int = 151655
    dino_image_size: int = 378
    encoder_grid_size: int = 24
    aggregator_hidden_size: int = 1024
    aggregator_num_layers: int = 3
    aggregator_num_heads: int = 16
    num_queries: int = 144
    highres: bool = True
    lowres_grid_size: int = 8
    # Thresholds also take an int (0 or 1), as they did before the config became a strict dataclass.
    dino_threshold: float | int = 0.83
    dino_window_size: int = 16
    max_frames_after_selection: int = 400
    stc_window_size: int = 8
    stc_threshold: float | int = 0.7
    max_context_length: int = 8192
    context_margin: int = 16
    video_size_convention: str = "reference"
    dino_position_interpolation: str = "reference"
    vision_chunk_size: int = 64
    siglip_image_mean: list[float] | tuple[float, ...] = SIGLIP_IMAGE_MEAN
    siglip_image_std: list[float] | tuple[float, ...] = SIGLIP_IMAGE_STD
    dino_image_mean: list[float] | tuple[float, ...] = DINO_IMAGE_MEAN
    dino_image_std: list[float] | tuple[float, ...] = DINO_IMAGE_STD
    tie_word_embeddings: bool | None = None

    def __post_init__(self, **kwargs):
        self.text_config = _build_sub_config(self.text_config, _default_text_config())
        self.vision_config = _build_sub_config(self.vision_config, _default_vision_config())
        self.dino_config = _build_sub_config(self.dino_config, _default_dino_config())
        # The SigLIP MAP head is never used by LongVU: do not build dead parameters.
        self.vision_config.vision_use_head = False

        if self.video_size_convention not in VIDEO_SIZE_CONVENTIONS:
            raise ValueError(
                f"video_size_convention must be one of {VIDEO_SIZE_CONVENTIONS}, got {self.video_size_convention!r}"
            )
        if self.dino_position_interpolation not in DINO_POSITION_INTERPOLATIONS:
            raise ValueError(
                f"dino_position_interpolation must be one of {DINO_POSITION_INTERPOLATIONS}, got "
                f"{self.dino_position_interpolation!r}"
            )
        query_side = int(round(self.num_queries**0.5))
        if query_side * query_side != self.num_queries or self.encoder_grid_size % query_side != 0:
            raise ValueError(
                f"num_queries={self.num_queries} must be a square whose side divides "
                f"encoder_grid_size={self.encoder_grid_size}"
            )
        if self.aggregator_hidden_size % self.aggregator_num_heads != 0:
            raise ValueError("aggregator_hidden_size must be divisible by aggregator_num_heads")

        # Lists, as they are saved to and read back from `config.json`.
        for name in ("siglip_image_mean", "siglip_image_std", "dino_image_mean", "dino_image_std"):
            setattr(self, name, list(getattr(self, name)))
        if self.tie_word_embeddings is None:
            self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        super().__post_init__(**kwargs)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """`PreTrainedConfig.save_pretrained`, plus the flat remote code and `auto_map`s that let the folder load with
        `trust_remote_code=True` where longvu-hf is not installed (`remote_code.py`). `model.save_pretrained` and the
        Trainer's checkpoints come through here."""
        from ..remote_code import MODEL_AUTO_MAP, save_with_remote_code

        # On the object too, as transformers' `custom_object_save` does: what is saved equals what is loaded back.
        self.auto_map = {**(getattr(self, "auto_map", None) or {}), **MODEL_AUTO_MAP}
        return save_with_remote_code(super().save_pretrained, save_directory, push_to_hub, kwargs)

    @property
    def query_grid_size(self) -> int:
        """Side of the SVA query grid: 12 for 144 queries, 24 for 576."""
        return int(round(self.num_queries**0.5))


@dataclass(frozen=True)
class CompressionSettings:
    """Per-call settings of LongVU's compression. A field left None takes the model config's value; the config itself
    is never changed, so calls with different settings do not affect each other (or other threads).

    - `max_context_length`, `context_margin`: the context the prompt and the video are fitted into, and the tokens
      kept free after them;
    - `max_visual_tokens`: an upper bound on each video's tokens (frame selection, resolution mixing and STC then work
      as if the context left exactly that many);
    - `dino_threshold`, `stc_threshold`: the frame-selection and token-compression thresholds (the official benchmark
      scripts set them per benchmark).

    Example:

    ```python
    >>> out = model.generate(**inputs, max_new_tokens=64,
    ...                      compression_settings={"max_context_length": 4096, "stc_threshold": 0.65})
    >>> out = model.generate(**inputs, compression_settings=CompressionSettings(max_visual_tokens=2000))
    ```
    """

    max_context_length: int | None = None
    context_margin: int | None = None
    max_visual_tokens: int | None = None
    dino_threshold: float | None = None
    stc_threshold: float | None = None

    @classmethod
    def from_value(cls, value: CompressionSettings | dict | None, **overrides: Any) -> CompressionSettings:
        """A `CompressionSettings` from one, a dict of its fields or None; `overrides` that are not None win."""
        if value is None:
            value = cls()
        elif isinstance(value, dict):
            unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(
                    f"`compression_settings` has unknown field(s) {unknown}; known: "
                    f"{[f.name for f in dataclasses.fields(cls)]}"
                )
            value = cls(**value)
        elif not isinstance(value, cls):
            raise ValueError(f"`compression_settings` must be a CompressionSettings or a dict, got {type(value).__name__}")
        return dataclasses.replace(value, **{k: v for k, v in overrides.items() if v is not None})

    def resolve(self, config: LongVUConfig) -> CompressionSettings:
        """Every field filled (from `config` where None; `max_visual_tokens` stays None: no cap) and checked."""
        filled = {
            f.name: getattr(config, f.name) if getattr(self, f.name) is None else getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "max_visual_tokens"
        }
        settings = CompressionSettings(**filled, max_visual_tokens=self.max_visual_tokens)
        if settings.max_context_length < 1:
            raise ValueError(f"`max_context_length` must be a positive number of tokens, got {settings.max_context_length}")
        if settings.context_margin < 0:
            raise ValueError(f"`context_margin` must be 0 or more, got {settings.context_margin}")
        if settings.max_visual_tokens is not None and settings.max_visual_tokens < 1:
            raise ValueError(f"`max_visual_tokens` must be at least 1, got {settings.max_visual_tokens}")
        return settings


__all__ = ["CompressionSettings", "LongVUConfig"]
