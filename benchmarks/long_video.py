"""Benchmark: time to first token and peak memory versus video length, longvu_hf against a reference-style baseline.

The baseline is NOT the official code: it re-implements the official pipeline's steps (float pixels of every frame,
towers in chunks of 64, loop-based selection/mixing/STC written after `cambrian_arch.py`) on top of this package's own
towers, aggregator and LLM (`reference_baseline.py`), so it measures the official pipeline's data flow and memory
pattern, not the official implementation. Running the official code itself needs its own environment (transformers
4.42, as `tests/fixtures/official_cases/make_official_cases.py` does) and has not been done here.

    python benchmarks/long_video.py --device cpu            # 1 and 10 min, reduced depths (see below)
    python benchmarks/long_video.py --minutes 1 10 30 60    # all four lengths on CPU (~23 min on 2 cores)
    python benchmarks/long_video.py --device cuda           # full depths, bf16 (the goal: 1 h in < 25 s on one H100)
    python benchmarks/long_video.py --quick                 # tiny model, a few seconds (run by the tests)

For each length (1, 10, 30 and 60 minutes at 1 fps: 60 to 3,600 frames) both versions get the same random-weight
model with the real widths (SigLIP so400m, DINOv2-giant, SVA, Qwen2-7B), the same synthetic 16:9 video (scenes of
near-duplicate frames, uint8 as the processor returns them) and the same 40-token prompt, and run until the first
generated token:
- ours: `model.generate(**inputs, max_new_tokens=1)` on the uint8 frames;
- baseline (`reference_baseline.reference_first_token`, the official code's steps re-implemented, see above): float
  pixels of every frame for both encoders (float16 on CUDA; bfloat16 on CPU, where float16 kernels are slow), towers
  in chunks of 64, the DINO features of all frames kept, loop-based selection/mixing/STC, all kept frames through the
  SVA at once.

Each measurement runs in a fresh process (so that peak host memory is its own) and reports seconds to first token,
peak host RSS during the call (sampled every 5 ms), peak device memory (`torch.cuda.max_memory_allocated`), and
whether both versions kept the same frames and produced the same first token.

Depths: on CUDA the towers and the LLM have their real depths (27 SigLIP, 40 DINOv2, 28 Qwen2 layers). On CPU they do
not fit in the time of a benchmark (one DINOv2-giant layer alone costs 0.14-0.29 s per frame on 2 cores), so the CPU
default keeps the embeddings of the towers only (0 layers; the tower layers cost the same in both versions) and one
LLM layer, and records the measured per-frame cost of one tower layer; the JSON says which depths were used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_utils import RESULTS_DIR, machine_info, resolve_device, synchronize, write_json  # noqa: E402
from reference_baseline import reference_first_token  # noqa: E402

FPS = 1
VIDEO_SIZE = (720, 1280)  # (height, width) of the synthetic source video
PROMPT_TOKENS = 40
REAL_DEPTHS = {"siglip": 27, "dino": 40, "llm": 28}


# --------------------------------------------------------------------------------------------------------------------
# Model and inputs
# --------------------------------------------------------------------------------------------------------------------


def benchmark_config(quick: bool, siglip_layers: int, dino_layers: int, llm_layers: int):
    """Real widths with the given depths (or a tiny model with real input geometry when `quick`)."""
    from longvu_hf import LongVUConfig

    if quick:
        return LongVUConfig(
            text_config={"model_type": "qwen2", "vocab_size": 256, "hidden_size": 32, "intermediate_size": 64,
                         "num_hidden_layers": llm_layers, "num_attention_heads": 4, "num_key_value_heads": 2,
                         "max_position_embeddings": 4096, "tie_word_embeddings": False},
            vision_config={"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                           "num_hidden_layers": siglip_layers, "num_attention_heads": 2, "image_size": 384,
                           "patch_size": 14},
            dino_config={"model_type": "dinov2", "hidden_size": 16, "num_hidden_layers": dino_layers,
                         "num_attention_heads": 2, "mlp_ratio": 2, "use_swiglu_ffn": True, "image_size": 518,
                         "patch_size": 14},
            aggregator_hidden_size=32, aggregator_num_heads=4, video_token_index=250, image_token_index=251,
            max_context_length=1024,
        )
    release = LongVUConfig()  # the released Qwen2-7B video checkpoint's settings

    def with_depth(sub_config, layers: int) -> dict:
        values = sub_config.to_dict()
        values["num_hidden_layers"] = layers
        for derived in ("out_features", "out_indices", "stage_names", "layer_types", "max_window_layers"):
            values.pop(derived, None)  # recomputed from the new depth
        return values

    return LongVUConfig(
        text_config=with_depth(release.text_config, llm_layers),
        vision_config=with_depth(release.vision_config, siglip_layers),
        dino_config=with_depth(release.dino_config, dino_layers),
    )


def synthetic_video(num_frames: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """uint8 processor outputs of a 16:9 video: scenes (4-40 s) of smooth random backgrounds with a small square
    moving across, so that DINOv2 selection drops near-duplicates and keeps scene changes, like real footage."""
    generator = torch.Generator().manual_seed(seed)
    siglip = torch.empty(num_frames, 3, 384, 384, dtype=torch.uint8)
    dino = torch.empty(num_frames, 3, 378, 378, dtype=torch.uint8)
    start = 0
    while start < num_frames:
        length = int(torch.randint(4, 41, (1,), generator=generator))
        coarse = torch.rand(1, 3, 6, 6, generator=generator) * 255
        bases = [torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)[0]
                 .to(torch.uint8) for s in (384, 378)]
        for frame in range(start, min(start + length, num_frames)):
            offset = 40 + (frame - start) * 8 % 280
            for out, base in ((siglip, bases[0]), (dino, bases[1])):
                out[frame] = base
                out[frame, :, 150:190, offset : offset + 40] = 255
        start += length
    return {
        "pixel_values_videos": siglip,
        "pixel_values_videos_dino": dino,
        "video_num_frames": torch.tensor([num_frames]),
        "video_sizes": torch.tensor([VIDEO_SIZE]),
    }


def prompt_ids(config, seed: int = 0) -> torch.Tensor:
    """A `PROMPT_TOKENS`-token prompt with the video placeholder after the first 15 tokens."""
    generator = torch.Generator().manual_seed(seed)
    special = {config.video_token_id, config.image_token_id}
    ids = torch.randint(0, min(config.text_config.vocab_size, 150000), (PROMPT_TOKENS,), generator=generator)
    ids = torch.tensor([i if int(i) not in special else 1 for i in ids.tolist()])
    ids[15] = config.video_token_id
    return ids.unsqueeze(0)


# --------------------------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------------------------


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: peak so far instead
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Samples the resident set size every `interval` seconds while active; `.peak` is the largest sample."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = current_rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())


def available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def baseline_tensor_bytes(num_frames: int, pixel_bytes: int, feature_bytes: int) -> int:
    """Bytes the baseline must hold at once, from tensor shapes alone: float pixels of every frame for both encoders
    and the DINOv2 features (576 x 1536) of every frame."""
    pixels = num_frames * 3 * (384 * 384 + 378 * 378) * pixel_bytes
    features = num_frames * 576 * 1536 * feature_bytes
    return pixels + features


# --------------------------------------------------------------------------------------------------------------------
# One measurement (run in a child process)
# --------------------------------------------------------------------------------------------------------------------


GB = 1e9


def measure(spec: dict) -> dict:
    """Load the benchmark model, build the video, run one version to the first token; returns the numbers."""
    import longvu_hf  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    device, dtype = spec["device"], getattr(torch, spec["dtype"])
    model = AutoModelForImageTextToText.from_pretrained(spec["model_dir"], dtype=dtype).to(device).eval()
    input_ids = prompt_ids(model.config).to(device)  # frames stay on the host: both versions move them themselves
    video = synthetic_video(spec["frames"])
    pixel_dtype = getattr(torch, spec["baseline_pixel_dtype"])

    def run(ids, pixels):
        if spec["impl"] == "ours":
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), **pixels, max_new_tokens=1, do_sample=False,
                return_dict_in_generate=True,
            )
            report = out.compression[0]
            return {"token": int(out.sequences[0, -1]), "num_visual_tokens": report.num_visual_tokens,
                    "kept_frame_indices": report.kept_frame_indices, "path": report.path}
        return reference_first_token(model, ids, pixels, pixel_dtype)

    with torch.no_grad():
        run(input_ids, synthetic_video(2, seed=1))  # warm-up: one-time kernel and allocator setup
    synchronize(device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        device_before = torch.cuda.memory_allocated()
    rss_before = current_rss_bytes()
    with PeakRSS() as rss, torch.no_grad():
        cpu_start, start = time.process_time(), time.perf_counter()
        result = run(input_ids, video)
        synchronize(device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    kept = result.pop("kept_frame_indices")
    row = {
        "impl": spec["impl"],
        "frames": spec["frames"],
        "seconds_to_first_token": round(seconds, 3),
        # CPU time of all threads of the process: steadier than wall time on a shared machine
        "cpu_seconds": round(cpu_seconds, 3),
        "host_rss_before_gb": round(rss_before / GB, 3),
        "host_peak_gb": round(rss.peak / GB, 3),
        "host_peak_increase_gb": round((rss.peak - rss_before) / GB, 3),
        "kept_frames": len(kept),
        "kept_frames_digest": hashlib.sha1(json.dumps(kept).encode()).hexdigest()[:12],
        **result,
    }
    if device.startswith("cuda"):
        row["device_peak_gb"] = round(torch.cuda.max_memory_allocated() / GB, 3)
        row["device_peak_increase_gb"] = round((torch.cuda.max_memory_allocated() - device_before) / GB, 3)
    return row


def run_child(spec: dict, timeout: float) -> dict:
    """Run `measure(spec)` in a fresh Python process; an out-of-memory kill or a crash becomes an `error` entry."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"impl": spec["impl"], "frames": spec["frames"], "error": f"did not finish in {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    reason = f"exit code {done.returncode}" + (" (killed: out of memory?)" if done.returncode in (-9, 137) else "")
    tail = done.stderr.strip().splitlines()[-1:] or [""]
    return {"impl": spec["impl"], "frames": spec["frames"], "error": f"{reason}: {tail[0][:300]}"}


# --------------------------------------------------------------------------------------------------------------------
# Tower cost per layer (CPU: the layers left out)
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def tower_layer_cost(dtype: torch.dtype, device: str, frames: int = 4) -> dict:
    """Measured seconds per frame of ONE layer of each real-size tower at LongVU's resolutions."""
    from longvu_hf import LongVUConfig
    from transformers import AutoModel

    config = LongVUConfig()
    costs = {}
    for name, sub, size in (("siglip", config.vision_config, 384), ("dino", config.dino_config, config.dino_image_size)):
        sub.num_hidden_layers = 1
        tower = AutoModel.from_config(sub).to(device, dtype).eval()
        pixels = torch.randn(frames, 3, size, size, device=device, dtype=dtype)
        layer = tower.encoder.layers[0] if name == "siglip" else tower.encoder.layer[0]
        hidden = tower.embeddings(pixels)
        layer(hidden, None)
        synchronize(device)
        start = time.perf_counter()
        layer(hidden, None)
        synchronize(device)
        costs[f"{name}_s_per_frame_per_layer"] = round((time.perf_counter() - start) / frames, 4)
        del tower
    return costs


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="tiny model and short videos, in-process (for CI)")
    parser.add_argument("--minutes", type=float, nargs="+",
                        help="video lengths at 1 fps (default 1 10 30 60 on CUDA, 1 10 on CPU)")
    parser.add_argument("--dtype", help="model dtype (default bfloat16; float32 with --quick)")
    parser.add_argument("--siglip-layers", type=int, help="SigLIP depth (real 27; CPU default 0)")
    parser.add_argument("--dino-layers", type=int, help="DINOv2 depth (real 40; CPU default 0)")
    parser.add_argument("--llm-layers", type=int, help="LLM depth (real 28; CPU default 1)")
    parser.add_argument("--impls", nargs="+", default=["ours", "baseline"], choices=["ours", "baseline"])
    parser.add_argument("--memory-fraction", type=float, default=0.7,
                        help="skip a baseline run whose float pixels and DINO features alone exceed this fraction of "
                             "the available host memory (CPU; its measured peak at 1 h was 1.4x that estimate)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    parser.add_argument("--output", type=Path, help="JSON path (default benchmarks/results/long_video_<device>.json)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    args.device = resolve_device(args.device)
    on_gpu = args.device.startswith("cuda")
    if args.quick:
        defaults = {"minutes": [0.25, 1.0], "dtype": "float32", "siglip_layers": 1, "dino_layers": 1, "llm_layers": 1}
    elif on_gpu:
        defaults = {"minutes": [1, 10, 30, 60], "dtype": "bfloat16", **{f"{k}_layers": v for k, v in
                                                                         REAL_DEPTHS.items()}}
    else:  # ~10 minutes on 2 cores; `--minutes 60` runs the hour (~20 minutes more)
        defaults = {"minutes": [1, 10], "dtype": "bfloat16", "siglip_layers": 0, "dino_layers": 0, "llm_layers": 1}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.output is None:
        args.output = RESULTS_DIR / f"long_video_{args.device.split(':')[0]}{'_quick' if args.quick else ''}.json"
    return args


def compare_row(minutes: float, ours: dict | None, baseline: dict | None) -> dict:
    row = {"minutes": minutes, "frames": int(round(minutes * 60 * FPS)), "ours": ours, "baseline": baseline}
    if ours and baseline and "error" not in ours and "error" not in baseline and "skipped" not in baseline:
        row["time_ratio_baseline_over_ours"] = round(
            baseline["seconds_to_first_token"] / ours["seconds_to_first_token"], 2
        )
        if "cpu_seconds" in ours and "cpu_seconds" in baseline:
            row["cpu_time_ratio_baseline_over_ours"] = round(baseline["cpu_seconds"] / ours["cpu_seconds"], 2)
        row["host_peak_increase_ratio"] = round(
            baseline["host_peak_increase_gb"] / max(ours["host_peak_increase_gb"], 1e-3), 2
        )
        if "device_peak_gb" in ours:
            row["device_peak_ratio"] = round(baseline["device_peak_gb"] / max(ours["device_peak_gb"], 1e-3), 2)
        row["same_kept_frames"] = ours["kept_frames_digest"] == baseline["kept_frames_digest"]
        row["same_num_visual_tokens"] = ours["num_visual_tokens"] == baseline["num_visual_tokens"]
        row["same_first_token"] = ours["token"] == baseline["token"]
    return row


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))), flush=True)
        return {}
    import tempfile

    import longvu_hf  # noqa: F401
    from longvu_hf import LongVUForConditionalGeneration

    device, on_gpu = args.device, args.device.startswith("cuda")
    baseline_pixel_dtype = "float16" if on_gpu else ("float32" if args.dtype == "float32" else "bfloat16")
    config = benchmark_config(args.quick, args.siglip_layers, args.dino_layers, args.llm_layers)
    rows = []
    with tempfile.TemporaryDirectory(prefix="longvu_bench_") as model_dir:
        # Build the random model once so that every measurement loads the very same weights.
        print(f"building the benchmark model (depths: SigLIP {args.siglip_layers}, DINOv2 {args.dino_layers}, "
              f"LLM {args.llm_layers}; {args.dtype})", flush=True)
        torch.manual_seed(0)
        # Built directly in the target dtype: the full-depth 7B model would need 32 GB of host memory in float32.
        model = LongVUForConditionalGeneration._from_config(config, dtype=getattr(torch, args.dtype))
        model.save_pretrained(model_dir)
        del model
        for minutes in args.minutes:
            frames = int(round(minutes * 60 * FPS))
            results = {}
            for impl in args.impls:
                spec = {"impl": impl, "frames": frames, "device": device, "dtype": args.dtype,
                        "baseline_pixel_dtype": baseline_pixel_dtype, "model_dir": model_dir}
                available = available_memory_bytes()
                needed = baseline_tensor_bytes(frames, 2 if baseline_pixel_dtype != "float32" else 4,
                                               4 if args.dtype == "float32" else 2)
                if impl == "baseline" and not on_gpu and available and needed > args.memory_fraction * available:
                    results[impl] = {"impl": impl, "frames": frames, "skipped": (
                        f"float pixels and DINOv2 features of all frames alone need {needed / GB:.1f} GB (from tensor "
                        f"shapes), more than {args.memory_fraction:.0%} of the {available / GB:.1f} GB available")}
                elif args.quick:
                    results[impl] = measure(spec)
                else:
                    results[impl] = run_child(spec, args.timeout)
                print(f"{minutes:5g} min ({frames:5d} frames) {impl:8s} {json.dumps(results[impl])}", flush=True)
            rows.append(compare_row(minutes, results.get("ours"), results.get("baseline")))

    costs = tower_layer_cost(getattr(torch, args.dtype), device) if not args.quick else {}
    reduced = {}
    depths = {"siglip": args.siglip_layers, "dino": args.dino_layers, "llm": args.llm_layers}
    for name, depth in depths.items():
        if not args.quick and depth != REAL_DEPTHS[name]:
            reduced[name] = f"{depth} of {REAL_DEPTHS[name]} layers"
    if args.quick:
        reduced["quick"] = "tiny widths and short videos: checks that the script runs, the numbers mean nothing"
    payload = {
        "benchmark": "long_video",
        "machine": machine_info(device),
        "settings": {
            "fps": FPS, "video_size": list(VIDEO_SIZE), "prompt_tokens": PROMPT_TOKENS, "dtype": args.dtype,
            "baseline_pixel_dtype": baseline_pixel_dtype, "depths": depths,
            "max_context_length": config.max_context_length, "vision_chunk_size": config.vision_chunk_size,
        },
        "reduced": reduced,
        "tower_layer_cost": costs,
        "baseline": "reference_baseline.reference_first_token: float pixels of all frames, towers in chunks of 64, "
                    "all DINO features kept, loop-based compression, SVA on all kept frames at once",
        "results": rows,
    }
    write_json(args.output, payload)
    print(f"wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
