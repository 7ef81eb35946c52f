"""The steps `ask`, `report` and `demo` share: the video, the inputs, the token budget, the model call, outputs."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from ..chat import tokenize_chat, video_chat_messages
from ..media_inputs import InputPolicy, InputRefused, MediaSource, check_decode_bounds, resolve_media
from ..modeling.compression import visual_budget
from .errors import CLIError
from .progress import count_sampled_frames, decoding_progress, encoding_progress, make_streamer


def effective_budget(
    config, prompt_tokens: int, max_context_length: int | None = None, context_margin: int | None = None,
    max_visual_tokens: int | None = None,
) -> dict:
    """Validate the token settings of one call and work out the video's token budget.

    `prompt_tokens` counts the prompt without its video placeholder. The model budgets the video as
    `visual_budget(max_context_length, prompt, margin)` (docs/reference.md §3-§5); `max_visual_tokens` caps that.
    Returns the call's `CompressionSettings` (`settings`, for `generate`/`get_video_features`), the resolved
    `max_context_length`, `context_margin`, `max_visual_tokens`, `prompt_tokens` and the resulting `visual_budget`.
    Raises `CLIError` when the settings are invalid or the prompt leaves no room.
    """
    from ..configuration_longvu import CompressionSettings

    given = {"max_context_length": max_context_length, "context_margin": context_margin,
             "max_visual_tokens": max_visual_tokens}
    try:
        settings = CompressionSettings(**given).resolve(config)
    except ValueError as error:  # "`name` must ..., got value": said with the option's name instead
        name, reason = str(error).split("`")[1], str(error).split("` ", 1)[1].rsplit(", got", 1)[0]
        raise CLIError(f"--{name.replace('_', '-')} {given[name]}: {reason}") from None
    room = visual_budget(settings.max_context_length, prompt_tokens, settings.context_margin)
    if room < 1:
        raise CLIError(
            f"the prompt takes {prompt_tokens} tokens and the margin {settings.context_margin}, which leaves no room "
            f"for the video in a context of {settings.max_context_length} tokens; raise --max-context-length to at "
            f"least {prompt_tokens + settings.context_margin + 1} or shorten the question"
        )
    return {
        "settings": settings,
        "max_context_length": settings.max_context_length,
        "context_margin": settings.context_margin,
        "max_visual_tokens": max_visual_tokens,
        "prompt_tokens": prompt_tokens,
        "visual_budget": room if max_visual_tokens is None else min(room, max_visual_tokens),
    }


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def check_video(value: str) -> MediaSource:
    """The command's video, resolved once under the local user's policy (`longvu_hf.media_inputs`): a local file or
    folder of frames, or an http(s) URL downloaded to a private temporary file (public addresses only, size-capped,
    deleted by `close()`). Text, playlists and other non-videos are refused here, before the model loads."""
    try:
        return resolve_media(value, InputPolicy.local_user(), display_name=value)
    except FileNotFoundError:
        raise CLIError(f"video {value}: no such file or folder; check the path (or give an http(s) URL)") from None
    except InputRefused as error:
        raise CLIError(str(error)) from None


@contextlib.contextmanager
def _resolved(video: MediaSource | Path | str):
    """`video` as a `MediaSource`; one resolved here is closed on exit (the caller's own is left open)."""
    if isinstance(video, MediaSource):
        yield video
        return
    with check_video(str(video)) as source:
        yield source


def prepare_inputs(
    processor, video: MediaSource | Path | str, question: str, fps: float | None, max_frames: int | None,
    quiet: bool, num_frames: int | None = None,
):
    """Chat prompt with one video, decoded and sampled by the processor; returns the inputs and the frame times.
    `video` is a `MediaSource` from `check_video`, or a path/URL that is resolved (and released) here."""
    with _resolved(video) as source:
        return _prepare_resolved(processor, source, question, fps, max_frames, quiet, num_frames)


def _check_bounds(source: MediaSource, fps: float | None, num_frames: int | None) -> None:
    """The local user's policy bounds (none by default), checked before any frame is decoded."""
    try:
        check_decode_bounds(source, InputPolicy.local_user(), fps=fps, num_frames=num_frames)
    except InputRefused as error:
        raise CLIError(str(error)) from None


def _unreadable(source: MediaSource, error: BaseException) -> CLIError:
    """One line for a video the decoder or processor cannot read, naming it as the user gave it (not the temporary
    file of a download)."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0].replace(str(source.path),
                                                                                   source.display_name)
    return CLIError(f"video {source.display_name}: cannot be read ({reason[:300]})")


def _prepare_resolved(
    processor, source: MediaSource, question: str, fps: float | None, max_frames: int | None, quiet: bool,
    num_frames: int | None,
):
    _check_bounds(source, fps, num_frames)
    video = source.path
    messages = [{"role": "user", "content": [{"type": "video", "path": str(video)}, {"type": "text", "text": question}]}]
    video_processor = processor.video_processor
    options = {"return_metadata": True}
    if fps is not None:
        options["fps"] = fps
    if max_frames is not None:
        options["max_frames"] = max_frames
    if num_frames is not None:
        options["num_frames"] = num_frames
    total = None if quiet else count_sampled_frames(video_processor, source, fps, max_frames, num_frames)
    try:
        with decoding_progress(video_processor, total, quiet):
            inputs = processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
                processor_kwargs=options,
            )
    except (ValueError, OSError, RuntimeError) as error:
        raise _unreadable(source, error) from None
    metadata = inputs.pop("video_metadata", None)
    times = None
    if metadata:
        with contextlib.suppress(Exception):
            times = [float(t) for t in metadata[0].timestamps]
    return inputs, times


def question_inputs(processor, question: str) -> dict:
    """The tokenized chat prompt for one more question about an already decoded video (one video placeholder)."""
    return tokenize_chat(processor, video_chat_messages([], question))


def call_settings(model, args):
    """The call's `CompressionSettings` from the command's options (the prompt is checked per question)."""
    return effective_budget(model.config, 0, args.max_context_length, args.context_margin, args.max_visual_tokens)[
        "settings"
    ]


def encode_video_file(model, processor, video: MediaSource, args, quiet: bool):
    """The video's towers and aggregator, once, for all the questions, streamed: frames are decoded a chunk at a time
    and encoded as they arrive (`iter_video_chunks` + `LongVUModel.encode_video_stream`), so host memory does not
    grow with the video's length. The features equal `encode_videos` on the processor's whole output."""
    fps, max_frames, num_frames = args.fps, args.max_frames, args.num_frames
    _check_bounds(video, fps, num_frames)
    options = {name: value for name, value in (("fps", fps), ("max_frames", max_frames), ("num_frames", num_frames))
               if value is not None}
    video_processor = processor.video_processor
    try:
        chunks = video_processor.iter_video_chunks(str(video.path), **options)
        with decoding_progress(video_processor, chunks.num_frames, quiet), \
                encoding_progress(model, chunks.num_frames, quiet):
            return model.encode_video_stream(chunks, compression_settings=call_settings(model, args))
    except (ValueError, OSError, RuntimeError) as error:
        raise _unreadable(video, error) from None


def run_model(
    model, processor, inputs, args, quiet: bool, generate: bool = True, echo: bool = True, video_features=None
) -> tuple[dict, str | None, dict]:
    """Encode (and answer, if `generate`) under the call's token budget (passed to the model as this call's
    `compression_settings`); returns the model's compression report of the video, the answer, and the budget used.
    With `video_features` (from `encode_video_file`), `inputs` need only the prompt: the video is not encoded again."""
    import torch

    num_placeholders = int((inputs["input_ids"] == model.config.video_token_id).sum())
    prompt_tokens = int(inputs["attention_mask"].sum()) - num_placeholders
    budget = effective_budget(
        model.config, prompt_tokens, args.max_context_length, args.context_margin, args.max_visual_tokens
    )
    text_inputs = {k: v.to(model.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    pixel_inputs = {k: v for k, v in inputs.items() if k not in text_inputs}  # the model moves frames chunk by chunk
    if video_features is not None:
        pixel_inputs = {"video_features": video_features}
    num_frames = int(inputs["video_num_frames"].sum()) if video_features is None else 0
    answer = None
    settings = budget.pop("settings")  # per call: the model's config is left as it is
    with torch.no_grad():
        if generate:
            streamer = make_streamer(processor.tokenizer, args.max_new_tokens, quiet, echo=echo)
            with encoding_progress(model, num_frames, quiet or video_features is not None):
                output = model.generate(
                    **text_inputs, **pixel_inputs, max_new_tokens=args.max_new_tokens, do_sample=False,
                    streamer=streamer, compression_settings=settings, return_dict_in_generate=True,
                )
            compression = output.compression[0]
            answer = streamer.answer
        else:
            with encoding_progress(model, num_frames, quiet):
                # Towers and compression only (no LLM); the prompt sets the budget.
                features = model.get_video_features(
                    pixel_inputs["pixel_values_videos"], pixel_inputs["pixel_values_videos_dino"],
                    pixel_inputs["video_num_frames"], pixel_inputs["video_sizes"],
                    prompt_input_ids=text_inputs["input_ids"], prompt_attention_mask=text_inputs["attention_mask"],
                    compression_settings=settings,
                )
            compression = features.compression[0]
    return compression, answer, budget


def print_summary(compression: dict, quiet: bool, fps: float | None = None, budget: dict | None = None) -> None:
    """The compression report in a few lines on stderr (the answer alone goes to stdout)."""
    if quiet:
        return
    from ..report import summary_lines

    for line in summary_lines({"compression": compression, "sampling": {"fps": fps}, "budget": budget or {}}):
        print(f"longvu: {line}", file=sys.stderr)


def check_output_paths(out: str | None, json_path: str | None, overwrite: bool) -> tuple[Path | None, Path | None]:
    """Validate `--out`/`--json` before any work: suffix, existing folder, no silent overwrite."""
    from ..report import REPORT_FORMATS

    paths = []
    for option, value, suffixes in (("--out", out, REPORT_FORMATS), ("--json", json_path, (".json",))):
        if value is None:
            paths.append(None)
            continue
        path = Path(value).expanduser()
        if path.suffix.lower() not in suffixes:
            raise CLIError(f"{option} {value}: the file name must end with {' or '.join(suffixes)}")
        if not path.parent.is_dir():
            raise CLIError(f"{option} {value}: the folder {path.parent} does not exist; create it first")
        if path.is_dir():
            raise CLIError(f"{option} {value}: this is a folder; give a file name")
        if path.exists() and not overwrite:
            raise CLIError(f"{option} {value}: the file exists; choose another name or pass --overwrite")
        paths.append(path)
    if paths[0] is not None and paths[0] == paths[1]:
        raise CLIError("--out and --json must be different files")
    return paths[0], paths[1]
