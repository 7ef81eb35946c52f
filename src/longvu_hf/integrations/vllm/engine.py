"""`LongVUEngine`: LongVU's towers and compression in this package, its language model in vLLM's engine.

Each video is encoded once (DINOv2 frame selection, SigLIP, the aggregator: `LongVUModel.encode_videos`); each
question then compresses it for its own prompt (`get_video_features(video_features=...)`: the token budget and the
query depend on the prompt, as in `generate`) and vLLM decodes with the compressed tokens spliced in at the video's
placeholder (`model.LongVUForVLLM`). Greedy answers equal `LongVUForConditionalGeneration.generate`'s
(tests/test_vllm.py). The encoder side holds the towers, the aggregator, the projector and the token embeddings (the
query of resolution mixing); the decoder layers are loaded only by vLLM.

Several GPUs: `tensor_parallel_size=N` is handed to vLLM, which shards the language model over N GPUs; the encoder
runs on `encoder_device` (default: the first GPU, else the CPU). Any other vLLM engine argument passes through
(`max_model_len`, `gpu_memory_utilization`, `enable_prefix_caching`, ...).

Example:

```python
>>> from vllm import SamplingParams
>>> from longvu_hf.integrations.vllm import LongVUEngine
>>> engine = LongVUEngine("LongVU_Qwen2_7B-hf", tensor_parallel_size=2)
>>> video = engine.encode("video.mp4")                       # towers once
>>> answers = engine.generate([(video, "What happens first?"), (video, "What color is the car?")],
...                           SamplingParams(temperature=0, max_tokens=64))
>>> answers[0].text, answers[0].compression.num_visual_tokens  # a `CompressionReport` (`to_dict()` for JSON)
```
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ...chat import tokenize_chat, video_chat_messages
from ...configuration_longvu import CompressionSettings
from ...modeling.compression_report import CompressionReport
from ...modeling.video_features import LongVUVideoFeatures

# Room left on the encoder's GPU for the towers' activations when vLLM's share of the memory is worked out.
ENCODER_WORKSPACE_BYTES = 4 * 1024**3
DEFAULT_MAX_TOKENS = 128


@dataclass
class LongVURequest:
    """One question about one video.

    `video`: a path or URL (decoded by the checkpoint's processor), the processor's outputs for one video (a dict with
    `pixel_values_videos`, ...), or `LongVUVideoFeatures` of one video (`LongVUEngine.encode`). `history`: earlier
    (question, answer) turns of the conversation about this video; `system`: a system prompt in place of the
    template's default. `prompt_token_ids`, in place of `question`: a
    tokenized prompt holding one video placeholder. `compression_settings` and `sampling_params` override the call's.
    """

    video: Any
    question: str | None = None
    history: Sequence[tuple[str, str]] = ()
    system: str | None = None
    prompt_token_ids: Sequence[int] | None = None
    compression_settings: CompressionSettings | Mapping | None = None
    sampling_params: Any = None


@dataclass
class LongVUAnswer:
    """vLLM's answer to one request and what the compression did for it (`compression`: the `CompressionReport`
    `generate` would return). `logprobs`: vLLM's, when `SamplingParams(logprobs=...)` asked for them."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str | None
    compression: CompressionReport
    prompt_token_ids: list[int] = field(repr=False)
    logprobs: list | None = field(default=None, repr=False)


def _as_request(item) -> LongVURequest:
    if isinstance(item, LongVURequest):
        return item
    if isinstance(item, tuple) and len(item) == 2:
        return LongVURequest(video=item[0], question=item[1])
    raise ValueError(
        f"requests: expected LongVURequest or (video, question) pairs, got {type(item).__name__}"
    )


@contextlib.contextmanager
def _quiet_transformers():
    """The encoder is loaded without the decoder layers on purpose: transformers' report of the unused weights is
    noise here."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def load_encoder(model_path: str | os.PathLike, device: str | torch.device, dtype: torch.dtype):
    """The encoder side of a converted folder: `LongVUModel` without its decoder layers (towers, aggregator,
    projector, token embeddings). Its config is the folder's, so its encoded features are interchangeable with the
    full model's (same fingerprint)."""
    from transformers import AutoConfig

    from ... import LongVUModel

    config = AutoConfig.from_pretrained(model_path)
    num_layers = config.text_config.num_hidden_layers
    config.text_config.num_hidden_layers = 0
    with _quiet_transformers():
        encoder = LongVUModel.from_pretrained(model_path, config=config, dtype=dtype)
    encoder.config.text_config.num_hidden_layers = num_layers
    return encoder.to(device).eval()


class LongVUEncoder:
    """The side of serving that runs in this package: the towers (each video once), the prompt, the compression per
    question, and vLLM's request (prompt ids, compressed tokens, sampling parameters). `LongVUEngine` (offline) and
    `AsyncLongVUEngine` (the HTTP server) add vLLM's engine to it.

    Args:
        model: a converted LongVU folder (what `longvu convert` writes).
        dtype: the language model's dtype in vLLM ("auto": the checkpoint's); the encoder uses the same one unless
            `encoder_dtype` is given.
        encoder_device: where the towers run (default: "cuda" if there is a GPU, else "cpu").
        compression_settings: the default per-call settings (`CompressionSettings` or a dict); calls and requests
            may override them. Videos are encoded for the largest context they will serve.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        dtype: str | torch.dtype = "auto",
        encoder_device: str | torch.device | None = None,
        encoder_dtype: str | torch.dtype | None = None,
        compression_settings: CompressionSettings | Mapping | None = None,
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        import longvu_hf  # noqa: F401  (registers LongVU with the transformers Auto classes)

        self.model_path = str(model)
        if not os.path.isfile(os.path.join(self.model_path, "config.json")):
            raise FileNotFoundError(
                f"model {self.model_path}: not a converted LongVU folder (no config.json); convert the checkpoint "
                "with `longvu convert` first"
            )
        self.config = AutoConfig.from_pretrained(self.model_path)
        if getattr(self.config, "model_type", None) != "longvu":
            raise ValueError(f"model {self.model_path}: not a LongVU checkpoint (model_type "
                             f"{getattr(self.config, 'model_type', None)!r})")
        self.settings = CompressionSettings.from_value(compression_settings)
        self.settings.resolve(self.config)  # refuses bad values now rather than at the first request
        self.dtype = dtype
        self.encoder_device = torch.device(encoder_device or ("cuda" if torch.cuda.is_available() else "cpu"))
        resolved_dtype = self._resolve_dtype(encoder_dtype if encoder_dtype is not None else dtype)
        self.encoder = load_encoder(self.model_path, self.encoder_device, resolved_dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._processor = None

    def vllm_arguments(self, tensor_parallel_size: int, vllm_kwargs: Mapping[str, Any]) -> dict:
        """vLLM's engine arguments for this folder: video tokens as input (`enable_mm_embeds`), no video encoder
        inside vLLM, and (on the encoder's GPU, unless given) the memory the encoder leaves."""
        arguments = dict(vllm_kwargs)
        if self.encoder_device.type == "cuda" and "gpu_memory_utilization" not in arguments:
            free, total = torch.cuda.mem_get_info(self.encoder_device)
            arguments["gpu_memory_utilization"] = round(
                max(0.05, min(0.9, (free - ENCODER_WORKSPACE_BYTES) / total)), 3
            )
        arguments.setdefault("limit_mm_per_prompt", {"video": 0})
        return {"model": self.model_path, "tokenizer": self.model_path, "dtype": self.dtype,
                "tensor_parallel_size": tensor_parallel_size, "enable_mm_embeds": True, **arguments}

    # -- encoding ----------------------------------------------------------------------------------------------------

    def _resolve_dtype(self, dtype) -> torch.dtype:
        if isinstance(dtype, torch.dtype):
            return dtype
        if dtype in (None, "auto"):
            configured = getattr(self.config, "dtype", None) or getattr(self.config, "torch_dtype", None)
            dtype = configured if configured is not None else "float32"
            if isinstance(dtype, torch.dtype):
                return dtype
        if dtype in ("half", "float16"):
            return torch.float16
        if dtype in ("bfloat16", "float32", "float"):
            return getattr(torch, "float32" if dtype == "float" else dtype)
        raise ValueError(f"dtype: expected auto, float32, bfloat16 or float16, got {dtype!r}")

    @property
    def processor(self):
        """The checkpoint's processor (decodes and samples video files); loaded at the first path or URL."""
        if self._processor is None:
            from transformers.utils import is_torchvision_available

            if not is_torchvision_available():
                raise ValueError(
                    "Decoding a video file needs torchvision (transformers' video processors), which this environment "
                    "lacks: pass the processor's outputs or LongVUVideoFeatures (engine.encode) instead"
                )
            from transformers import AutoProcessor

            self._processor = AutoProcessor.from_pretrained(self.model_path)
        return self._processor

    def encode(
        self,
        video: Any,
        *,
        fps: float | None = None,
        num_frames: int | None = None,
        max_frames: int | None = None,
        compression_settings: CompressionSettings | Mapping | None = None,
        **sampling: Any,
    ) -> LongVUVideoFeatures:
        """Run the towers on one video, once, for any number of questions: a path, URL or `MediaSource` (streamed
        into the towers as it is decoded, with `fps`/`num_frames`/`max_frames` and any other sampling option of the
        video processor in `sampling`: `longvu_hf.session`, the local user's input policy), or the processor's
        outputs for one video. `LongVUVideoFeatures` are returned as given. The
        encoding serves every call whose context is at most `compression_settings`' (default: the engine's)."""
        from ...media_inputs import InputPolicy, MediaSource
        from ...session import VideoSession

        if isinstance(video, LongVUVideoFeatures):
            if len(video) != 1 or video[0] is None:
                raise ValueError(f"video: LongVUVideoFeatures of exactly one encoded video expected, got {video!r}")
            return video
        if isinstance(video, (str, os.PathLike, MediaSource)):
            settings = CompressionSettings.from_value(compression_settings) if compression_settings else self.settings
            session = VideoSession.open(self.encoder, self.processor, video, policy=InputPolicy.local_user(),
                                        fps=fps, num_frames=num_frames, max_frames=max_frames,
                                        compression_settings=settings, **sampling)
            return session.features
        if not isinstance(video, Mapping) or "pixel_values_videos" not in video:
            raise ValueError(
                "video: expected a path or URL, the processor's outputs for one video (pixel_values_videos, ...), or "
                f"LongVUVideoFeatures; got {type(video).__name__}"
            )
        num_videos = len(torch.as_tensor(video.get("video_num_frames", [0])).flatten())
        if num_videos != 1:
            raise ValueError(f"video: the processor's outputs hold {num_videos} videos; give one video per request")
        settings = CompressionSettings.from_value(compression_settings) if compression_settings else self.settings
        pixels = {k: v for k, v in video.items() if k not in ("input_ids", "attention_mask")}
        with torch.no_grad():
            return self.encoder.encode_videos(**pixels, compression_settings=settings)

    # -- prompts and compression -------------------------------------------------------------------------------------

    def prompt_token_ids(
        self, question: str, history: Sequence[tuple[str, str]] = (), system: str | None = None
    ) -> list[int]:
        """The chat prompt of the checkpoint's template: the video placeholder and the first question, the earlier
        (question, answer) turns, then `question` (tokenized as `LongVUProcessor.apply_chat_template` does);
        `system` replaces the template's default system prompt."""
        messages = video_chat_messages(history, question, system)
        return list(tokenize_chat(self.tokenizer, messages, tokenizer=self.tokenizer, return_tensors=None)["input_ids"])

    def _settings_for(self, request: LongVURequest, call_settings) -> CompressionSettings:
        for candidate in (request.compression_settings, call_settings):
            if candidate is not None:
                return CompressionSettings.from_value(candidate)
        return self.settings

    def compress(
        self, features: LongVUVideoFeatures, prompt_ids: Sequence[int], settings: CompressionSettings
    ) -> tuple[torch.Tensor, dict]:
        """The video's tokens for this prompt (budget, frame choice, resolution mixing or STC) and the report."""
        video_token = self.config.video_token_id
        placeholders = sum(1 for token in prompt_ids if token == video_token)
        if placeholders != 1:
            raise ValueError(
                f"prompt_token_ids: the prompt holds {placeholders} video placeholder(s) (id {video_token}) for one "
                "video: write exactly one"
            )
        ids = torch.tensor([list(prompt_ids)], device=self.encoder_device)
        with torch.no_grad():
            output = self.encoder.get_video_features(
                None, video_features=features, prompt_input_ids=ids, prompt_attention_mask=torch.ones_like(ids),
                compression_settings=settings,
            )
        return output.pooler_output[0].detach().cpu(), output.compression[0]

    def sampling_params(self, params=None):
        """The caller's `SamplingParams` (default: greedy, 128 tokens), with the video/image placeholders and the
        checkpoint's `suppress_tokens` never generated, as in `generate`."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=DEFAULT_MAX_TOKENS) if params is None else params.clone()
        suppressed = {self.config.video_token_id, self.config.image_token_id}
        suppressed |= set(self._generation_suppress_tokens())
        vocab_size = self.config.text_config.vocab_size
        bias = dict(params.logit_bias or {})
        bias.update({token: float("-inf") for token in suppressed if 0 <= token < vocab_size})
        params.logit_bias = bias
        return params

    def _generation_suppress_tokens(self) -> list[int]:
        if not hasattr(self, "_suppress_tokens"):
            from transformers import GenerationConfig

            try:
                generation_config = GenerationConfig.from_pretrained(self.model_path)
            except OSError:  # no generation_config.json
                generation_config = None
            self._suppress_tokens = list(getattr(generation_config, "suppress_tokens", None) or [])
        return self._suppress_tokens

    def prepare(self, requests: Iterable, sampling_params=None, compression_settings=None) -> list[dict]:
        """Encode each distinct video once (for the largest context its requests ask for), then compress it for each
        request's prompt."""
        requests = [_as_request(item) for item in requests]
        plans = []
        for index, request in enumerate(requests):
            if (request.question is None) == (request.prompt_token_ids is None):
                raise ValueError(f"requests[{index}]: give a `question` or `prompt_token_ids` (one of them)")
            settings = self._settings_for(request, compression_settings)
            resolved = settings.resolve(self.config)
            video = request.video
            video_key = str(video) if isinstance(video, (str, os.PathLike)) else id(video)
            plans.append((request, settings, (video_key, resolved.dino_threshold), resolved))
        encoding_settings: dict = {}
        for _, settings, key, resolved in plans:  # the largest room for frames among the requests on a video
            room = resolved.max_context_length - resolved.context_margin
            if key not in encoding_settings or room > encoding_settings[key][0]:
                encoding_settings[key] = (room, settings)
        encoded: dict = {}
        prepared = []
        for request, settings, key, _ in plans:
            if key not in encoded:
                encoded[key] = self.encode(request.video, compression_settings=encoding_settings[key][1])
            if request.prompt_token_ids is not None:
                ids = [int(t) for t in request.prompt_token_ids]
            else:
                ids = self.prompt_token_ids(request.question, request.history, request.system)
            tokens, report = self.compress(encoded[key], ids, settings)
            params = request.sampling_params if request.sampling_params is not None else sampling_params
            prepared.append({
                "prompt": {"prompt_token_ids": ids, "multi_modal_data": {"video": [tokens]}},
                "params": self.sampling_params(params),
                "compression": report,
            })
        return prepared


def _answer(request_id: str, output, prepared: dict) -> LongVUAnswer:
    """vLLM's `RequestOutput` of one request as a `LongVUAnswer`."""
    completion = output.outputs[0]
    return LongVUAnswer(
        request_id=request_id, text=completion.text, token_ids=list(completion.token_ids),
        finish_reason=completion.finish_reason, compression=prepared["compression"],
        prompt_token_ids=prepared["prompt"]["prompt_token_ids"], logprobs=completion.logprobs,
    )


class LongVUEngine(LongVUEncoder):
    """Videos and questions in, answers and compression reports out: this package encodes and compresses, vLLM's
    offline engine decodes (see the module docstring).

    Args:
        model, dtype, encoder_device, encoder_dtype, compression_settings: see `LongVUEncoder`.
        tensor_parallel_size: GPUs vLLM shards the language model over (vLLM's argument).
        **vllm_kwargs: any other `vllm.LLM` argument (`max_model_len`, `gpu_memory_utilization`, ...). Without
            `gpu_memory_utilization` on a GPU, vLLM gets what the encoder leaves free.

    Example:

    ```python
    >>> engine = LongVUEngine("LongVU_Qwen2_7B-hf")
    >>> [answer] = engine.generate([("video.mp4", "What happens?")])
    >>> print(answer.text, answer.compression.path)
    ```
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        tensor_parallel_size: int = 1,
        dtype: str | torch.dtype = "auto",
        encoder_device: str | torch.device | None = None,
        encoder_dtype: str | torch.dtype | None = None,
        compression_settings: CompressionSettings | Mapping | None = None,
        **vllm_kwargs: Any,
    ) -> None:
        from vllm import LLM

        super().__init__(model, dtype=dtype, encoder_device=encoder_device, encoder_dtype=encoder_dtype,
                         compression_settings=compression_settings)
        self.llm = LLM(**self.vllm_arguments(tensor_parallel_size, vllm_kwargs))
        self._request_ids = itertools.count()
        self._pending: dict[str, dict] = {}

    # -- decoding ----------------------------------------------------------------------------------------------------

    def generate(
        self,
        requests: Iterable[LongVURequest | tuple[Any, str]],
        sampling_params=None,
        *,
        compression_settings: CompressionSettings | Mapping | None = None,
        use_tqdm: bool = False,
    ) -> list[LongVUAnswer]:
        """Answer a batch of requests (or (video, question) pairs), in order. Each distinct video is encoded once;
        vLLM schedules all the questions together. `sampling_params`: vLLM's `SamplingParams` (default: greedy,
        128 tokens); `compression_settings`: this call's budget and thresholds."""
        prepared = self.prepare(requests, sampling_params, compression_settings)
        if not prepared:
            return []
        outputs = self.llm.generate(
            [p["prompt"] for p in prepared], [p["params"] for p in prepared], use_tqdm=use_tqdm
        )
        return [_answer(output.request_id, output, p) for output, p in zip(outputs, prepared)]

    def add_request(
        self,
        request: LongVURequest | tuple[Any, str],
        sampling_params=None,
        *,
        compression_settings: CompressionSettings | Mapping | None = None,
        request_id: str | None = None,
    ) -> str:
        """Queue one request in vLLM's running engine (continuous batching: it joins the requests being decoded at
        the next `step`). Returns its id."""
        [prepared] = self.prepare([request], sampling_params, compression_settings)
        request_id = request_id or f"longvu-{next(self._request_ids)}"
        if request_id in self._pending:
            raise ValueError(f"request_id {request_id!r} is already running")
        self.llm.llm_engine.add_request(request_id, prepared["prompt"], prepared["params"])
        self._pending[request_id] = prepared
        return request_id

    def step(self) -> list[LongVUAnswer]:
        """One scheduling step of vLLM's engine; returns the requests that finished in it."""
        finished = []
        for output in self.llm.llm_engine.step():
            if output.finished and output.request_id in self._pending:
                finished.append(_answer(output.request_id, output, self._pending.pop(output.request_id)))
        return finished

    def has_unfinished_requests(self) -> bool:
        return self.llm.llm_engine.has_unfinished_requests()


class AsyncLongVUEngine(LongVUEncoder):
    """`LongVUEncoder` with vLLM's async engine: each answer streams as it is decoded, requests join the running
    batch as they arrive (what `longvu_hf.integrations.vllm.server` serves). Same arguments as `LongVUEngine`.

    Example:

    ```python
    >>> engine = AsyncLongVUEngine("LongVU_Qwen2_7B-hf")
    >>> async for delta, answer in engine.stream(LongVURequest(video="video.mp4", question="What happens?")):
    ...     print(delta, end="")
    ```
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        tensor_parallel_size: int = 1,
        dtype: str | torch.dtype = "auto",
        encoder_device: str | torch.device | None = None,
        encoder_dtype: str | torch.dtype | None = None,
        compression_settings: CompressionSettings | Mapping | None = None,
        **vllm_kwargs: Any,
    ) -> None:
        import threading

        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        super().__init__(model, dtype=dtype, encoder_device=encoder_device, encoder_dtype=encoder_dtype,
                         compression_settings=compression_settings)
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**self.vllm_arguments(tensor_parallel_size, vllm_kwargs)))
        self._encoding = threading.Lock()  # one video through the towers at a time
        self._request_ids = itertools.count()

    def prepare_one(self, request: LongVURequest, sampling_params=None, compression_settings=None) -> dict:
        """`prepare` for one request, the towers serialised (called from worker threads)."""
        with self._encoding:
            return self.prepare([request], sampling_params, compression_settings)[0]

    async def stream(
        self,
        request: LongVURequest | tuple[Any, str],
        sampling_params=None,
        *,
        compression_settings: CompressionSettings | Mapping | None = None,
        request_id: str | None = None,
    ):
        """Yields `(new_text, None)` as tokens are decoded, then `("", LongVUAnswer)` once the answer is complete.
        The towers and the compression run in a worker thread, so other answers keep streaming meanwhile."""
        import asyncio

        prepared = await asyncio.to_thread(self.prepare_one, _as_request(request), sampling_params,
                                           compression_settings)
        async for item in self.stream_prepared(prepared, request_id):
            yield item

    async def stream_prepared(self, prepared: dict, request_id: str | None = None):
        """`stream` for a request that `prepare_one` made."""
        request_id = request_id or f"longvu-{next(self._request_ids)}"
        text = ""
        async for output in self.llm.generate(prepared["prompt"], prepared["params"], request_id):
            completion = output.outputs[0]
            if completion.text != text:
                yield completion.text[len(text):], None
                text = completion.text
            if output.finished:
                yield "", _answer(request_id, output, prepared)

    def shutdown(self) -> None:
        self.llm.shutdown()


__all__ = ["AsyncLongVUEngine", "LongVUAnswer", "LongVUEncoder", "LongVUEngine", "LongVURequest", "load_encoder"]
