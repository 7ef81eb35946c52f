"""The training recipe behind `examples/train.py`: config -> model, data, collator, `LongVUTrainer` -> saved model.

A run is described by one YAML file whose keys are the fields of `ModelArguments`, `DataArguments` and
`transformers.TrainingArguments` (flat, as `HfArgumentParser` reads them); command-line flags override it.
`examples/configs/` holds the two LongVU stages and LoRA / QLoRA fine-tuning.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import logging
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoProcessor, AutoTokenizer, HfArgumentParser, TrainingArguments, set_seed

from ..modeling import LongVUForConditionalGeneration
from ..modeling.compression import max_text_length
from ..processing import LongVUProcessor, LongVUVideoProcessor
from ..transformers_compat import training_arguments_for_installed_release
from .collator import LABEL_MODES, LongVUDataCollator, SampleSkipped
from .data import load_conversation_dataset, resolve_media_path
from .model_setup import (
    LLM_LORA_TARGET_MODULES,
    LORA_MODULES_TO_SAVE,
    apply_lora,
    freeze_vision_towers,
    init_model_from_parts,
    is_adapter_checkpoint,
    load_config_with_overrides,
    load_trained_model,
    prepare_stage2_model,
    qlora_quantization_config,
)
from .trainer import LongVUTrainer

logger = logging.getLogger(__name__)

FINETUNING_MODES = ("full", "lora", "qlora")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelArguments:
    """Which model to start from and what to train."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A LongVU checkpoint folder (converted release, or a previous stage's output)."}
    )
    text_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Stage 1 from scratch: the LLM (e.g. Qwen/Qwen2-7B-Instruct), used with the two towers below."},
    )
    vision_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Stage 1 from scratch: SigLIP (e.g. google/siglip-so400m-patch14-384)."}
    )
    dino_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Stage 1 from scratch: DINOv2 (e.g. facebook/dinov2-giant)."}
    )
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Processor folder; defaults to model_name_or_path."}
    )
    from_stage1: bool = field(
        default=False,
        metadata={
            "help": "Start stage 2 from a stage-1 (576-query) checkpoint: switch to 144 queries and create the window "
            "position embeddings (prepare_stage2_model)."
        },
    )
    model_config_overrides: dict | str | None = field(
        default=None, metadata={"help": "LongVUConfig fields to change, e.g. {num_queries: 144, stc_threshold: 0.8}."}
    )
    model_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype of the weights: float32 (master weights, with `bf16: true` autocast) or bfloat16 (pure "
            "bf16, as the reference trained)."
        },
    )
    finetuning: str = field(default="full", metadata={"help": "full | lora | qlora (QLoRA needs a CUDA GPU)."})
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lora_target_modules: str = field(
        default=LLM_LORA_TARGET_MODULES, metadata={"help": "Regex over module names: the decoder's linear layers."}
    )
    lora_modules_to_save: list[str] = field(
        default_factory=lambda: list(LORA_MODULES_TO_SAVE),
        metadata={"help": "Modules trained in full next to the adapters."},
    )
    save_merged_model: bool = field(
        default=True, metadata={"help": "After LoRA/QLoRA training, also write the merged model to OUTPUT_DIR/merged."}
    )
    new_parameter_seed: int = field(default=0, metadata={"help": "Seed of the stage-2 window position embeddings."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace the model already saved in output_dir (or train into the folder of the model the run "
            "starts from); without it such an output_dir is refused before anything is loaded."
        },
    )

    @property
    def from_parts(self) -> bool:
        return self.model_name_or_path is None

    def __post_init__(self):
        parts = (self.text_model_name_or_path, self.vision_model_name_or_path, self.dino_model_name_or_path)
        if self.model_name_or_path is not None and any(parts):
            raise ValueError("give either `model_name_or_path` or the three `*_model_name_or_path` parts, not both")
        if self.model_name_or_path is None and any(parts) and not all(parts):
            raise ValueError(
                "building stage 1 from parts needs text_model_name_or_path, vision_model_name_or_path and "
                "dino_model_name_or_path"
            )
        if self.finetuning not in FINETUNING_MODES:
            raise ValueError(f"finetuning must be one of {FINETUNING_MODES}, got {self.finetuning!r}")
        if self.model_dtype not in DTYPES:
            raise ValueError(f"model_dtype must be one of {sorted(DTYPES)}, got {self.model_dtype!r}")
        if isinstance(self.model_config_overrides, str):
            try:
                self.model_config_overrides = json.loads(self.model_config_overrides)
            except ValueError as error:
                raise ValueError(f"model_config_overrides is not a valid JSON object ({error})") from None
        if not isinstance(self.model_config_overrides, (dict, type(None))):
            raise ValueError(
                f"model_config_overrides must map config fields to values, got {self.model_config_overrides!r}"
            )
        self.model_config_overrides = dict(self.model_config_overrides or {})


@dataclass
class DataArguments:
    """Training data and how it is turned into batches."""

    data_files: list[str] | None = field(
        default=None, metadata={"help": "LLaVA-style .json (list of records) or .jsonl files."}
    )
    media_root: str | None = field(default=None, metadata={"help": "Folder the media paths are relative to."})
    video_fps: float = field(default=1.0, metadata={"help": "Sampling rate of video files (reference: 1)."})
    max_frames: int | None = field(default=None, metadata={"help": "Optional cap on frames per video file."})
    label_mode: str = field(
        default="assistant", metadata={"help": "assistant (answers only) | reference (the official masking)."}
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Skip samples whose text (one token per placeholder) is longer; default: what leaves room for "
            "one full-resolution frame within the model's max_context_length."
        },
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Samples per optimizer step over all processes; sets gradient_accumulation_steps = global / "
            "(processes x per_device_train_batch_size)."
        },
    )
    image_length_estimate: int = field(default=576, metadata={"help": "Tokens counted per image for length grouping."})
    video_length_estimate: int = field(default=1024, metadata={"help": "Tokens counted per video for length grouping."})
    dataset_cache_dir: str | None = None
    preprocessing_num_workers: int | None = None
    max_missing_media_share: float = field(
        default=0.01,
        metadata={
            "help": "Stop before training when more than this share of the samples name media files that do not "
            "exist (a wrong media_root, an incomplete download); fewer are skipped with a warning."
        },
    )

    def __post_init__(self):
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {self.label_mode!r}")
        if isinstance(self.data_files, str):
            self.data_files = [self.data_files]


def parse_config(
    config_path: str | os.PathLike, cli_args: list[str] | None = None
) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Read a YAML run config (flat keys of the three argument classes); `cli_args` like `--learning_rate 1e-4`
    override it."""
    import yaml

    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"training config not found: {config_path}")
    try:
        with open(config_path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except UnicodeDecodeError as error:
        raise ValueError(f"{config_path}: not UTF-8 text ({error})") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{config_path}: not valid YAML{at} ({problem})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{config_path} must be a mapping of option names to values")
    values = training_arguments_for_installed_release(values)
    classes = (ModelArguments, DataArguments, TrainingArguments)
    parser = HfArgumentParser(classes)
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{config_path}: unknown option(s) {unknown}")
    check_option_types(values, classes, str(config_path))

    def one_line_error(message: str):  # argparse would print the whole usage block (100+ options) first
        raise ValueError(f"{message} (in {config_path} or on the command line)")

    parser.error = one_line_error
    parser.set_defaults(**values)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=cli_args or [])
    if not model_args.model_name_or_path and not model_args.text_model_name_or_path:
        raise ValueError(
            f"{config_path}: `model_name_or_path` (or, for stage 1 from scratch, the text/vision/dino parts) is required"
        )
    if not data_args.data_files:
        raise ValueError(f"{config_path}: `data_files` is required")
    return model_args, data_args, training_args


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a YAML value can stand for a field of type `annotation`. Strings always can: argparse converts them
    with the field's own type (and says so when it cannot). Types not known here are let through."""
    if isinstance(value, str) or annotation is Any:
        return True
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, argument) for argument in arguments)
    if origin is typing.Literal:
        return value in arguments
    if annotation is type(None):
        return value is None
    if annotation is str:
        return False  # (strings returned above)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is list or origin is list:
        return isinstance(value, list) and all(_fits(item, arguments[0]) for item in value if arguments)
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return False  # not a string: never a member's value here
    return True


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if typing.get_origin(annotation) is None else None
    return text or str(annotation).replace("typing.", "")


def check_option_types(values: dict, classes: Sequence[type], source: str) -> None:
    """A config value of the wrong type (`data_files: 5`, `learning_rate: [1]`) is a ValueError naming the option,
    instead of a TypeError deep in the run."""
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for option in dataclasses.fields(cls):
            if option.name in values and option.name in hints and not _fits(values[option.name], hints[option.name]):
                value = values[option.name]
                raise ValueError(
                    f"{source}: option {option.name} must be {_type_name(hints[option.name])}, got {value!r} "
                    f"({type(value).__name__})"
                )


MODEL_PATH_ARGUMENTS = (
    "model_name_or_path", "text_model_name_or_path", "vision_model_name_or_path", "dino_model_name_or_path",
    "processor_name_or_path",
)


def check_paths(model_args: ModelArguments, data_args: DataArguments) -> None:
    """Before anything is loaded: every model path names a folder that exists (or, as `org/name` while the Hub is
    reachable, a Hub id), the media root exists. One line that names the option otherwise."""
    from huggingface_hub import constants

    for name in MODEL_PATH_ARGUMENTS:
        value = getattr(model_args, name, None)
        if not value or os.path.exists(os.path.expanduser(value)):
            continue
        clearly_local = value.startswith(("/", ".", "~")) or value.count("/") != 1 or os.path.isdir(value.split("/")[0])
        if clearly_local:
            raise FileNotFoundError(f"{name} {value}: no such folder; check the path (or convert the checkpoint)")
        if constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(
                f"{name} {value}: no such local folder, and HF_HUB_OFFLINE is set, so it cannot be a Hub id either"
            )
    if data_args.media_root is not None and not os.path.isdir(data_args.media_root):
        raise FileNotFoundError(f"media_root {data_args.media_root}: no such folder")


# What `save_pretrained` and peft's `save_pretrained` write at the top of a folder: any of them means a saved model.
SAVED_MODEL_FILES = (
    "config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
    "pytorch_model.bin.index.json", "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin",
)


def check_output_dir(model_args: ModelArguments, training_args: TrainingArguments) -> None:
    """Before anything is loaded: an `output_dir` that already holds a saved model, or that is the folder of a model
    the run starts from, is refused unless `overwrite` is set (as `longvu convert --overwrite`). Checkpoint folders
    inside it (`checkpoint-N`) do not count: resuming into the run's own folder is the normal case."""
    output = training_args.output_dir
    if output is None or not os.path.exists(output):
        return
    if not os.path.isdir(output):
        raise ValueError(f"output_dir {output}: exists and is not a folder")
    if model_args.overwrite:
        return
    for name in MODEL_PATH_ARGUMENTS:
        source = getattr(model_args, name, None)
        source = os.path.expanduser(source) if source else None
        if source and os.path.isdir(source) and os.path.samefile(source, output):
            raise ValueError(
                f"output_dir {output} is the folder of {name}: training would replace the model it starts from; "
                "choose another output_dir, or pass --overwrite to replace it"
            )
    folders = [output]
    if model_args.finetuning != "full" and model_args.save_merged_model:
        folders.append(os.path.join(output, "merged"))
    for folder in folders:
        held = [name for name in SAVED_MODEL_FILES if os.path.isfile(os.path.join(folder, name))]
        if held:
            raise ValueError(
                f"output_dir {output} already holds a saved model ({os.path.join(folder, held[0])}); choose another "
                "output_dir, or pass --overwrite to replace it"
            )


def check_trainable_samples(dataset, collator: LongVUDataCollator) -> None:
    """Stop before training (nothing is written) when no sample would be trained on: every one too long for
    `max_length`, with nothing to learn, or with media that cannot be decoded. Samples are read in order until the
    first one the collator keeps (usually the first: this costs one sample's decoding); after
    `collator.max_consecutive_skips` media failures without a usable sample the run stops, as the collator would."""
    reasons: dict[str, int] = {}
    examples: dict[str, str] = {}
    media_failures = 0
    for index in range(len(dataset)):
        try:
            collator.encode(dataset[index])
            return
        except SampleSkipped as skipped:
            reasons[skipped.kind] = reasons.get(skipped.kind, 0) + 1
            examples.setdefault(skipped.kind, str(skipped))
            media_failures += skipped.kind == "media"
        if media_failures >= collator.max_consecutive_skips:
            raise ValueError(
                f"the media of the first {media_failures} training samples with media could not be used (the first: "
                f"{examples['media']}); check media_root ({collator.media_root!r}) and the data files"
            )
    counts = "; ".join(f"{count} {kind} (e.g. {examples[kind]})" for kind, count in reasons.items())
    hint = " Raise max_length or shorten the samples." if "too long" in reasons else ""
    raise ValueError(f"none of the {len(dataset)} training samples can be trained on: {counts}.{hint}")


def check_media_files(dataset, media_root: str | None, max_missing_share: float) -> None:
    """Stop before training (nothing is written) when more than `max_missing_share` of the samples with media name
    files that do not exist; the collator would skip them all and train on whatever is left."""
    paths = [p for p in dataset["media_path"] if p]
    if not paths:
        return
    missing = [p for p in paths if not os.path.exists(resolve_media_path(p, media_root))]
    if len(missing) > max_missing_share * len(paths):
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} training samples name media files that do not exist under media_root "
            f"{media_root!r} (the first: {missing[0]!r}); fix media_root or the data files "
            f"(max_missing_media_share={max_missing_share})"
        )
    if missing:
        logger.warning("%d of %d media files do not exist; those samples are skipped", len(missing), len(paths))


def apply_global_batch_size(training_args: TrainingArguments, global_batch_size: int | None) -> None:
    """Set `gradient_accumulation_steps` so that one optimizer step sees `global_batch_size` samples on however many
    processes this run has (64 GPUs x 4 per device = 256 needs no accumulation; 8 GPUs need 8 steps)."""
    if global_batch_size is None:
        return
    per_step = training_args.world_size * training_args.per_device_train_batch_size
    if global_batch_size % per_step:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not a multiple of {training_args.world_size} processes x "
            f"per_device_train_batch_size={training_args.per_device_train_batch_size}"
        )
    training_args.gradient_accumulation_steps = global_batch_size // per_step


def build_processor(model_args: ModelArguments):
    """The run's processor: saved with the model, or (stage 1 from parts) made from the LLM's tokenizer."""
    path = model_args.processor_name_or_path or model_args.model_name_or_path
    if path is not None:
        return AutoProcessor.from_pretrained(path)
    return LongVUProcessor(AutoTokenizer.from_pretrained(model_args.text_model_name_or_path), LongVUVideoProcessor())


def build_model(model_args: ModelArguments, processor=None):
    """The model to train: loaded (from a checkpoint, from a stage-1 result, or from the LLM and the two towers),
    towers frozen, LoRA / QLoRA applied if asked."""
    dtype = DTYPES[model_args.model_dtype]
    load_kwargs: dict[str, Any] = {"dtype": dtype}
    if model_args.finetuning == "qlora":
        load_kwargs["quantization_config"] = qlora_quantization_config(compute_dtype=torch.bfloat16)
        # One full copy per process; FSDP/DeepSpeed sharding of 4-bit weights is out of scope here.
        load_kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    path = model_args.model_name_or_path
    if model_args.from_parts:
        if model_args.finetuning != "full" or model_args.from_stage1:
            raise ValueError("a model built from its parts has new weights: train it with finetuning: full (stage 1)")
        model = init_model_from_parts(
            model_args.text_model_name_or_path,
            model_args.vision_model_name_or_path,
            model_args.dino_model_name_or_path,
            processor if processor is not None else build_processor(model_args),
            dtype=dtype,
            **model_args.model_config_overrides,
        )
    elif model_args.from_stage1:
        if model_args.finetuning != "full":
            raise ValueError(
                "from_stage1 creates new weights and, as in the reference, trains everything: use finetuning: full. "
                "For LoRA on a stage-2 model, save prepare_stage2_model(...) first and start from that folder."
            )
        model = prepare_stage2_model(
            path, seed=model_args.new_parameter_seed, dtype=dtype, **model_args.model_config_overrides
        )
    else:
        config = load_config_with_overrides(path, **model_args.model_config_overrides)
        model = LongVUForConditionalGeneration.from_pretrained(path, config=config, **load_kwargs)
    freeze_vision_towers(model)
    if model_args.finetuning in ("lora", "qlora"):
        model = apply_lora(
            model,
            r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            target_modules=model_args.lora_target_modules,
            modules_to_save=model_args.lora_modules_to_save,
        )
    return model


def build_trainer(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments, model=None
) -> LongVUTrainer:
    """Everything `trainer.train()` needs, from the three argument objects."""
    if training_args.remove_unused_columns:
        # The collator needs the raw columns (paths, turns); Trainer would drop them as unknown to `forward`.
        training_args.remove_unused_columns = False
    check_paths(model_args, data_args)
    check_output_dir(model_args, training_args)
    apply_global_batch_size(training_args, data_args.global_batch_size)
    set_seed(training_args.seed)  # new weights (aggregator, projector, window position embeddings) are reproducible
    processor = build_processor(model_args)
    if model is None:
        model = build_model(model_args, processor)
    max_length = data_args.max_length
    if max_length is None:
        # Text longer than this would leave no room for one full-resolution frame in the model's context budget.
        config = model.config
        frame_tokens = config.num_queries + config.query_grid_size  # one full-resolution frame, with its row ends
        max_length = max_text_length(config.max_context_length, config.context_margin, frame_tokens)
    with training_args.main_process_first(desc="loading the training data"):
        dataset = load_conversation_dataset(
            data_args.data_files,
            visual_length_estimate={"image": data_args.image_length_estimate, "video": data_args.video_length_estimate},
            cache_dir=data_args.dataset_cache_dir,
            num_proc=data_args.preprocessing_num_workers,
        )
    check_media_files(dataset, data_args.media_root, data_args.max_missing_media_share)
    collator = LongVUDataCollator(
        processor,
        media_root=data_args.media_root,
        video_fps=data_args.video_fps,
        max_frames=data_args.max_frames,
        label_mode=data_args.label_mode,
        max_length=max_length,
    )
    check_trainable_samples(dataset, collator)
    return LongVUTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=processor,
    )


def save_merged_model(adapter_dir: str, output_dir: str, dtype: torch.dtype, processor=None, config=None) -> None:
    """Base model + LoRA adapter -> one plain checkpoint that `from_pretrained` loads without PEFT.

    `config` (the trained model's) keeps any `model_config_overrides` of the run; by default the base model's.
    """
    kwargs = {"dtype": dtype}
    if config is not None:
        config = copy.deepcopy(config)
        if hasattr(config, "quantization_config"):  # QLoRA: merge into 16-bit weights, do not quantise again
            del config.quantization_config
        kwargs["config"] = config
    merged = load_trained_model(adapter_dir, merge_lora=True, **kwargs)
    merged.save_pretrained(output_dir)
    if processor is not None:
        processor.save_pretrained(output_dir)


def train(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments, trainer=None
):
    """Run one training job and save its result in `training_args.output_dir`; returns the trainer (`trainer`: one
    `build_trainer` already made for these arguments, e.g. to report bad input before training starts)."""
    trainer = trainer if trainer is not None else build_trainer(model_args, data_args, training_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if trainer.is_fsdp_enabled:
        # Checkpoints during training may hold shards; the final model must be one loadable state dict.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(training_args.output_dir)  # the processor is saved next to the weights
    if trainer.is_world_process_zero():
        if model_args.finetuning != "full" and model_args.save_merged_model and is_adapter_checkpoint(
            training_args.output_dir
        ):
            # Merged in 16 bits from the original base weights (QLoRA's 4-bit weights are not merged into).
            dtype = torch.bfloat16 if model_args.finetuning == "qlora" else DTYPES[model_args.model_dtype]
            save_merged_model(
                training_args.output_dir,
                os.path.join(training_args.output_dir, "merged"),
                dtype,
                trainer.processing_class,
                config=trainer.accelerator.unwrap_model(trainer.model).get_base_model().config,
            )
    if trainer.skipped_samples:
        logger.warning("%d training samples were skipped (see the warnings above)", trainer.skipped_samples)
    return trainer


__all__ = [
    "DataArguments",
    "ModelArguments",
    "apply_global_batch_size",
    "build_model",
    "build_processor",
    "build_trainer",
    "parse_config",
    "save_merged_model",
    "train",
]
