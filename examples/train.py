#!/usr/bin/env python
"""Train LongVU with the Hugging Face Trainer: stage 1 (images), stage 2 (videos) or your own fine-tuning.

The stage is chosen by the config file (examples/configs/); any option can be overridden on the command line:

    python examples/train.py examples/configs/stage2_video.yaml --output_dir runs/stage2 --learning_rate 1e-5

Distributed (see docs/training.md for 1 GPU, 8 GPUs and 8 nodes x 8 GPUs):

    accelerate launch --config_file examples/accelerate/fsdp.yaml examples/train.py examples/configs/stage2_video.yaml
"""

import sys

import torch.distributed as dist

import longvu_hf  # noqa: F401  (registers LongVU with the Auto classes)
from longvu_hf.training.collator import TooManySkippedSamples
from longvu_hf.training.model_setup import qlora_quantization_config
from longvu_hf.training.recipe import build_trainer, parse_config, train


def fail(error: BaseException) -> None:
    """A user error: one line on stderr, exit status 2."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    print(f"train.py: error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print("usage: train.py CONFIG.yaml [--option value ...]", file=sys.stderr)
        raise SystemExit(2)
    try:
        model_args, data_args, training_args = parse_config(argv[0], argv[1:])
        if model_args.finetuning == "qlora":
            qlora_quantization_config()  # fails here, with one clear line, on a machine without a CUDA GPU
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        fail(error)
    try:
        # Loading the model and checking the data (the files, an output_dir holding a model, at least one sample to
        # train on) before the first step: bad input stops here, nothing is written.
        trainer = build_trainer(model_args, data_args, training_args)
    except (ValueError, OSError) as error:  # OSError: also what from_pretrained raises for an unknown Hub id
        fail(error)
    try:
        train(model_args, data_args, training_args, trainer=trainer)
    except TooManySkippedSamples as error:  # the data went bad mid-run (a wrong media_root for a later part)
        fail(error)
    if dist.is_available() and dist.is_initialized():
        # Tear the process group down before interpreter exit: leaving it to destructors can abort a rank at exit
        # ("terminate called without an active exception") after the run itself succeeded.
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
