#!/usr/bin/env python
"""Several questions per video (VideoMME asks three): encode the video once (`encode_videos` + `video_features=`)
against what users do without it (the processor's outputs passed to `generate` for every question), in one run.

The model has the released checkpoint's widths (SigLIP-so400m, DINOv2-giant, the aggregator, Qwen2-7B) with the
depths given on the command line (default one layer each, so that it runs on a CPU): the ratio it reports is for those
depths; at the released depths (27 SigLIP, 40 DINOv2 and 28 LLM layers) the towers weigh more against the LLM, so the
saving is larger. Answers (greedy tokens) are checked to be identical between the two ways in the same run.

    python benchmarks/repeated_questions.py --frames 8 --questions 3 --repeats 3 --output benchmarks/results/repeated_questions_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_utils import machine_info  # noqa: E402
from long_video import benchmark_config, synthetic_video  # noqa: E402

RELEASED_DEPTHS = {"siglip": 27, "dino": 40, "llm": 28}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8, help="frames per video (a short clip)")
    parser.add_argument("--questions", type=int, default=3, help="questions per video (VideoMME: 3)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each way; medians are reported")
    parser.add_argument("--siglip-layers", type=int, default=1)
    parser.add_argument("--dino-layers", type=int, default=1)
    parser.add_argument("--llm-layers", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="tiny widths (a smoke test of the script, not a measurement)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def questions(config, count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    prompts = []
    for length in range(count):
        words = torch.randint(10, 200, (12 + 5 * length,), generator=generator)
        prompts.append(torch.cat([words[:2], torch.tensor([config.video_token_id]), words[2:]]).unsqueeze(0))
    return prompts


def timed(function):
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - start_wall, time.process_time() - start_cpu


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = benchmark_config(args.quick, args.siglip_layers, args.dino_layers, args.llm_layers)
    if args.quick:
        config.video_token_id, config.image_token_id = 250, 251
    torch.manual_seed(0)
    from longvu_hf import LongVUForConditionalGeneration

    model = LongVUForConditionalGeneration(config).eval()
    video = synthetic_video(args.frames)
    prompts = questions(config, args.questions)
    generate = {"max_new_tokens": args.max_new_tokens, "do_sample": False}

    def without_reuse():
        return [model.generate(input_ids=ids, **video, **generate) for ids in prompts]

    def with_reuse():
        features = model.encode_videos(**video)
        return [model.generate(input_ids=ids, video_features=features, **generate) for ids in prompts]

    runs = {"without_reuse": [], "with_reuse": []}
    answers = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, function in (("without_reuse", without_reuse), ("with_reuse", with_reuse)):
                outputs, wall, cpu = timed(function)
                runs[name].append({"wall_s": wall, "cpu_s": cpu})
                answers[name] = [o.tolist() for o in outputs]
    identical = answers["without_reuse"] == answers["with_reuse"]
    summary = {}
    for name, measured in runs.items():
        summary[name] = {
            "median_wall_s": statistics.median(r["wall_s"] for r in measured),
            "median_cpu_s": statistics.median(r["cpu_s"] for r in measured),
            "best_wall_s": min(r["wall_s"] for r in measured),
            "runs": measured,
        }
    result = {
        "benchmark": "repeated_questions",
        "workload": {"frames_per_video": args.frames, "questions_per_video": args.questions,
                     "max_new_tokens": args.max_new_tokens, "repeats": args.repeats},
        "model": {"widths": "tiny (smoke test)" if args.quick else "released (Qwen2-7B video checkpoint)",
                  "depths": {"siglip": args.siglip_layers, "dino": args.dino_layers, "llm": args.llm_layers},
                  "released_depths": RELEASED_DEPTHS},
        "threads": args.threads,
        "machine": machine_info("cpu"),
        "baseline": "the processor's outputs passed to generate for every question (the standard transformers way)",
        "results": summary,
        "median_wall_ratio": summary["without_reuse"]["median_wall_s"] / summary["with_reuse"]["median_wall_s"],
        "median_cpu_ratio": summary["without_reuse"]["median_cpu_s"] / summary["with_reuse"]["median_cpu_s"],
        "identical_answers": identical,
    }
    if not identical:
        raise SystemExit("the answers differ between the two ways: the reuse is wrong")
    text = json.dumps(result, indent=1)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
