#!/usr/bin/env python
"""Evaluate a LongVU checkpoint on EgoSchema, MVBench, VideoMME or MLVU, in their official release layouts.

One process:

    python examples/evaluate_benchmarks.py --benchmark videomme --model LongVU_Qwen2_7B-hf --data-root /data/Video-MME

Data parallel over 8 GPUs (each process answers a shard; the main process merges and scores):

    accelerate launch --num_processes 8 examples/evaluate_benchmarks.py --benchmark mlvu --model ... --data-root ...

Results stream to OUTPUT/predictions.process<k>.jsonl; run the same command again to resume an interrupted run.
OUTPUT/report.json holds the settings, counts, score, breakdown, the other protocol's score and compression statistics.
See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

PROTOCOL_FIELDS_NOT_AFFECTING_GENERATION = ("name", "answer_parser", "fallback_letter")


def parse_args(argv=None) -> argparse.Namespace:
    from longvu_hf.evaluation import BENCHMARKS, PROTOCOLS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument("--model", required=True, help="converted LongVU checkpoint folder (or Hub id)")
    parser.add_argument("--data-root", required=True, help="the benchmark's release folder (see docs/evaluation.md)")
    parser.add_argument(
        "--protocol",
        default="strict",
        choices=PROTOCOLS,
        help="strict (default): an unparsable answer is wrong; reference: the official scripts' parsing and 'C' "
        "fallback. Generation is the same, and the report gives both scores.",
    )
    parser.add_argument("--subtitles", action="store_true", help="VideoMME: add the .srt subtitles as the official script")
    parser.add_argument("--output", default=None, help="results folder (default: eval_results/<benchmark>[-subtitles])")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("--tasks", nargs="+", default=None, help="MVBench tasks / MLVU task types to evaluate (default all)")
    parser.add_argument(
        "--egoschema-full",
        action="store_true",
        help="EgoSchema: answer all questions, not only the 500 with public answers; writes submission.csv",
    )
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    parser.add_argument("--attn-implementation", default=None, help="e.g. sdpa, flash_attention_2, eager")
    parser.add_argument("--video-backend", default="auto", choices=("auto", "pyav", "torchcodec", "decord"))
    parser.add_argument("--no-retry-errors", action="store_true", help="on resume, keep earlier failures as they are")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is available")
    parser.add_argument("--engine", default="transformers", choices=("transformers", "vllm"),
                        help="vllm: decode with vLLM's engine (pip install 'longvu-hf[vllm]'); the towers run here")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="with --engine vllm: GPUs per model")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.subtitles and args.benchmark != "videomme":
        parser.error("--subtitles only applies to --benchmark videomme")
    return args


def load_model_and_processor(args, device):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import longvu_hf  # noqa: F401  (registers LongVU with the Auto classes)

    kwargs = {"dtype": args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)}
    if args.attn_implementation:
        kwargs["attn_implementation"] = args.attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(args.model, **kwargs).to(device).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    return model, processor


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from longvu_hf.evaluation import VideoQAPredictor, get_protocol, load_benchmark, run_evaluation

    use_cpu = args.cpu or not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")
    state = PartialState(cpu=use_cpu)
    protocol = get_protocol(args.benchmark, args.protocol)
    dataset = load_benchmark(args.benchmark, args.data_root, args.tasks, egoschema_subset_only=not args.egoschema_full)
    if args.limit is not None:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"No question to evaluate in {args.data_root}")

    if args.engine == "vllm":  # longvu_hf.integrations.vllm: same records, answers decoded by vLLM
        from transformers import AutoProcessor

        from longvu_hf.integrations.vllm import LongVUEngine
        from longvu_hf.integrations.vllm.evaluation import VLLMVideoQAPredictor

        engine = LongVUEngine(args.model, tensor_parallel_size=args.tensor_parallel_size, dtype=args.dtype,
                              encoder_device=state.device)
        model, processor = engine.encoder, AutoProcessor.from_pretrained(args.model)
        predictor = VLLMVideoQAPredictor(engine, processor, protocol, subtitles=args.subtitles,
                                         video_backend=args.video_backend)
    else:
        model, processor = load_model_and_processor(args, state.device)
        predictor = VideoQAPredictor(model, processor, protocol, subtitles=args.subtitles,
                                     video_backend=args.video_backend)
    output_dir = args.output or os.path.join("eval_results", args.benchmark + ("-subtitles" if args.subtitles else ""))
    sampling = {k: v for k, v in protocol.to_dict().items() if k not in PROTOCOL_FIELDS_NOT_AFFECTING_GENERATION}
    run_settings = {
        "benchmark": args.benchmark,
        "model": os.path.abspath(args.model) if os.path.isdir(args.model) else args.model,
        "data_root": os.path.abspath(args.data_root),
        "tasks": sorted(args.tasks) if args.tasks else None,
        "subtitles": args.subtitles,
        "generation_settings": sampling,
        "dtype": str(model.dtype),
        "video_backend": args.video_backend,
    }
    if args.engine != "transformers":  # (absent for transformers, so that earlier runs still resume)
        run_settings["engine"] = args.engine
    run_info = {"protocol": args.protocol, "limit": args.limit, "egoschema_full": args.egoschema_full}
    report = run_evaluation(
        dataset,
        predictor,
        output_dir,
        protocol,
        run_settings,
        state=state,
        retry_errors=not args.no_retry_errors,
        run_info=run_info,
    )
    if report is not None:
        summary = {
            "benchmark": report["benchmark"],
            "protocol": args.protocol,
            "score": report["score"],
            "score_name": report["score_name"],
            "other_protocols": report["other_protocols"],
            "counts": report["counts"],
            "report": os.path.join(output_dir, "report.json"),
        }
        print(json.dumps(summary, indent=2))
        if report["counts"]["errors"]:
            print(
                f"warning: {report['counts']['errors']} questions failed and are not scored (see 'errors' in the "
                "report); fix them and run again to resume",
                file=sys.stderr,
            )
    return report


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        # Bad input: one line and exit status 2, not a traceback.
        print(f"evaluate_benchmarks.py: error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
