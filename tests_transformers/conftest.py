"""Testers that run transformers' own common test mixins on LongVU (see `release_tests.py`).

Run with `python -m pytest tests_transformers` (a separate CI step: the mixins are heavy, and the release's tests are
downloaded from PyPI the first time).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_HERE = Path(__file__).resolve().parent
for path in (_HERE, _HERE.parent / "src", _HERE.parent / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from release_tests import prepare  # noqa: E402

prepare()


def pytest_configure(config):
    # Marks transformers' mixins use (their own pytest configuration registers them in the transformers repository).
    for mark in ("flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "torch_compile_test", "generate",
                 "is_training_test", "is_pipeline_test", "is_staging_test", "not_device_test", "bitsandbytes"):
        config.addinivalue_line("markers", f"{mark}: used by transformers' common tests")
