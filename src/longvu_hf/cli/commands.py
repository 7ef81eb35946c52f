"""The subcommands: `ask`, `report`, `convert`, `demo`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .errors import EXIT_INTERRUPTED, EXIT_OK, CLIError
from .models import default_model, load_model_and_processor, pick_device, pick_dtype, resolve_model
from .pipeline import check_output_paths, check_video, prepare_inputs, print_summary, run_model


def _load_for(args) -> tuple[Any, Any, str]:
    device = pick_device(args.device)
    name = args.model or default_model()
    folder = resolve_model(name, args.quiet)
    model, processor = load_model_and_processor(folder, name, device, pick_dtype(args.dtype, device), args.quiet)
    return model, processor, name


# --------------------------------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------------------------------


def cmd_ask(args) -> int:
    video = check_video(args.video)
    model, processor, _ = _load_for(args)
    inputs, _ = prepare_inputs(
        processor, video, args.question, args.fps, args.max_frames, args.quiet, num_frames=args.num_frames
    )
    compression, _, budget = run_model(model, processor, inputs, args, args.quiet)
    print_summary(compression, args.quiet, args.fps, budget)
    return EXIT_OK


def write_report(
    args, video: Path, model_name: str, model, processor, random_weights: bool, video_label: str | None = None
) -> dict:
    from ..report import build_report, save_report

    inputs, times = prepare_inputs(
        processor, video, args.question, args.fps, args.max_frames, args.quiet, num_frames=args.num_frames
    )
    compression, answer, budget = run_model(
        model, processor, inputs, args, args.quiet, generate=args.max_new_tokens > 0, echo=not args.quiet
    )
    report = build_report(
        compression, video=video_label or str(video), question=args.question, model_name=model_name, fps=args.fps,
        frame_times=times, answer=answer, random_weights=random_weights, budget=budget,
    )
    size = tuple(int(v) for v in inputs["video_sizes"][0])
    frames = inputs["pixel_values_videos"][: int(inputs["video_num_frames"][0])]
    save_report(report, args.out_path, json_path=args.json_path, frames=frames, video_size=size)
    print_summary(compression, args.quiet, args.fps, budget)
    for path in (args.out_path, args.json_path):
        if path is not None and not args.quiet:
            print(f"longvu: wrote {path}", file=sys.stderr)
    return report


def cmd_report(args) -> int:
    video = check_video(args.video)
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
