"""LongVU's language model as a vLLM model whose video input is the compressed video tokens.

vLLM must know how many placeholder tokens a video takes before the model runs, and LongVU's count depends on the
video and on the question (frame selection, resolution mixing and STC use the prompt). So the towers and the
compression run in this package (`LongVUEngine`, or `model.get_video_features(...)` yourself), and vLLM gets each
video as its compressed tokens: `multi_modal_data={"video": [tokens_1, tokens_2, ...]}`, one `(n_i, hidden)` tensor
per video (vLLM's `video_embeds`). The prompt holds one video placeholder per video; vLLM's prompt replacement
expands the i-th placeholder to `n_i` tokens and the tokens are spliced in there, as `generate` does. Everything else
is vLLM's stock Qwen2 / Llama model (paged attention, continuous batching, prefix caching, tensor parallelism).

The weights come straight from a converted LongVU folder (`model.language_model.*`, `lm_head.*`); the towers, the
aggregator and the projector in it are skipped. vLLM must be started with `enable_mm_embeds=True` (video tokens as
input) and `limit_mm_per_prompt={"video": 0}` (no video encoder inside vLLM): `LongVUEngine` does so.

Refused with one line: frames instead of tokens, a placeholder count that differs from the number of videos, empty
tokens; vLLM itself refuses tokens of another width. One case vLLM never shows the plugin: a prompt that holds a
placeholder but comes without any video (vLLM runs no multimodal processing then); `LongVUEngine` refuses it.

Example (the registration is automatic once longvu-hf is installed: `vllm.general_plugins` entry point):

```python
>>> from vllm import LLM, SamplingParams
>>> llm = LLM("LongVU_Qwen2_7B-hf", enable_mm_embeds=True, limit_mm_per_prompt={"video": 0})
>>> tokens = model.get_video_features(None, video_features=features, prompt_input_ids=ids).pooler_output[0]
>>> llm.generate({"prompt_token_ids": ids[0].tolist(), "multi_modal_data": {"video": [tokens]}},
...              SamplingParams(temperature=0, max_tokens=64))
```
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn
from transformers import BatchFeature

from vllm.config import VllmConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, VideoEmbeddingItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)
from vllm.sequence import IntermediateTensors

# The decoder classes vLLM has for the backbones of the released checkpoints (text_config.model_type).
TEXT_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
# Parts of a converted folder that only the encoder side (this package) uses.
ENCODER_PREFIXES = (
    "model.vision_tower.",
    "model.dino_tower.",
    "model.vision_aggregator.",
    "model.multi_modal_projector.",
    "model.image_newline",
)


def _video_token(info: BaseProcessingInfo) -> tuple[int, str]:
    config = info.get_hf_config()
    token_id = config.video_token_id
    return token_id, info.get_tokenizer().convert_ids_to_tokens(token_id)


class LongVUProcessingInfo(BaseProcessingInfo):
    """What vLLM's input processing needs to know: videos only, each as precomputed tokens."""

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"video": None}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        # The compression fits a video into the context budget, so no video holds more than that.
        return {"video": min(seq_len, int(self.get_hf_config().max_context_length))}


class LongVUDummyInputsBuilder(BaseDummyInputsBuilder[LongVUProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return _video_token(self.info)[1] * mm_counts.get("video", 0)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> dict:
        count = mm_counts.get("video", 0)
        if not count:
            return {}
        hidden = self.info.ctx.model_config.get_inputs_embeds_size()
        length = self.info.get_mm_max_tokens_per_item(seq_len, mm_counts)["video"]
        return {"video": [torch.zeros(length, hidden) for _ in range(count)]}


class LongVUMultiModalProcessor(BaseMultiModalProcessor[LongVUProcessingInfo]):
    """Checks that each video comes as tokens and has its placeholder, then expands placeholder i to n_i tokens."""

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {"video_embeds": MultiModalFieldConfig.batched("video")}

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        token_id, _ = _video_token(self.info)

        def replacement(item_index: int) -> list[int]:
            videos = mm_items.get_items("video", VideoEmbeddingItems)
            return [token_id] * videos.get_feature_size(item_index)

        return [PromptReplacement(modality="video", target=[token_id], replacement=replacement)]

    def apply(self, inputs, timing_ctx):
        videos = inputs.mm_data_items.get("video")
        if videos is not None and not isinstance(videos, VideoEmbeddingItems):
            raise ValueError(
                "LongVU on vLLM takes each video as its compressed tokens, a (tokens, hidden) tensor per video "
                "(multi_modal_data={'video': [tokens, ...]}): encode and compress the frames with longvu-hf "
                "(longvu_hf.integrations.vllm.LongVUEngine) instead of passing frames"
            )
        token_id, token = _video_token(self.info)
        given = 0 if videos is None else len(videos)
        written = sum(1 for t in inputs.prompt if t == token_id)
        if written != given:
            raise ValueError(
                f"The prompt holds {written} video placeholder(s) ({token!r}, id {token_id}) but {given} video(s) "
                "were given: write exactly one placeholder per video, in the order of the videos"
            )
        for index in range(given):
            length = videos.get_feature_size(index)
            if length < 1:
                raise ValueError(f"video {index}: its compressed tokens are empty (shape (0, hidden))")
        return super().apply(inputs, timing_ctx)


@MULTIMODAL_REGISTRY.register_processor(
    LongVUMultiModalProcessor, info=LongVUProcessingInfo, dummy_inputs=LongVUDummyInputsBuilder
)
class LongVUForVLLM(nn.Module, SupportsMultiModal, SupportsPP):
    """The decoder of a converted LongVU folder (Qwen2 or Llama backbone) taking compressed video tokens.

    Registered for the architecture `LongVUForConditionalGeneration` (what converted folders declare) by
    `longvu_hf.integrations.vllm.register`, which vLLM calls through the `vllm.general_plugins` entry point.
    """

    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={"model.language_model.": "language_model.model.", "lm_head.": "language_model.lm_head."}
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("video"):
            return "<video>"
        raise ValueError("LongVU on vLLM takes videos only (as compressed tokens)")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        backbone = config.text_config.model_type
        if backbone not in TEXT_ARCHITECTURES:
            raise ValueError(
                f"LongVU on vLLM supports the backbones {sorted(TEXT_ARCHITECTURES)}, this folder's text_config is "
                f"{backbone!r}"
            )
        self.config = config
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=[TEXT_ARCHITECTURES[backbone]],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        videos = kwargs.pop("video_embeds", None)
        if videos is None:
            return []
        if isinstance(videos, torch.Tensor):  # vLLM stacks items of equal length
            videos = list(videos.unbind(0)) if videos.ndim == 3 else [videos]
        embedding = self.language_model.model.embed_tokens.weight
        return [video.to(embedding.device, embedding.dtype) for video in videos]

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        language_model_weights = ((name, w) for name, w in weights if not name.startswith(ENCODER_PREFIXES))
        return AutoWeightsLoader(self).load_weights(language_model_weights, mapper=self.hf_to_vllm_mapper)


__all__ = ["LongVUForVLLM", "LongVUMultiModalProcessor", "LongVUProcessingInfo", "TEXT_ARCHITECTURES"]
