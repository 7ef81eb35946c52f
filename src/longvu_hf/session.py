"""One video, encoded once, asked many questions: the library layer under every front end (the `longvu` command, the
web page, the benchmark predictor, the lmms-eval model, the vLLM engine).

`VideoSession.open` resolves the video through `longvu_hf.media_inputs` under the caller's `InputPolicy` (a path, an
http(s) URL, uploaded bytes, a folder of frames, or frames already in memory), checks its decoding bounds, and streams
it into the towers once (`iter_video_chunks` + `encode_video_stream`: the host holds a few chunks of frames, not the
video). `ask` then answers a question (with earlier turns, a streamer, per-call compression settings and any
`generate` keyword) from the encoded video: only the question-dependent compression and the language model run.

The token budget of a call is worked out in one place, `plan_budget`, which checks the per-call settings and that the
prompt leaves room for the video; every refusal is a `BudgetError` (a `ValueError`) that front ends word in their own
terms (`error.describe(...)`). Unreadable videos raise `VideoReadError` (a `ValueError`) naming the video as the user
gave it; refused inputs raise `media_inputs.InputRefused`; a missing path `FileNotFoundError`.

Example:

```python
>>> from longvu_hf.loading import load_model
>>> from longvu_hf.media_inputs import InputPolicy
>>> from longvu_hf.session import VideoSession
>>> model, processor = load_model("LongVU_Qwen2_7B-hf")
>>> session = VideoSession.open(model, processor, "film.mp4", policy=InputPolicy.local_user(), fps=1.0)
>>> first = session.ask("What happens?", max_new_tokens=64)
>>> first.text, first.compression.path, first.budget.visual_budget
>>> second = session.ask("And then?", history=[("What happens?", first.text)])   # no decoding, no towers
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from .chat import tokenize_chat, video_chat_messages
from .configuration_longvu import CompressionSettings
from .media_inputs import InputPolicy, InputRefused, MediaSource, check_decode_bounds, resolve_media
from .modeling.compression_report import CompressionReport
from .modeling.video_encoder import video_token_budgets

# Progress stages reported by `VideoSession.open` (and the names front ends show).
DECODING = "decoding"
DINO = "DINOv2 (all frames)"
SIGLIP = "SigLIP (kept frames)"

# `progress(stage, count, total)`: `count` more frames went through `stage`; `total` is the number of sampled frames
# where the stage sees them all (decoding, DINOv2), None for SigLIP (the kept frames are known only at the end).
# A callback may raise (a deadline, say): the work in progress stops and the exception reaches the caller as it is.
ProgressCallback = Callable[[str, int, "int | None"], None]

THUMBNAIL_HEIGHT = 90  # what `longvu_hf.report` draws


# --------------------------------------------------------------------------------------------------------------------
# The token budget of one call
# --------------------------------------------------------------------------------------------------------------------


class BudgetError(ValueError):
    """A per-call setting out of range, or a prompt that leaves no room for the video.

    `setting` names the `CompressionSettings` field at fault and `value` its value; for a prompt without room,
    `prompt_tokens` and `minimum` (the smallest `max_context_length` that would do) are set as well. `describe`
    words the message with the caller's names for the settings.

    Example:

    ```python
    >>> try:
    ...     plan_budget(model.config, prompt_tokens=30, compression_settings={"context_margin": -1})
    ... except BudgetError as error:
    ...     print(error.describe(lambda name: "--" + name.replace("_", "-")))
    --context-margin -1: must be 0 or more
    ```
    """

    def __init__(
        self, setting: str, value: Any, reason: str, *, prompt_tokens: int | None = None,
        context_margin: int | None = None, minimum: int | None = None,
    ):
        self.setting, self.value, self.reason = setting, value, reason
        self.prompt_tokens, self.context_margin, self.minimum = prompt_tokens, context_margin, minimum
        super().__init__(self.describe())

    @property
    def no_room(self) -> bool:
        """True when the prompt leaves no room for the video (rather than a setting out of range)."""
        return self.prompt_tokens is not None

    def describe(self, name: Callable[[str], str] = lambda setting: setting) -> str:
        """The one-line message, with `name(setting)` for each setting (`--max-context-length`, say)."""
        if self.no_room:
            return (
                f"the prompt takes {self.prompt_tokens} tokens and the margin {self.context_margin}, which leaves no "
                f"room for the video in a context of {self.value} tokens; raise {name('max_context_length')} to at "
                f"least {self.minimum} or shorten the question"
            )
        return f"{name(self.setting)} {self.value}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class TokenBudget:
    """The token budget of one call: its resolved `CompressionSettings` (pass them to `generate`), the prompt's
    tokens without the video placeholder, and the tokens the video may take (`visual_budget`: what the context leaves,
    capped by `max_visual_tokens`). `to_dict()` gives the JSON of a report's "budget".

    Example:

    ```python
    >>> budget = plan_budget(model.config, prompt_tokens=30, compression_settings={"max_visual_tokens": 100})
    >>> budget.visual_budget, budget.settings.max_context_length
    (100, 8192)
    ```
    """

    settings: CompressionSettings
    prompt_tokens: int
    visual_budget: int

    @property
    def max_context_length(self) -> int:
        return self.settings.max_context_length

    @property
    def context_margin(self) -> int:
        return self.settings.context_margin

    @property
    def max_visual_tokens(self) -> int | None:
        return self.settings.max_visual_tokens

    def to_dict(self) -> dict[str, Any]:
        return {"max_context_length": self.max_context_length, "context_margin": self.context_margin,
                "max_visual_tokens": self.max_visual_tokens, "prompt_tokens": self.prompt_tokens,
                "visual_budget": self.visual_budget}


def merge_settings(
    base: CompressionSettings | Mapping | None, override: CompressionSettings | Mapping | None
) -> CompressionSettings:
    """`override`'s fields where set, `base`'s elsewhere (either may be a dict or None)."""
    base = CompressionSettings.from_value(dict(base) if isinstance(base, Mapping) else base)
    override = CompressionSettings.from_value(dict(override) if isinstance(override, Mapping) else override)
    return CompressionSettings.from_value(base, **dataclasses.asdict(override))


def plan_budget(
    config, prompt_tokens: int = 0, compression_settings: CompressionSettings | Mapping | None = None
) -> TokenBudget:
    """Check one call's settings against the model's `config` and work out the video's token budget for a prompt of
    `prompt_tokens` tokens (without its video placeholder), as the model plans it
    (`video_encoder.video_token_budgets`: `max_context_length - prompt - margin`, docs/reference.md §3-§5, capped by
    `max_visual_tokens`). Raises `BudgetError`; the config is never changed."""
    try:
        given = CompressionSettings.from_value(
            dict(compression_settings) if isinstance(compression_settings, Mapping) else compression_settings
        )
    except ValueError as error:
        raise BudgetError("compression_settings", "", str(error)) from None
    filled = {field.name: getattr(given, field.name) if getattr(given, field.name) is not None
              else getattr(config, field.name, None) for field in dataclasses.fields(given)}
    filled["max_visual_tokens"] = given.max_visual_tokens
    checks = (
        ("max_context_length", lambda v: v >= 1, "must be a positive number of tokens"),
        ("context_margin", lambda v: v >= 0, "must be 0 or more"),
        ("max_visual_tokens", lambda v: v is None or v >= 1, "must be at least 1"),
    )
    for setting, valid, reason in checks:
        if not valid(filled[setting]):
            raise BudgetError(setting, filled[setting], reason)
    settings = given.resolve(config)
    # The model's own arithmetic (one video, its placeholder counted in the prompt's length).
    _, visual_budget = video_token_budgets(int(prompt_tokens) + 1, 1, settings)
    if visual_budget < 1:
        raise BudgetError(
            "max_context_length", settings.max_context_length, "no room for the video", prompt_tokens=prompt_tokens,
            context_margin=settings.context_margin, minimum=prompt_tokens + settings.context_margin + 1,
        )
    return TokenBudget(settings=settings, prompt_tokens=int(prompt_tokens), visual_budget=int(visual_budget))


def count_prompt_tokens(inputs: Mapping[str, torch.Tensor], video_token_id: int) -> int:
    """The tokens of a one-prompt input without its video placeholders (what the video's budget is taken from)."""
    placeholders = int((inputs["input_ids"] == video_token_id).sum())
    mask = inputs.get("attention_mask")
    length = int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
    return length - placeholders


# --------------------------------------------------------------------------------------------------------------------
# Encoding a video once
# --------------------------------------------------------------------------------------------------------------------


class VideoReadError(ValueError):
    """A video the decoder or the processor cannot read; the message is one line naming it as the user gave it."""


@dataclasses.dataclass
class VideoInfo:
    """What is known about an encoded video: how the user named it, what was sampled, and (with `keep_thumbnails`)
    small JPEG thumbnails of every sampled frame for reports (a few KB each; the frames themselves are not kept)."""

    name: str
    kind: str  # "video", "frames" (a folder of frames) or "array" (frames in memory)
    num_frames: int
    video_size: tuple[int, int]  # (height, width) of the source
    frame_times: list[float] | None = None
    duration: float | None = None
    thumbnails: dict[int, bytes] | None = dataclasses.field(default=None, repr=False)

    def thumbnail_images(self, indices: Iterable[int]) -> dict:
        """PIL images of the kept thumbnails among `indices`."""
        from PIL import Image

        images = {}
        for index in indices:
            data = (self.thumbnails or {}).get(int(index))
            if data is not None:
                images[int(index)] = Image.open(io.BytesIO(data)).convert("RGB")
        return images


def _tower(model, name: str):
    """A tower module of the model for progress hooks (None if the model does not have it under that name)."""
    base = getattr(model, "model", model)
    for owner in (base, getattr(base, "video_encoder", None)):
        module = getattr(owner, name, None) if owner is not None else None
        if module is not None:
            return module
    return None


@contextlib.contextmanager
def tower_progress(model, progress: ProgressCallback | None, total: int | None) -> Iterator[None]:
    """Report the frames entering DINOv2 (all of them) and SigLIP (the kept ones) through `progress`, chunk by chunk
    (forward pre-hooks on the two towers, removed on exit)."""
    if progress is None:
        yield
        return

    def hook(stage: str, stage_total: int | None):
        def count(module, args, kwargs):
            pixels = kwargs.get("pixel_values", args[0] if args else None)
            if pixels is not None:
                progress(stage, len(pixels), stage_total)

        return count

    handles = []
    dino, siglip = _tower(model, "dino_tower"), _tower(model, "vision_tower")
    if dino is not None:
        handles.append(dino.register_forward_pre_hook(hook(DINO, total), with_kwargs=True))
    if siglip is not None:
        target = getattr(siglip, "embeddings", siglip)
        handles.append(target.register_forward_pre_hook(hook(SIGLIP, None), with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _unreadable(name: str, path: str | None, error: BaseException) -> VideoReadError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if path:
        reason = reason.replace(path, name)
    return VideoReadError(f"video {name}: cannot be read ({reason[:300]})")


def _jpeg_thumbnails(chunks: Iterable[dict], video_size: tuple[int, int], store: dict[int, bytes]) -> Iterator[dict]:
    """Pass the chunks on, keeping a small JPEG of every frame (uint8 pixels only) for reports."""
    from .report import thumbnail_from_pixels

    start = 0
    for chunk in chunks:
        pixels = chunk["pixel_values_videos"]
        if pixels.dtype == torch.uint8:
            for offset, frame in enumerate(pixels):
                buffer = io.BytesIO()
                thumbnail_from_pixels(frame, video_size, THUMBNAIL_HEIGHT).save(buffer, format="JPEG", quality=85)
                store[start + offset] = buffer.getvalue()
        start += len(pixels)
        yield chunk


def encode_video(
    model,
    processor,
    video: Any,
    *,
    name: str | None = None,
    compression_settings: CompressionSettings | Mapping | None = None,
    progress: ProgressCallback | None = None,
    keep_thumbnails: bool = False,
    **sampling: Any,
):
    """Stream one video into the towers: `processor.video_processor.iter_video_chunks(video, **sampling)` +
    `model.encode_video_stream`. `video` is a local path (file or folder of frames) or frames in memory, already
    checked by the caller (`VideoSession.open` does that). Returns `(LongVUVideoFeatures, VideoInfo)`; decoding
    errors raise `VideoReadError` naming `name`."""
    video_processor = processor.video_processor
    path = str(video) if isinstance(video, (str, os.PathLike)) else None
    label = name or path or "(frames in memory)"
    settings = CompressionSettings.from_value(
        dict(compression_settings) if isinstance(compression_settings, Mapping) else compression_settings
    )
    callback_error: list[BaseException] = []

    def report(stage: str, count: int, total: int | None) -> None:
        try:
            progress(stage, count, total)
        except BaseException as error:
            callback_error.append(error)
            raise

    reporting = report if progress is not None else None
    try:
        chunks = video_processor.iter_video_chunks(path if path is not None else video, **sampling)
        total = chunks.num_frames
        thumbnails: dict[int, bytes] | None = {} if keep_thumbnails else None
        stream: Iterable[dict] = chunks
        if thumbnails is not None:
            stream = _jpeg_thumbnails(chunks, chunks.video_size, thumbnails)
        decoding = contextlib.nullcontext()
        if reporting is not None and hasattr(video_processor, "frame_progress"):
            decoding = video_processor.frame_progress(lambda count: reporting(DECODING, count, total))
        with torch.no_grad(), decoding, tower_progress(model, reporting, total):
            features = model.encode_video_stream(stream, video_size=chunks.video_size, compression_settings=settings)
    except BaseException as error:
        if callback_error:  # the caller's own exception (it may have been re-raised from the decoding thread)
            raise callback_error[0] from None
        if isinstance(error, (ValueError, OSError, RuntimeError)):
            raise _unreadable(label, path, error) from None
        raise
    info = VideoInfo(name=label, kind="video" if path is not None else "array", num_frames=total,
                     video_size=tuple(int(v) for v in chunks.video_size), frame_times=chunks.timestamps,
                     thumbnails=thumbnails)
    return features, info


# --------------------------------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Answer:
    """One answer of a `VideoSession`: the text (special tokens removed, stripped), the compression report of the
    video for this question, the call's token budget, and the generated token ids.

    Example:

    ```python
    >>> answer = session.ask("What happens?")
    >>> answer.text, answer.compression.num_visual_tokens, answer.budget.visual_budget
    ```
    """

    text: str
    compression: CompressionReport
    budget: TokenBudget
    token_ids: torch.Tensor


def check_bounds(source: MediaSource, policy: InputPolicy, sampling: Mapping[str, Any]) -> int:
    """The frames that decoding `source` with the processor's `sampling` options (`fps`, `num_frames`, `max_frames`)
    will produce, checked against `policy` before any frame is decoded (`media_inputs.check_decode_bounds`; a frame
    cap counts). Raises `InputRefused`."""
    fps, num_frames, max_frames = sampling.get("fps"), sampling.get("num_frames"), sampling.get("max_frames")
    if num_frames is None and max_frames is not None:
        # The frames the rate would give, with the policy's frame cap left to the capped count.
        uncapped = check_decode_bounds(source, dataclasses.replace(policy, max_frames=None), fps=fps)
        if uncapped:  # 0: the length is unknown (and nothing bounds it)
            num_frames = min(int(uncapped), int(max_frames))
    return check_decode_bounds(source, policy, fps=fps, num_frames=num_frames)


class VideoSession:
    """A video encoded once (towers and aggregator) and the questions asked about it.

    Make one with `VideoSession.open` (from a path, URL, upload or frames), or from features you already have
    (`VideoSession(model, processor, features)`). `ask` answers; `compress` gives the compression report and budget
    of a question without an answer; `prompt` and `generate` split `ask` for callers that build their own prompts.
    The session keeps no state between questions: the history is passed to each call.

    Example:

    ```python
    >>> session = VideoSession.open(model, processor, "https://example.com/clip.mp4", policy=InputPolicy.public_page())
    >>> answer = session.ask("What happens?", max_new_tokens=32, streamer=TextStreamer(processor.tokenizer))
    >>> answer.compression.to_dict()   # JSON
    ```
    """

    def __init__(
        self, model, processor, features, info: VideoInfo | None = None,
        compression_settings: CompressionSettings | Mapping | None = None,
    ):
        self.model = model
        self.processor = processor
        self.features = features
        self.info = info
        self.compression_settings = CompressionSettings.from_value(
            dict(compression_settings) if isinstance(compression_settings, Mapping) else compression_settings
        )

    @classmethod
    def open(
        cls,
        model,
        processor,
        video: Any,
        *,
        policy: InputPolicy | None = None,
        display_name: str | None = None,
        upload: bool = False,
        work_dir: str | os.PathLike | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        num_frames: int | None = None,
        compression_settings: CompressionSettings | Mapping | None = None,
        progress: ProgressCallback | None = None,
        keep_thumbnails: bool = False,
        **sampling: Any,
    ) -> VideoSession:
        """Resolve `video` under `policy` (default: `InputPolicy.local_user()`), bound its decoding, and encode it
        once, streamed.

        `video`: a path (file or folder of frames), an http(s) URL, bytes, a `MediaSource` already resolved (left
        open), or frames in memory (an array or a list of frames: not resolved, the caller's). `fps`, `max_frames`,
        `num_frames` and `sampling` (`start_time`, `end_time`, `max_frames_mode`, `video_backend`,
        `do_sample_frames`, ...) go to the video processor. `compression_settings` are the session's defaults: the
        DINOv2 threshold and the largest context the encoding serves. `progress` gets `(stage, count, total)`;
        `keep_thumbnails` keeps small thumbnails for reports. A URL's download is deleted once the video is encoded.
        """
        policy = policy or InputPolicy.local_user()
        options = {key: value for key, value in (("fps", fps), ("max_frames", max_frames), ("num_frames", num_frames))
                   if value is not None}
        options.update({key: value for key, value in sampling.items() if value is not None})
        settings = CompressionSettings.from_value(
            dict(compression_settings) if isinstance(compression_settings, Mapping) else compression_settings
        )
        plan_budget(model.config, 0, settings)  # bad settings are refused before any decoding
        if not isinstance(video, (str, os.PathLike, bytes, bytearray, memoryview, MediaSource)):
            features, info = encode_video(model, processor, video, name=display_name, compression_settings=settings,
                                          progress=progress, keep_thumbnails=keep_thumbnails, **options)
            return cls(model, processor, features, info, settings)
        with contextlib.ExitStack() as stack:
            if isinstance(video, MediaSource):
                source = video
            else:
                name = display_name or (str(video) if isinstance(video, (str, os.PathLike)) else None)
                try:
                    source = stack.enter_context(resolve_media(video, policy, display_name=name, upload=upload,
                                                               work_dir=work_dir))
                except FileNotFoundError:
                    raise FileNotFoundError(
                        f"video {name}: no such file or folder; check the path (or give an http(s) URL)"
                    ) from None
                except InputRefused:
                    raise
                except ValueError as error:  # a container no decoder opens: one line naming the input
                    raise VideoReadError(str(error).strip().splitlines()[0]) from None
            check_bounds(source, policy, options)
            features, info = encode_video(model, processor, source.path, name=source.display_name,
                                          compression_settings=settings, progress=progress,
                                          keep_thumbnails=keep_thumbnails, **options)
            info.kind, info.duration = source.kind, source.duration
        return cls(model, processor, features, info, settings)

    # -- prompts and budgets -----------------------------------------------------------------------------------------

    def prompt(self, question: str, history: Sequence[tuple[str, str]] = (), system: str | None = None) -> dict:
        """`input_ids`/`attention_mask` of the chat (the earlier `(question, answer)` turns, then `question`), the
        video's one placeholder in the first user turn (`longvu_hf.chat`: one tokenization rule)."""
        return tokenize_chat(self.processor, video_chat_messages(list(history), question, system))

    def settings_for(self, compression_settings: CompressionSettings | Mapping | None = None) -> CompressionSettings:
        """The session's settings with a call's settings over them."""
        return merge_settings(self.compression_settings, compression_settings)

    def budget(self, prompt_inputs: Mapping[str, torch.Tensor],
               compression_settings: CompressionSettings | Mapping | None = None) -> TokenBudget:
        """The token budget of a prompt (from `prompt`) under the call's settings; raises `BudgetError`."""
        prompt_tokens = count_prompt_tokens(prompt_inputs, self.model.config.video_token_id)
        return plan_budget(self.model.config, prompt_tokens, self.settings_for(compression_settings))

    # -- answers -----------------------------------------------------------------------------------------------------

    def ask(
        self,
        question: str,
        history: Sequence[tuple[str, str]] = (),
        *,
        system: str | None = None,
        streamer: Any = None,
        compression_settings: CompressionSettings | Mapping | None = None,
        **generate_kwargs: Any,
    ) -> Answer:
        """Answer `question` about the video (after the earlier `history` turns). `generate_kwargs` go to
        `model.generate` (default: greedy, `max_new_tokens=128`); `streamer` receives the answer as it comes.
        Raises `BudgetError` when the settings are bad or the prompt leaves no room for the video."""
        return self.generate(self.prompt(question, history, system), streamer=streamer,
                             compression_settings=compression_settings, **generate_kwargs)

    def generate(
        self,
        prompt_inputs: Mapping[str, torch.Tensor],
        *,
        streamer: Any = None,
        compression_settings: CompressionSettings | Mapping | None = None,
        **generate_kwargs: Any,
    ) -> Answer:
        """`ask` for a prompt already tokenized (one video placeholder, one prompt)."""
        budget = self.budget(prompt_inputs, compression_settings)
        text_inputs = {key: prompt_inputs[key].to(self.model.device)
                       for key in ("input_ids", "attention_mask") if key in prompt_inputs}
        generate_kwargs.setdefault("max_new_tokens", 128)
        generate_kwargs.setdefault("do_sample", False)
        with torch.no_grad():
            output = self.model.generate(
                **text_inputs, video_features=self.features, streamer=streamer, compression_settings=budget.settings,
                return_dict_in_generate=True, **generate_kwargs,
            )
        new_tokens = output.sequences[0, text_inputs["input_ids"].shape[1]:]
        text = self.processor.decode(new_tokens, skip_special_tokens=True).strip()
        return Answer(text=text, compression=output.compression[0], budget=budget, token_ids=new_tokens)

    def compress(
        self,
        question: str,
        history: Sequence[tuple[str, str]] = (),
        *,
        system: str | None = None,
        compression_settings: CompressionSettings | Mapping | None = None,
    ) -> tuple[CompressionReport, TokenBudget]:
        """The compression of the video for `question` (which frames are kept, at which resolution, how many tokens)
        without generating an answer: the report and the budget."""
        prompt_inputs = self.prompt(question, history, system)
        budget = self.budget(prompt_inputs, compression_settings)
        with torch.no_grad():
            output = self.model.get_video_features(
                None, video_features=self.features,
                prompt_input_ids=prompt_inputs["input_ids"].to(self.model.device),
                prompt_attention_mask=prompt_inputs["attention_mask"].to(self.model.device),
                compression_settings=budget.settings,
            )
        return output.compression[0], budget


__all__ = [
    "Answer",
    "BudgetError",
    "DECODING",
    "DINO",
    "SIGLIP",
    "TokenBudget",
    "VideoInfo",
    "VideoReadError",
    "VideoSession",
    "check_bounds",
    "count_prompt_tokens",
    "encode_video",
    "merge_settings",
    "plan_budget",
    "tower_progress",
]
