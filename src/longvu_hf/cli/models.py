"""`--model`: local folders, Hub ids, official checkpoints converted on first use, LoRA adapter folders; loading."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from .errors import CLIError, first_line

DEFAULT_MODEL = "Vision-CAIR/LongVU_Qwen2_7B"
DEFAULT_MODEL_ENV = "LONGVU_MODEL"
OFFICIAL_ORGANISATION = "Vision-CAIR"


def default_model() -> str:
    return os.environ.get(DEFAULT_MODEL_ENV) or DEFAULT_MODEL


def converted_cache_dir(repo_id: str) -> Path:
    """Where an official checkpoint converted on first use is kept: `$HF_HOME/longvu-hf/converted/<org>--<name>`."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "longvu-hf" / "converted" / repo_id.replace("/", "--")


def _looks_like_repo_id(value: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", value) is not None and not value.startswith((".", "~", "/"))


def _is_official_repo(repo_id: str) -> bool:
    return repo_id.split("/")[0].lower() == OFFICIAL_ORGANISATION.lower()


SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def check_longvu_folder(folder: Path, name: str) -> None:
    """Raise `CLIError` unless `folder` holds a converted LongVU checkpoint (config, safetensors weights) or a LoRA
    adapter trained on one (`adapter_config.json`; its base model is checked when it is loaded)."""
    if adapter_base_model(folder, name) is not None:
        return
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CLIError(
            f"--model {name}: no config.json in this folder, so it is not a model folder; pass a folder written by "
            "`longvu convert` (or a Hub id)"
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise CLIError(f"--model {name}: config.json is not valid JSON; re-run `longvu convert`") from None
    if model_type in ("cambrian_qwen", "cambrian_llama"):
        raise CLIError(
            f"--model {name}: this is an official LongVU checkpoint in its original format; convert it first: "
            f"longvu convert --checkpoint {name} --siglip google/siglip-so400m-patch14-384 "
            f"--dino facebook/dinov2-giant --output {name.rstrip('/')}-hf"
        )
    if model_type != "longvu":
        raise CLIError(
            f"--model {name}: config.json says model_type={model_type!r}, not a LongVU checkpoint ('longvu'); pass "
            "a folder written by `longvu convert`"
        )
    if not any((folder / w).is_file() for w in SAFETENSORS_WEIGHTS):
        pickles = [w for w in PICKLE_WEIGHTS if (folder / w).is_file()]
        if pickles:
            raise CLIError(
                f"--model {name}: its weights are a pickle file ({pickles[0]}), and only safetensors are loaded (a "
                "pickle can run code when loaded); convert it once where you trust the file: python -c \"from "
                f"longvu_hf import LongVUForConditionalGeneration as M; M.from_pretrained('{name}', "
                f"use_safetensors=False).save_pretrained('{name.rstrip('/')}-safetensors')\""
            )
        raise CLIError(f"--model {name}: no weights (model.safetensors) in this folder; re-run `longvu convert`")


def adapter_base_model(folder: Path, name: str) -> str | None:
    """The base model a LoRA adapter folder (`adapter_config.json`) was trained on; None for other folders."""
    adapter_config = folder / "adapter_config.json"
    if not adapter_config.is_file():
        return None
    try:
        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise CLIError(f"--model {name}: adapter_config.json is not valid JSON") from None
    if not base:
        raise CLIError(f"--model {name}: adapter_config.json does not name its base model (base_model_name_or_path)")
    return base


def ensure_converted(repo_id: str, quiet: bool) -> Path:
    """The converted copy of an official `Vision-CAIR/LongVU_*` checkpoint, converting it on first use."""
    target = converted_cache_dir(repo_id)
    if (target / "config.json").is_file():
        return target
    from huggingface_hub import constants

    from .. import convert_longvu_weights_to_hf as converter

    fix = (
        f"run this command once on a machine with internet (it downloads {repo_id}, {converter.SIGLIP_HUB_ID} and "
        f"{converter.DINO_HUB_ID} and converts them into {target}), or convert local copies with `longvu convert "
        "--checkpoint DIR --siglip DIR --dino DIR --output DIR` and pass --model DIR"
    )
    if constants.HF_HUB_OFFLINE:
        raise CLIError(f"--model {repo_id}: not converted yet and HF_HUB_OFFLINE is set; {fix}")
    if not quiet:
        print(f"longvu: converting {repo_id} into {target} (first use only)", file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # The converter stages its output next to the target and moves it in at the end: no partial folder.
        converter.convert(repo_id, converter.SIGLIP_HUB_ID, converter.DINO_HUB_ID, target, dtype="bfloat16")
    except FileNotFoundError as error:  # the converter's way of saying "could not fetch"
        message = str(error).splitlines()[0] if str(error) else ""
        reason = re.search(r"\((\w+Error: [^()]*(?:\([^()]*\)[^()]*)*)\)", message)
        raise CLIError(
            f"--model {repo_id}: not converted yet and it could not be downloaded "
            f"({reason.group(1) if reason else message}); {fix}"
        ) from None
    return target


def resolve_model(value: str, quiet: bool = False) -> Path:
    """A local folder holding a converted LongVU checkpoint for `--model` (see the module docstring)."""
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CLIError(f"--model {value}: this is a file; pass the folder of a converted LongVU checkpoint")
        check_longvu_folder(path, value)
        return path
    if not _looks_like_repo_id(value):
        raise CLIError(f"--model {value}: no such folder (and not a Hub id like {DEFAULT_MODEL})")
    if _is_official_repo(value):
        folder = ensure_converted(value, quiet)
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(value))
        except Exception as error:  # offline, unknown or gated repository: all end the same way
            raise CLIError(
                f"--model {value}: not a local folder and not downloadable from the Hugging Face Hub "
                f"({first_line(error)}); download it on a machine with internet "
                f"(`hf download {value}`) or pass a local folder"
            ) from None
    check_longvu_folder(folder, value)
    return folder


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {requested}: no CUDA GPU is visible to PyTorch; use --device cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps|xpu(:\d+)?", requested):
        raise CLIError(f"--device {requested}: expected auto, cpu, cuda or cuda:N")
    return requested


def pick_dtype(requested: str, device: str):
    """`auto`: bfloat16 on GPUs (float16 overflows on long videos, docs/reference.md §9.1 #17), else the checkpoint's."""
    import torch

    if requested == "auto":
        return torch.bfloat16 if not device.startswith("cpu") else "auto"
    return getattr(torch, requested)


def load_model_and_processor(folder: Path, name: str, device: str, dtype: Any, quiet: bool):
    """Load a converted LongVU folder, or a LoRA adapter folder on top of its base model (merged); errors become
    one-line `CLIError`s."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    from .. import LongVUForConditionalGeneration, LongVUProcessor

    if quiet:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    base = adapter_base_model(folder, name)
    weights_folder = resolve_model(base, quiet) if base is not None else folder
    has_own_processor = any((folder / f).is_file() for f in ("processor_config.json", "tokenizer_config.json"))
    processor_folder = folder if has_own_processor else weights_folder
    try:
        processor = AutoProcessor.from_pretrained(processor_folder)
    except Exception as error:
        raise CLIError(
            f"--model {name}: cannot load its tokenizer/processor ({first_line(error)}); a folder written "
            "by `longvu convert` from a checkpoint with a tokenizer holds one"
        ) from None
    if not isinstance(processor, LongVUProcessor):
        raise CLIError(f"--model {name}: its processor is a {type(processor).__name__}, not a LongVUProcessor")
    kwargs = {"dtype": dtype, "use_safetensors": True}
    if device.startswith("cuda"):
        kwargs["device_map"] = device
    try:
        model = AutoModelForImageTextToText.from_pretrained(weights_folder, **kwargs)
    except Exception as error:  # truncated or corrupt files end deep in safetensors or torch
        raise CLIError(
            f"--model {base or name}: cannot load its weights ({first_line(error)}); the files may be incomplete or "
            "corrupt: download or convert them again"
        ) from None
    if not isinstance(model, LongVUForConditionalGeneration):
        raise CLIError(f"--model {name}: loaded a {type(model).__name__}, not LongVUForConditionalGeneration")
    if base is not None:
        model = merge_adapter(model, folder, name)
    if not device.startswith("cuda"):
        model = model.to(device)
    return model.eval(), processor


def merge_adapter(model, folder: Path, name: str):
    """The LoRA adapter in `folder` applied to `model` and merged into its weights."""
    try:
        from peft import PeftModel
    except ImportError:
        raise CLIError(f"--model {name}: a LoRA adapter folder needs peft: pip install 'longvu-hf[train]'") from None
    try:
        return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    except Exception as error:
        raise CLIError(f"--model {name}: cannot apply the adapter ({first_line(error)})") from None
