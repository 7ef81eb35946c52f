"""`longvu demo`: the whole pipeline offline, on a generated clip, with a tiny random model (`longvu_hf.tiny`);
`longvu demo --web` serves the web page (`longvu_hf.web_demo`).

Dependencies go one way: this command imports the page's module to start it (the page is what `--web` asks for),
and the page imports only the library (`longvu_hf.loading`, `longvu_hf.session`, `longvu_hf.tiny`), never `cli`."""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

from ..tiny import DEMO_CONTEXT_LENGTH, save_tiny_model, tiny_model, tiny_tokenizer, write_demo_clip
from .commands import write_report
from .errors import EXIT_OK, CLIError
from .models import load_model_and_processor, pick_device, resolve_model
from .pipeline import answer_question, check_output_paths, open_session, print_summary


def demo_tokenizer():
    """The tiny model's word-level tokenizer, built in code (no download)."""
    return tiny_tokenizer()


def demo_model(tokenizer, max_context_length: int = DEMO_CONTEXT_LENGTH):
    """A tiny random LongVU with the real input geometry (384/378 px, 24x24 grids, 12x12 queries)."""
    return tiny_model(tokenizer, max_context_length=max_context_length)


def save_demo_model(args) -> int:
    """`longvu demo --save DIR`: write the tiny random model and its processor, to try the commands offline."""
    folder = Path(args.save).expanduser()
    if folder.exists() and any(folder.iterdir()):
        raise CLIError(f"--save {args.save}: the folder exists and is not empty; choose a new folder")
    save_tiny_model(folder, max_context_length=args.max_context_length or DEMO_CONTEXT_LENGTH)
    if not args.quiet:
        print(f"longvu demo: wrote a tiny RANDOM-weights model to {folder}; try it with "
              f"`longvu ask VIDEO \"question\" --model {folder}`", file=sys.stderr)
    return EXIT_OK


def serve_web_demo(args) -> int:
    """`longvu demo --web`: the Gradio page of `longvu_hf.web_demo`, served until Ctrl-C."""
    from ..web_demo import launch, reachable_from_other_machines

    if not (args.max_request_seconds >= 0 and math.isfinite(args.max_request_seconds)):
        raise CLIError(f"--max-request-seconds {args.max_request_seconds}: must be 0 (no limit) or a number of seconds")
    exposure = reachable_from_other_machines(args.host, args.share)
    if args.allow_local_paths_on_network and not args.allow_local_paths:
        raise CLIError("--allow-local-paths-on-network only makes sense with --allow-local-paths")
    if args.allow_local_paths and exposure:
        if not args.allow_local_paths_on_network:
            raise CLIError(
                f"--allow-local-paths with {exposure}: anyone who reaches the page could read this machine's files; "
                "drop --allow-local-paths (uploads and URLs still work), or add --allow-local-paths-on-network if "
                "that is really what you want"
            )
        print(f"longvu demo: WARNING: paths on this machine are readable by anyone who reaches the page ({exposure}; "
              "--allow-local-paths-on-network)", file=sys.stderr)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise CLIError("the web demo needs Gradio: pip install 'longvu-hf[demo]'") from None
    launch(args.model, host=args.host, port=args.port, share=args.share, max_video_seconds=args.max_video_seconds,
           allow_local_paths=args.allow_local_paths, allow_local_paths_on_network=args.allow_local_paths_on_network,
           max_request_seconds=args.max_request_seconds or None, device=pick_device(args.device), quiet=args.quiet)
    return EXIT_OK


def cmd_demo(args) -> int:
    if args.web:
        return serve_web_demo(args)
    if args.model is not None:
        raise CLIError("--model is for --web; the offline demo always runs the tiny random model")
    if args.save is not None:
        return save_demo_model(args)
    try:
        import av  # noqa: F401
    except ImportError:
        raise CLIError(
            "the demo writes its clip with PyAV: pip install av (or pip install 'longvu-hf[video]')"
        ) from None
    from transformers.utils import logging as hf_logging

    args.out_path, args.json_path = check_output_paths(args.out, args.json, args.overwrite)
    hf_logging.disable_progress_bar()  # saving and loading the tiny model are internal steps here
    if not args.quiet:
        print("longvu demo: a tiny model with RANDOM WEIGHTS on a generated clip; it shows the mechanics of the "
              "compression, and its answer is noise.", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="longvu-demo-") as workdir:
        workdir = Path(workdir)
        video = write_demo_clip(workdir / "demo.mp4")
        model_dir = save_tiny_model(
            workdir / "tiny-random-longvu", max_context_length=args.max_context_length or DEMO_CONTEXT_LENGTH
        )
        args.max_context_length = None  # already the model's own setting
        folder = resolve_model(str(model_dir), args.quiet, option="--model")  # the same loading path as `ask`
        model, processor = load_model_and_processor(folder, "tiny-random-longvu", "cpu", "auto", args.quiet)
        if not args.quiet:
            print("answer (random weights): ", end="", flush=True)
        if args.out_path is None and args.json_path is None:
            answer = answer_question(open_session(model, processor, video, args), args.question, args)
            print_summary(answer.compression, args.quiet, args.fps, answer.budget.to_dict())
        else:
            write_report(args, video, "tiny-random-longvu (random weights)", model, processor, random_weights=True,
                         video_label="generated demo clip (90 s of coloured scenes)")
    return EXIT_OK
