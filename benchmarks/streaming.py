"""Benchmark: a video file to its features, one-shot (the processor's whole output, then `encode_videos`) against
streaming (`iter_video_chunks` into `encode_video_stream`), peak host memory and wall time versus video length.

    python benchmarks/streaming.py                       # 1, 10 and 60 minutes at 1 fps (~15 min on 2 cores)
    python benchmarks/streaming.py --minutes 1 --quick   # seconds, for a smoke test

For each length the same synthetic clip (scenes of a flat colour with a moving square, H.264, `--source-size`,
`--source-fps`; written once into `--cache`) is sampled at 1 fps (LongVU's rule) and encoded by the tiny random model
of `longvu_hf.tiny` (its towers take LongVU's real input sizes, 384 and 378 px, so the pixels held per frame are the
released checkpoints'; the towers themselves are small, so encoding is cheap next to decoding). Each measurement runs
in a fresh process, so that its peak resident memory (sampled every 5 ms) is its own:
- `decode`: the chunks alone (decode + pad/resize of every sampled frame, nothing kept);
- `one_shot`: `video_processor(path)` then `model.encode_videos(...)` (what the CLI and the web page did before),
  with the time of each part;
- `stream`: `model.encode_video_stream(video_processor.iter_video_chunks(path))` (decoding in a background thread,
  overlapping the towers).
Both encodings must give the same kept frames (checked). Results go to `benchmarks/results/streaming_cpu.json`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_utils import RESULTS_DIR, machine_info, write_json  # noqa: E402

GB = 1024**3


def measure(spec: dict) -> dict:
    """One measurement, in this process (run by `run_child` in a fresh one)."""
    import torch

    from long_video import PeakRSS, current_rss_bytes
    from longvu_hf import LongVUVideoProcessor
    from longvu_hf.tiny import tiny_model

    torch.manual_seed(0)
    processor = LongVUVideoProcessor()
    model = tiny_model() if spec["mode"] != "decode" else None
    rss_before = current_rss_bytes()
    row = {"mode": spec["mode"]}
    with PeakRSS() as rss, torch.no_grad():
        start = time.perf_counter()
        if spec["mode"] == "decode":
            frames = sum(len(chunk["pixel_values_videos"]) for chunk in processor.iter_video_chunks(spec["path"]))
            kept = None
        elif spec["mode"] == "one_shot":
            inputs = processor(spec["path"])
            row["decode_s"] = round(time.perf_counter() - start, 2)
            frames = int(inputs["video_num_frames"].sum())
            features = model.encode_videos(**inputs)
            row["encode_s"] = round(time.perf_counter() - start - row["decode_s"], 2)
            kept = features[0].selected_indices.tolist()
        else:
            features = model.encode_video_stream(processor.iter_video_chunks(spec["path"]))
            frames, kept = features[0].num_input_frames, features[0].selected_indices.tolist()
        row["wall_s"] = round(time.perf_counter() - start, 2)
    row.update(frames=frames, host_peak_gb=round(rss.peak / GB, 3),
               host_peak_increase_gb=round((rss.peak - rss_before) / GB, 3))
    if kept is not None:
        row["kept_frames"] = len(kept)
        row["kept_hash"] = hash(tuple(kept))
    return row


def run_child(spec: dict) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, timeout=3600
    )
    if result.returncode != 0:
        raise RuntimeError(f"{spec}: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def clip_for(minutes: float, args) -> Path:
    from longvu_hf.tiny import write_scene_clip

    width, height = (int(v) for v in args.source_size.split("x"))
    path = Path(args.cache) / f"scenes_{minutes:g}min_{width}x{height}_{args.source_fps}fps.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part.mp4")
        write_scene_clip(partial, seconds=int(minutes * 60), fps=args.source_fps, width=width, height=height)
        partial.rename(path)
    return path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--source-size", default="640x360", help="WIDTHxHEIGHT of the synthetic clip")
    parser.add_argument("--source-fps", type=int, default=2)
    parser.add_argument("--cache", default="/tmp/longvu-bench-clips")
    parser.add_argument("--quick", action="store_true", help="a small clip size, for a smoke test")
    parser.add_argument("--output", default=str(RESULTS_DIR / "streaming_cpu.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return {}
    if args.quick:
        args.source_size = "128x72"
    rows = []
    for minutes in args.minutes:
        path = clip_for(minutes, args)
        results = {mode: run_child({"mode": mode, "path": str(path)}) for mode in ("decode", "one_shot", "stream")}
        same = results["one_shot"]["kept_hash"] == results["stream"]["kept_hash"]
        row = {"minutes": minutes, "same_kept_frames": same, **{mode: results[mode] for mode in results}}
        for mode in ("one_shot", "stream"):
            row[mode].pop("kept_hash")
        print(json.dumps(row), flush=True)
        if not same:
            raise SystemExit(f"{minutes} min: streaming kept other frames than the one-shot encoding")
        rows.append(row)
    result = {
        "benchmark": "streaming",
        "machine": machine_info("cpu"),
        "settings": {"fps": 1, "source_size": args.source_size, "source_fps": args.source_fps,
                     "model": "longvu_hf.tiny.tiny_model (random weights, real input sizes)"},
        "results": rows,
    }
    if len(rows) >= 2:
        first, last = rows[-2], rows[-1]
        result["summary"] = {
            f"stream_peak_{last['minutes']:g}min_over_{first['minutes']:g}min": round(
                last["stream"]["host_peak_increase_gb"] / max(first["stream"]["host_peak_increase_gb"], 1e-3), 2),
            f"one_shot_peak_{last['minutes']:g}min_over_{first['minutes']:g}min": round(
                last["one_shot"]["host_peak_increase_gb"] / max(first["one_shot"]["host_peak_increase_gb"], 1e-3), 2),
        }
    write_json(Path(args.output), result)
    return result


if __name__ == "__main__":
    main()
