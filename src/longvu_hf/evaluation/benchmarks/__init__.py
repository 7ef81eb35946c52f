"""Loaders that read each benchmark's official release layout into one `datasets.Dataset` row format
(`common.EVAL_FEATURES`)."""

from __future__ import annotations

from collections.abc import Sequence

import datasets

from .common import EVAL_FEATURES
from .egoschema import load_egoschema
from .mlvu import MLVU_TASKS, load_mlvu
from .mvbench import MVBENCH_TASKS, load_mvbench
from .videomme import DURATIONS, load_videomme


def load_benchmark(
    benchmark: str, data_root: str, tasks: Sequence[str] | None = None, egoschema_subset_only: bool = True
) -> datasets.Dataset:
    """Load `benchmark` ("egoschema", "mvbench", "videomme", "mlvu") from `data_root`.

    Example:

    ```python
    >>> from longvu_hf.evaluation import load_benchmark
    >>> dataset = load_benchmark("mlvu", "/data/MLVU")  # doctest: +SKIP
    >>> dataset[0]["prompt"]  # doctest: +SKIP
    'Question: ...\\nOptions:\\n(A) ...\\nRespond with only the letter (A, B, C or D) of the correct option.'
    ```
    """
    if tasks and benchmark not in ("mvbench", "mlvu"):
        raise ValueError(f"--tasks only applies to mvbench and mlvu, not {benchmark}")
    if benchmark == "videomme":
        return load_videomme(data_root)
    if benchmark == "mvbench":
        return load_mvbench(data_root, tasks)
    if benchmark == "mlvu":
        return load_mlvu(data_root, tasks)
    if benchmark == "egoschema":
        return load_egoschema(data_root, subset_only=egoschema_subset_only)
    raise ValueError(f"Unknown benchmark {benchmark!r}; expected egoschema, mvbench, videomme or mlvu")


__all__ = [
    "DURATIONS",
    "EVAL_FEATURES",
    "MLVU_TASKS",
    "MVBENCH_TASKS",
    "load_benchmark",
    "load_egoschema",
    "load_mlvu",
    "load_mvbench",
    "load_videomme",
]
