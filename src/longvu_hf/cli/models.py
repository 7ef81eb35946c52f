"""`--model`, `--device`, `--dtype`: the library's loading (`longvu_hf.loading`) with the command's option names."""

from __future__ import annotations

from typing import Any

from ..loading import (  # noqa: F401  (the command's names for them)
    DEFAULT_MODEL,
    DEFAULT_MODEL_ENV,
    check_longvu_folder,
    default_model,
    load_model_and_processor,
    pick_dtype,
    resolve_model,
)
from ..loading import pick_device as _pick_device


def pick_device(requested: str) -> str:
    return _pick_device(requested, option="--device")


def load_for(args) -> tuple[Any, Any, str]:
    """The model of `--model` (default: `$LONGVU_MODEL` or the released 7B) on `--device` in `--dtype`, and its
    processor; returns `(model, processor, name)`."""
    device = pick_device(args.device)
    name = args.model or default_model()
    folder = resolve_model(name, args.quiet, option="--model")
    dtype = pick_dtype(args.dtype, device, option="--dtype")
    model, processor = load_model_and_processor(folder, name, device, dtype, args.quiet, option="--model")
    return model, processor, name
