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
"""LongVU model: SigLIP + DINOv2 towers, Spatial Vision Aggregator, projector, compression, and a Qwen2/Llama LLM.

The processor writes ONE placeholder token per video or image; the model encodes and compresses the visual input
(the count depends on the content and the prompt) and expands each placeholder to the compressed token count before
the LLM. `generate()` encodes once, expands, and hands the features to the standard `GenerationMixin.generate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import auto_docstring
from transformers.utils.generic import can_return_tuple

from .compression_report import CompressionReports
from .configuration_longvu import CompressionSettings, LongVUConfig
from ..transformers_compat import (
    CACHE_NAME,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
    accepts_cache_argument,
    cache_kwargs,
    cache_of,
)
from .aggregator import LongVUVisionAggregator
from .live_video import LongVULiveVideo
from .placeholder_expansion import (
    PromptExpansion,
    expand_placeholders,
    expansion_of_cache,
    merge_visual_features,
    prompt_layout,
    remember_cache_expansion,
)
from .video_encoder import (
    ENCODER_MODULES,
    LEGACY_KEY_MAPPING,
    LongVUVideoEncoder,
    call_settings,
    join_tower_outputs,
    register_longvu_key_renaming,
)
from .video_features import LongVUVideoFeatures

VISUAL_INPUT_NAMES = (
    "pixel_values",
    "pixel_values_dino",
    "image_sizes",
    "pixel_values_videos",
    "pixel_values_videos_dino",
    "video_num_frames",
    "video_sizes",
    "video_features",
)



def check_input_ids(input_ids: torch.Tensor | None) -> None:
    if input_ids is not None and (input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool):
        raise ValueError(f"`input_ids` must hold integer token ids, got dtype {input_ids.dtype}")


@auto_docstring(
    custom_intro="""
    Output of `get_video_features` / `get_image_features`: the SigLIP tower's outputs on the frames that were encoded,
    and the compressed features of every video (or image).
    """
)
@dataclass
class LongVUVisualFeaturesOutput(BaseModelOutputWithPooling):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(frames, patches, vision_hidden_size)`):
        The SigLIP tower's last layer (before `post_layernorm`, what LongVU aggregates) on the frames that were
        encoded, laid out like the pixels given: for frames concatenated (`(total_frames, 3, H, W)`, the processor's
        layout) the kept frames of every video in order (or every image); for videos stacked (`(videos, frames, 3, H,
        W)`) `(videos, frames, patches, vision_hidden_size)`, with zeros on the frames that DINOv2 frame selection
        dropped (never encoded; `compression[i].kept_frame_indices` lists the encoded ones).
    pooler_output (`list[torch.FloatTensor]`):
        One `(num_tokens_i, hidden_size)` tensor per video (or image), compressed and ready to replace that item's
        placeholder.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The SigLIP tower's embeddings and the output of each of its layers, laid out like `last_hidden_state`.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
        The SigLIP tower's attention weights of each layer, laid out like `last_hidden_state`.
    compression (`CompressionReports`, *optional*):
        One report per item (its fields: see `CompressionReports`).
    """

    compression: CompressionReports | None = None


@auto_docstring(
    custom_intro="""
    Output of `LongVUModel.forward`: transformers' multimodal output plus LongVU's own fields; the hidden states cover
    the expanded sequence.
    """
)
@dataclass
class LongVUModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    r"""
    image_outputs (`LongVUVisualFeaturesOutput`, *optional*):
        What `get_image_features` returned for this call's images; `None` without images.
    video_outputs (`LongVUVisualFeaturesOutput`, *optional*):
        What `get_video_features` returned for this call's videos; `None` without videos.
    audio_outputs (`BaseModelOutputWithPooling`, *optional*):
        Always `None`: LongVU takes no audio.
    attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
        The attention mask of the sequence the language model saw: the expanded one when placeholders were expanded.
    labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
        The labels for that sequence (-100 on the visual tokens).
    compression (`CompressionReports`, *optional*):
        One report per video (its fields: see `CompressionReports`).
    image_compression (`CompressionReports`, *optional*):
        One report per image.
    """

    attention_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    compression: CompressionReports | None = None
    image_compression: CompressionReports | None = None


@auto_docstring(
    custom_intro="""
    Output of `LongVUForConditionalGeneration.forward`: transformers' multimodal causal-LM output plus LongVU's own
    fields; `logits` cover the expanded sequence.
    """
)
@dataclass
class LongVUCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    r"""
    image_outputs (`LongVUVisualFeaturesOutput`, *optional*):
        What `get_image_features` returned for this call's images; `None` without images.
    video_outputs (`LongVUVisualFeaturesOutput`, *optional*):
        What `get_video_features` returned for this call's videos; `None` without videos.
    audio_outputs (`BaseModelOutputWithPooling`, *optional*):
        Always `None`: LongVU takes no audio.
    attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
        The attention mask of the sequence the language model saw: the expanded one when placeholders were expanded.
    labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
        The labels for that sequence (-100 on the visual tokens).
    compression (`CompressionReports`, *optional*):
        One report per video (its fields: see `CompressionReports`).
    image_compression (`CompressionReports`, *optional*):
        One report per image.
    """

    attention_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    compression: CompressionReports | None = None
    image_compression: CompressionReports | None = None


# The arguments both `forward`s take beyond transformers' standard ones (`auto_docstring` documents those).
LONGVU_FORWARD_ARGS = r"""
    cache (`Cache`, *optional*):
        The key-value cache of an earlier call (`past_key_values` on transformers releases before 5.24).
    labels (`torch.LongTensor`, *optional*):
        Language-modelling labels, for the prompt as written (the model sets -100 on the expanded visual tokens) or
        already for the expanded sequence.
    pixel_values (`torch.Tensor` of shape `(images, 3, height, width)`, *optional*):
        SigLIP's pixels of every image (see `get_image_features`).
    pixel_values_dino (`torch.Tensor` of shape `(images, 3, dino_height, dino_width)`, *optional*):
        DINOv2's pixels of the same images.
    image_sizes (`torch.LongTensor` of shape `(images, 2)`, *optional*):
        The (height, width) of each source image.
    pixel_values_videos (`torch.Tensor` of shape `(total_frames, 3, H, W)`, *optional*):
        SigLIP's pixels of every video's frames (see `get_video_features`); the prompt is then as written, one
        placeholder per video, and is expanded here.
    pixel_values_videos_dino (`torch.Tensor` of shape `(total_frames, 3, dino_H, dino_W)`, *optional*):
        DINOv2's pixels of the same frames.
    video_num_frames (`torch.LongTensor` of shape `(videos,)`, *optional*):
        The frames of each video.
    video_sizes (`torch.LongTensor` of shape `(videos, 2)`, *optional*):
        The (height, width) of each source video.
    mm_encoder_outputs (`dict`, *optional*):
        `{"video": ..., "image": ...}` from `encode_visual_inputs`, in place of the pixels, with the prompt already
        expanded (`expand_inputs`): what `generate` passes after encoding and expanding once.
    max_visual_tokens (`int`, *optional*):
        Deprecated: `compression_settings=CompressionSettings(max_visual_tokens=...)`, the cap on each video's tokens.
    compression_settings (`CompressionSettings` or `dict`, *optional*):
        Budget, per-video cap and thresholds for this call only.
    video_features (`LongVUVideoFeatures`, *optional*):
        Videos encoded by `encode_videos`, in place of their pixels.
"""


# Checkpoints keep the first releases' key names (`model.vision_tower.*`, ...); see `video_encoder.longvu_key_renaming`.
register_longvu_key_renaming()


@auto_docstring
class LongVUPreTrainedModel(PreTrainedModel):
    config: LongVUConfig
    config_class = LongVUConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["LongVUAggregatorLayer"]
    _skip_keys_device_placement = [CACHE_NAME]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LongVUVideoEncoder):
            init.normal_(module.image_newline, mean=0.0, std=1 / math.sqrt(self.config.text_config.hidden_size))
        elif isinstance(module, LongVUVisionAggregator):
            init.normal_(module.query, mean=0.0, std=1 / math.sqrt(self.config.aggregator_hidden_size))
        elif isinstance(module, nn.ParameterList):
            # The SVA window position embeddings (`LongVUAggregatorLayer.pos_embeds`), randn in the reference.
            # Matched on the list itself: loading skips modules whose own parameters are all loaded, and the layer
            # owns none directly, so a 576 -> 144 query switch would otherwise leave them uninitialised.
            for pos_embed in module:
                init.normal_(pos_embed, mean=0.0, std=1.0)


def _load_first_release_key_names(module, state_dict, prefix, *args) -> None:
    """A `load_state_dict` pre-hook of `LongVUModel`: keys saved as the first releases (and `save_pretrained`) write
    them, `<prefix>vision_tower.*` and the other `ENCODER_MODULES`, are renamed to `<prefix>video_encoder.*`."""
    for key in [key for key in state_dict if key.startswith(prefix)]:
        first = key[len(prefix) :].split(".", 1)[0]
        if first in ENCODER_MODULES:
            state_dict[f"{prefix}video_encoder.{key[len(prefix):]}"] = state_dict.pop(key)


@auto_docstring(
    custom_intro="""
    LongVU without the LM head: the SigLIP and DINOv2 towers, the Spatial Vision Aggregator, the projector, LongVU's
    spatiotemporal compression and the decoder.

    Example:

    ```python
    >>> from longvu_hf import LongVUConfig, LongVUModel
    >>> model = LongVUModel(LongVUConfig(text_config=..., vision_config=..., dino_config=...))
    >>> out = model(input_ids=ids, pixel_values_videos=frames, pixel_values_videos_dino=frames_dino,
    ...             video_num_frames=torch.tensor([len(frames)]), video_sizes=torch.tensor([[720, 1280]]))
    >>> out.compression[0].path
    ```
    """
)
class LongVUModel(LongVUPreTrainedModel):

    def __init__(self, config: LongVUConfig):
        super().__init__(config)
        self.video_encoder = LongVUVideoEncoder(config)
        self.language_model = AutoModel.from_config(config.text_config)
        # `load_state_dict` (the Trainer's resume, user code) takes the saved key names too, as `from_pretrained` does.
        self.register_load_state_dict_pre_hook(_load_first_release_key_names)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    # ---------------------------------------------------------------------------------------------------------------
    # Placeholders and prompts
    # ---------------------------------------------------------------------------------------------------------------

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor | None, token_id: int
    ) -> torch.BoolTensor:
        """Where `token_id` sits, from `input_ids`, or (as LLaVA does) where `inputs_embeds` equals its embedding."""
        if input_ids is not None:
            return input_ids == token_id
        embedding = self.get_input_embeddings()
        if not 0 <= token_id < embedding.num_embeddings:
            return torch.zeros(inputs_embeds.shape[:-1], dtype=torch.bool, device=inputs_embeds.device)
        placeholder = embedding(torch.tensor(token_id, device=embedding.weight.device))
        return (inputs_embeds == placeholder.to(inputs_embeds.device, inputs_embeds.dtype)).all(-1)

    def placeholder_masks(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor | None
    ) -> tuple[torch.BoolTensor, torch.BoolTensor]:
        """The video and the image placeholder masks (see `get_placeholder_mask`)."""
        return (
            self.get_placeholder_mask(input_ids, inputs_embeds, self.config.video_token_id),
            self.get_placeholder_mask(input_ids, inputs_embeds, self.config.image_token_id),
        )

    def _prompt_layout(self, input_ids, attention_mask, inputs_embeds, *, videos: bool, count: int):
        """Each video's (or image's) `VisualItemPrompt`: see `placeholder_expansion.prompt_layout`."""
        if input_ids is None and inputs_embeds is None:
            return prompt_layout(None, None, None, videos=videos, count=count, token_id=0, embed_text=None)
        embedding = self.get_input_embeddings()

        def embed_text(row: int, positions: torch.Tensor) -> torch.Tensor:
            if inputs_embeds is not None:
                return inputs_embeds[row][positions.to(inputs_embeds.device)]
            return embedding(input_ids[row][positions.to(input_ids.device)].to(embedding.weight.device))

        token_id = self.config.video_token_id if videos else self.config.image_token_id
        return prompt_layout(*self.placeholder_masks(input_ids, inputs_embeds), attention_mask, videos=videos,
                             count=count, token_id=token_id, embed_text=embed_text)

    # ---------------------------------------------------------------------------------------------------------------
    # Videos and images (the work is `self.video_encoder`'s)
    # ---------------------------------------------------------------------------------------------------------------

    @can_return_tuple
    @auto_docstring(
        custom_intro="""
        Encodes and compresses every video; `pooler_output` holds one `(tokens_i, hidden_size)` tensor per video,
        ready to replace its placeholder, and `compression` one report per video.

        The token budget of each video is computed from its own sample's prompt (`prompt_input_ids` with one
        placeholder per video and `prompt_attention_mask`, or `prompt_inputs_embeds`), as the reference does for batch
        item 0 (docs/reference.md §3-5); without a prompt, each video has the whole context and no query (the earliest
        frames keep full resolution when mixing). A sample with several visual items splits its budget equally among
        them. (The prompt arguments are not named `input_ids`/`attention_mask` because `generate` hands every model
        kwarg matching this signature to the encoder and then drops it.)
        """
    )
    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        pixel_values_videos_dino: torch.Tensor | None = None,
        video_num_frames: torch.Tensor | None = None,
        video_sizes: torch.Tensor | None = None,
        prompt_input_ids: torch.LongTensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        max_visual_tokens: int | None = None,
        prompt_inputs_embeds: torch.Tensor | None = None,
        compression_settings: CompressionSettings | dict | None = None,
        video_features: LongVUVideoFeatures | None = None,
        **kwargs,
    ) -> LongVUVisualFeaturesOutput:
        r"""
        pixel_values_videos (`torch.Tensor` of shape `(total_frames, 3, H, W)` or `(videos, frames, 3, H, W)`):
            SigLIP's pixels of every video: the processor's output (the frames of all videos concatenated), or videos
            stacked. uint8 pixels are rescaled and normalised by the model; float pixels are taken as normalised.
        pixel_values_videos_dino (`torch.Tensor` of the same layout, at DINOv2's input size):
            DINOv2's pixels of the same frames.
        video_num_frames (`torch.LongTensor` of shape `(videos,)`, *optional*):
            The frames of each video (needed when frames are concatenated and there is more than one video).
        video_sizes (`torch.LongTensor` of shape `(videos, 2)`, *optional*):
            The (height, width) of each source video; by default, the frames' own size.
        prompt_input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            The prompts, one placeholder per video, from which each video's token budget and query are taken.
        prompt_attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
            The prompts' attention mask.
        max_visual_tokens (`int`, *optional*):
            Deprecated (FutureWarning): pass `compression_settings=CompressionSettings(max_visual_tokens=...)`, the
            cap on each video's tokens; giving both with different values is a ValueError.
        prompt_inputs_embeds (`torch.Tensor` of shape `(batch_size, sequence_length, hidden_size)`, *optional*):
            The prompts as embeddings, in place of `prompt_input_ids`.
        compression_settings (`CompressionSettings` or `dict`, *optional*):
            Budget, per-video cap and thresholds for this call only (a field left None takes the config's value).
        video_features (`LongVUVideoFeatures`, *optional*):
            Videos encoded by `encode_videos`, in place of the pixels: one entry per video placeholder, None for a
            video whose pixels are given (`pixel_values_videos` then holds only those videos).
        """
        encoder = self.video_encoder
        settings = call_settings(compression_settings, max_visual_tokens).resolve(self.config)
        entries, pixel_videos = encoder.videos_of_call(
            pixel_values_videos, pixel_values_videos_dino, video_num_frames, video_sizes, video_features, settings
        )
        layout = self._prompt_layout(
            prompt_input_ids, prompt_attention_mask, prompt_inputs_embeds, videos=True, count=len(entries)
        )
        tower_flags = encoder.tower_output_flags(kwargs) if video_features is None else (False, False)
        features, reports, tower_outputs, stacked = encoder.compress_videos(
            entries, pixel_videos, layout, settings, *tower_flags
        )
        is_stacked = pixel_values_videos is not None and pixel_values_videos.ndim == 5
        return LongVUVisualFeaturesOutput(
            pooler_output=features,
            compression=CompressionReports(reports),
            **join_tower_outputs(tower_outputs, stacked if is_stacked else None),
        )

    def encode_videos(
        self,
        pixel_values_videos: torch.Tensor,
        pixel_values_videos_dino: torch.Tensor,
        video_num_frames: torch.Tensor | None = None,
        video_sizes: torch.Tensor | None = None,
        compression_settings: CompressionSettings | dict | None = None,
        **kwargs,
    ) -> LongVUVideoFeatures:
        """Encode videos once for many questions: pass the result as `video_features=` to `forward`, `generate` or
        `get_video_features` in place of the pixels (see `modeling/video_features.py`). `compression_settings` sets
        the DINO threshold and the largest context the features must serve (default: the config's); extra keyword
        arguments (other processor outputs) are ignored."""
        return self.video_encoder.encode_videos(
            pixel_values_videos, pixel_values_videos_dino, video_num_frames, video_sizes, compression_settings
        )

    def start_live_video(
        self, video_size: tuple[int, int], compression_settings: CompressionSettings | dict | None = None
    ) -> LongVULiveVideo:
        """A video that arrives in chunks: `append(...)` frames, then `features()` at any moment for `video_features=`
        (see `modeling/live_video.py`). `video_size` is the source's (height, width)."""
        return self.video_encoder.start_live_video(video_size, compression_settings)

    def encode_video_stream(
        self, chunks, video_size: tuple[int, int] | None = None,
        compression_settings: CompressionSettings | dict | None = None,
    ) -> LongVUVideoFeatures:
        """`encode_videos` for one video given as chunks of frames (`VideoChunks` from the video processor's
        `iter_video_chunks`): each chunk is encoded as it arrives while the next is decoded, so host memory does not
        grow with the video's length; the features equal `encode_videos` on the whole video
        (see `modeling/live_video.py`)."""
        return self.video_encoder.encode_video_stream(chunks, video_size, compression_settings)

    @can_return_tuple
    @auto_docstring(
        custom_intro="""
        Encodes images (no temporal or token compression): the full grid on image checkpoints, and the reference's
        low-resolution grid on video checkpoints (`highres=True`); `pooler_output` holds one `(tokens_i,
        hidden_size)` tensor per image.
        """
    )
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        pixel_values_dino: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        **kwargs,
    ) -> LongVUVisualFeaturesOutput:
        r"""
        pixel_values (`torch.Tensor` of shape `(images, 3, height, width)`):
            SigLIP's pixels of every image (uint8, normalised by the model, or float already normalised).
        pixel_values_dino (`torch.Tensor` of shape `(images, 3, dino_height, dino_width)`):
            DINOv2's pixels of the same images.
        image_sizes (`torch.LongTensor` of shape `(images, 2)`, *optional*):
            The (height, width) of each source image; by default, the pixels' own size.
        """
        encoder = self.video_encoder
        features, reports, tower_output = encoder.encode_images(
            pixel_values, pixel_values_dino, image_sizes, *encoder.tower_output_flags(kwargs)
        )
        return LongVUVisualFeaturesOutput(
            pooler_output=features, compression=CompressionReports(reports), **join_tower_outputs([tower_output])
        )

    # ---------------------------------------------------------------------------------------------------------------
    # Placeholder expansion
    # ---------------------------------------------------------------------------------------------------------------

    def expand_placeholders(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        labels: torch.LongTensor | None,
        video_token_counts: list[int],
        image_token_counts: list[int],
    ) -> tuple[torch.LongTensor, torch.Tensor, torch.LongTensor | None]:
        """Repeat each video/image placeholder to its token count (labels -100 there) and re-pad on the input's side.

        Counts are given in placeholder order (row by row, left to right). Returns the expanded `input_ids`,
        `attention_mask` and `labels`; `expand_inputs` also expands `inputs_embeds` and `position_ids`.
        """
        expanded = self.expand_inputs(input_ids, attention_mask, video_token_counts, image_token_counts, labels=labels)
        return expanded["input_ids"], expanded["attention_mask"], expanded["labels"]

    def expand_inputs(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        video_token_counts: list[int],
        image_token_counts: list[int],
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        max_context_length: int | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """`expand_placeholders` for every per-token input: `input_ids` or `inputs_embeds` (placeholders found by
        `get_placeholder_mask`), `attention_mask`, `labels` and `position_ids` (see
        `modeling/placeholder_expansion.py`). A sequence longer than `max_context_length` (default: the config's) is
        refused."""
        video_mask, image_mask = self.placeholder_masks(input_ids, inputs_embeds)
        limit = self.config.max_context_length if max_context_length is None else max_context_length
        return expand_placeholders(
            video_mask, image_mask, attention_mask, video_token_counts, image_token_counts, input_ids=input_ids,
            inputs_embeds=inputs_embeds, labels=labels, position_ids=position_ids,
            pad_token_id=self.config.text_config.pad_token_id, max_context_length=limit,
        ).to_dict()

    def encode_visual_inputs(
        self, input_ids, attention_mask, pixel_values=None, pixel_values_dino=None, image_sizes=None,
        pixel_values_videos=None, pixel_values_videos_dino=None, video_num_frames=None, video_sizes=None,
        max_visual_tokens=None, inputs_embeds=None, compression_settings=None, video_features=None, **kwargs,
    ) -> dict[str, LongVUVisualFeaturesOutput]:
        """Run `get_video_features` / `get_image_features` for whatever pixels are given; `{"video": .., "image": ..}`.

        The prompt comes as `input_ids` or `inputs_embeds` (one placeholder per item); `kwargs` may ask for the
        towers' `output_hidden_states`/`output_attentions`."""
        outputs = {}
        if pixel_values_videos is not None or video_features is not None:
            outputs["video"] = self.get_video_features(
                pixel_values_videos, pixel_values_videos_dino, video_num_frames, video_sizes,
                prompt_input_ids=input_ids, prompt_attention_mask=attention_mask, prompt_inputs_embeds=inputs_embeds,
                max_visual_tokens=max_visual_tokens, compression_settings=compression_settings,
                video_features=video_features, return_dict=True, **kwargs,
            )
        if pixel_values is not None:
            outputs["image"] = self.get_image_features(
                pixel_values, pixel_values_dino, image_sizes, return_dict=True, **kwargs
            )
            self._prompt_layout(input_ids, attention_mask, inputs_embeds, videos=False, count=len(pixel_values))
        return outputs

    @can_return_tuple
    @accepts_cache_argument
    @auto_docstring(
        custom_intro="""
        Encodes and compresses the videos and images, expands each placeholder to its item's tokens, merges the
        features and runs the decoder.
        """,
        custom_args=LONGVU_FORWARD_ARGS,
    )
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_values_dino: torch.FloatTensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        pixel_values_videos_dino: torch.FloatTensor | None = None,
        video_num_frames: torch.LongTensor | None = None,
        video_sizes: torch.LongTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        use_cache: bool | None = None,
        max_visual_tokens: int | None = None,
        compression_settings: CompressionSettings | dict | None = None,
        video_features: LongVUVideoFeatures | None = None,
        **kwargs,
    ) -> LongVUModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of `input_ids` or `inputs_embeds`")
        check_input_ids(input_ids)
        encoded_here = pixel_values_videos is not None or pixel_values is not None or video_features is not None
        if encoded_here:
            if mm_encoder_outputs:
                raise ValueError("Pass either pixel inputs or pre-computed `mm_encoder_outputs`, not both")
            tower_flags = {k: kwargs[k] for k in ("output_hidden_states", "output_attentions") if k in kwargs}
            mm_encoder_outputs = self.encode_visual_inputs(
                input_ids, attention_mask, pixel_values=pixel_values, pixel_values_dino=pixel_values_dino,
                image_sizes=image_sizes, pixel_values_videos=pixel_values_videos,
                pixel_values_videos_dino=pixel_values_videos_dino, video_num_frames=video_num_frames,
                video_sizes=video_sizes, max_visual_tokens=max_visual_tokens, inputs_embeds=inputs_embeds,
                compression_settings=compression_settings, video_features=video_features, **tower_flags,
            )
        elif any(v is not None for v in (pixel_values_dino, pixel_values_videos_dino)):
            raise ValueError(
                "`pixel_values_dino`/`pixel_values_videos_dino` were given without `pixel_values`/`pixel_values_videos`"
            )
        # The inputs say which form the prompt is in: with pixels (or `video_features`) it is as written, one
        # placeholder per item, and is expanded here; with `mm_encoder_outputs` (what `generate` passes after
        # encoding and expanding once) it is already expanded.
        mm_encoder_outputs = mm_encoder_outputs or {}
        video = mm_encoder_outputs.get("video")
        image = mm_encoder_outputs.get("image")
        video_features = list(video.pooler_output) if video is not None else []
        image_features = list(image.pooler_output) if image is not None else []

        if encoded_here:
            written_shape = tuple((input_ids if input_ids is not None else inputs_embeds).shape[:2])
            # Labels come for the prompt as written, or for the expanded sequence (as the logits are).
            labels_expanded = labels is not None and labels.shape[-1] != written_shape[-1]
            expanded = self.expand_inputs(
                input_ids,
                attention_mask,
                [len(f) for f in video_features],
                [len(f) for f in image_features],
                labels=None if labels_expanded else labels,
                inputs_embeds=inputs_embeds,
                position_ids=position_ids,
                max_context_length=CompressionSettings.from_value(compression_settings).max_context_length,
            )
            input_ids, inputs_embeds, attention_mask = (
                expanded["input_ids"], expanded["inputs_embeds"], expanded["attention_mask"]
            )
            position_ids = expanded["position_ids"]
            if position_ids is None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            video_mask, image_mask = self.placeholder_masks(input_ids, inputs_embeds)
            if labels_expanded:
                if labels.shape != attention_mask.shape:
                    raise ValueError(
                        f"`labels` have shape {tuple(labels.shape)}: give them for the prompt as written "
                        f"{written_shape} or for the expanded sequence {tuple(attention_mask.shape)}"
                    )
                labels = labels.masked_fill((video_mask | image_mask).to(labels.device), -100)
            else:
                labels = expanded["labels"]
        else:
            video_mask, image_mask = self.placeholder_masks(input_ids, inputs_embeds)

        if inputs_embeds is None:
            visual = (input_ids == self.config.video_token_id) | (input_ids == self.config.image_token_id)
            inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(visual, 0))
        if video_features:
            inputs_embeds = merge_visual_features(video_mask, inputs_embeds, video_features, "videos")
        if image_features:
            inputs_embeds = merge_visual_features(image_mask, inputs_embeds, image_features, "images")

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **cache_kwargs(cache),
            **kwargs,
        )
        return LongVUModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image,
            video_outputs=video,
            **cache_kwargs(cache_of(outputs)),
            attention_mask=attention_mask,
            labels=labels,
            compression=video.compression if video is not None else None,
            image_compression=image.compression if image is not None else None,
        )


def _video_encoder_module(name: str) -> property:
    """`LongVUModel.<name>` reads `LongVUModel.video_encoder.<name>`: the towers' home before the video encoder held
    them, and where transformers' `get_encoder("video")` and common tests look for a vision tower."""
    return property(lambda self: getattr(self.video_encoder, name), doc=f"`self.video_encoder.{name}` (read-only).")


for _name in ("vision_tower", "dino_tower", "vision_aggregator", "multi_modal_projector", "image_newline"):
    setattr(LongVUModel, _name, _video_encoder_module(_name))


@auto_docstring(
    custom_intro="""
    LongVU with its language-modelling head: answers questions about long videos.

    Example:

    ```python
    >>> import longvu_hf  # registers LongVU with the Auto classes
    >>> from transformers import AutoModelForImageTextToText, AutoProcessor
    >>> model = AutoModelForImageTextToText.from_pretrained("path/to/converted/LongVU_Qwen2_7B", dtype="bfloat16")
    >>> processor = AutoProcessor.from_pretrained("path/to/converted/LongVU_Qwen2_7B")
    >>> messages = [{"role": "user", "content": [{"type": "video", "path": "video.mp4"},
    ...                                          {"type": "text", "text": "What happens in this video?"}]}]
    >>> inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
    ...                                        return_dict=True, return_tensors="pt")
    >>> out = model.generate(**inputs, max_new_tokens=128)
    >>> processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    ```
    """
)
class LongVUForConditionalGeneration(LongVUPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # Read by PEFT only (transformers loads with `video_encoder.longvu_key_renaming`): adapters saved before the
    # visual modules moved under `video_encoder` load unchanged.
    _checkpoint_conversion_mapping = LEGACY_KEY_MAPPING
    # As the Qwen2/Llama causal LMs: the head is sharded like the (possibly tied) embedding the decoder's plan shards.
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: LongVUConfig):
        super().__init__(config)
        self.model = LongVUModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    @auto_docstring(
        custom_intro="""
        Encodes and compresses every video: the arguments and output of [`LongVUModel.get_video_features`].
        """
    )
    def get_video_features(self, *args, **kwargs) -> LongVUVisualFeaturesOutput:
        return self.model.get_video_features(*args, **kwargs)

    def encode_videos(self, *args, **kwargs) -> LongVUVideoFeatures:
        """See `LongVUModel.encode_videos`."""
        return self.model.encode_videos(*args, **kwargs)

    def start_live_video(self, *args, **kwargs) -> LongVULiveVideo:
        """See `LongVUModel.start_live_video`."""
        return self.model.start_live_video(*args, **kwargs)

    def encode_video_stream(self, *args, **kwargs) -> LongVUVideoFeatures:
        """See `LongVUModel.encode_video_stream`."""
        return self.model.encode_video_stream(*args, **kwargs)

    @auto_docstring(
        custom_intro="""
        Encodes every image: the arguments and output of [`LongVUModel.get_image_features`].
        """
    )
    def get_image_features(self, *args, **kwargs) -> LongVUVisualFeaturesOutput:
        return self.model.get_image_features(*args, **kwargs)

    @can_return_tuple
    @accepts_cache_argument
    @auto_docstring(
        custom_intro="""
        `LongVUModel.forward`, then the language-modelling head (and the loss when `labels` are given); the logits
        cover the expanded sequence.
        """,
        custom_args=LONGVU_FORWARD_ARGS,
    )
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_values_dino: torch.FloatTensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        pixel_values_videos_dino: torch.FloatTensor | None = None,
        video_num_frames: torch.LongTensor | None = None,
        video_sizes: torch.LongTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        max_visual_tokens: int | None = None,
        compression_settings: CompressionSettings | dict | None = None,
        video_features: LongVUVideoFeatures | None = None,
        **kwargs,
    ) -> LongVUCausalLMOutputWithPast:
        r"""
        Example:

        ```python
        >>> inputs = processor(text=["<video>\nWhat happens?"], videos=["clip.mp4"], return_tensors="pt")
        >>> out = model(**inputs)
        >>> out.logits.shape[1] > inputs["input_ids"].shape[1], out.compression[0].path  # expanded sequence
        (True, 'none')
        ```
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            pixel_values=pixel_values,
            pixel_values_dino=pixel_values_dino,
            image_sizes=image_sizes,
            pixel_values_videos=pixel_values_videos,
            pixel_values_videos_dino=pixel_values_videos_dino,
            video_num_frames=video_num_frames,
            video_sizes=video_sizes,
            mm_encoder_outputs=mm_encoder_outputs,
            use_cache=use_cache,
            max_visual_tokens=max_visual_tokens,
            compression_settings=compression_settings,
            video_features=video_features,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        labels = outputs.labels
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return LongVUCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            video_outputs=outputs.video_outputs,
            **cache_kwargs(cache_of(outputs)),
            attention_mask=outputs.attention_mask,
            labels=labels,
            compression=outputs.compression,
            image_compression=outputs.image_compression,
        )

    def _suppress_placeholders(self, kwargs: dict) -> list[int]:
        """The requested `suppress_tokens` plus the video/image placeholders, which must never be generated."""
        generation_config = kwargs.get("generation_config") or self.generation_config
        requested = kwargs.get("suppress_tokens") or getattr(generation_config, "suppress_tokens", None) or []
        vocab_size = self.config.text_config.vocab_size
        placeholders = [i for i in (self.config.video_token_id, self.config.image_token_id) if 0 <= i < vocab_size]
        return sorted(set(requested) | set(placeholders))

    @staticmethod
    def _restore_prompt(output, caller_ids: torch.Tensor, expanded_ids: torch.Tensor, expanded_mask: torch.Tensor):
        """Put the caller's input back in front of the new tokens (in place of its expanded form), and describe the
        expansion on the output (`output.prompt_expansion`), so that a later `generate` can continue from
        `sequences` and the returned cache."""
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        factor = sequences.shape[0] // caller_ids.shape[0]
        sequences = torch.cat(
            [caller_ids.repeat_interleave(factor, dim=0).to(sequences.device), sequences[:, expanded_ids.shape[1] :]],
            dim=1,
        )
        if isinstance(output, torch.Tensor):
            return sequences
        output.sequences = sequences
        # Several sequences per prompt share one cache row each: a continuation of one prompt is not described.
        output.prompt_expansion = PromptExpansion(caller_ids, expanded_ids, expanded_mask) if factor == 1 else None
        remember_cache_expansion(cache_of(output), output.prompt_expansion)
        return output

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, **kwargs: Any):
        """Encode the videos/images once, expand their placeholders, then run the standard `generate`.

        The returned sequences start with the prompt as given (one placeholder per video/image), then the new tokens.
        Accepts the processor's outputs as they are (`input_ids`, `attention_mask`, `pixel_values_videos`,
        `pixel_values_videos_dino`, `video_num_frames`, `video_sizes`, or the image equivalents), or the prompt as
        `inputs_embeds`.

        `compression_settings` (a `CompressionSettings` or a dict: budget and thresholds) applies to this call only
        (see `LongVUModel.get_video_features`).

        With `return_dict_in_generate=True`, the output also carries this call's compression reports,
        `output.compression` (one `CompressionReport` per video) and `output.image_compression` (one per image), and
        `output.prompt_expansion`: to continue a generation without the pixels, pass the returned `sequences` (plus
        new text) with the returned cache and `prompt_expansion=output.prompt_expansion` (see
        `modeling/placeholder_expansion.py`).
        """
        kwargs["suppress_tokens"] = self._suppress_placeholders(kwargs)
        max_visual_tokens = kwargs.pop("max_visual_tokens", None)
        settings = CompressionSettings.from_value(kwargs.pop("compression_settings", None))
        prompt_expansion = kwargs.pop("prompt_expansion", None)
        visual = {name: kwargs.pop(name) for name in VISUAL_INPUT_NAMES if kwargs.get(name) is not None}
        for name in VISUAL_INPUT_NAMES:
            kwargs.pop(name, None)
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        check_input_ids(input_ids)
        attention_mask = kwargs.pop("attention_mask", None)
        inputs_embeds = kwargs.pop("inputs_embeds", None)
        has_pixels = any(name in visual for name in ("pixel_values", "pixel_values_videos", "video_features"))
        if prompt_expansion is None and not has_pixels and input_ids is not None:
            # transformers' way to continue: the returned sequences plus new text, with the returned cache
            cache = next((kwargs[name] for name in (CACHE_NAME, "past_key_values", "cache") if kwargs.get(name)), None)
            prompt_expansion = expansion_of_cache(cache)
            if prompt_expansion is not None and not prompt_expansion.describes(input_ids):
                prompt_expansion = None
        if prompt_expansion is not None:  # a continuation: the cache holds the expanded prompt
            if has_pixels or input_ids is None:
                raise ValueError(
                    "`prompt_expansion` continues a generation from `input_ids` and its cache: pass no pixels"
                )
            expanded_ids, expanded_mask = prompt_expansion.expand(input_ids, attention_mask)
            output = super().generate(expanded_ids, attention_mask=expanded_mask, **kwargs)
            return self._restore_prompt(output, input_ids, expanded_ids, expanded_mask)
        if visual and not has_pixels:
            raise ValueError(
                f"{', '.join(sorted(visual))} given without `pixel_values`/`pixel_values_videos`: pass the pixels "
                "they describe (or, to continue a generation, `prompt_expansion=` with the returned cache)"
            )
        if not has_pixels:
            # Text only, or (an assistant model in assisted decoding) the main model's features with its expanded
            # prompt in `mm_encoder_outputs`.
            if (
                input_ids is not None
                and not kwargs.get("mm_encoder_outputs")
                and any(mask.any() for mask in self.model.placeholder_masks(input_ids, None))
            ):
                raise ValueError(
                    "The prompt holds video/image placeholders but no pixels were given: pass the processor's "
                    "`pixel_values_videos`/`pixel_values` (or, to continue a generation, the returned sequences, "
                    "cache and `prompt_expansion`)"
                )
            extra = {"attention_mask": attention_mask} if attention_mask is not None else {}
            if inputs_embeds is not None:
                extra["inputs_embeds"] = inputs_embeds
            return super().generate(input_ids, **extra, **kwargs)
        if input_ids is None and inputs_embeds is None:
            raise ValueError("`input_ids` or `inputs_embeds` are required when generating from videos or images")
        encoded = self.model.encode_visual_inputs(
            input_ids, attention_mask, **visual, max_visual_tokens=max_visual_tokens, inputs_embeds=inputs_embeds,
            compression_settings=settings,
        )
        video, image = encoded.get("video"), encoded.get("image")
        expanded = self.model.expand_inputs(
            input_ids,
            attention_mask,
            [len(f) for f in video.pooler_output] if video is not None else [],
            [len(f) for f in image.pooler_output] if image is not None else [],
            inputs_embeds=inputs_embeds,
            position_ids=kwargs.pop("position_ids", None),
            max_context_length=settings.max_context_length,
        )
        if expanded["position_ids"] is not None:
            kwargs["position_ids"] = expanded["position_ids"]
        if expanded["inputs_embeds"] is not None:
            kwargs["inputs_embeds"] = expanded["inputs_embeds"]  # `forward` merges the features at the first step
        output = super().generate(
            expanded["input_ids"], attention_mask=expanded["attention_mask"], mm_encoder_outputs=encoded, **kwargs
        )
        if not isinstance(output, torch.Tensor):  # this call's reports travel with its output
            output.compression = video.compression if video is not None else None
            output.image_compression = image.compression if image is not None else None
        if input_ids is None:
            return output  # like transformers: from embeddings alone, the new tokens only
        # Return the caller's prompt (one placeholder per item) followed by the new tokens, so that the usual
        # `output[:, input_ids.shape[1]:]` slices off exactly the prompt.
        return self._restore_prompt(output, input_ids, expanded["input_ids"], expanded["attention_mask"])

__all__ = ["LongVUForConditionalGeneration", "LongVUModel", "LongVUPreTrainedModel"]
