"""Benchmark evaluation of LongVU: EgoSchema, MVBench, VideoMME and MLVU in their official release layouts.

- `benchmarks`: one loader per benchmark, each giving a `datasets.Dataset` in a common row format;
- `protocols`: the `reference` (official scripts) and `strict` presets;
- `prompts`, `sampling`, `answers`: the official prompts, frame sampling, subtitles and answer parsing;
- `predictor`: one question through the processor's chat template and `model.generate`;
- `runner`, `records`, `report`: sharding over `accelerate` processes, resumable JSONL streaming, the final report;
- `benchmark_accuracy/`: the scoring, an `evaluate` module loadable offline by path.

`examples/evaluate_benchmarks.py` is the command line; `docs/evaluation.md` the guide.
"""

from .answers import extract_answer_letter, extract_answer_letter_reference, parse_answer
from .benchmark_accuracy import BENCHMARK_ACCURACY_PATH
from .benchmarks import load_benchmark
from .predictor import VideoQAPredictor, protocol_compression_settings
from .protocols import BENCHMARKS, PROTOCOLS, BenchmarkProtocol, get_protocol
from .report import build_report, load_benchmark_metric
from .runner import run_evaluation

__all__ = [
    "BENCHMARKS",
    "BENCHMARK_ACCURACY_PATH",
    "PROTOCOLS",
    "BenchmarkProtocol",
    "VideoQAPredictor",
    "protocol_compression_settings",
    "build_report",
    "extract_answer_letter",
    "extract_answer_letter_reference",
    "get_protocol",
    "load_benchmark",
    "load_benchmark_metric",
    "parse_answer",
    "run_evaluation",
]
