"""Training LongVU with `transformers.Trainer`, `datasets`, `peft` and `accelerate` (docs/training.md).

- `data`: LLaVA-style JSON/JSONL -> `datasets.Dataset` of paths and turns; media decoded lazily per sample.
- `collator`: `LongVUDataCollator` (chat template, loss masks, padding, videos of different lengths, skipped samples).
- `model_setup`: frozen towers, `prepare_stage2_model` (576 -> 144 queries), LoRA / QLoRA, `load_trained_model`.
- `trainer`: `LongVUTrainer` (skipped-sample accounting, zero-weight steps for all-skipped batches).
- `recipe`: the argument classes and the run behind `examples/train.py`.
"""

from .collator import IGNORE_INDEX, LongVUDataCollator
from .data import MediaError, load_conversation_dataset
from .model_setup import (
    LLM_LORA_TARGET_MODULES,
    LORA_MODULES_TO_SAVE,
    apply_lora,
    freeze_vision_towers,
    init_model_from_parts,
    load_trained_model,
    prepare_stage2_model,
    qlora_quantization_config,
)
from .trainer import LongVUTrainer

__all__ = [
    "IGNORE_INDEX",
    "LLM_LORA_TARGET_MODULES",
    "LORA_MODULES_TO_SAVE",
    "LongVUDataCollator",
    "LongVUTrainer",
    "MediaError",
    "apply_lora",
    "freeze_vision_towers",
    "init_model_from_parts",
    "load_conversation_dataset",
    "load_trained_model",
    "prepare_stage2_model",
    "qlora_quantization_config",
]
