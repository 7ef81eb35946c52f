"""The subcommands: `ask`, `chat`, `report`, `convert` (`demo` is in `demo.py`, `--engine vllm` in
`vllm_engine.py`). Each maps its options onto the library (`longvu_hf.loading`, `longvu_hf.session`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..media_inputs import MediaSource
from .errors import EXIT_INTERRUPTED, EXIT_OK, CLIError
from .models import load_for
from .pipeline import (
    answer_question, check_output_paths, check_video, open_session, print_summary, stdin_questions,
)
from .vllm_engine import ask_with_vllm, chat_with_vllm


def _load_for(args) -> tuple[Any, Any, str]:
    return load_for(args)


# --------------------------------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------------------------------


def cmd_ask(args) -> int:
    if getattr(args, "engine", "transformers") == "vllm":
        return ask_with_vllm(args)
    questions = [q for q in args.question if q.strip()]
    if not questions:
        raise CLIError("the question is empty; ask something, in quotes")
    with check_video(args.video) as video:  # a downloaded video is deleted when the command ends
        return _ask(args, video, questions)


def _ask(args, video: MediaSource, questions: list[str]) -> int:
    model, processor, _ = _load_for(args)
    session = open_session(model, processor, video, args)  # streamed, encoded once for every question
    for number, question in enumerate(questions, start=1):
        if len(questions) > 1:
            if not args.quiet:
                print(f"longvu: question {number}/{len(questions)}: {question}", file=sys.stderr)
            print(f"[{number}] ", end="", flush=True)
        answer = answer_question(session, question, args)
        print_summary(answer.compression, args.quiet, args.fps, answer.budget.to_dict())
    return EXIT_OK


def cmd_chat(args) -> int:
    """Questions from stdin, one per line, about one video decoded and encoded once (each question on its own)."""
    if getattr(args, "engine", "transformers") == "vllm":
        return chat_with_vllm(args)
    with check_video(args.video) as video:
        return _chat(args, video)


def _chat(args, video: MediaSource) -> int:
    model, processor, _ = _load_for(args)
    interactive = sys.stdin.isatty()
    session = open_session(model, processor, video, args)
    if interactive and not args.quiet:
        print("longvu chat: the video is encoded; ask away (an empty line or Ctrl-D ends).", file=sys.stderr)
    for question in stdin_questions():
        answer = answer_question(session, question, args)
        print_summary(answer.compression, args.quiet, args.fps, answer.budget.to_dict())
    return EXIT_OK


def write_report(
    args, video: MediaSource | Path, model_name: str, model, processor, random_weights: bool,
    video_label: str | None = None,
) -> dict:
    """`longvu report` (and `longvu demo --out`): the video streamed once (keeping only small thumbnails), the
    answer (unless `--max-new-tokens 0`: the compression only), the picture and the JSON."""
    from ..report import build_report, save_report, thumbnail_picks

    session = open_session(model, processor, video, args, keep_thumbnails=True)
    answer = None
    if args.max_new_tokens > 0:
        result = answer_question(session, args.question, args, echo=not args.quiet)
        compression, budget, answer = result.compression, result.budget, result.text
    else:  # towers and compression only (no language model); the question sets the budget
        compression, budget = session.compress(args.question)
    label = video_label or (video.display_name if isinstance(video, MediaSource) else str(video))
    report = build_report(
        compression, video=label, question=args.question, model_name=model_name, fps=args.fps,
        frame_times=session.info.frame_times, answer=answer, random_weights=random_weights, budget=budget.to_dict(),
    )
    save_report(report, args.out_path, json_path=args.json_path,
                thumbnails=session.info.thumbnail_images(thumbnail_picks(report)))
    print_summary(compression, args.quiet, args.fps, budget.to_dict())
    for path in (args.out_path, args.json_path):
        if path is not None and not args.quiet:
            print(f"longvu: wrote {path}", file=sys.stderr)
    return report


def cmd_report(args) -> int:
    with check_video(args.video) as video:
        args.out_path, args.json_path = check_output_paths(args.out, args.json, args.overwrite)
        model, processor, name = _load_for(args)
        write_report(args, video, name, model, processor, random_weights=False)
    return EXIT_OK


def cmd_convert(argv: list[str]) -> int:
    """`longvu convert ...`: the converter's own command line (`python -m longvu_hf.convert_longvu_weights_to_hf`)."""
    from .. import convert_longvu_weights_to_hf as converter

    try:
        converter.main(argv)
    except SystemExit as exit_:  # its argparse: --help, or a one-line error with status 2
        return int(exit_.code or 0)
    except KeyboardInterrupt:
        print("\nlongvu convert: interrupted (the converter stages its output: no partial folder is left)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK
