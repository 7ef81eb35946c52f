"""Benchmark: sampled frames per second of the video decoders with 1, 2 and 4 parallel workers (`decode_workers`).

    python benchmarks/parallel_decoding.py            # 10 minutes of 1280x720 at 30 fps, sampled at 1 fps
    python benchmarks/parallel_decoding.py --quick    # 20 seconds of 320x180, for a smoke test

The synthetic clip (scenes of 5-25 s: a blocky random texture panning, a square moving across; H.264 with x264's
default GOP, so a keyframe at least every 250 frames and at scene changes) is written once into `--cache`. For each
backend installed (PyAV, torchcodec, decord) and each worker count, in this process one after another:
- `decode`: `decode_frames(source, indices, 8, workers)`, the frames alone (what the workers parallelise);
- `chunks` (the "auto" backend only): `LongVUVideoProcessor.iter_video_chunks(path, decode_workers=...)`, decoding plus
  both encoders' pad + resize, which is what every surface feeds the model.
Each configuration runs `--runs` times in turn (round-robin, so that a change of machine load hits every
configuration alike); the median wall time, the median CPU time of the process (user + system, all threads) and the
load average before and after are written to `benchmarks/results/parallel_decoding_cpu.json`. Every run's frames are
checked against the one-worker run (same indices, same pixels: a hash of each frame).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_utils import RESULTS_DIR, machine_info, write_json  # noqa: E402


def write_clip(path: Path, seconds: int, fps: int, width: int, height: int, seed: int = 0) -> Path:
    """Scenes of a panning blocky texture with a moving square, H.264 (x264 defaults but `ultrafast`, crf 23)."""
    import av

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part.mp4")
    with av.open(str(partial), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "ultrafast"}
        index = 0
        while index < seconds * fps:
            length = int(rng.integers(5, 26)) * fps
            blocks = rng.integers(20, 236, size=(height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
            texture = np.repeat(np.repeat(blocks, 16, axis=0), 16, axis=1)
            square = rng.integers(0, 256, size=3, dtype=np.uint8)
            for step in range(min(length, seconds * fps - index)):
                shift = step % 16
                frame = np.ascontiguousarray(texture[shift : shift + height, shift : shift + width])
                x = int(step / max(length - 1, 1) * (width - 80))
                frame[height // 2 - 40 : height // 2 + 40, x : x + 80] = square
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
                index += 1
        for packet in stream.encode():
            container.mux(packet)
    partial.rename(path)
    return path


def cpu_seconds() -> float:
    usage = os.times()
    return usage.user + usage.system


def run_decode(path: str, backend: str, workers: int, fps: float) -> tuple[int, str]:
    from longvu_hf import LongVUVideoProcessor
    from longvu_hf.processing.video_decoding import decode_frames, open_frame_source

    source = open_frame_source(path, backend)
    indices = LongVUVideoProcessor().sample_frames(source.metadata, fps=fps)
    digest, frames = hashlib.sha1(), 0
    for batch in decode_frames(source, indices, 8, workers=workers):
        for slot, frame in batch:
            digest.update(np.int64(indices[slot]).tobytes() + np.ascontiguousarray(frame).tobytes())
            frames += 1
    return frames, digest.hexdigest()


def run_chunks(path: str, workers: int, fps: float) -> tuple[int, str]:
    from longvu_hf import LongVUVideoProcessor

    chunks = LongVUVideoProcessor().iter_video_chunks(path, fps=fps, decode_workers=workers)
    digest, frames = hashlib.sha1(), 0
    for chunk in chunks:
        digest.update(chunk["pixel_values_videos_dino"].numpy().tobytes())
        frames += len(chunk["pixel_values_videos"])
    return frames, digest.hexdigest()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--source-size", default="1280x720", help="WIDTHxHEIGHT of the synthetic clip")
    parser.add_argument("--source-fps", type=int, default=30)
    parser.add_argument("--fps", type=float, default=1.0, help="sampling rate")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--backends", nargs="+", default=None, help="default: every installed one")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-chunks", action="store_true", help="skip the decode + resize measurement")
    parser.add_argument("--cache", default="/tmp/longvu-bench-clips")
    parser.add_argument("--quick", action="store_true", help="a short small clip, one run, for a smoke test")
    parser.add_argument("--output", default=str(RESULTS_DIR / "parallel_decoding_cpu.json"))
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    from longvu_hf.processing.video_decoding import available_video_backends, default_decode_workers

    args = parse_args(argv)
    if args.quick:
        args.minutes, args.source_size, args.runs = 1 / 3, "320x180", 1
    width, height = (int(v) for v in args.source_size.split("x"))
    path = Path(args.cache) / f"texture_{args.minutes:g}min_{width}x{height}_{args.source_fps}fps.mp4"
    if not path.exists():
        started = time.perf_counter()
        write_clip(path, int(args.minutes * 60), args.source_fps, width, height)
        print(f"wrote {path} in {time.perf_counter() - started:.0f} s", flush=True)
    backends = args.backends or available_video_backends()
    configs = [("decode", backend, workers) for backend in backends for workers in args.workers]
    if not args.no_chunks:
        configs += [("chunks", "auto", workers) for workers in args.workers]
    runs: dict[tuple, list[dict]] = {config: [] for config in configs}
    load_before = os.getloadavg()
    for repeat in range(args.runs):
        for config in configs:
            mode, backend, workers = config
            wall, cpu = time.perf_counter(), cpu_seconds()
            if mode == "decode":
                frames, digest = run_decode(str(path), backend, workers, args.fps)
            else:
                frames, digest = run_chunks(str(path), workers, args.fps)
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            runs[config].append({"wall_s": wall, "cpu_s": cpu, "frames": frames, "digest": digest,
                                 "load_1min": os.getloadavg()[0]})
            print(f"run {repeat}: {mode} {backend} workers={workers}: {frames / wall:.1f} frames/s, "
                  f"cpu {cpu:.1f} s, wall {wall:.1f} s", flush=True)
    load_after = os.getloadavg()
    rows = []
    for (mode, backend, workers), measured in runs.items():
        reference = runs[(mode, backend, args.workers[0])][0]
        wall = statistics.median(run["wall_s"] for run in measured)
        cpu = statistics.median(run["cpu_s"] for run in measured)
        frames = measured[0]["frames"]
        rows.append({
            "mode": mode, "backend": backend, "workers": workers, "frames": frames,
            "frames_per_s": round(frames / wall, 2), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "cpu_ms_per_frame": round(1000 * cpu / frames, 2),
            "runs_frames_per_s": [round(run["frames"] / run["wall_s"], 2) for run in measured],
            "same_frames_as_1_worker": all(run["digest"] == reference["digest"] for run in measured),
        })
    for row in rows:
        base = next(r for r in rows if (r["mode"], r["backend"], r["workers"]) == (row["mode"], row["backend"],
                                                                                   args.workers[0]))
        row["speedup"] = round(row["frames_per_s"] / base["frames_per_s"], 2)
    result = {
        "benchmark": "parallel_decoding",
        "machine": machine_info("cpu"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "note": "os.getloadavg() (1, 5, 15 min) before and after; the machine's cores are shared with other jobs, "
                "so a load above the core count means the configurations competed with them for CPU",
        "settings": {"clip": path.name,
                     "clip_mbit_per_s": round(path.stat().st_size * 8 / 1e6 / (args.minutes * 60), 1),
                     "minutes": args.minutes, "source_size": args.source_size,
                     "source_fps": args.source_fps, "sampling_fps": args.fps, "runs": args.runs,
                     "decode_batch_size": 8, "default_decode_workers": default_decode_workers()},
        "results": rows,
    }
    if not all(row["same_frames_as_1_worker"] for row in rows):
        raise SystemExit("parallel decoding gave other frames than one worker")
    write_json(Path(args.output), result)
    return result


if __name__ == "__main__":
    main()
