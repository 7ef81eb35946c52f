"""The `longvu` command: ask a question about a video, see what the compression did, convert checkpoints, demo.

    longvu ask VIDEO "question" ["another question" ...] [--model PATH_OR_HUB_ID] [--fps 1] [--max-frames N]
    longvu chat VIDEO                 (questions from stdin, one per line; the video is decoded and encoded once)
    longvu report VIDEO "question" --out report.png|report.html [--json report.json]
    longvu convert --checkpoint ... --siglip ... --dino ... --output ...    (the converter's own options)
    longvu demo [--out demo.png] [--save DIR] [--web]                     (offline, tiny model with random weights)

The model defaults to `Vision-CAIR/LongVU_Qwen2_7B` (or `$LONGVU_MODEL`). An official `Vision-CAIR/LongVU_*` id is
downloaded and converted on first use into `$HF_HOME/longvu-hf/converted/` (about 15 GB for the 7B checkpoint plus
the SigLIP and DINOv2-giant towers), then loaded from there; a converted folder or a Hub repository holding a
converted checkpoint is loaded as is.

Token budget (per call; the defaults are the reference's, stored in the model's config):
- `--max-context-length` (8192 for the released checkpoints): the context the compression fits prompt + video into;
- `--context-margin` (16): tokens kept free after the video;
- `--max-visual-tokens` (no default: whatever the context leaves, `max_context_length - prompt - margin`): an upper
  bound on the video's tokens, passed to `generate(..., max_visual_tokens=N)`; frame selection, resolution mixing and
  STC then work as if the context left exactly that many tokens.

Bad input (missing video or model, a folder that is not a LongVU checkpoint, a budget smaller than the prompt, ...)
ends with a one-line message saying how to fix it and exit status 2. Outputs are written to a temporary file and
renamed, so Ctrl-C never leaves a partial file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..tiny import DEMO_CONTEXT_LENGTH, write_demo_clip
from .commands import cmd_ask, cmd_chat, cmd_convert, cmd_report
from .demo import cmd_demo, demo_model, demo_tokenizer
from . import commands, progress  # noqa: F401  (tests patch them)
from .errors import BAD_INPUT_ERRORS, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, CLIError, bad_input_message
from .models import (
    DEFAULT_MODEL,
    DEFAULT_MODEL_ENV,
    check_longvu_folder,
    default_model,
    load_model_and_processor,
    pick_device,
    pick_dtype,
    resolve_model,
)
from .pipeline import check_video
from .vllm_engine import add_engine_options


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _add_video_options(
    parser: argparse.ArgumentParser, with_model: bool = True, max_new_tokens: int = 128, answer_optional: bool = False
) -> None:
    """The options shared by `ask`, `report` and `demo`; with `answer_optional`, `--max-new-tokens 0` skips the
    answer."""
    if with_model:
        parser.add_argument("--model", default=None, help=f"converted LongVU folder or Hub id (default: "
                            f"${DEFAULT_MODEL_ENV} or {DEFAULT_MODEL}, converted on first use)")
        parser.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N")
        parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                            help="auto: bfloat16 on GPUs, the checkpoint's dtype on CPU")
    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument(
        "--fps", type=_positive_float, default=None,
        help="frames sampled per second (default: the processor's, 1; a folder of frames without a frame rate keeps "
        "every frame)",
    )
    sampling.add_argument("--num-frames", type=_positive_int, default=None,
                        help="sample exactly this many frames, spread evenly over the video (instead of --fps)")
    parser.add_argument("--max-frames", type=_positive_int, default=None,
                        help="cap on the sampled frames, spread evenly (default: no cap, as the reference)")
    parser.add_argument("--max-new-tokens", type=_non_negative_int if answer_optional else _positive_int,
                        default=max_new_tokens,
                        help=f"answer length in tokens (default {max_new_tokens}"
                        + ("; 0: no answer, only the towers and the compression)" if answer_optional else ")"))
    parser.add_argument("--max-visual-tokens", type=int, default=None,
                        help="at most this many visual tokens (default: what the context leaves)")
    parser.add_argument("--max-context-length", type=int, default=None,
                        help="context the compression fits prompt + video into (default: the model's, 8192)")
    parser.add_argument("--context-margin", type=int, default=None,
                        help="tokens kept free after the video (default: the model's, 16)")
    parser.add_argument("--quiet", "-q", action="store_true", help="only the answer: no progress bars or summary")


def _add_output_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--out", required=required, default=None, help="the report picture: .png or .html")
    parser.add_argument("--json", default=None, help="the report as JSON (.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --out/--json files")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line too (argparse prints the whole usage block first by default)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="longvu", description=__doc__.split("\n\n")[0],
        epilog="Run `longvu COMMAND --help` for the options of a command.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ask = commands.add_parser("ask", help="answer a question about a video (streams the answer)")
    ask.add_argument("video", help="video file (mp4, mkv, webm, ...), folder of frames, or http(s) URL")
    ask.add_argument("question", nargs="+",
                     help="the question, in quotes; several questions are answered in turn, the video encoded once")
    _add_video_options(ask)
    add_engine_options(ask)
    ask.set_defaults(handler=cmd_ask)

    chat = commands.add_parser("chat", help="questions from stdin about one video, encoded once")
    chat.add_argument("video", help="video file (mp4, mkv, webm, ...), folder of frames, or http(s) URL")
    _add_video_options(chat)
    add_engine_options(chat)
    chat.set_defaults(handler=cmd_chat)

    report = commands.add_parser("report", help="picture + JSON of what the compression did to a video")
    report.add_argument("video", help="video file, folder of frames, or http(s) URL")
    report.add_argument("question", help="the question (the query decides which frames keep full resolution)")
    _add_video_options(report, max_new_tokens=64, answer_optional=True)
    _add_output_options(report, required=True)
    report.set_defaults(handler=cmd_report)

    # `longvu convert ARGS` is handed to the converter as is (see `main`); listed here for `longvu --help`.
    commands.add_parser("convert", help="convert an official LongVU checkpoint (`longvu convert --help`)")

    demo = commands.add_parser("demo", help="the whole pipeline offline on a generated clip (tiny RANDOM model)")
    demo.add_argument("--question", default="What is happening in this video ?")
    demo.add_argument("--save", metavar="DIR", default=None,
                      help="only write the tiny random model and its processor to DIR (to try `--model DIR` offline)")
    _add_video_options(demo, with_model=False, max_new_tokens=12)
    _add_output_options(demo, required=False)
    web = demo.add_argument_group("web page (pip install 'longvu-hf[demo]')")
    web.add_argument("--web", action="store_true", help="serve the demo as a web page (Gradio) until Ctrl-C")
    web.add_argument("--model", default=None,
                     help="with --web: converted LongVU folder or Hub id (default: the tiny RANDOM model, offline)")
    web.add_argument("--device", default="auto", help="with --web: auto (a GPU if there is one), cpu, cuda or cuda:N")
    web.add_argument("--host", default="127.0.0.1", help="with --web: address to listen on (0.0.0.0: all interfaces)")
    web.add_argument("--port", type=_positive_int, default=7860, help="with --web: port (default 7860)")
    web.add_argument("--share", action="store_true", help="with --web: also a temporary public gradio.live link")
    web.add_argument("--max-video-seconds", type=_positive_float, default=None,
                     help="with --web: refuse longer videos with a message in the page (default: no limit)")
    web.add_argument("--allow-local-paths", action="store_true",
                     help="with --web: the text box also reads files and folders of frames on this machine (default: "
                     "uploads and public http(s) URLs only); refused with a non-loopback --host or --share")
    web.add_argument("--max-request-seconds", type=float, default=600.0,
                     help="with --web: one request (download, decoding, towers, answer) is stopped after this many "
                     "seconds (default 600; 0: no limit)")
    web.add_argument("--allow-local-paths-on-network", action="store_true",
                     help="with --web --allow-local-paths: allow them with a non-loopback --host or --share too "
                     "(anyone who reaches the page can then read this machine's files)")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `longvu` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"]:
        return cmd_convert(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed by argparse (status 2)
        return int(exit_.code or 0)
    try:
        return args.handler(args)
    except BAD_INPUT_ERRORS as error:  # one line naming the input, from the command or the library
        print(f"longvu {args.command}: error: {bad_input_message(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"\nlongvu {args.command}: interrupted (no partial output file is left)", file=sys.stderr)
        return EXIT_INTERRUPTED
