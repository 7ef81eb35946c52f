"""Run `examples/train.py` (or any training script) unchanged, on CPU processes, and record what the run did.

    accelerate launch --config_file examples/accelerate/fsdp_cpu.yaml \
        tests/distributed_cpu_train.py examples/train.py CONFIG [--option value ...]
    python tests/distributed_cpu_train.py examples/train.py CONFIG          # the single-process reference

Two things, and nothing else:

1. **FSDP on CPU processes.** accelerate (1.15, the newest release) turns a launch into FSDP only when the process
   group runs on an accelerator (`AcceleratorState` switches to `DistributedType.FSDP` from MULTI_GPU, MULTI_XPU, ...,
   never from MULTI_CPU). On CPU processes (`use_cpu: true` in the run config, gloo) it silently falls back to DDP, and
   without `use_cpu` it finds no device and runs every process alone. Around `AcceleratorState.__init__` this script
   presents the gloo CPU group as the accelerator kind FSDP accepts, so the FSDP plugin that `accelerate launch` built
   from the config file is used as is; it also sets `ACCELERATE_TORCH_DEVICE=cpu` because FSDP1 rejects accelerate's
   `cpu:0` as `device_id` ("Inconsistent compute device and `device_id`: cpu vs cpu:0"). With DeepSpeed
   (`ACCELERATE_USE_DEEPSPEED`) or a single process nothing is changed.
2. **A report** (`$LONGVU_TRAINING_REPORT`, a JSON file written by rank 0 after `train()` returns): the exact loss of
   every logged step (the console shows 4 digits), the distributed type, FSDP version, wrapper and FSDP units, and
   the process count, so that a test can compare a 2-process run with a single process.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from typing import Any

import torch
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType


def _fsdp_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _deepspeed_on_cpu_requested() -> bool:
    return (
        os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        and os.environ.get("DS_ACCELERATOR") == "cpu"
    )


def enable_deepspeed_on_cpu_processes() -> None:
    """Let accelerate count the processes of a DeepSpeed launch on CPU (`DS_ACCELERATOR=cpu`, gloo).

    accelerate picks the process-group backend from the accelerator it finds; on a CPU-only machine it finds none,
    lets DeepSpeed set up the group but then records "no distributed training, 1 process", so `Trainer` computes the
    batch for one process and DeepSpeed refuses it ("train_batch_size is not equal to micro_batch_per_gpu *
    gradient_acc_step * world_size"). Here the backend is gloo, the kind of the group DeepSpeed's CPU accelerator
    creates, and the device is the CPU.
    """
    if not _deepspeed_on_cpu_requested():
        return
    os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    original_prepare_backend = PartialState._prepare_backend

    def prepare_backend(self, cpu: bool = False, sagemaker_dp=False, backend: str | None = None):
        chosen_backend, distributed_type = original_prepare_backend(self, cpu, sagemaker_dp, backend)
        if chosen_backend is None and int(os.environ.get("LOCAL_RANK", -1)) != -1 and not cpu:
            return "gloo", DistributedType.MULTI_GPU  # becomes DEEPSPEED once the group is up
        return chosen_backend, distributed_type

    PartialState._prepare_backend = prepare_backend


def enable_fsdp_on_cpu_processes() -> None:
    """Let accelerate apply its FSDP plugin to a gloo process group of CPU processes (see the module docstring)."""
    if not _fsdp_requested():
        return
    os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    original_init = AcceleratorState.__init__

    def init(self, *args, **kwargs):
        shared = PartialState._shared_state
        if shared.get("distributed_type") != DistributedType.MULTI_CPU:
            return original_init(self, *args, **kwargs)
        shared["distributed_type"] = DistributedType.MULTI_GPU  # the kinds from which accelerate switches to FSDP
        try:
            original_init(self, *args, **kwargs)
        finally:
            if shared.get("distributed_type") == DistributedType.MULTI_GPU:  # FSDP was not set up after all
                shared["distributed_type"] = DistributedType.MULTI_CPU

    AcceleratorState.__init__ = init


def fsdp_units(model: torch.nn.Module) -> list[str]:
    """Names of the modules FSDP manages as units (FSDP1 wrappers or FSDP2 `fully_shard` modules), root first."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        FSDPModule = FullyShardedDataParallel
    units = []
    for name, module in model.named_modules():
        if isinstance(module, (FullyShardedDataParallel, FSDPModule)):
            # FSDP1 wraps: report the wrapped module's name, without the wrapper's own path components.
            units.append(name.replace("_fsdp_wrapped_module.", "").replace("._fsdp_wrapped_module", ""))
    return units


def run_report(trainer) -> dict[str, Any]:
    state = trainer.accelerator.state
    plugin = getattr(state, "fsdp_plugin", None)
    names = {id(parameter): name for name, parameter in trainer.model_wrapped.named_parameters()}
    return {
        "distributed_type": str(state.distributed_type).split(".")[-1],
        "num_processes": state.num_processes,
        "fsdp_version": getattr(plugin, "fsdp_version", None) if plugin is not None else None,
        "wrapper": type(trainer.model_wrapped).__name__,
        "fsdp_units": fsdp_units(trainer.model_wrapped),
        "device": str(trainer.args.device),
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "global_step": trainer.state.global_step,
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "grad_norms": [float(entry["grad_norm"]) for entry in trainer.state.log_history if "grad_norm" in entry],
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        # Names of parameters the optimizer holds that do not train (the frozen towers must not be among them).
        "frozen_parameters_in_optimizer": sorted(
            names[id(p)] for group in trainer.optimizer.param_groups for p in group["params"]
            if not p.requires_grad and id(p) in names
        ),
    }


def record_runs(report_path: str) -> None:
    """Wrap the recipe's `train` so that the trainer it returns is described in `report_path` (by rank 0)."""
    from longvu_hf.training import recipe

    original_train = recipe.train

    def train(*args, **kwargs):
        trainer = original_train(*args, **kwargs)
        if trainer.is_world_process_zero():
            with open(report_path, "w") as handle:
                json.dump(run_report(trainer), handle, indent=1)
        return trainer

    recipe.train = train  # examples/train.py imports `train` from the recipe module after this


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: distributed_cpu_train.py SCRIPT [script arguments ...]")
    enable_fsdp_on_cpu_processes()
    enable_deepspeed_on_cpu_processes()
    report_path = os.environ.get("LONGVU_TRAINING_REPORT")
    if report_path:
        record_runs(report_path)
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
