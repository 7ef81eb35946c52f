"""The steps `ask`, `report` and `demo` share: the video, the inputs, the token budget, the model call, outputs."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from ..modeling.compression import visual_budget
from .errors import CLIError
from .progress import count_sampled_frames, decoding_progress, encoding_progress, make_streamer


def effective_budget(
    config, prompt_tokens: int, max_context_length: int | None = None, context_margin: int | None = None,
    max_visual_tokens: int | None = None,
) -> dict:
    """Validate the token settings of one call and work out the video's token budget.

    `prompt_tokens` counts the prompt without its video placeholder. The model budgets the video as
    `max_context_length - prompt - margin` (REFERENCE.md §3-§5); `max_visual_tokens` caps that (the model's own
    per-call argument: every step then budgets as if the context left exactly that many tokens). Returns the settings
    to apply (`max_context_length`, `context_margin` on the config; `max_visual_tokens` to `generate`/`forward`) and
    the resulting `visual_budget`. Raises `CLIError` when the prompt leaves no room.
    """
    context = config.max_context_length if max_context_length is None else max_context_length
    margin = config.context_margin if context_margin is None else context_margin
    if context < 1:
        raise CLIError(f"--max-context-length {context}: must be a positive number of tokens")
    if margin < 0:
        raise CLIError(f"--context-margin {margin}: must be 0 or more")
    if max_visual_tokens is not None and max_visual_tokens < 1:
        raise CLIError(f"--max-visual-tokens {max_visual_tokens}: must be at least 1")
    room = visual_budget(context, prompt_tokens, margin)
    if room < 1:
        raise CLIError(
            f"the prompt takes {prompt_tokens} tokens and the margin {margin}, which leaves no room for the video in "
            f"a context of {context} tokens; raise --max-context-length to at least {prompt_tokens + margin + 1} or "
            "shorten the question"
        )
    return {
        "max_context_length": context,
        "context_margin": margin,
        "max_visual_tokens": max_visual_tokens,
        "prompt_tokens": prompt_tokens,
        "visual_budget": room if max_visual_tokens is None else min(room, max_visual_tokens),
    }


@contextlib.contextmanager
def token_budget(model, max_context_length: int, context_margin: int) -> Iterator[None]:
    """Set `max_context_length`/`context_margin` on `model.config` for the duration of one call, then restore them.

    Example:

    ```python
    >>> with token_budget(model, max_context_length=4096, context_margin=16):
    ...     out = model.generate(**inputs, max_new_tokens=64)
    ```
    """
    config = model.config
    saved = (config.max_context_length, config.context_margin)
    config.max_context_length, config.context_margin = max_context_length, context_margin
    try:
        yield
    finally:
        config.max_context_length, config.context_margin = saved


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def check_video(value: str) -> Path | str:
    """A local video file or folder of frames (as a `Path`), or an http(s) URL (as given: the processor fetches it)."""
    if is_url(value):
        return value
    path = Path(value).expanduser()
    if not path.exists():
        raise CLIError(f"video {value}: no such file or folder; check the path (or give an http(s) URL)")
    if not (path.is_file() or path.is_dir()):
        raise CLIError(f"video {value}: not a file")
    return path


def prepare_inputs(
    processor, video: Path | str, question: str, fps: float | None, max_frames: int | None, quiet: bool,
    num_frames: int | None = None,
):
    """Chat prompt with one video, decoded and sampled by the processor; returns the inputs and the frame times."""
    messages = [{"role": "user", "content": [{"type": "video", "path": str(video)}, {"type": "text", "text": question}]}]
    video_processor = processor.video_processor
    options = {"return_metadata": True}
    if fps is not None:
        options["fps"] = fps
    if max_frames is not None:
        options["max_frames"] = max_frames
    if num_frames is not None:
        options["num_frames"] = num_frames
    if quiet or is_url(str(video)):
        total = None
    else:
        total = count_sampled_frames(video_processor, video, fps, max_frames, num_frames)
    try:
        with decoding_progress(video_processor, total, quiet):
            inputs = processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
                processor_kwargs=options,
            )
    except (ValueError, OSError, RuntimeError) as error:
        raise CLIError(f"video {video}: cannot be read ({str(error).strip().splitlines()[0][:300]})") from None
    metadata = inputs.pop("video_metadata", None)
    times = None
    if metadata:
        with contextlib.suppress(Exception):
            times = [float(t) for t in metadata[0].timestamps]
    return inputs, times


def run_model(
    model, processor, inputs, args, quiet: bool, generate: bool = True, echo: bool = True
) -> tuple[dict, str | None, dict]:
    """Encode (and answer, if `generate`) under the call's token budget (`max_context_length`/`context_margin` set
    on the config for the call, `max_visual_tokens` passed to the model); returns the model's compression report of
    the video, the answer, and the budget used."""
    import torch

    num_placeholders = int((inputs["input_ids"] == model.config.video_token_id).sum())
    prompt_tokens = int(inputs["attention_mask"].sum()) - num_placeholders
    budget = effective_budget(
        model.config, prompt_tokens, args.max_context_length, args.context_margin, args.max_visual_tokens
    )
    text_inputs = {k: v.to(model.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    pixel_inputs = {k: v for k, v in inputs.items() if k not in text_inputs}  # the model moves frames chunk by chunk
    num_frames = int(inputs["video_num_frames"].sum())
    answer = None
    with torch.no_grad(), token_budget(model, budget["max_context_length"], budget["context_margin"]):
        if generate:
            streamer = make_streamer(processor.tokenizer, args.max_new_tokens, quiet, echo=echo)
            with encoding_progress(model, num_frames, quiet):
                model.generate(
                    **text_inputs, **pixel_inputs, max_new_tokens=args.max_new_tokens, do_sample=False,
                    streamer=streamer, max_visual_tokens=budget["max_visual_tokens"],
                )
            compression = model.last_compression["video"][0]
            answer = streamer.answer
        else:
            with encoding_progress(model, num_frames, quiet):
                # Towers and compression only (no LLM); the prompt sets the budget.
                features = model.get_video_features(
                    pixel_inputs["pixel_values_videos"], pixel_inputs["pixel_values_videos_dino"],
                    pixel_inputs["video_num_frames"], pixel_inputs["video_sizes"],
                    text_inputs["input_ids"], text_inputs["attention_mask"],
                    max_visual_tokens=budget["max_visual_tokens"],
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
