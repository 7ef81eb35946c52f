"""LongVU as an lmms-eval model: `lmms-eval --model longvu --model_args pretrained=DIR --tasks videomme ...`.

`pip install "longvu-hf[lmms-eval]"` installs lmms-eval next to this package; lmms-eval then finds the model through
the `lmms_eval.models` entry point that `setup.cfg` declares (lmms-eval >= 0.7 reads that group when it builds its
model registry), so nothing in lmms-eval is patched and no `trust_remote_code` is needed.

What the model does for each question (a chat request, `is_simple = False`: lmms-eval hands over the task's messages):
the model is loaded by the library (`longvu_hf.loading`); each video file or URL is streamed into the towers once
(`longvu_hf.session.VideoSession`, under the local user's input policy, with the sampling given here: `fps`,
`max_frames`, ... or a benchmark's official `protocol`); the chat template renders the text with one placeholder per
video (`longvu_hf.chat`'s tokenization rule); `model.generate` answers a left-padded batch, and the answer is the
decoded new tokens: the same answer as the README's `apply_chat_template(..., tokenize=True)` + `generate` path.
Questions with images (or in-memory videos) go through the processor's one-shot path instead.

Failures are failures: lmms-eval's command line catches every `Exception`, logs it and exits with status 0, so a run
whose model could not load, or that could not answer a question (a missing video, a prompt that leaves no room for the
video), ends here with `LongVUEvaluationError`, a `SystemExit` with status 1, after printing the traceback. With
several processes (`accelerate launch`), the failing process exits and the launcher stops the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from loguru import logger as eval_logger
from tqdm import tqdm

from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages

from .. import loading
from ..chat import tokenize_chat, tokenize_chats
from ..media_inputs import InputPolicy, resolve_media
from ..modeling.video_features import LongVUVideoFeatures
from ..session import VideoSession, check_bounds, plan_budget

# lmms-eval's own default when a task gives no `max_new_tokens` (its Qwen2.5-VL chat model uses the same).
DEFAULT_MAX_NEW_TOKENS = 128
DTYPE_CHOICES = loading.DTYPE_CHOICES
# Config fields the model arguments may set at load time (the token budget and the official per-benchmark thresholds).
CONFIG_FIELDS = ("max_context_length", "context_margin", "stc_threshold", "dino_threshold")


class LongVUEvaluationError(SystemExit):
    """The LongVU lmms-eval model could not load or answer; the process exits with status 1 and this message.

    A `SystemExit` rather than an `Exception` because lmms-eval's command line turns every `Exception` into a log line
    and exit status 0. Python callers of `lmms_eval.evaluator.simple_evaluate` can catch it by name; the original
    error is its `__cause__`.
    """

    def __init__(self, message: str):
        super().__init__(message)  # SystemExit with a string: Python prints it to stderr and exits with status 1


@contextlib.contextmanager
def failures_exit_nonzero(action: str) -> Iterator[None]:
    """Turn any error raised while doing `action` into `LongVUEvaluationError`, printing its traceback first."""
    try:
        yield
    except LongVUEvaluationError:
        raise
    except Exception as error:
        traceback.print_exc()
        raise LongVUEvaluationError(f"longvu (lmms-eval): {action} failed: {type(error).__name__}: {error}") from error


def _optional(value: Any) -> Any:
    """lmms-eval passes model arguments as parsed strings: "" and "None" mean "not set"."""
    return None if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")) else value


def _optional_float(value: Any) -> float | None:
    value = _optional(value)
    return None if value is None else float(value)


def _optional_int(value: Any) -> int | None:
    value = _optional(value)
    return None if value is None else int(value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def generation_settings(gen_kwargs: dict, default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> dict:
    """`generate` keyword arguments from a task's `generation_kwargs`, with lmms-eval's conventions: temperature 0
    (the default) means greedy decoding whatever `do_sample` says; `until` is applied to the text afterwards.

    Example:

    ```python
    >>> generation_settings({"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False})
    {'max_new_tokens': 16, 'do_sample': False, 'num_beams': 1}
    ```
    """
    temperature = float(_optional(gen_kwargs.get("temperature")) or 0.0)
    do_sample = temperature > 0
    settings = {
        "max_new_tokens": int(_optional(gen_kwargs.get("max_new_tokens")) or default_max_new_tokens),
        "do_sample": do_sample,
        "num_beams": int(_optional(gen_kwargs.get("num_beams")) or 1),
    }
    if do_sample:
        settings["temperature"] = temperature
        if _optional(gen_kwargs.get("top_p")) is not None:
            settings["top_p"] = float(gen_kwargs["top_p"])
    return settings


def cut_at_stop_strings(text: str, until: Any) -> str:
    """The text up to the first of the task's `until` strings (a string or a list; empty ones are ignored)."""
    stops = [until] if isinstance(until, str) else list(until or [])
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


@dataclass
class PreparedRequest:
    """One lmms-eval request turned into what the LongVU processor takes."""

    index: int
    context: str
    gen_kwargs: dict
    messages: list[dict]  # chat messages whose media blocks are bare placeholders ({"type": "video"})
    videos: list[Any] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    clip: tuple[float | None, float | None] = (None, None)  # (start, end) seconds of the video, if the task gives them

    def batch_key(self) -> str:
        """Requests with the same key can share one processor call and one `generate` call."""
        return json.dumps(
            [self.gen_kwargs, self.clip, bool(self.videos), bool(self.images)], sort_keys=True, default=str
        )


def _video_source_and_clip(url: Any, start: float | None, end: float | None) -> tuple[Any, float | None, float | None]:
    """lmms-eval gives a video as a path/URL, or as a dict holding it with `video_start`/`video_end` seconds."""
    if isinstance(url, dict):
        source = url.get("video") or url.get("url") or url.get("path")
        start = url.get("video_start", start)
        end = url.get("video_end", end)
        if source is None:
            raise ValueError(f"A video given as a dict needs a 'video', 'url' or 'path' entry: {url}")
        return source, _optional_float(start), _optional_float(end)
    return url, _optional_float(start), _optional_float(end)


def prepare_chat_request(index: int, context: str, gen_kwargs: dict, chat_messages: ChatMessages) -> PreparedRequest:
    """Messages with placeholders and the media list, in the order the chat template writes the placeholders."""
    messages, videos, images, clips = [], [], [], set()
    for message in chat_messages.messages:
        content = []
        for block in message.content:
            if block.type == "text":
                content.append({"type": "text", "text": block.text})
            elif block.type == "video":
                source, start, end = _video_source_and_clip(block.url, block.start_time, block.end_time)
                videos.append(source)
                clips.add((start, end))
                content.append({"type": "video"})
            elif block.type == "image":
                images.append(block.url)
                content.append({"type": "image"})
            else:
                raise ValueError(f"LongVU takes text, videos and images; this question holds {block.type!r} input")
        messages.append({"role": message.role, "content": content})
    if len(clips) > 1:
        raise ValueError("the videos of one question have different clip bounds; LongVU samples them alike")
    clip = clips.pop() if clips else (None, None)
    return PreparedRequest(index, context, dict(gen_kwargs), messages, videos, images, clip)


class LongVULmmsEvalModel(lmms):
    """LongVU for lmms-eval, registered as `--model longvu` (alias `longvu_hf`).

    Model arguments (`--model_args key=value,...`):

    - `pretrained`: a converted LongVU folder or Hub id; an official `Vision-CAIR/LongVU_*` id is converted on first
      use, as `longvu ask` does.
    - `device` (`auto`: CUDA if visible, else CPU; with several processes each takes its own GPU), `dtype`
      (`auto`: bfloat16 on GPU, the checkpoint's on CPU; or bfloat16/float16/float32), `attn_implementation`,
      `batch_size` (left-padded batches; answers equal one-by-one answers), `trust_remote_code` (not needed: this
      package is installed).
    - Sampling, handed to the processor for every video: `fps`, `max_frames` (with `max_frames_mode`, `stride` or
      `uniform`), `num_frames`, `video_backend`. Clip bounds a task gives (`video_start`/`video_end`) are honoured.
    - `protocol`: `videomme`, `mlvu`, `egoschema` or `mvbench` applies the official LongVU script's sampling, frame
      cap and thresholds for that benchmark (`longvu_hf.evaluation.get_protocol`); explicit arguments win.
    - Token budget: `max_context_length`, `context_margin`, `max_visual_tokens` (a cap per video); thresholds:
      `stc_threshold`, `dino_threshold`. All passed to `generate` as `compression_settings` (the config is unchanged).
    - `max_new_tokens`: used when a task gives none (default 128); `system_prompt`.
    - `engine`: `transformers` (default: `generate`, batched) or `vllm`: the videos are encoded here and the answers
      decoded by vLLM (`longvu_hf.integrations.vllm.LongVUEngine`; `pip install "longvu-hf[vllm]"`), with
      `tensor_parallel_size` GPUs; one process (vLLM shards the model itself), questions with exactly one video.

    Example:

    ```bash
    lmms-eval --model longvu --model_args pretrained=LongVU_Qwen2_7B-hf,protocol=videomme --tasks videomme \\
        --batch_size 1 --output_path results/
    ```

    ```python
    >>> from longvu_hf.integrations.lmms_eval import LongVULmmsEvalModel
    >>> lm = LongVULmmsEvalModel(pretrained="LongVU_Qwen2_7B-hf", fps=0.5, max_frames=1000)  # doctest: +SKIP
    >>> lm.sampling_kwargs  # doctest: +SKIP
    {'fps': 0.5, 'max_frames': 1000}
    ```
    """

    is_simple = False

    def __init__(
        self,
        pretrained: str = "Vision-CAIR/LongVU_Qwen2_7B",
        device: str | None = "auto",
        dtype: str = "auto",
        batch_size: int | str = 1,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        protocol: str | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        max_frames_mode: str | None = None,
        num_frames: int | None = None,
        video_backend: str | None = None,
        max_visual_tokens: int | None = None,
        max_context_length: int | None = None,
        context_margin: int | None = None,
        stc_threshold: float | None = None,
        dino_threshold: float | None = None,
        max_new_tokens: int | None = None,
        system_prompt: str | None = None,
        engine: str = "transformers",
        tensor_parallel_size: int | str = 1,
        **unknown_arguments: Any,
    ) -> None:
        super().__init__()
        with failures_exit_nonzero(f"loading pretrained={pretrained}"):
            if unknown_arguments:
                raise ValueError(
                    f"unknown model arguments {sorted(unknown_arguments)}; see `help(LongVULmmsEvalModel)` for the list"
                )
            # lmms-eval's evaluator reads `accelerator`. The process layout comes from the launcher's environment:
            # on a machine without CUDA, `accelerate launch --multi_gpu` starts gloo processes whose Accelerator
            # reports a single process, and lmms-eval itself shards by RANK/WORLD_SIZE.
            self.accelerator = Accelerator()
            self._rank = int(os.environ.get("RANK", self.accelerator.process_index))
            self._world_size = int(os.environ.get("WORLD_SIZE", self.accelerator.num_processes))
            self._device = self._pick_device(device)
            self.batch_size_per_gpu = int(batch_size)
            if self.batch_size_per_gpu < 1:
                raise ValueError(f"batch_size must be at least 1, got {batch_size}")
            self.max_visual_tokens = _optional_int(max_visual_tokens)
            self.default_max_new_tokens = _optional_int(max_new_tokens) or DEFAULT_MAX_NEW_TOKENS
            self.system_prompt = self._resolve_system_prompt(system_prompt) if _optional(system_prompt) else None

            config_overrides, self.sampling_kwargs = self._settings(
                _optional(protocol),
                {"max_context_length": _optional_int(max_context_length),
                 "context_margin": _optional_int(context_margin),
                 "stc_threshold": _optional_float(stc_threshold),
                 "dino_threshold": _optional_float(dino_threshold)},
                {"fps": _optional_float(fps), "max_frames": _optional_int(max_frames),
                 "max_frames_mode": _optional(max_frames_mode), "num_frames": _optional_int(num_frames),
                 "video_backend": _optional(video_backend)},
            )
            unknown = sorted(set(config_overrides) - set(CONFIG_FIELDS))
            if unknown:
                raise ValueError(f"the LongVU config has no per-call field(s) {unknown}")
            # Per-call compression settings (the model's config stays as loaded), checked here once.
            self.compression_settings = {**config_overrides, "max_visual_tokens": self.max_visual_tokens}
            self.engine = str(_optional(engine) or "transformers")
            self._engine = None
            if self.engine == "vllm":
                self._engine = self._start_vllm(str(pretrained), dtype, int(tensor_parallel_size))
                self._model, self.processor = self._engine.encoder, None
            elif self.engine == "transformers":
                self._model, self.processor = self._load(
                    str(pretrained), dtype, _optional(attn_implementation), _as_bool(trust_remote_code)
                )
            else:
                raise ValueError(f"engine={engine}: choose transformers or vllm")
            plan_budget(self._model.config, 0, self.compression_settings)  # the one budget check, before any question
        eval_logger.info(
            f"longvu (process {self._rank + 1}/{self._world_size}): {pretrained} on {self._device}, sampling "
            f"{self.sampling_kwargs or 'the processor defaults'}, max_visual_tokens={self.max_visual_tokens}"
        )

    # -- loading -----------------------------------------------------------------------------------------------------

    def _pick_device(self, requested: str | None) -> torch.device:
        requested = str(_optional(requested) or "auto")
        if self._world_size > 1 and requested in ("auto", "cuda"):
            # One GPU per process, as `accelerate launch` numbers them; without CUDA every process runs on the CPU.
            local_rank = int(os.environ.get("LOCAL_RANK", self.accelerator.local_process_index))
            return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        return torch.device(loading.pick_device(requested, option="device"))

    @contextlib.contextmanager
    def _main_process_first(self) -> Iterator[None]:
        """The main process runs the block first (e.g. converting an official checkpoint), then the others."""
        import torch.distributed as dist

        synchronised = self._world_size > 1 and dist.is_available() and dist.is_initialized()
        if synchronised and self._rank != 0:
            dist.barrier()
        yield
        if synchronised and self._rank == 0:
            dist.barrier()

    @staticmethod
    def _settings(protocol: str | None, config_fields: dict, sampling: dict) -> tuple[dict, dict]:
        """(config overrides, processor sampling kwargs): the protocol's official settings, then explicit arguments."""
        config_overrides, sampling_kwargs = {}, {}
        if protocol is not None:
            from ..evaluation.protocols import get_protocol
            from ..evaluation.sampling import video_sampling_kwargs

            official = get_protocol(protocol, "reference")
            config_overrides.update(official.model_overrides)
            sampling_kwargs.update(video_sampling_kwargs(official))
        config_overrides.update({name: value for name, value in config_fields.items() if value is not None})
        sampling_kwargs.update({name: value for name, value in sampling.items() if value is not None})
        return config_overrides, sampling_kwargs

    def _load(self, pretrained: str, dtype: str, attn_implementation: str | None, trust_remote_code: bool):
        """The library's loading (`longvu_hf.loading`: folder, Hub id, official id converted on first use, adapter
        folder); errors name `pretrained=`/`dtype=`. `trust_remote_code` is accepted and not needed: this package
        registers LongVU with transformers."""
        torch_dtype = loading.pick_dtype(dtype, self._device.type, option="dtype")
        # An official id is converted once, by the main process, while the others wait.
        with self._main_process_first():
            folder = loading.resolve_model(pretrained, quiet=self._rank != 0, option="pretrained")
        return loading.load_model_and_processor(folder, pretrained, str(self._device), torch_dtype, quiet=True,
                                                option="pretrained", attn_implementation=attn_implementation)

    def _start_vllm(self, pretrained: str, dtype: str, tensor_parallel_size: int):
        """A `LongVUEngine` (the towers here, the language model in vLLM) on the converted folder."""
        if self._world_size > 1:
            raise ValueError("engine=vllm runs in one process (vLLM shards the model over tensor_parallel_size GPUs); "
                             "start lmms-eval without accelerate launch")
        if tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size={tensor_parallel_size}: must be at least 1")
        loading.pick_dtype(dtype, self._device.type, option="dtype")  # refuses unknown dtypes in one line
        try:
            import vllm  # noqa: F401

            from .vllm import LongVUEngine
        except ImportError as error:
            raise ValueError(f"engine=vllm needs vLLM ({error}): pip install 'longvu-hf[vllm]'") from None
        folder = loading.resolve_model(pretrained, option="pretrained")
        return LongVUEngine(folder, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                            encoder_device=str(self._device))

    # -- lmms-eval's model interface ---------------------------------------------------------------------------------

    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self._engine.tokenizer if self._engine is not None else self.processor.tokenizer

    @property
    def config(self):
        return self._model.config

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def eot_token_id(self):
        return self.tokenizer.eos_token_id

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise LongVUEvaluationError(
            "longvu (lmms-eval): loglikelihood (multiple-choice by scoring) is not supported; use generation tasks"
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise LongVUEvaluationError("longvu (lmms-eval): multi-round generation is not supported")

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Answers every request; any failure ends the run with `LongVUEvaluationError` (status 1)."""
        prepared = [self._prepare(index, request) for index, request in enumerate(requests)]
        batches: dict[str, list[PreparedRequest]] = {}
        for item in prepared:
            batches.setdefault(item.batch_key(), []).append(item)
        results: list[GenerationResult | None] = [None] * len(prepared)
        progress = tqdm(total=len(prepared), disable=self.rank != 0, desc="LongVU answering")
        for group in batches.values():
            for start in range(0, len(group), self.batch_size):
                batch = group[start : start + self.batch_size]
                for item, result in zip(batch, self._answer_batch(batch, requests)):
                    results[item.index] = result
                    self.cache_hook.add_partial("generate_until", (item.context, item.gen_kwargs), result.text)
                progress.update(len(batch))
        progress.close()
        return results

    # -- one batch ---------------------------------------------------------------------------------------------------

    def _prepare(self, index: int, request: Instance) -> PreparedRequest:
        context, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
        with failures_exit_nonzero(f"reading question {doc_id} of task {task}"):
            messages = doc_to_messages(self.task_dict[task][split][doc_id])
            if self.system_prompt:
                messages = self._apply_system_prompt(messages, self.system_prompt)
            return prepare_chat_request(index, context, gen_kwargs, ChatMessages(messages=messages))

    def _describe(self, batch: list[PreparedRequest], requests: list[Instance]) -> str:
        names = []
        for item in batch:
            _, _, _, doc_id, task, _ = requests[item.index].args
            media = ", ".join(str(v) for v in item.videos + [f"<{len(item.images)} image(s)>"] * bool(item.images))
            names.append(f"question {doc_id} of task {task}" + (f" ({media})" if media else ""))
        return "answering " + "; ".join(names)

    @torch.inference_mode()
    def _answer_batch(self, batch: list[PreparedRequest], requests: list[Instance]) -> list[GenerationResult]:
        with failures_exit_nonzero(self._describe(batch, requests)):
            if self._engine is not None:
                return self._answer_with_vllm(batch)
            inputs = self._streamed_inputs(batch)
            if inputs is None:
                inputs = self._processor_inputs(batch)
            settings = generation_settings(batch[0].gen_kwargs, self.default_max_new_tokens)
            output = self._model.generate(**inputs, **settings, compression_settings=self.compression_settings)
            # `generate` returns the prompt as given (one placeholder per video) followed by the new tokens.
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
            pad_id = self.tokenizer.pad_token_id
            results = []
            for item, text, tokens in zip(batch, texts, new_tokens):
                answer = cut_at_stop_strings(text, item.gen_kwargs.get("until"))
                count = int((tokens != pad_id).sum()) if pad_id is not None else int(tokens.numel())
                results.append(GenerationResult(text=answer, token_counts=TokenCounts(output_tokens=count)))
                eval_logger.debug(f"longvu: {item.context!r} -> {answer!r}")
            return results

    def _answer_with_vllm(self, batch: list[PreparedRequest]) -> list[GenerationResult]:
        """The batch decoded by vLLM: each video encoded once here (streamed, `LongVUEngine.encode`), the prompts
        tokenized by `longvu_hf.chat`, the task's generation settings as vLLM's `SamplingParams`."""
        from vllm import SamplingParams

        from .vllm import LongVURequest

        settings = generation_settings(batch[0].gen_kwargs, self.default_max_new_tokens)
        if settings["num_beams"] > 1:
            raise ValueError(f"num_beams={settings['num_beams']}: engine=vllm decodes greedily or by sampling")
        params = SamplingParams(temperature=settings.get("temperature", 0.0), top_p=settings.get("top_p", 1.0),
                                max_tokens=settings["max_new_tokens"])
        tokenizer, encoded, requests = self._engine.tokenizer, {}, []
        for item in batch:
            if len(item.videos) != 1 or item.images:
                raise ValueError("engine=vllm answers questions holding exactly one video and no image")
            video = item.videos[0]
            if not isinstance(video, (str, os.PathLike)):
                raise ValueError(f"engine=vllm takes videos as paths or URLs, got {type(video).__name__}")
            if str(video) not in encoded:
                encoded[str(video)] = self._engine.encode(str(video), compression_settings=self.compression_settings,
                                                          **self._sampling([item]))
            ids = tokenize_chat(tokenizer, item.messages, tokenizer=tokenizer, return_tensors=None)["input_ids"]
            requests.append(LongVURequest(video=encoded[str(video)], prompt_token_ids=list(ids)))
        answers = self._engine.generate(requests, params, compression_settings=self.compression_settings)
        return [GenerationResult(text=cut_at_stop_strings(answer.text, item.gen_kwargs.get("until")),
                                 token_counts=TokenCounts(output_tokens=len(answer.token_ids)))
                for item, answer in zip(batch, answers)]

    def _sampling(self, batch: list[PreparedRequest]) -> dict[str, Any]:
        """The processor's sampling options for the batch's videos: the protocol's, and the task's clip."""
        kwargs: dict[str, Any] = dict(self.sampling_kwargs)
        start, end = batch[0].clip
        if start is not None:
            kwargs["start_time"] = start
        if end is not None:
            kwargs["end_time"] = end
        return kwargs

    def _streamed_inputs(self, batch: list[PreparedRequest]) -> dict | None:
        """Prompts and `video_features` for a batch whose media are video files or URLs only (None otherwise): each
        video is decoded a chunk at a time and encoded as the chunks arrive (`iter_video_chunks` +
        `encode_video_stream`), so host memory does not grow with the video's length."""
        videos = [video for item in batch for video in item.videos]
        if not videos or any(item.images for item in batch):
            return None
        if not all(isinstance(video, (str, os.PathLike)) for video in videos):
            return None
        kwargs = self._sampling(batch)
        # Each video streamed into the towers once (a download is deleted once encoded): the library's session.
        encoded = [VideoSession.open(self._model, self.processor, str(video), policy=InputPolicy.local_user(),
                                     compression_settings=self.compression_settings, **kwargs).features
                   for video in videos]
        # One placeholder per video, with the one chat-tokenization rule (`longvu_hf.chat`), left-padded.
        inputs = tokenize_chats(self.processor, [item.messages for item in batch])
        first = encoded[0]
        features = LongVUVideoFeatures([part[0] for part in encoded], fingerprint=first.fingerprint,
                                       settings=first.settings)
        return {**{key: value.to(self._device) for key, value in inputs.items()}, "video_features": features}

    def _processor_inputs(self, batch: list[PreparedRequest]):
        texts = [self.processor.apply_chat_template(item.messages, add_generation_prompt=True, tokenize=False)
                 for item in batch]
        videos = [video for item in batch for video in item.videos]
        images = [image for item in batch for image in item.images]
        kwargs: dict[str, Any] = self._sampling(batch) if videos else {}
        with contextlib.ExitStack() as resolved:
            # Paths and URLs go through the input policy once (longvu_hf.media_inputs): a task's "video" that is
            # text, a playlist or an internal URL is refused before decoding; downloads are deleted afterwards.
            policy = InputPolicy.local_user()
            for position, video in enumerate(videos):
                if isinstance(video, (str, os.PathLike)):
                    source = resolved.enter_context(resolve_media(video, policy))
                    check_bounds(source, policy, kwargs)
                    videos[position] = str(source.path)
            # The rendered template already holds its special tokens (Llama-3's BOS), as `apply_chat_template(...,
            # tokenize=True)` knows: do not add them twice.
            inputs = self.processor(
                text=texts, videos=videos or None, images=images or None, padding=True, return_tensors="pt",
                add_special_tokens=False, **kwargs,
            )
        return inputs.to(self._device)



__all__ = [
    "LongVUEvaluationError",
    "LongVULmmsEvalModel",
    "cut_at_stop_strings",
    "generation_settings",
    "prepare_chat_request",
]
