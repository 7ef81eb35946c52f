"""The `benchmark_accuracy` evaluate module (a package only so the script ships with longvu_hf); load it with
`evaluate.load(BENCHMARK_ACCURACY_PATH)` or `longvu_hf.evaluation.load_benchmark_metric()`."""

import os

BENCHMARK_ACCURACY_PATH = os.path.dirname(os.path.abspath(__file__))

__all__ = ["BENCHMARK_ACCURACY_PATH"]
