"""Benchmark: LongVU's compression functions alone, against the official code's loop-based versions.

    python benchmarks/compression.py                 # full size for this device, writes benchmarks/results/
    python benchmarks/compression.py --quick         # tiny sizes, a few seconds (run by the tests)
    python benchmarks/compression.py --device cuda   # GPU (float32 features by default, see --dtype)

Stages, each timed for `longvu_hf.modeling.compression` and for the loop baseline of `reference_baseline.py` on the
same synthetic inputs, with a check that both give identical outputs (recorded in the JSON):
1. frame selection over an hour at 1 fps (3,600 frames of DINOv2 features, scenes of near-duplicate frames);
2. unpadding + row newlines of the kept frames (16:9 video, as the reference passes its size);
3. spatial token compression (STC) of the kept frames into the 8,192-token budget;
4. query-based high/low resolution mixing for a 100-frame video (the mixing path only runs for ~56-127 frames).

The DINOv2 features of 3,600 frames at full size (576 tokens x 1536, float32) take 12.7 GB; on CPU the default keeps
144 tokens per frame (3.2 GB) and says so in the JSON. Time scales linearly with the token count in both versions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_utils import RESULTS_DIR, machine_info, resolve_device, time_call, write_json  # noqa: E402
from reference_baseline import (  # noqa: E402
    reference_mix,
    reference_select_frames,
    reference_stc,
    reference_unpad_and_newline,
)

from longvu_hf.modeling import compression as C  # noqa: E402

FULL_DINO_TOKENS = 576
VIDEO_SIZE_AS_PASSED = (720, 1280)  # a 16:9 video's (height, width), read by the reference as (width, height)


def synthetic_dino_features(
    num_frames: int, tokens: int, dim: int, generator: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    """Scenes of 4-60 frames; inside a scene each frame is the scene's features plus noise whose level (drawn per
    scene) puts the window similarities on both sides of the 0.83 threshold, like real footage."""
    out = torch.empty(num_frames, tokens, dim, dtype=dtype)
    start = 0
    while start < num_frames:
        length = int(torch.randint(4, 61, (1,), generator=generator))
        noise = float(torch.empty(1).uniform_(0.2, 0.7, generator=generator))
        base = torch.randn(tokens, dim, generator=generator)
        for frame in range(start, min(start + length, num_frames)):
            out[frame] = base + noise * torch.randn(tokens, dim, generator=generator)
        start += length
    return out


def synthetic_projected_grids(
    num_frames: int, grid: int, hidden: int, generator: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    """`(frames, grid, grid, hidden)` projected frame features: scenes where each token position has its own noise
    level (static background vs. moving content), so STC keeps some tokens and drops others."""
    out = torch.empty(num_frames, grid, grid, hidden, dtype=dtype)
    start = 0
    while start < num_frames:
        length = int(torch.randint(2, 24, (1,), generator=generator))
        base = torch.randn(grid, grid, hidden, generator=generator)
        noise = torch.empty(grid, grid, 1).uniform_(0.2, 1.2, generator=generator)
        for frame in range(start, min(start + length, num_frames)):
            out[frame] = base + noise * torch.randn(grid, grid, hidden, generator=generator)
        start += length
    return out


def compare(name: str, baseline_s: float, ours_s: float, identical: bool, **details) -> dict:
    row = {
        "stage": name,
        "baseline_s": round(baseline_s, 6),
        "ours_s": round(ours_s, 6),
        "speedup": round(baseline_s / ours_s, 2) if ours_s > 0 else None,
        "identical": bool(identical),
    }
    row.update(details)
    print(
        f"{name:16s} baseline {baseline_s * 1e3:10.2f} ms   ours {ours_s * 1e3:10.2f} ms   "
        f"x{row['speedup']}   identical={identical}",
        flush=True,
    )
    return row


def bench_frame_selection(features, args, device) -> tuple[dict, torch.Tensor]:
    def ours():
        kept = C.select_frames(features, args.dino_threshold, args.dino_window, args.max_frames).indices
        return kept, features[kept.to(features.device)]

    def baseline():
        return reference_select_frames(features, args.dino_window, args.dino_threshold, args.max_frames)

    ours_s, (ours_kept, ours_features) = time_call(ours, device, args.repeats)
    base_s, (base_kept, base_features) = time_call(baseline, device, args.repeats)
    identical = torch.equal(ours_kept.cpu(), base_kept.cpu()) and torch.equal(ours_features, base_features)
    row = compare(
        "frame_selection", base_s, ours_s, identical,
        input_shape=list(features.shape), kept_frames=len(ours_kept),
    )
    return row, ours_kept


def bench_unpad(grids, newline, device, repeats) -> tuple[dict, torch.Tensor]:
    def ours():
        return C.add_row_newlines(C.unpad_grid(grids, VIDEO_SIZE_AS_PASSED), newline)

    def baseline():
        return torch.stack(reference_unpad_and_newline(grids, VIDEO_SIZE_AS_PASSED, newline))

    ours_s, ours_out = time_call(ours, device, repeats)
    base_s, base_out = time_call(baseline, device, repeats)
    row = compare(
        "unpad_newlines", base_s, ours_s, torch.equal(ours_out, base_out),
        input_shape=list(grids.shape), output_shape=list(ours_out.shape),
    )
    return row, ours_out


def bench_stc(frames, budget, args, device) -> dict:
    def ours():
        return C.spatial_token_compression(frames, args.stc_threshold, args.stc_window, budget)

    def baseline():
        return reference_stc(frames, args.stc_threshold, budget, args.stc_window)

    ours_s, (ours_tokens, counts, force_remove) = time_call(ours, device, args.repeats)
    base_s, base_tokens = time_call(baseline, device, args.repeats)
    kept_by_similarity = int(C.stc_keep_mask(frames, args.stc_threshold, args.stc_window).sum())
    return compare(
        "stc", base_s, ours_s, torch.equal(ours_tokens, base_tokens),
        input_shape=list(frames.shape), budget=budget, tokens_after_similarity=kept_by_similarity,
        output_tokens=len(ours_tokens), force_remove=force_remove,
    )


def bench_mixing(grids, newline, query, budget, args, device) -> dict:
    side, low_side = grids.shape[1], args.lowres_grid
    low_grids = F.interpolate(
        grids.permute(0, 3, 1, 2).float(), size=(low_side, low_side), mode="bilinear", align_corners=False
    ).to(grids.dtype).permute(0, 2, 3, 1)
    low_size = C.lowres_original_size(VIDEO_SIZE_AS_PASSED, side, low_side)
    high = C.add_row_newlines(C.unpad_grid(grids, VIDEO_SIZE_AS_PASSED), newline)
    low = C.add_row_newlines(C.unpad_grid(low_grids, low_size), newline)

    def ours():
        num_high = C.num_high_res_frames(budget, low.shape[0] * low.shape[1], high.shape[1], low.shape[1])
        positions = C.pick_high_res_frames(C.query_frame_scores(low, query), num_high)
        # In the model only the upgraded frames are projected at full resolution; here they are views of `high`.
        tokens, _ = C.mix_resolutions([high[i] for i in positions.tolist()], low, positions)
        return tokens, positions

    def baseline():
        return reference_mix(list(low), list(high), query, budget)

    ours_s, (ours_tokens, ours_positions) = time_call(ours, device, args.repeats)
    base_s, (base_tokens, base_positions) = time_call(baseline, device, args.repeats)
    identical = torch.equal(ours_tokens, base_tokens) and torch.equal(ours_positions.cpu(), base_positions.cpu())
    return compare(
        "query_mixing", base_s, ours_s, identical,
        frames=len(grids), budget=budget, high_res_frames=len(ours_positions), output_tokens=len(ours_tokens),
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a few seconds), for CI")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="feature dtype (both versions get the same tensors; the reference computes in this dtype, "
                             "ours upcasts the DINO similarity to float32, so identity is only expected in float32)")
    parser.add_argument("--frames", type=int, help="sampled frames (default 3600: one hour at 1 fps)")
    parser.add_argument("--dino-tokens", type=int, help="DINOv2 tokens per frame (576 in the model; CPU default 144)")
    parser.add_argument("--dino-dim", type=int, help="DINOv2 width (1536 for dinov2-giant)")
    parser.add_argument("--hidden", type=int, help="LLM width (3584 for Qwen2-7B)")
    parser.add_argument("--mix-frames", type=int, help="frames of the mixing stage (default 100)")
    parser.add_argument("--stc-budget", type=int, help="visual token budget of the STC stage (default 8192 - 16 - 40)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--output", type=Path, help="JSON path (default benchmarks/results/compression_<device>.json)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    if args.quick:
        # A small STC budget so that the forced truncation runs too.
        defaults = {"frames": 200, "dino_tokens": 16, "dino_dim": 32, "hidden": 64, "mix_frames": 100, "stc_budget": 2000}
    else:
        on_gpu = args.device.startswith("cuda")
        defaults = {
            "frames": 3600, "dino_tokens": FULL_DINO_TOKENS if on_gpu else 144, "dino_dim": 1536, "hidden": 3584,
            "mix_frames": 100, "stc_budget": None,
        }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    # Reference values (docs/reference.md §3-§5; LongVUConfig defaults).
    args.dino_threshold, args.dino_window, args.max_frames = 0.83, 16, 400
    args.stc_threshold, args.stc_window, args.lowres_grid, args.query_grid = 0.7, 8, 8, 12
    args.max_context_length, args.context_margin, args.text_tokens = 8192, 16, 40
    if args.output is None:
        suffix = "_quick" if args.quick else ""
        args.output = RESULTS_DIR / f"compression_{args.device.split(':')[0]}{suffix}.json"
    return args


@torch.no_grad()
def main(argv=None) -> dict:
    args = parse_args(argv)
    device, dtype = args.device, getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(args.seed)
    print(f"generating {args.frames} frames of DINOv2 features ({args.dino_tokens} x {args.dino_dim}, {args.dtype})",
          flush=True)
    features = synthetic_dino_features(args.frames, args.dino_tokens, args.dino_dim, generator, dtype).to(device)
    stages = []
    row, kept = bench_frame_selection(features, args, device)
    stages.append(row)
    del features

    newline = torch.randn(args.hidden, generator=generator).to(device, dtype)
    grids = synthetic_projected_grids(len(kept), args.query_grid, args.hidden, generator, dtype).to(device)
    row, frames = bench_unpad(grids, newline, device, args.repeats)
    stages.append(row)
    del grids
    budget = args.max_context_length - args.context_margin - args.text_tokens
    stages.append(bench_stc(frames, args.stc_budget or budget, args, device))
    del frames

    mix_grids = synthetic_projected_grids(args.mix_frames, args.query_grid, args.hidden, generator, dtype).to(device)
    query = torch.randn(20, args.hidden, generator=generator).to(device, dtype)
    stages.append(bench_mixing(mix_grids, newline, query, budget, args, device))

    reduced = {}
    if args.dino_tokens != FULL_DINO_TOKENS:
        reduced["dino_tokens"] = f"{args.dino_tokens} instead of {FULL_DINO_TOKENS} (memory of this machine)"
    if args.quick:
        reduced["quick"] = "tiny sizes: checks that the script runs, the numbers mean nothing"
    payload = {
        "benchmark": "compression",
        "machine": machine_info(device),
        "settings": {
            "frames": args.frames, "dino_tokens": args.dino_tokens, "dino_dim": args.dino_dim, "hidden": args.hidden,
            "dtype": args.dtype, "repeats": args.repeats, "video_size_as_passed": list(VIDEO_SIZE_AS_PASSED),
            "dino_threshold": args.dino_threshold, "dino_window": args.dino_window, "max_frames": args.max_frames,
            "stc_threshold": args.stc_threshold, "stc_window": args.stc_window, "budget": budget,
            "stc_budget": args.stc_budget or budget,
            "mix_frames": args.mix_frames,
        },
        "reduced": reduced,
        "baseline": "reference_baseline.py: the official cambrian_arch.py loops (select_frame, unpad_image per frame, "
                    "ablation mix, ablation drop), same inputs",
        "stages": stages,
        "all_identical": all(s["identical"] for s in stages),
    }
    write_json(args.output, payload)
    print(f"wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
