"""`longvu ask/chat --engine vllm`: the video encoded here once, the answers decoded by vLLM (`LongVUEngine`).

The questions of `ask` go to vLLM together (one batch); `chat` sends each line as it comes. Answers are printed
whole (vLLM's offline engine does not stream), each followed by the compression summary on stderr.
"""

from __future__ import annotations

import sys

from ..session import VideoReadError
from .errors import EXIT_OK, CLIError
from .models import default_model, pick_device, resolve_model
from .pipeline import call_settings, check_video, print_summary, stdin_questions

ENGINES = ("transformers", "vllm")


def add_engine_options(parser) -> None:
    """`--engine` and `--tensor-parallel-size` for `ask` and `chat`."""
    parser.add_argument("--engine", choices=ENGINES, default="transformers",
                        help="transformers (default: generate, streamed) or vllm (the language model in vLLM's "
                        "engine; pip install 'longvu-hf[vllm]')")
    parser.add_argument("--tensor-parallel-size", type=int, default=1,
                        help="with --engine vllm: GPUs vLLM shards the language model over (default 1)")


def start_engine(args):
    """A `LongVUEngine` on the command's model, device, dtype and `--tensor-parallel-size`."""
    try:
        import vllm  # noqa: F401
        from ..integrations.vllm import LongVUEngine
    except ImportError as error:  # vLLM missing or broken: say how to install it
        raise CLIError(f"--engine vllm needs vLLM ({error}); install it with: pip install 'longvu-hf[vllm]'") from None
    if args.tensor_parallel_size < 1:
        raise CLIError(f"--tensor-parallel-size {args.tensor_parallel_size}: must be at least 1")
    folder = resolve_model(args.model or default_model(), args.quiet, option="--model")
    device = pick_device(args.device)
    dtype = "auto" if args.dtype == "auto" else args.dtype
    try:
        return LongVUEngine(folder, tensor_parallel_size=args.tensor_parallel_size, dtype=dtype,
                            encoder_device=device)
    except (ValueError, FileNotFoundError) as error:
        raise CLIError(f"--model {args.model or default_model()}: {error}") from None


def _settings(engine, args):
    return call_settings(engine.config, args)


def _encode(engine, source, args, settings):
    """The video (a `MediaSource` from `check_video`) streamed through the towers, once."""
    try:
        return engine.encode(str(source.path), fps=args.fps, num_frames=args.num_frames, max_frames=args.max_frames,
                             compression_settings=settings)
    except VideoReadError as error:  # named as the user gave it (not the temporary file of a download)
        raise CLIError(str(error).replace(str(source.path), source.display_name)) from None


def _answer(engine, features, questions, args, settings, first_number: int = 1, numbered: bool = True) -> None:
    from vllm import SamplingParams

    from ..integrations.vllm import LongVURequest

    sampling = SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens)
    try:
        answers = engine.generate([LongVURequest(video=features, question=q) for q in questions], sampling,
                                  compression_settings=settings)
    except ValueError as error:  # a prompt with no room for the video in the budget, ...
        raise CLIError(str(error)) from None
    for number, (question, answer) in enumerate(zip(questions, answers), start=first_number):
        if numbered:
            print(f"[{number}] ", end="")
        print(answer.text.strip(), flush=True)
        budget = {"max_context_length": settings.max_context_length, "context_margin": settings.context_margin,
                  "max_visual_tokens": settings.max_visual_tokens}
        print_summary(answer.compression, args.quiet, args.fps, budget)


def ask_with_vllm(args) -> int:
    """`longvu ask --engine vllm VIDEO q1 [q2 ...]`: one encoding, all questions in one vLLM batch."""
    questions = [q for q in args.question if q.strip()]
    if not questions:
        raise CLIError("the question is empty; ask something, in quotes")
    with check_video(args.video) as source:  # a downloaded video is deleted when the command ends
        engine = start_engine(args)
        settings = _settings(engine, args)
        features = _encode(engine, source, args, settings)
    _answer(engine, features, questions, args, settings, numbered=len(questions) > 1)
    return EXIT_OK


def chat_with_vllm(args) -> int:
    """`longvu chat --engine vllm VIDEO`: questions from stdin, one per line, about the video encoded once."""

    with check_video(args.video) as source:
        engine = start_engine(args)
        settings = _settings(engine, args)
        features = _encode(engine, source, args, settings)
    interactive = sys.stdin.isatty()
    if interactive and not args.quiet:
        print("longvu chat: the video is encoded; ask away (an empty line or Ctrl-D ends).", file=sys.stderr)
    for number, question in enumerate(stdin_questions(), start=1):
        _answer(engine, features, [question], args, settings, first_number=number, numbered=False)
    return EXIT_OK
