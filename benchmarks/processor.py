"""Processor benchmark: `LongVUVideoProcessor` vs the reference-style preprocessing, on the same real video file.

Both sides turn a 720p 30 fps video (made here with ffmpeg, or PyAV if ffmpeg is missing) into the pixel inputs of
both encoders at LongVU's default sampling (1 frame per second, `round(avg_fps)` stride from frame 0):

* `longvu_hf`: `LongVUVideoProcessor()(path)` with its defaults: streaming PyAV decode of the sampled frames only,
  bit-exact PIL pad + resize, uint8 outputs written into preallocated tensors.
* `reference` (the official README / `app.py` path, docs/reference.md §1.2-§1.3): decord
  `VideoReader(num_threads=1)` and `vr[i]` one frame at a time (the same access pattern with PyAV when decord is not
  installed), all raw frames stacked, then per frame and per encoder `expand2square` + PIL resize + the image
  processor's steps of transformers 4.42 (PIL round trip of the no-op resize, rescale in float64, normalise in
  float32, channels first), and `torch.stack` of the float tensors.
* `reference_eval` (the official evaluation scripts' path, e.g. `eval/eval_egoschema.py`): decord `VideoReader` with
  its default (automatic, multi-threaded) decoder threads and one `vr.get_batch(indices)`, then the same per-frame
  preprocessing. Needs decord; skipped without it.

`--cpus N` pins every worker to the same N cores (and N torch threads), so that all contenders run with equal thread
counts; by default each worker may use every core. Each measurement runs in its own subprocess (peak RSS is per
process, so runs cannot contaminate each other) and the contenders alternate. Output: JSON with, per contender, the
median and the best of `--repeats` runs (frames/s, CPU seconds per frame), peak RSS (whole process and above the
post-import baseline), the ratios of the medians (speed and CPU time; the best runs' ratio beside them), and a parity
check of the outputs.

    python benchmarks/processor.py            # full: 720p, 30 fps, 180 s
    python benchmarks/processor.py --quick    # tiny: 160x90, 30 fps, 6 s (a smoke test)
    python benchmarks/processor.py --long     # memory bound: a one-hour video (160x90, 30 fps), longvu_hf only

`--long` checks the memory promise: for a one-hour video at 1 fps (3,600 frames) the processor needs its uint8
outputs at both resolutions (3,600 x (3x384x384 + 3x378x378) bytes = 3.1 GB) plus a few decoded frame batches. The
frames are small so that the video is quick to make; the outputs, which dominate, have their full size. The reference
is not run there: its float32 outputs alone would take 12.5 GB.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCHMARKS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS_DIR))
sys.path.insert(0, str(BENCHMARKS_DIR.parent / "src"))

SIGLIP_MEAN, SIGLIP_STD, SIGLIP_SIZE = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 384
DINO_MEAN, DINO_STD, DINO_SIZE = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 378


# --------------------------------------------------------------------------------------------------------------------
# The video
# --------------------------------------------------------------------------------------------------------------------


def make_benchmark_video(path: Path, width: int, height: int, fps: int, seconds: int) -> dict:
    """A synthetic but realistically compressible video: ffmpeg's testsrc2 with mild temporal noise, H.264 (libx264
    defaults: CRF 23, GOP up to 250 frames, B-frames), yuv420p. Falls back to PyAV with a moving pattern."""
    if shutil.which("ffmpeg"):
        source = f"testsrc2=size={width}x{height}:rate={fps},noise=alls=3:allf=t"
        command = ["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i", source, "-t", str(seconds),
                   "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)]
        subprocess.run(command, check=True)
        generator = "ffmpeg testsrc2 + noise(alls=3), libx264 veryfast CRF 23"
    else:
        import av

        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"preset": "veryfast"}
            for index in range(fps * seconds):
                frame = np.roll(np.kron(base, np.ones((8, 8, 1), dtype=np.uint8)), index * 2, axis=1)
                noise = rng.integers(0, 4, size=frame.shape, dtype=np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame + noise, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        generator = "PyAV: moving blocks + noise, libx264 veryfast"
    size = path.stat().st_size
    return {"path": str(path), "width": width, "height": height, "fps": fps, "seconds": seconds,
            "generator": generator, "bytes": size, "bitrate_mbps": round(size * 8 / seconds / 1e6, 2)}


# --------------------------------------------------------------------------------------------------------------------
# Contenders (run inside worker subprocesses)
# --------------------------------------------------------------------------------------------------------------------


def run_longvu_hf(video_path: str, backend: str) -> dict:
    from longvu_hf.processing import LongVUVideoProcessor

    processor = LongVUVideoProcessor(video_backend=backend)
    out = processor(video_path)
    return {"siglip": out["pixel_values_videos"], "dino": out["pixel_values_videos_dino"], "normalised": False}


class _PyAVRandomAccess:
    """decord's `vr[i]` access pattern on PyAV: decode forward inside a GOP, seek when the target is in a later GOP
    or behind (decord's `SeekAccurate`), one decoding thread (the reference passes `num_threads=1`)."""

    def __init__(self, path: str):
        import av

        self.container = av.open(path)
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "NONE"
        self.time_base = float(self.stream.time_base)
        self.fps = float(self.stream.average_rate)
        self.length = self.stream.frames
        # keyframe presentation indices, from a demux pass (decord indexes keyframes at open time too)
        pts = [(packet.pts, packet.is_keyframe) for packet in self.container.demux(self.stream) if packet.size]
        order = sorted(p for p, _ in pts)
        rank = {p: i for i, p in enumerate(order)}
        self.keyframes = sorted(rank[p] for p, key in pts if key)
        self.rank, self.pts = rank, order
        self.container.seek(0, stream=self.stream)
        self.frames = self.container.decode(self.stream)
        self.position = -1

    def _keyframe_before(self, index: int) -> int:
        return max(k for k in self.keyframes if k <= index)

    def __len__(self):
        return self.length

    def __getitem__(self, index: int) -> np.ndarray:
        if index <= self.position or self._keyframe_before(index) > self._keyframe_before(max(self.position, 0)):
            self.container.seek(self.pts[self._keyframe_before(index)], stream=self.stream)
            self.frames = self.container.decode(self.stream)
            self.position = -1
        for frame in self.frames:
            self.position = self.rank[frame.pts]
            if self.position == index:
                return frame.to_ndarray(format="rgb24")
        raise IndexError(index)


def _reference_image_processor(image, mean, std, size):
    """transformers 4.42's slow image processor steps on one PIL image (already padded and resized)."""
    from PIL import Image

    array = np.array(image)  # to_numpy_array
    array = np.array(Image.fromarray(array).resize((size, size), Image.BICUBIC))  # resize to the same size: a copy
    array = (array.astype(np.float64) * (1 / 255)).astype(np.float32)  # rescale
    array = (array - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)  # normalize
    return np.ascontiguousarray(array.transpose(2, 0, 1))  # channels first


def run_reference(video_path: str, batch: bool = False) -> dict:
    """The official preprocessing; `batch=False`: README/app.py (`num_threads=1`, `vr[i]`), `batch=True`: the eval
    scripts (decord's default threads, `vr.get_batch`)."""
    import torch
    from PIL import Image

    from longvu_hf.processing.frame_transforms import expand_to_square

    if batch:
        from decord import VideoReader, cpu

        reader = VideoReader(video_path, ctx=cpu(0))  # eval scripts: default num_threads (0 = automatic)
        frame_indices = list(range(0, len(reader), round(float(reader.get_avg_fps()))))
        video = reader.get_batch(frame_indices).asnumpy()
        decoder = "decord get_batch (default threads)"
    else:
        try:
            from decord import VideoReader, cpu

            reader = VideoReader(video_path, ctx=cpu(0), num_threads=1)
            fps = float(reader.get_avg_fps())
            read = lambda index: reader[index].asnumpy()  # noqa: E731
            length = len(reader)
            decoder = "decord vr[i] (num_threads=1)"
        except ImportError:
            reader = _PyAVRandomAccess(video_path)
            fps, read, length, decoder = reader.fps, reader.__getitem__, len(reader), "pyav (decord access pattern)"
        frame_indices = list(range(0, length, round(fps)))
        video = np.stack([read(index) for index in frame_indices])  # README: all raw frames, stacked

    outputs = {}
    encoders = [("siglip", SIGLIP_MEAN, SIGLIP_STD, SIGLIP_SIZE), ("dino", DINO_MEAN, DINO_STD, DINO_SIZE)]
    for name, mean, std, size in encoders:
        fill = tuple(int(255 * m) for m in mean)
        tensors = []
        for frame in video:  # process_images: one frame at a time
            image = expand_to_square(Image.fromarray(frame), fill).resize((size, size))
            tensors.append(torch.from_numpy(_reference_image_processor(image, mean, std, size)))
        outputs[name] = torch.stack(tensors)
    return {**outputs, "normalised": True, "decoder": decoder}


def worker(args) -> None:
    """One measured run, in its own process: prints a JSON line."""
    import torch

    if args.cpus:  # equal thread counts: every contender on the same cores
        os.sched_setaffinity(0, set(range(args.cpus)))
    torch.set_num_threads(args.cpus or os.cpu_count() or 1)
    # Imports are not part of the measurement: both sides pay for torch/transformers/PIL the same way.
    import PIL.Image  # noqa: F401

    import longvu_hf.processing  # noqa: F401

    import av  # noqa: F401

    if args.worker.startswith("reference"):
        try:
            import decord  # noqa: F401
        except ImportError:
            pass
    rss_after_imports_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    if args.worker.startswith("reference"):
        result = run_reference(args.video, batch=args.worker == "reference_eval")
    else:
        result = run_longvu_hf(args.video, args.worker.split(":", 1)[1] if ":" in args.worker else "auto")
    wall = time.perf_counter() - wall_start
    cpu = time.process_time() - cpu_start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    frames = int(result["siglip"].shape[0])
    record = {"contender": args.worker, "frames": frames, "seconds": wall, "frames_per_second": frames / wall,
              "cpu_seconds_per_frame": cpu / frames, "cpus": len(os.sched_getaffinity(0)),
              "torch_threads": torch.get_num_threads(), "peak_rss_mb": peak_mb,
              "rss_after_imports_mb": rss_after_imports_mb, "peak_rss_above_imports_mb": peak_mb - rss_after_imports_mb}
    if "decoder" in result:
        record["decoder"] = result["decoder"]
    if args.save_outputs:
        torch.save({key: value for key, value in result.items() if key in ("siglip", "dino")}, args.save_outputs)
    print("RESULT " + json.dumps(record))


# --------------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------------


def run_worker(contender: str, video: str, save_outputs: str | None = None, cpus: int | None = None) -> dict:
    command = [sys.executable, __file__, "--worker", contender, "--video", video]
    if cpus:
        command += ["--cpus", str(cpus)]
    if save_outputs:
        command += ["--save-outputs", save_outputs]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{contender} worker failed:\n{completed.stderr[-4000:]}")
    line = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def parity(ours_path: str, reference_path: str) -> dict:
    """The two contenders compute the same thing: our uint8 canvases, normalised, against the reference floats."""
    import torch

    ours, reference = torch.load(ours_path), torch.load(reference_path)
    report = {}
    for name, mean, std in [("siglip", SIGLIP_MEAN, SIGLIP_STD), ("dino", DINO_MEAN, DINO_STD)]:
        mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        normalised = (ours[name].float() / 255 - mean_t) / std_t
        difference = (normalised - reference[name]).abs()
        report[name] = {"max_abs_diff": float(difference.max()), "mean_abs_diff": float(difference.mean())}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny video, a few seconds (smoke test)")
    parser.add_argument("--long", action="store_true", help="one-hour video, memory bound of longvu_hf only")
    parser.add_argument("--seconds", type=int, help="video length (default 180, quick 6)")
    parser.add_argument("--repeats", type=int, help="runs per contender, alternating; best kept (default 3, quick 1)")
    parser.add_argument("--video", help="use this video instead of generating one")
    parser.add_argument("--backends", default="auto", help="comma-separated video_backend values for longvu_hf")
    parser.add_argument("--output", type=Path, help="JSON output (default benchmarks/results/processor[_quick].json)")
    parser.add_argument("--cpus", type=int, help="pin every worker to this many cores (equal thread counts)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--save-outputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from benchmark_utils import RESULTS_DIR, machine_info, write_json

    if args.long:
        return main_long(args)
    width, height = (160, 90) if args.quick else (1280, 720)
    seconds = args.seconds or (6 if args.quick else 180)
    repeats = args.repeats or (1 if args.quick else 3)
    output = args.output or RESULTS_DIR / ("processor_quick.json" if args.quick else "processor.json")
    with tempfile.TemporaryDirectory() as scratch:
        if args.video:
            video = {"path": args.video, "bytes": os.path.getsize(args.video), "generator": "given"}
        else:
            print(f"making a {width}x{height} 30 fps {seconds} s video ...", flush=True)
            video = make_benchmark_video(Path(scratch) / "benchmark.mp4", width, height, 30, seconds)
        contenders = [f"longvu_hf:{backend}" for backend in args.backends.split(",")] + ["reference"]
        try:
            import decord  # noqa: F401

            contenders.append("reference_eval")
        except ImportError:
            print("decord is not installed: the eval-script baseline (get_batch) is skipped", flush=True)
        runs: dict[str, list[dict]] = {name: [] for name in contenders}
        saved = {name: str(Path(scratch) / f"{name.replace(':', '_')}.pt") for name in contenders}
        for repeat in range(repeats):
            for name in contenders:
                record = run_worker(name, video["path"], saved[name] if repeat == 0 else None, args.cpus)
                runs[name].append(record)
                print(f"  {name:<22} {record['frames_per_second']:7.2f} frames/s  "
                      f"{record['peak_rss_mb']:8.0f} MB peak RSS", flush=True)
        check = parity(saved[contenders[0]], saved["reference"])
        if "reference_eval" in contenders:
            check["reference_eval"] = parity(saved[contenders[0]], saved["reference_eval"])

    import statistics

    def summary(name: str) -> dict:
        fastest = max(runs[name], key=lambda record: record["frames_per_second"])
        return {**fastest, "peak_rss_mb": min(r["peak_rss_mb"] for r in runs[name]),
                "peak_rss_above_imports_mb": min(r["peak_rss_above_imports_mb"] for r in runs[name]),
                "median_frames_per_second": statistics.median(r["frames_per_second"] for r in runs[name]),
                "median_cpu_seconds_per_frame": statistics.median(r["cpu_seconds_per_frame"] for r in runs[name]),
                "all_frames_per_second": [round(r["frames_per_second"], 3) for r in runs[name]],
                "all_cpu_seconds_per_frame": [round(r["cpu_seconds_per_frame"], 4) for r in runs[name]]}

    results = {name: summary(name) for name in contenders}
    ours, reference = results[contenders[0]], results["reference"]
    against = {
        baseline: {
            "median_speedup": ours["median_frames_per_second"] / results[baseline]["median_frames_per_second"],
            "median_cpu_time_ratio": results[baseline]["median_cpu_seconds_per_frame"]
            / ours["median_cpu_seconds_per_frame"],
            "best_speedup": ours["frames_per_second"] / results[baseline]["frames_per_second"],
        }
        for baseline in contenders[1:] if baseline.startswith("reference")
    }
    payload = {
        "benchmark": "processor",
        "mode": "quick" if args.quick else "full",
        "machine": machine_info("cpu"),
        "load_average": os.getloadavg(),
        "video": {key: value for key, value in video.items() if key != "path"},
        "sampling": "reference default: 1 frame every round(avg_fps) frames from frame 0",
        "repeats": repeats,
        "cpus_per_worker": args.cpus or os.cpu_count(),
        "results": results,
        "ratios_of_medians": against,
        "speedup_frames_per_second": ours["frames_per_second"] / reference["frames_per_second"],
        "cpu_time_ratio": reference["cpu_seconds_per_frame"] / ours["cpu_seconds_per_frame"],
        "peak_rss_ratio": ours["peak_rss_mb"] / reference["peak_rss_mb"],
        "peak_rss_above_imports_ratio": ours["peak_rss_above_imports_mb"] / reference["peak_rss_above_imports_mb"],
        "parity": check,
        "goal": "frames/s >= 3x the reference and peak RSS <= 0.5x",
    }
    write_json(output, payload)
    print(json.dumps({key: payload[key] for key in ("ratios_of_medians", "speedup_frames_per_second", "cpu_time_ratio",
                                                   "peak_rss_ratio", "peak_rss_above_imports_ratio", "parity")},
                     indent=2))
    print(f"written to {output}")


def main_long(args) -> None:
    """One-hour video: peak RSS of longvu_hf against the size of its outputs."""
    from benchmark_utils import RESULTS_DIR, machine_info, write_json

    seconds = args.seconds or 3600
    output = args.output or RESULTS_DIR / "processor_long.json"
    with tempfile.TemporaryDirectory() as scratch:
        if args.video:
            video = {"path": args.video, "bytes": os.path.getsize(args.video), "generator": "given"}
        else:
            print(f"making a 160x90 30 fps {seconds} s video ...", flush=True)
            video = make_benchmark_video(Path(scratch) / "long.mp4", 160, 90, 30, seconds)
        record = run_worker(f"longvu_hf:{args.backends.split(',')[0]}", video["path"])
    frames = record["frames"]
    output_bytes = frames * 3 * (SIGLIP_SIZE**2 + DINO_SIZE**2)
    batch_bytes = 8 * video.get("width", 160) * video.get("height", 90) * 3
    payload = {
        "benchmark": "processor_long_video_memory",
        "machine": machine_info("cpu"),
        "load_average": os.getloadavg(),
        "video": {key: value for key, value in video.items() if key != "path"},
        "result": record,
        "output_mb": output_bytes / 2**20,
        "peak_rss_above_imports_mb": record["peak_rss_above_imports_mb"],
        "overhead_above_outputs_mb": record["peak_rss_above_imports_mb"] - output_bytes / 2**20,
        "one_decoded_batch_mb": batch_bytes / 2**20,
        "bound": "peak RSS above imports <= uint8 outputs + a few decoded frame batches",
    }
    write_json(output, payload)
    print(json.dumps({key: payload[key] for key in ("output_mb", "peak_rss_above_imports_mb",
                                                   "overhead_above_outputs_mb")}, indent=2))
    print(f"written to {output}")


if __name__ == "__main__":
    main()
