"""`Trainer` with two LongVU-specific touches: skipped-sample accounting and zero-weight steps.

Everything else (optimizer over trainable parameters only, schedules, mixed precision, activation checkpointing,
DDP / FSDP / DeepSpeed through accelerate, checkpoints and resuming, length-grouped sampling) is the stock `Trainer`;
the length-grouped sampler only gets its lengths as a plain list (much faster on large datasets).
"""

from __future__ import annotations

import os

import datasets
import torch
from transformers import Trainer
from transformers.trainer import SCHEDULER_NAME
from transformers.trainer_pt_utils import LengthGroupedSampler

from ..hub import write_adapter_card
from .collator import SKIPPED_SAMPLES_KEY, LongVUDataCollator
from .model_setup import is_adapter_checkpoint


class LongVUTrainer(Trainer):
    """`transformers.Trainer` for LongVU.

    - Samples whose media cannot be decoded are dropped by `LongVUDataCollator` (with a warning); the trainer adds up
      how many (`skipped_samples`, summed over processes, in the logs and in `trainer.skipped_samples`).
    - A batch with no supervised token (every sample in it was skipped) still runs forward and backward, so all
      processes stay in step under DDP/FSDP/DeepSpeed, with a loss of exactly zero: it adds no gradient. Since the
      loss is normalised by the supervised tokens of all processes and accumulation steps
      (`average_tokens_across_devices`, on by default), the other samples' gradients are exactly what they would be
      without it. Only when every process and accumulation step of an optimizer step came up empty does the step
      run on zero gradients (AdamW's momentum still moves the weights a little; the schedule advances).

    Example:

    ```python
    >>> trainer = LongVUTrainer(model=model, args=args, train_dataset=dataset,
    ...                         data_collator=LongVUDataCollator(processor), processing_class=processor)
    >>> trainer.train()
    >>> trainer.skipped_samples
    0
    ```
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(self.data_collator, LongVUDataCollator):
            self.data_collator.return_skip_counts = True
        self._skipped_local = 0
        self.skipped_samples = 0

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        column = self.args.length_column_name
        if (
            self.args.train_sampling_strategy == "group_by_length"
            and isinstance(dataset, datasets.Dataset)
            and column in dataset.column_names
        ):
            # `Trainer` hands the sampler the lazy column, which it then reads one row at a time: about 70 s per epoch
            # for 600K samples (measured), against well under a second with the plain list read here in one go.
            lengths = dataset.select_columns([column]).to_dict()[column]
            # Group by the global batch: every process iterates this same order and accelerate deals its batches out
            # in turn, so an optimizer step sees the same samples on 1 or N processes (grouping by the per-process
            # batch, as the stock Trainer does, reorders the data whenever the process count changes).
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            return LengthGroupedSampler(batch, dataset=dataset, lengths=lengths)
        return super()._get_train_sampler(train_dataset)

    def _prepare_inputs(self, inputs):
        skipped = inputs.pop(SKIPPED_SAMPLES_KEY, None)
        if skipped is not None:
            self._skipped_local += int(skipped)
        return super()._prepare_inputs(inputs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        if labels is None or bool((labels != -100).any()):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # No supervised token: the model's mean over zero tokens would be NaN. Keep the graph, weight it by zero.
        inputs = {key: value for key, value in inputs.items() if key != "labels"}
        outputs = model(**inputs)
        loss = outputs.logits.float().sum() * 0.0
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        folder = output_dir or self.args.output_dir
        if is_adapter_checkpoint(folder):  # peft's own card would call a LongVU adapter `text-generation`
            write_adapter_card(folder)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        # `log` runs on every process at the same steps, so the sum over processes is safe here.
        count = torch.tensor(self._skipped_local, device=self.args.device)
        if self.args.world_size > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        self.skipped_samples = int(count)
        logs = {**logs, "skipped_samples": float(self.skipped_samples)}
        super().log(logs, *args, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        # accelerate's folder for the sharded optimizer state (not Trainer's `optimizer.pt`)
        optimizer_dir = os.path.join(checkpoint, "optimizer_0") if checkpoint is not None else None
        plugin = self.accelerator.state.fsdp_plugin if self.is_fsdp_enabled else None
        if plugin is None or plugin.fsdp_version != 1 or not os.path.isdir(optimizer_dir):
            return super()._load_optimizer_and_scheduler(checkpoint)
        # An FSDP1 sharded checkpoint. accelerate's loader (1.15) resumes with fresh Adam moments and no error: see
        # `load_fsdp1_sharded_optimizer`. FSDP2 checkpoints load correctly through `Trainer`.
        load_fsdp1_sharded_optimizer(plugin, self.model, self.optimizer, optimizer_dir)
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, SCHEDULER_NAME), weights_only=True))


def load_fsdp1_sharded_optimizer(plugin, model: torch.nn.Module, optimizer, optimizer_dir: str) -> None:
    """Load the optimizer state an FSDP1 run saved with `SHARDED_STATE_DICT` (a `torch.distributed.checkpoint` folder).

    accelerate's `load_fsdp_optimizer` reads the checkpoint into `FSDP.optim_state_dict` of the optimizer as it is
    when `Trainer` resumes, i.e. new and without state: only the parameter groups are read, and the moments start
    from zero. Here the state is created first (zeros, `initialize_optimizer_state`), so that every moment this rank
    holds is read.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, create_default_local_load_plan
    from torch.distributed.fsdp import FullyShardedDataParallel

    class LoadPlannerWithoutLegacyKeys(DefaultLoadPlanner):
        # When the checkpoint holds keys this rank does not ask for (FSDP1 leaves out the state of parameters with
        # no elements on this rank, e.g. a (1, ...) parameter over 2 processes), the default planner takes it for a
        # pre-2.4 checkpoint and re-reads the request in that layout, where `param_groups` is a single key the
        # checkpoint lacks ("Missing key in checkpoint state_dict: optimizer.param_groups"). Keep today's layout.
        def create_local_plan(self):
            return create_default_local_load_plan(self.state_dict, self.metadata, not self.allow_partial_load)

    initialize_optimizer_state(optimizer)
    with FullyShardedDataParallel.state_dict_type(
        model, plugin.state_dict_type, plugin.state_dict_config, plugin.optim_state_dict_config
    ):
        request = {"optimizer": FullyShardedDataParallel.optim_state_dict(model, optimizer)}
        dcp.load(request, storage_reader=dcp.FileSystemReader(optimizer_dir), planner=LoadPlannerWithoutLegacyKeys())
        optimizer.load_state_dict(
            FullyShardedDataParallel.optim_state_dict_to_load(model, optimizer, request["optimizer"])
        )


def initialize_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the per-parameter state of a new optimizer (zero moments) without moving any weight: one step on zero
    gradients with learning rate 0 (what `torch.distributed.checkpoint.state_dict` does before loading)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
    if optimizer.state:
        return
    parameters = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    for parameter in parameters:
        parameter.grad = torch.zeros_like(parameter)
    learning_rates = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = torch.zeros_like(group["lr"]) if isinstance(group["lr"], torch.Tensor) else 0.0
    optimizer.step()
    for group, learning_rate in zip(optimizer.param_groups, learning_rates):
        group["lr"] = learning_rate
    for parameter in parameters:
        parameter.grad = None


__all__ = ["LongVUTrainer"]
