"""LongVU configuration."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto import CONFIG_MAPPING

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


class LongVUConfig(PreTrainedConfig):
    r"""
    Configuration of a LongVU model: a SigLIP tower, a DINOv2 tower, the Spatial Vision Aggregator (SVA), a projector and
    a Qwen2 or Llama language model, plus every knob of LongVU's spatiotemporal compression.

    The defaults are those of the released video checkpoint `Vision-CAIR/LongVU_Qwen2_7B`, quirks of the official code
    included (see `docs/reference.md`); each quirk is a named field whose documented alternative follows the paper.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*): the LLM (Qwen2 or Llama).
        vision_config (`dict` or `PreTrainedConfig`, *optional*): the SigLIP vision tower (384 px, patch 14).
        dino_config (`dict` or `PreTrainedConfig`, *optional*): the DINOv2 tower (run at `dino_image_size`).
        video_token_index (`int`): id of the one placeholder token written per video.
        image_token_index (`int`): id of the one placeholder token written per image.
        dino_image_size (`int`): input size of the DINOv2 tower (378).
        encoder_grid_size (`int`): both towers' 27x27 patch grids are resized bilinearly to this grid (24).
        aggregator_hidden_size (`int`): SVA width (1024).
        aggregator_num_layers (`int`): SVA cross-attention layers (3).
        aggregator_num_heads (`int`): SVA attention heads (16).
        num_queries (`int`): SVA queries (= visual tokens before newlines) per frame: 144 for video checkpoints, 576 for
            image (`_img`) checkpoints.
        highres (`bool`): enables the low-resolution copy and the query-based high/low resolution mixing (video
            checkpoints). On a video checkpoint a single image then takes the low-resolution path, as in the reference.
        lowres_grid_size (`int`): side of the low-resolution grid (8, i.e. 64 tokens per frame).
        dino_threshold (`float`): frames whose mean DINOv2 cosine similarity to their window is >= this are dropped (0.83).
        dino_window_size (`int`): frames per DINO window (16 in the code; the paper describes 8). The middle frame of
            every window is always kept.
        max_frames_after_selection (`int`): hard cap on the frames kept by DINO selection (400, uniform subsampling).
        stc_window_size (`int`): frames per spatial token compression chunk (8); the first frame is the anchor.
        stc_threshold (`float`): tokens whose cosine similarity to the anchor's token at the same position is >= this
            are dropped (0.7 in `LongVU_Qwen2_7B`, 0.8 in the Llama releases and training; the paper quotes 0.75).
        max_context_length (`int`): the LLM context budget the compression fits the sequence into (8192,
            `tokenizer_model_max_length` in the official config).
        context_margin (`int`): tokens left free for the answer (16, `inference_max_length`).
        video_size_convention (`str`): `"reference"` reproduces the official code, which passes a video's (height,
            width) where (width, height) is expected, so a landscape video is unpadded on the wrong axis (the released
            video checkpoints were trained that way). `"exact"` unpads on the right axis, as the paper intends.
        dino_position_interpolation (`str`): `"reference"` interpolates DINOv2's position embeddings as transformers
            4.42 did (bicubic with `scale_factor=(grid + 0.1) / 37`), which is what the checkpoints saw; `"exact"` uses
            current transformers (`size=grid`).
        vision_chunk_size (`int`): frames per tower forward pass (bounds activation memory on long videos).
        siglip_image_mean, siglip_image_std, dino_image_mean, dino_image_std (`list[float]`): normalisation applied on
            the model's device to uint8 pixel inputs.

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

    def __init__(
        self,
        text_config=None,
        vision_config=None,
        dino_config=None,
        video_token_index: int = 151656,
        image_token_index: int = 151655,
        dino_image_size: int = 378,
        encoder_grid_size: int = 24,
        aggregator_hidden_size: int = 1024,
        aggregator_num_layers: int = 3,
        aggregator_num_heads: int = 16,
        num_queries: int = 144,
        highres: bool = True,
        lowres_grid_size: int = 8,
        dino_threshold: float = 0.83,
        dino_window_size: int = 16,
        max_frames_after_selection: int = 400,
        stc_window_size: int = 8,
        stc_threshold: float = 0.7,
        max_context_length: int = 8192,
        context_margin: int = 16,
        video_size_convention: str = "reference",
        dino_position_interpolation: str = "reference",
        vision_chunk_size: int = 64,
        siglip_image_mean=SIGLIP_IMAGE_MEAN,
        siglip_image_std=SIGLIP_IMAGE_STD,
        dino_image_mean=DINO_IMAGE_MEAN,
        dino_image_std=DINO_IMAGE_STD,
        tie_word_embeddings: bool | None = None,
        **kwargs,
    ):
        self.text_config = _build_sub_config(text_config, _default_text_config())
        self.vision_config = _build_sub_config(vision_config, _default_vision_config())
        self.dino_config = _build_sub_config(dino_config, _default_dino_config())
        # The SigLIP MAP head is never used by LongVU: do not build dead parameters.
        self.vision_config.vision_use_head = False

        if video_size_convention not in VIDEO_SIZE_CONVENTIONS:
            raise ValueError(f"video_size_convention must be one of {VIDEO_SIZE_CONVENTIONS}, got {video_size_convention!r}")
        if dino_position_interpolation not in DINO_POSITION_INTERPOLATIONS:
            raise ValueError(
                f"dino_position_interpolation must be one of {DINO_POSITION_INTERPOLATIONS}, got "
                f"{dino_position_interpolation!r}"
            )
        query_side = int(round(num_queries**0.5))
        if query_side * query_side != num_queries or encoder_grid_size % query_side != 0:
            raise ValueError(
                f"num_queries={num_queries} must be a square whose side divides encoder_grid_size={encoder_grid_size}"
            )
        if aggregator_hidden_size % aggregator_num_heads != 0:
            raise ValueError("aggregator_hidden_size must be divisible by aggregator_num_heads")

        self.video_token_index = video_token_index
        self.image_token_index = image_token_index
        self.dino_image_size = dino_image_size
        self.encoder_grid_size = encoder_grid_size
        self.aggregator_hidden_size = aggregator_hidden_size
        self.aggregator_num_layers = aggregator_num_layers
        self.aggregator_num_heads = aggregator_num_heads
        self.num_queries = num_queries
        self.highres = highres
        self.lowres_grid_size = lowres_grid_size
        self.dino_threshold = dino_threshold
        self.dino_window_size = dino_window_size
        self.max_frames_after_selection = max_frames_after_selection
        self.stc_window_size = stc_window_size
        self.stc_threshold = stc_threshold
        self.max_context_length = max_context_length
        self.context_margin = context_margin
        self.video_size_convention = video_size_convention
        self.dino_position_interpolation = dino_position_interpolation
        self.vision_chunk_size = vision_chunk_size
        self.siglip_image_mean = list(siglip_image_mean)
        self.siglip_image_std = list(siglip_image_std)
        self.dino_image_mean = list(dino_image_mean)
        self.dino_image_std = list(dino_image_std)
        if tie_word_embeddings is None:
            tie_word_embeddings = getattr(self.text_config, "tie_word_embeddings", False)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """`PreTrainedConfig.save_pretrained`, plus the flat remote code and `auto_map`s that let the folder load with
        `trust_remote_code=True` where longvu-hf is not installed (`remote_code.py`). `model.save_pretrained` and the
        Trainer's checkpoints come through here."""
        from .remote_code import MODEL_AUTO_MAP, save_with_remote_code

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
