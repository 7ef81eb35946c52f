"""The benchmark scripts run in their --quick mode (tiny sizes, seconds) so that they cannot rot.

Only the structure and the correctness checks the scripts record are asserted (both versions give the same results);
never a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_compression_benchmark_quick(tmp_path):
    output = tmp_path / "compression.json"
    done = run_benchmark("compression.py", "--quick", "--repeats", "1", "--output", str(output))
    assert done.returncode == 0, done.stderr
    result = json.loads(output.read_text())
    assert [s["stage"] for s in result["stages"]] == ["frame_selection", "unpad_newlines", "stc", "query_mixing"]
    # the loop baseline written after the official code gives exactly our outputs
    assert result["all_identical"] and all(s["identical"] for s in result["stages"])
    assert all(s["baseline_s"] > 0 and s["ours_s"] > 0 for s in result["stages"])
    stc = result["stages"][2]
    assert stc["force_remove"] > 0 and stc["output_tokens"] == stc["budget"], "quick mode covers the forced truncation"
    assert 0 < result["stages"][0]["kept_frames"] < 200
    assert result["reduced"]["quick"] and result["machine"]["cpu"]


def test_repeated_questions_benchmark_quick(tmp_path):
    output = tmp_path / "repeated.json"
    done = run_benchmark("repeated_questions.py", "--quick", "--frames", "3", "--questions", "2", "--repeats", "1",
                         "--output", str(output))
    assert done.returncode == 0, done.stderr
    result = json.loads(output.read_text())
    assert result["identical_answers"] and result["workload"]["questions_per_video"] == 2
    assert set(result["results"]) == {"without_reuse", "with_reuse"} and result["median_cpu_ratio"] > 0


def test_long_video_benchmark_quick(tmp_path):
    output = tmp_path / "long_video.json"
    done = run_benchmark("long_video.py", "--quick", "--output", str(output))
    assert done.returncode == 0, done.stderr
    result = json.loads(output.read_text())
    assert [row["frames"] for row in result["results"]] == [15, 60]
    for row in result["results"]:
        for impl in ("ours", "baseline"):
            assert "error" not in row[impl], row[impl]
            assert row[impl]["seconds_to_first_token"] > 0 and row[impl]["host_peak_gb"] > 0
        # the reference-style pipeline and the model agree on what they keep and on the first token
        assert row["same_kept_frames"] and row["same_num_visual_tokens"] and row["same_first_token"], row
        assert row["time_ratio_baseline_over_ours"] > 0
    # the longer clip goes through frame selection and a compression path
    assert result["results"][1]["ours"]["kept_frames"] < 60 and result["results"][1]["ours"]["path"] in ("mix", "stc")
    assert result["reduced"]["quick"]


def test_reference_loops_match_the_compression_module_on_edge_cases():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from reference_baseline import reference_select_frames, reference_stc
    finally:
        sys.path.remove(str(BENCHMARKS))
    from longvu_hf.modeling import compression as C

    generator = torch.Generator().manual_seed(0)
    # fewer frames than a window, an exact number of windows, a ragged last window
    for frames in (7, 32, 37):
        base = torch.randn(1, 6, 8, generator=generator)
        features = base + 0.4 * torch.randn(frames, 6, 8, generator=generator)
        ours = C.select_frames(features, 0.83, 16, 400).indices
        theirs, kept_features = reference_select_frames(features, 16, 0.83, 400)
        assert torch.equal(ours, theirs) and torch.equal(kept_features, features[ours])
    # the 400-frame cap
    many = torch.randn(900, 2, 4, generator=generator)
    assert torch.equal(C.select_frames(many, 0.83, 16, 400).indices, reference_select_frames(many, 16, 0.83, 400)[0])
    # STC with a one-frame last chunk, with and without the forced truncation
    tokens = torch.randn(1, 10, 16, generator=generator) + 0.6 * torch.randn(17, 10, 16, generator=generator)
    for budget in (1000, 60):
        assert torch.equal(C.spatial_token_compression(tokens, 0.7, 8, budget)[0], reference_stc(tokens, 0.7, budget))


def test_benchmarks_refuse_cuda_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from benchmark_utils import resolve_device
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(SystemExit, match="CUDA is not available"):
        resolve_device("cuda")
