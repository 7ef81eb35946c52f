"""Preparing a LongVU model for training: freezing, the stage-1 -> stage-2 switch, LoRA / QLoRA, loading results.

What LongVU trains (docs/reference.md §7.1): everything except the two vision towers (SigLIP and DINOv2 stay frozen in both
stages). Stage 1 trains on images with 576 queries per frame (1x1 SVA windows, no window position embeddings);
stage 2 trains on videos with 144 queries (2x2 windows), which creates the per-layer window position embeddings
`pos_embeds` with a random normal initialisation, as the reference does when its config is edited to 144.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re

import torch
from torch import nn

from ..configuration_longvu import LongVUConfig
from ..modeling import LongVUForConditionalGeneration

logger = logging.getLogger(__name__)

VISION_TOWERS = ("vision_tower", "dino_tower")
# Every linear layer of the decoder, and only of the decoder: a bare ["q_proj", ...] would also hit DINOv2's attention
# and the SVA's cross-attention, which PEFT's name matching would also pick.
LLM_LORA_TARGET_MODULES = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# Trained in full next to the adapters: the aggregator and the projector are small and task-specific.
LORA_MODULES_TO_SAVE = ("vision_aggregator", "multi_modal_projector")
# Kept in 16-bit under QLoRA: only the decoder is quantised.
QLORA_SKIP_MODULES = ("vision_tower", "dino_tower", "vision_aggregator", "multi_modal_projector", "lm_head")
STAGE2_DEFAULTS = {"num_queries": 144, "highres": True}


def _longvu_model(model: nn.Module) -> nn.Module:
    """The `LongVUModel` inside a `LongVUForConditionalGeneration`, possibly wrapped by PEFT."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def _video_encoder(model: nn.Module) -> nn.Module:
    """The `LongVUVideoEncoder` (towers, aggregator, projector) of a possibly PEFT-wrapped model."""
    return _longvu_model(model).video_encoder


def freeze_vision_towers(model: nn.Module) -> None:
    """Freeze SigLIP and DINOv2, as both training stages of the reference do.

    Only parameters with `requires_grad` reach the optimizer that `Trainer` builds, so the towers carry no optimizer
    state under DDP, FSDP or DeepSpeed, and autograd records nothing inside them.
    """
    encoder = _video_encoder(model)
    for name in VISION_TOWERS:
        getattr(encoder, name).requires_grad_(False)


def trainable_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]


def load_config_with_overrides(path: str | os.PathLike, **overrides) -> LongVUConfig:
    """`LongVUConfig.from_pretrained(path)` with `overrides` applied through the constructor (so they are validated)."""
    config_dict, _ = LongVUConfig.get_config_dict(str(path))
    unknown = [key for key in overrides if key not in LongVUConfig().to_dict() and key not in config_dict]
    if unknown:
        raise ValueError(f"unknown LongVUConfig field(s) {unknown}")
    config_dict.update(overrides)
    return LongVUConfig.from_dict(config_dict)


STAGE1_DEFAULTS = {"num_queries": 576, "highres": False}


def _load_into(module: nn.Module, source: nn.Module, name: str) -> None:
    missing, unexpected = module.load_state_dict(source.state_dict(), strict=False)
    if missing:
        raise ValueError(f"the {name} checkpoint lacks weights the model needs: {missing[:5]}")
    if unexpected:
        logger.info("Ignored %d %s weights LongVU does not use (e.g. %s)", len(unexpected), name, unexpected[:3])


def init_model_from_parts(
    text_model: str | os.PathLike,
    vision_model: str | os.PathLike,
    dino_model: str | os.PathLike,
    processor,
    *,
    dtype: torch.dtype | None = None,
    **config_overrides,
) -> LongVUForConditionalGeneration:
    """The model stage 1 starts from: a pretrained LLM (Qwen2 / Llama), SigLIP and DINOv2, with a new (randomly
    initialised) aggregator, projector and row-newline embedding. Stage-1 defaults: 576 queries, `highres=False`.

    The placeholder ids come from `processor` (a `LongVUProcessor` over the LLM's tokenizer); when its placeholders
    were added past the LLM's vocabulary (Llama 3), the embeddings are resized to the tokenizer.

    Example:

    ```python
    >>> processor = LongVUProcessor(AutoTokenizer.from_pretrained("Qwen/Qwen2-7B-Instruct"))
    >>> model = init_model_from_parts("Qwen/Qwen2-7B-Instruct", "google/siglip-so400m-patch14-384",
    ...                               "facebook/dinov2-giant", processor, dtype=torch.bfloat16)
    ```
    """
    with _without_zero3_partitioning():
        return _init_model_from_parts(text_model, vision_model, dino_model, processor, dtype, config_overrides)


@contextlib.contextmanager
def _without_zero3_partitioning():
    """Build with whole weights even when `Trainer` runs DeepSpeed ZeRO-3 with `zero3_init_flag`.

    Under that flag transformers partitions every model it creates from a config as it is created (`zero.Init`). The
    model built from parts creates its towers and LLM from configs inside its own `__init__`: they come out
    partitioned, then its `post_init` initialises them again ("Fan in and fan out can not be computed for tensor with
    fewer than 2 dimensions"), and the parts' weights could not be copied in anyway. Built whole (each process holds
    the model for a moment, as without ZeRO-3), it is partitioned when DeepSpeed prepares it.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    if not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    reference = hf_deepspeed._hf_deepspeed_config_weak_ref  # held by TrainingArguments; no public getter
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = reference


def _init_model_from_parts(
    text_model: str | os.PathLike,
    vision_model: str | os.PathLike,
    dino_model: str | os.PathLike,
    processor,
    dtype: torch.dtype | None,
    config_overrides: dict,
) -> LongVUForConditionalGeneration:
    from transformers import AutoConfig, AutoModelForCausalLM

    vision_config = AutoConfig.from_pretrained(str(vision_model))
    vision_config = getattr(vision_config, "vision_config", None) or vision_config  # a full SigLIP checkpoint
    text_config = AutoConfig.from_pretrained(str(text_model))
    config = LongVUConfig(
        text_config=text_config,
        vision_config=vision_config,
        dino_config=AutoConfig.from_pretrained(str(dino_model)),
        video_token_index=processor.video_token_id,
        image_token_index=processor.image_token_id,
        **{**STAGE1_DEFAULTS, **config_overrides},
    )
    model = LongVUForConditionalGeneration(config)
    longvu = model.model
    kwargs = {"dtype": dtype} if dtype is not None else {}
    llm = AutoModelForCausalLM.from_pretrained(str(text_model), **kwargs)
    _load_into(longvu.language_model, llm.get_decoder(), "language model")
    if not config.tie_word_embeddings:
        _load_into(model.lm_head, llm.get_output_embeddings(), "LM head")
    del llm
    encoder = longvu.video_encoder
    tower = type(encoder.vision_tower).from_pretrained(str(vision_model), config=config.vision_config, **kwargs)
    _load_into(encoder.vision_tower, tower, "SigLIP")
    tower = type(encoder.dino_tower).from_pretrained(str(dino_model), config=config.dino_config, **kwargs)
    _load_into(encoder.dino_tower, tower, "DINOv2")
    del tower
    if dtype is not None:
        model = model.to(dtype)
    model.tie_weights()
    vocabulary = len(processor.tokenizer)
    if max(processor.video_token_id, processor.image_token_id) >= model.config.text_config.vocab_size:
        model.resize_token_embeddings(vocabulary)
    return model


def _window_position_embedding_names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters() if re.search(r"\.pos_embeds\.\d+$", name)}


def prepare_stage2_model(
    stage1_path: str | os.PathLike, *, seed: int = 0, dtype: torch.dtype | str | None = None, **config_overrides
) -> LongVUForConditionalGeneration:
    """Load a stage-1 (image, 576-query) checkpoint as a stage-2 (video, 144-query) model.

    With 144 queries each SVA query attends to a 2x2 window, and every aggregator layer gains two learned window
    position embeddings `pos_embeds` (one per encoder). They do not exist in the stage-1 checkpoint, so they are created
    here and initialised from a standard normal distribution, as the reference's `torch.randn` does (docs/reference.md
    §2.3, §7.1, issue #14). Every other weight is loaded unchanged; any other missing or unexpected weight is an error.

    Args:
        stage1_path: a folder saved by `save_pretrained` (the stage-1 result).
        seed: seeds the new position embeddings, so the switch is reproducible.
        dtype: dtype to load in (default: the checkpoint's).
        config_overrides: LongVUConfig fields for stage 2; `num_queries=144` and `highres=True` are the defaults, as
            in the released video checkpoints. The reference's stage-2 script also sets `stc_threshold=0.8`.

    Example:

    ```python
    >>> model = prepare_stage2_model("runs/stage1", stc_threshold=0.8)
    >>> model.config.num_queries
    144
    ```
    """
    overrides = {**STAGE2_DEFAULTS, **config_overrides}
    config = load_config_with_overrides(stage1_path, **overrides)
    load_kwargs = {"config": config, "output_loading_info": True}
    if dtype is not None:
        load_kwargs["dtype"] = dtype
    model, info = LongVUForConditionalGeneration.from_pretrained(str(stage1_path), **load_kwargs)
    created = _window_position_embedding_names(model)
    missing = set(info["missing_keys"])
    unexpected = set(info["unexpected_keys"]) | set(info.get("mismatched_keys") or ())
    if missing - created or unexpected:
        raise ValueError(
            f"{stage1_path} does not fit a {config.num_queries}-query model: missing {sorted(missing - created)}, "
            f"unexpected or mismatched {sorted(map(str, unexpected))}. Stage 2 starts from a stage-1 (576-query) "
            "LongVU checkpoint."
        )
    new_parameters = [param for name, param in model.named_parameters() if name in missing]
    generator = torch.Generator().manual_seed(seed)
    with _gathered(new_parameters), torch.no_grad():
        for param in new_parameters:
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float32).to(param.dtype))
    if new_parameters:
        logger.info("Created %d window position embeddings for %d queries", len(new_parameters), config.num_queries)
    return model


class _gathered:
    """Under DeepSpeed ZeRO-3 parameters are partitioned: gather them before writing (no-op otherwise)."""

    def __init__(self, params: list[nn.Parameter]):
        from transformers.integrations import is_deepspeed_zero3_enabled

        self.context = None
        if params and is_deepspeed_zero3_enabled():
            import deepspeed

            self.context = deepspeed.zero.GatheredParameters(params, modifier_rank=0)

    def __enter__(self):
        return self.context.__enter__() if self.context is not None else None

    def __exit__(self, *exc):
        return self.context.__exit__(*exc) if self.context is not None else False


def apply_lora(
    model: LongVUForConditionalGeneration,
    *,
    r: int = 64,
    lora_alpha: int = 128,
    lora_dropout: float = 0.05,
    target_modules: str | list[str] = LLM_LORA_TARGET_MODULES,
    modules_to_save: list[str] | tuple[str, ...] | None = LORA_MODULES_TO_SAVE,
):
    """Wrap `model` with LoRA adapters on the decoder's linear layers (a regex scoped to `language_model`), with the
    aggregator and the projector trained in full (`modules_to_save`). The towers, embeddings and LM head stay frozen.

    Returns the `peft.PeftModel`; `Trainer` saves only the adapters and the `modules_to_save` copies. Trainable
    parameters are kept in float32 even when the model was loaded in 16 bits (stable AdamW updates).
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    for param in peft_model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
    return peft_model


def qlora_quantization_config(compute_dtype: torch.dtype = torch.bfloat16):
    """`BitsAndBytesConfig` for QLoRA: the decoder in 4-bit NF4 (double quantisation), everything else in 16 bits.

    Raises `RuntimeError` with an explanation when no CUDA GPU is available: bitsandbytes' 4-bit training kernels
    need one. Pass the result as `from_pretrained(..., quantization_config=...)`, then `apply_lora`.
    """
    if not torch.cuda.is_available():
        raise RuntimeError(
            "QLoRA needs a CUDA GPU: bitsandbytes' 4-bit kernels do not train on CPU. Use `finetuning: lora` (16-bit "
            "LoRA) or `finetuning: full` on this machine."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError("QLoRA needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=list(QLORA_SKIP_MODULES),
    )


def is_adapter_checkpoint(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def load_trained_model(
    path: str | os.PathLike, *, merge_lora: bool = True, **from_pretrained_kwargs
) -> LongVUForConditionalGeneration:
    """Load a training result for inference: a full checkpoint, or a LoRA checkpoint on top of its base model.

    A LoRA checkpoint (`adapter_config.json`) is loaded onto the base model recorded in it and, with `merge_lora`,
    merged into plain weights (the result is an ordinary `LongVUForConditionalGeneration`).
    """
    if not is_adapter_checkpoint(path):
        return LongVUForConditionalGeneration.from_pretrained(str(path), **from_pretrained_kwargs)
    from peft import PeftConfig, PeftModel

    base_path = PeftConfig.from_pretrained(str(path)).base_model_name_or_path
    if not base_path:
        raise ValueError(f"{path}/adapter_config.json does not name its base model (`base_model_name_or_path`)")
    base = LongVUForConditionalGeneration.from_pretrained(base_path, **from_pretrained_kwargs)
    model = PeftModel.from_pretrained(base, str(path))
    return model.merge_and_unload() if merge_lora else model


__all__ = [
    "LLM_LORA_TARGET_MODULES",
    "LORA_MODULES_TO_SAVE",
    "apply_lora",
    "freeze_vision_towers",
    "init_model_from_parts",
    "is_adapter_checkpoint",
    "load_config_with_overrides",
    "load_trained_model",
    "prepare_stage2_model",
    "qlora_quantization_config",
    "trainable_parameter_names",
]
