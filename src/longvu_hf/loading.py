"""Loading a LongVU model for any front end (the `longvu` command, the web page, the benchmark runner, lmms-eval).

A model is named by a local folder written by `longvu convert`, a Hub id holding a converted checkpoint, an official
`Vision-CAIR/LongVU_*` id (downloaded and converted on first use into `$HF_HOME/longvu-hf/converted/`), or a LoRA
adapter folder (its base model is loaded and the adapter merged). `pick_device` and `pick_dtype` choose where and how.

Bad input raises `ValueError` (or `FileNotFoundError`) with one line that names the argument as the caller calls it
(`option`: `--model` for the command line, `pretrained` for lmms-eval, `model` by default) and says how to fix it;
front ends show that line as it is.

Example:

```python
>>> from longvu_hf.loading import load_model
>>> model, processor = load_model("LongVU_Qwen2_7B-hf", device="auto")     # a converted folder, or a Hub id
>>> model, processor = load_model("my-lora-adapter")                       # base model + adapter, merged
```
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "Vision-CAIR/LongVU_Qwen2_7B"
DEFAULT_MODEL_ENV = "LONGVU_MODEL"
OFFICIAL_ORGANISATION = "Vision-CAIR"
DTYPE_CHOICES = ("auto", "bfloat16", "float16", "float32")

SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class ModelLoadError(ValueError):
    """A model that cannot be found, converted or loaded, or a device/dtype that cannot be used; the message is one
    line naming the argument."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """`TypeName: first line of the message`, for one-line reports of errors raised by other libraries."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:limit]}" if text else type(error).__name__


def _named(option: str, value: Any) -> str:
    """How a message names the argument: `--model X` for command-line options, `pretrained=X` otherwise."""
    return f"{option} {value}" if option.startswith("-") else f"{option}={value}"


def default_model() -> str:
    """`$LONGVU_MODEL`, else the released 7B Qwen2 checkpoint."""
    return os.environ.get(DEFAULT_MODEL_ENV) or DEFAULT_MODEL


def converted_cache_dir(repo_id: str) -> Path:
    """Where an official checkpoint converted on first use is kept: `$HF_HOME/longvu-hf/converted/<org>--<name>`."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "longvu-hf" / "converted" / repo_id.replace("/", "--")


def _looks_like_repo_id(value: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", value) is not None and not value.startswith((".", "~", "/"))


def _is_official_repo(repo_id: str) -> bool:
    return repo_id.split("/")[0].lower() == OFFICIAL_ORGANISATION.lower()


def check_longvu_folder(folder: Path, name: str, option: str = "model") -> None:
    """Raise `ModelLoadError` unless `folder` holds a converted LongVU checkpoint (config, safetensors weights) or a
    LoRA adapter trained on one (`adapter_config.json`; its base model is checked when it is loaded)."""
    label = _named(option, name)
    if adapter_base_model(folder, name, option) is not None:
        return
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"{label}: no config.json in this folder, so it is not a model folder; pass a folder written by "
            "`longvu convert` (or a Hub id)"
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise ModelLoadError(f"{label}: config.json is not valid JSON; re-run `longvu convert`") from None
    if model_type in ("cambrian_qwen", "cambrian_llama"):
        raise ModelLoadError(
            f"{label}: this is an official LongVU checkpoint in its original format; convert it first: "
            f"longvu convert --checkpoint {name} --siglip google/siglip-so400m-patch14-384 "
            f"--dino facebook/dinov2-giant --output {name.rstrip('/')}-hf"
        )
    if model_type != "longvu":
        raise ModelLoadError(
            f"{label}: config.json says model_type={model_type!r}, not a LongVU checkpoint ('longvu'); pass "
            "a folder written by `longvu convert`"
        )
    if not any((folder / w).is_file() for w in SAFETENSORS_WEIGHTS):
        pickles = [w for w in PICKLE_WEIGHTS if (folder / w).is_file()]
        if pickles:
            raise ModelLoadError(
                f"{label}: its weights are a pickle file ({pickles[0]}), and only safetensors are loaded (a "
                "pickle can run code when loaded); convert it once where you trust the file: python -c \"from "
                f"longvu_hf import LongVUForConditionalGeneration as M; M.from_pretrained('{name}', "
                f"use_safetensors=False).save_pretrained('{name.rstrip('/')}-safetensors')\""
            )
        raise ModelLoadError(f"{label}: no weights (model.safetensors) in this folder; re-run `longvu convert`")


def adapter_base_model(folder: Path, name: str, option: str = "model") -> str | None:
    """The base model a LoRA adapter folder (`adapter_config.json`) was trained on; None for other folders."""
    adapter_config = folder / "adapter_config.json"
    if not adapter_config.is_file():
        return None
    label = _named(option, name)
    try:
        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise ModelLoadError(f"{label}: adapter_config.json is not valid JSON") from None
    if not base:
        raise ModelLoadError(f"{label}: adapter_config.json does not name its base model (base_model_name_or_path)")
    return base


def ensure_converted(repo_id: str, quiet: bool = False, option: str = "model") -> Path:
    """The converted copy of an official `Vision-CAIR/LongVU_*` checkpoint, converting it on first use."""
    target = converted_cache_dir(repo_id)
    if (target / "config.json").is_file():
        return target
    from huggingface_hub import constants

    from . import convert_longvu_weights_to_hf as converter

    label = _named(option, repo_id)
    fix = (
        f"run this command once on a machine with internet (it downloads {repo_id}, {converter.SIGLIP_HUB_ID} and "
        f"{converter.DINO_HUB_ID} and converts them into {target}), or convert local copies with `longvu convert "
        "--checkpoint DIR --siglip DIR --dino DIR --output DIR` and pass that folder"
    )
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(f"{label}: not converted yet and HF_HUB_OFFLINE is set; {fix}")
    if not quiet:
        print(f"longvu: converting {repo_id} into {target} (first use only)", file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # The converter stages its output next to the target and moves it in at the end: no partial folder.
        converter.convert(repo_id, converter.SIGLIP_HUB_ID, converter.DINO_HUB_ID, target, dtype="bfloat16")
    except FileNotFoundError as error:  # the converter's way of saying "could not fetch"
        message = str(error).splitlines()[0] if str(error) else ""
        reason = re.search(r"\((\w+Error: [^()]*(?:\([^()]*\)[^()]*)*)\)", message)
        raise ModelLoadError(
            f"{label}: not converted yet and it could not be downloaded "
            f"({reason.group(1) if reason else message}); {fix}"
        ) from None
    return target


def resolve_model(value: str, quiet: bool = False, option: str = "model") -> Path:
    """The local folder holding the converted LongVU checkpoint (or adapter) that `value` names (see the module
    docstring); raises `ModelLoadError` naming `option`."""
    label = _named(option, value)
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{label}: this is a file; pass the folder of a converted LongVU checkpoint")
        check_longvu_folder(path, value, option)
        return path
    if not _looks_like_repo_id(value):
        raise ModelLoadError(f"{label}: no such folder (and not a Hub id like {DEFAULT_MODEL})")
    if _is_official_repo(value):
        folder = ensure_converted(value, quiet, option)
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(value))
        except Exception as error:  # offline, unknown or gated repository: all end the same way
            raise ModelLoadError(
                f"{label}: not a local folder and not downloadable from the Hugging Face Hub "
                f"({first_line(error)}); download it on a machine with internet "
                f"(`hf download {value}`) or pass a local folder"
            ) from None
    check_longvu_folder(folder, value, option)
    return folder


def pick_device(requested: str | None = "auto", option: str = "device") -> str:
    """`auto`: the GPU if PyTorch sees one, else the CPU; otherwise `cpu`, `cuda`, `cuda:N`, `mps` or `xpu[:N]`."""
    import torch

    requested = requested or "auto"
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"{_named(option, requested)}: no CUDA GPU is visible to PyTorch; use cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps|xpu(:\d+)?", requested):
        raise ModelLoadError(f"{_named(option, requested)}: expected auto, cpu, cuda or cuda:N")
    return requested


def pick_dtype(requested: str, device: str, option: str = "dtype"):
    """`auto`: bfloat16 on GPUs (float16 overflows on long videos, docs/reference.md §9.1 #17), else the checkpoint's
    own dtype (`"auto"` for `from_pretrained`)."""
    import torch

    if requested not in DTYPE_CHOICES:
        raise ModelLoadError(f"{_named(option, requested)}: choose one of {', '.join(DTYPE_CHOICES)}")
    if requested == "auto":
        return torch.bfloat16 if not str(device).startswith("cpu") else "auto"
    return getattr(torch, requested)


def load_model_and_processor(
    folder: Path, name: str, device: str, dtype: Any, quiet: bool = True, option: str = "model",
    attn_implementation: str | None = None,
):
    """Load a converted LongVU folder, or a LoRA adapter folder on top of its base model (merged); errors become
    one-line `ModelLoadError`s naming `option`. Returns `(model in eval mode on device, processor)`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    from . import LongVUForConditionalGeneration, LongVUProcessor

    if quiet:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    folder = Path(folder)
    base = adapter_base_model(folder, name, option)
    weights_folder = resolve_model(base, quiet, option) if base is not None else folder
    has_own_processor = any((folder / f).is_file() for f in ("processor_config.json", "tokenizer_config.json"))
    processor_folder = folder if has_own_processor else weights_folder
    label = _named(option, name)
    try:
        processor = AutoProcessor.from_pretrained(processor_folder)
    except Exception as error:
        raise ModelLoadError(
            f"{label}: cannot load its tokenizer/processor ({first_line(error)}); a folder written "
            "by `longvu convert` from a checkpoint with a tokenizer holds one"
        ) from None
    if not isinstance(processor, LongVUProcessor):
        raise ModelLoadError(f"{label}: its processor is a {type(processor).__name__}, not a LongVUProcessor")
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if str(device).startswith("cuda"):
        kwargs["device_map"] = str(device)
    try:
        model = AutoModelForImageTextToText.from_pretrained(weights_folder, **kwargs)
    except Exception as error:  # truncated or corrupt files end deep in safetensors or torch
        raise ModelLoadError(
            f"{_named(option, base or name)}: cannot load its weights ({first_line(error)}); the files may be "
            "incomplete or corrupt: download or convert them again"
        ) from None
    if not isinstance(model, LongVUForConditionalGeneration):
        raise ModelLoadError(f"{label}: loaded a {type(model).__name__}, not LongVUForConditionalGeneration")
    if base is not None:
        model = merge_adapter(model, folder, name, option)
    if not str(device).startswith("cuda"):
        model = model.to(device)
    return model.eval(), processor


def merge_adapter(model, folder: Path, name: str, option: str = "model"):
    """The LoRA adapter in `folder` applied to `model` and merged into its weights."""
    label = _named(option, name)
    try:
        from peft import PeftModel
    except ImportError:
        raise ModelLoadError(f"{label}: a LoRA adapter folder needs peft: pip install 'longvu-hf[train]'") from None
    try:
        return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    except Exception as error:
        raise ModelLoadError(f"{label}: cannot apply the adapter ({first_line(error)})") from None


def load_model(
    model: str | os.PathLike | None = None,
    *,
    device: str | None = "auto",
    dtype: str = "auto",
    quiet: bool = True,
    option: str = "model",
    attn_implementation: str | None = None,
):
    """Resolve `model` (default: `default_model()`), pick the device and dtype, and load model and processor.

    Example:

    ```python
    >>> model, processor = load_model("LongVU_Qwen2_7B-hf", device="cuda", dtype="bfloat16")
    ```
    """
    name = str(model) if model is not None else default_model()
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    folder = resolve_model(name, quiet, option)
    return load_model_and_processor(folder, name, device, torch_dtype, quiet, option, attn_implementation)


def load_demo_model(device: str | None = "cpu"):
    """The tiny model with random weights and its processor, built in code (offline; `longvu_hf.tiny`): for demos
    of the mechanics. Its config says `random_weights`."""
    from .tiny import demo_model_and_processor

    model, processor = demo_model_and_processor()
    return model.to(pick_device(device)).eval(), processor


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_ENV",
    "ModelLoadError",
    "check_longvu_folder",
    "default_model",
    "first_line",
    "load_demo_model",
    "load_model",
    "load_model_and_processor",
    "pick_device",
    "pick_dtype",
    "resolve_model",
]
