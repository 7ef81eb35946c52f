"""The steps `ask`, `chat`, `report` and `demo` share: the video, the session over it, the answer, the outputs. The
work itself is the library's (`longvu_hf.session`); this module maps the command's options onto it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from ..configuration_longvu import CompressionSettings
from ..media_inputs import InputPolicy, MediaSource, resolve_media
from ..session import Answer, VideoSession, plan_budget
from .errors import CLIError
from .progress import ProgressBars, make_streamer


def check_video(value: str) -> MediaSource:
    """The command's video, resolved once under the local user's policy (`longvu_hf.media_inputs`): a local file or
    folder of frames, or an http(s) URL downloaded to a private temporary file (public addresses only, size-capped,
    deleted by `close()`). Text, playlists and other non-videos are refused here, before the model loads."""
    try:
        return resolve_media(value, InputPolicy.local_user(), display_name=value)
    except FileNotFoundError:
        raise CLIError(f"video {value}: no such file or folder; check the path (or give an http(s) URL)") from None
    except ValueError as error:  # refused by the policy (InputRefused), or a container no decoder opens
        raise CLIError(str(error).strip().splitlines()[0]) from None


def call_settings(config, args) -> CompressionSettings:
    """The call's `CompressionSettings` from `--max-context-length`, `--context-margin` and `--max-visual-tokens`,
    checked against the model's `config` (the prompt's room is checked per question): `BudgetError` otherwise."""
    settings = CompressionSettings(max_context_length=args.max_context_length, context_margin=args.context_margin,
                                   max_visual_tokens=args.max_visual_tokens)
    plan_budget(config, 0, settings)
    return settings


def open_session(model, processor, video: MediaSource | Path | str, args, keep_thumbnails: bool = False
                 ) -> VideoSession:
    """The video streamed into the towers once (`VideoSession.open`), with progress bars unless `--quiet`."""
    settings = call_settings(model.config, args)
    with ProgressBars(args.quiet) as bars:
        return VideoSession.open(
            model, processor, video if isinstance(video, MediaSource) else str(video), policy=InputPolicy.local_user(),
            fps=args.fps, max_frames=args.max_frames, num_frames=args.num_frames, compression_settings=settings,
            progress=None if args.quiet else bars, keep_thumbnails=keep_thumbnails,
        )


def answer_question(session: VideoSession, question: str, args, echo: bool = True) -> Answer:
    """One question, the answer streamed to stdout as it comes (`echo`), greedy, `--max-new-tokens` long."""
    streamer = make_streamer(session.processor.tokenizer, args.max_new_tokens, args.quiet, echo=echo)
    return session.ask(question, streamer=streamer, max_new_tokens=args.max_new_tokens, do_sample=False)


def print_summary(compression, quiet: bool, fps: float | None = None, budget: dict | None = None) -> None:
    """The compression report (a `CompressionReport`) in a few lines on stderr (the answer alone goes to stdout)."""
    if quiet:
        return
    from ..report import compression_summary

    for line in compression_summary(compression, fps, budget):
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


def stdin_questions() -> Iterator[str]:
    """The questions of `longvu chat`: one per line of stdin, to the end of input. At an interactive prompt an empty
    line also ends (as the prompt says); piped blank lines are skipped, so a file of questions is read to its end."""
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("? ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:  # end of input (Ctrl-D)
            return
        if line.strip():
            yield line.strip()
        elif interactive:
            return
