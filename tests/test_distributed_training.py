"""Distributed fine-tuning that has run: `examples/train.py` under `accelerate launch` in 2 CPU processes (gloo) with
FSDP1 (the version of `examples/accelerate/fsdp.yaml`), FSDP2 and DeepSpeed ZeRO-3, compared with one process.

Each run is a subprocess, as users start it; `tests/distributed_cpu_train.py` runs the script unchanged (see its
docstring for the two things accelerate needs on CPU processes) and writes a report of the run (exact step losses,
distributed type, FSDP units). The same data, seed and global batch (4 = 1 process x 1 x 4 accumulation steps =
2 processes x 1 x 2) must give:

- the same loss at every step: relative tolerance 1e-5 (float32; the runs differ only in the order in which gradients
  are summed, measured differences are about 1e-7);
- the same final weights: absolute and relative tolerance 1e-5 (measured: at most 2e-7); the vision towers
  bit-identical to the weights the run started from;
- a checkpoint (FSDP: sharded; ZeRO-3: DeepSpeed's) resumes to the weights of the uninterrupted run (tolerance 1e-6;
  measured: equal);
- the final folder loads with `from_pretrained` (no missing or unexpected weight) and generates.

The runs take 3 to 4.5 minutes on 2 busy cores (ZeRO-3: 2 more), so they run only with LONGVU_RUN_DISTRIBUTED=1
(CI runs them in a step of their own); ZeRO-3 also needs DeepSpeed (`pip install -e ".[deepspeed]"`). Without the
variable only the check of the CPU accelerate configs runs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, Dinov2Model, Qwen2ForCausalLM, SiglipVisionModel

from longvu_hf import LongVUForConditionalGeneration, LongVUProcessor, LongVUVideoProcessor
from longvu_hf.training import prepare_stage2_model

from conftest import make_tiny_tokenizer, make_video
from tiny_model import make_tiny_model, tiny_config

needs_processes = pytest.mark.skipif(
    os.environ.get("LONGVU_RUN_DISTRIBUTED") != "1",
    reason="2-process training runs (several minutes): set LONGVU_RUN_DISTRIBUTED=1",
)

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "tests" / "distributed_cpu_train.py"
FSDP_CPU_CONFIG = REPO / "examples" / "accelerate" / "fsdp_cpu.yaml"
ZERO3_CPU_CONFIG = REPO / "examples" / "accelerate" / "deepspeed_zero3_cpu.yaml"
TOWERS = ("model.video_encoder.vision_tower.", "model.video_encoder.dino_tower.")
ANSWERS = ("A dog runs .", "A red square moves up and down and left .", "yes", "A cat sits and it runs left .")
LOSS_RTOL = 1e-5
WEIGHT_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
RESUME_TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def conversation(media_tag: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": f"{media_tag}\nDescribe the video"}, {"from": "gpt", "value": answer}]


def write_records(path: Path, media_key: str, files: list[str], tag: str) -> Path:
    """8 samples whose answers differ in length, so that length grouping has something to order."""
    records = [
        {"id": f"{media_key}{i}", media_key: files[i % len(files)],
         "conversations": conversation(tag, ANSWERS[(3 * i) % 4] + " dog" * (i // 4))}
        for i in range(8)
    ]
    path.write_text(json.dumps(records))
    return path


def write_run_config(path: Path, **values) -> Path:
    """A run config as examples/train.py reads it (flat YAML; JSON is valid YAML)."""
    base = {
        "per_device_train_batch_size": 1,
        "global_batch_size": 4,  # 4 accumulation steps in 1 process, 2 in each of 2
        "learning_rate": 1e-3,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "activation_checkpointing": True,
        "train_sampling_strategy": "group_by_length",  # as the stage configs
        "disable_tqdm": True,
        "seed": 0,
    }
    path.write_text(json.dumps({**base, **values}))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Images of four sizes, a video, a processor, the pretrained parts stage 1 starts from (LLM, SigLIP, DINOv2), a
    576-query stage-1 checkpoint for stage 2, and the two run configs."""
    root = tmp_path_factory.mktemp("distributed")
    media = root / "media"
    media.mkdir()
    images = []
    for index in range(4):
        pixels = np.random.default_rng(index).integers(0, 255, (36 + 8 * index, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(media / f"photo{index}.png")
        images.append(f"photo{index}.png")
    make_video(media / "clip.mp4", fps=2, num_frames=6)  # 3 frames at 1 fps

    processor = LongVUProcessor(make_tiny_tokenizer(extra_words=("dog", "runs", "cat", "sits")), LongVUVideoProcessor())
    parts = tiny_config(vocab_size=len(processor.tokenizer))
    torch.manual_seed(0)
    Qwen2ForCausalLM(parts.text_config).save_pretrained(root / "llm")
    processor.tokenizer.save_pretrained(root / "llm")
    SiglipVisionModel(parts.vision_config).save_pretrained(root / "siglip")
    Dinov2Model(parts.dino_config).save_pretrained(root / "dino")
    stage1_checkpoint = root / "stage1_checkpoint"
    make_tiny_model(tokenizer=processor.tokenizer, num_queries=576, highres=False).save_pretrained(stage1_checkpoint)
    processor.save_pretrained(stage1_checkpoint)

    stage1 = write_run_config(
        root / "stage1.json",
        text_model_name_or_path=str(root / "llm"),
        vision_model_name_or_path=str(root / "siglip"),
        dino_model_name_or_path=str(root / "dino"),
        model_config_overrides={"num_queries": 576, "highres": False, "aggregator_hidden_size": 32,
                                "aggregator_num_heads": 4, "max_context_length": 1024},
        data_files=[str(write_records(root / "images.json", "image", images, "<image>"))],
        media_root=str(media),
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
    )
    stage2 = write_run_config(
        root / "stage2.json",
        model_name_or_path=str(stage1_checkpoint),
        from_stage1=True,
        model_config_overrides={"num_queries": 144, "highres": True, "stc_threshold": 0.8},
        data_files=[str(write_records(root / "videos.json", "video", ["clip.mp4"], "<video>"))],
        media_root=str(media),
        video_fps=1.0,
        max_steps=2,
    )
    return SimpleNamespace(root=root, media=media, stage1=stage1, stage2=stage2, stage1_checkpoint=stage1_checkpoint)


def train(workspace, name: str, config: Path, accelerate_args: list[str] | None = None, *options: str,
          env: dict[str, str] | None = None) -> SimpleNamespace:
    """Run examples/train.py CONFIG (in one process, or under `accelerate launch ACCELERATE_ARGS`) into
    `workspace.root / name`; returns its output folder and report."""
    output = workspace.root / name
    report = workspace.root / f"{name}.report.json"
    launch = []
    if accelerate_args is not None:
        launch = ["-m", "accelerate.commands.launch", *accelerate_args, "--main_process_port", str(free_port())]
    command = [sys.executable, *launch, str(LAUNCHER), str(REPO / "examples" / "train.py"), str(config),
               "--output_dir", str(output), *options]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"),
                   "LONGVU_TRAINING_REPORT": str(report), **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment, cwd=REPO)
    assert result.returncode == 0, f"{' '.join(command)}\n{(result.stdout + result.stderr)[-5000:]}"
    return SimpleNamespace(output=output, report=json.loads(report.read_text()))


def load_final_weights(output: Path) -> dict[str, torch.Tensor]:
    """The final folder loads as an ordinary model: every weight found, none left over."""
    model, info = LongVUForConditionalGeneration.from_pretrained(output, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.state_dict()


def assert_same_weights(actual: dict, expected: dict, tolerance: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], **tolerance, msg=lambda text: f"{name}: {text}")


def assert_towers_unchanged(weights: dict, initial: dict) -> None:
    towers = [name for name in initial if name.startswith(TOWERS)]
    assert towers
    changed = [name for name in towers if not torch.equal(weights[name], initial[name])]
    assert not changed, f"frozen tower weights changed: {changed[:5]}"


def assert_is_the_asked_fsdp(report: dict, fsdp_version: int) -> None:
    """FSDP really ran (accelerate falls back to DDP on CPU processes without the launcher's help), 2 processes,
    one unit per decoder layer, no frozen weight in the optimizer."""
    assert (report["distributed_type"], report["num_processes"], report["fsdp_version"]) == ("FSDP", 2, fsdp_version)
    assert report["gradient_accumulation_steps"] == 2
    units = report["fsdp_units"]
    assert units[0] == "" and {"model.language_model.layers.0", "model.language_model.layers.1"} <= set(units)
    assert report["frozen_parameters_in_optimizer"] == []


def assert_same_losses(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected) and expected
    np.testing.assert_allclose(actual, expected, rtol=LOSS_RTOL, atol=0)


def generates(output: Path, media: dict) -> bool:
    model = LongVUForConditionalGeneration.from_pretrained(output)
    processor = AutoProcessor.from_pretrained(output)
    messages = [{"role": "user", "content": [media, {"type": "text", "text": "Describe the video"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    return generated.shape[1] > inputs["input_ids"].shape[1]


def stage1_initial_towers(workspace) -> dict[str, torch.Tensor]:
    """The tower weights stage 1 starts from: the pretrained SigLIP and DINOv2 parts."""
    towers = {"model.video_encoder.vision_tower.": SiglipVisionModel.from_pretrained(workspace.root / "siglip"),
              "model.video_encoder.dino_tower.": Dinov2Model.from_pretrained(workspace.root / "dino")}
    return {prefix + name: tensor for prefix, tower in towers.items() for name, tensor in tower.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------------
# The CPU configs
# ---------------------------------------------------------------------------------------------------------------------


def config_differences(shipped: dict, variant: dict, prefix: str = "") -> dict[str, tuple]:
    differences = {}
    for key in sorted(set(shipped) | set(variant)):
        old, new = shipped.get(key), variant.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences.update(config_differences(old, new, f"{prefix}{key}."))
        elif old != new:
            differences[prefix + key] = (old, new)
    return differences


def test_cpu_configs_differ_from_the_shipped_ones_only_where_cpu_requires():
    import yaml

    def load(name: str) -> dict:
        return yaml.safe_load((REPO / "examples" / "accelerate" / name).read_text())

    local_rendezvous = {"num_processes": (8, 2), "main_process_ip": (None, "127.0.0.1")}
    fsdp = config_differences(load("fsdp.yaml"), load("fsdp_cpu.yaml"))
    assert fsdp.pop("main_process_port")[0] is None
    assert fsdp == {
        **local_rendezvous,
        "mixed_precision": ("bf16", "no"),  # compared with a float32 run in one process
        "fsdp_config.fsdp_cpu_ram_efficient_loading": (True, False),  # accelerate broadcasts from a GPU-like device
        "fsdp_config.fsdp_sync_module_states": (True, False),
    }
    zero3 = config_differences(load("deepspeed_zero3.yaml"), load("deepspeed_zero3_cpu.yaml"))
    assert zero3.pop("main_process_port")[0] is None
    assert zero3 == local_rendezvous


# ---------------------------------------------------------------------------------------------------------------------
# Runs (module-scoped: each is started once and checked by several tests)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage1_one_process(workspace):
    return train(workspace, "stage1_one_process", workspace.stage1)


@pytest.fixture(scope="module", params=[1, 2], ids=["fsdp1", "fsdp2"])
def stage1_fsdp(request, workspace):
    """Stage 1 from the pretrained parts, 4 steps, sharded checkpoints at steps 2 and 4."""
    version = request.param
    run = train(workspace, f"stage1_fsdp{version}", workspace.stage1,
                ["--config_file", str(FSDP_CPU_CONFIG), "--fsdp_version", str(version)])
    run.version = version
    return run


@pytest.fixture(scope="module")
def stage2_one_process(workspace):
    return train(workspace, "stage2_one_process", workspace.stage2)


# ---------------------------------------------------------------------------------------------------------------------
# FSDP
# ---------------------------------------------------------------------------------------------------------------------


@needs_processes
def test_stage1_under_fsdp_equals_one_process(stage1_fsdp, stage1_one_process, workspace):
    assert_is_the_asked_fsdp(stage1_fsdp.report, stage1_fsdp.version)
    assert stage1_one_process.report["distributed_type"] == "NO"
    assert stage1_one_process.report["gradient_accumulation_steps"] == 4
    assert_same_losses(stage1_fsdp.report["losses"], stage1_one_process.report["losses"])
    final = load_final_weights(stage1_fsdp.output)  # FULL_STATE_DICT at the end, one ordinary checkpoint
    assert_same_weights(final, load_final_weights(stage1_one_process.output), WEIGHT_TOLERANCE)
    assert_towers_unchanged(final, stage1_initial_towers(workspace))
    # The checkpoints during training hold shards (SHARDED_STATE_DICT), one file per process.
    checkpoint = stage1_fsdp.output / "checkpoint-2"
    for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert len(list((checkpoint / folder).glob("*.distcp"))) == 2, folder


@needs_processes
def test_stage1_sharded_checkpoint_resumes_to_the_uninterrupted_result(stage1_fsdp, workspace):
    resumed = train(workspace, f"stage1_fsdp{stage1_fsdp.version}_resumed", workspace.stage1,
                    ["--config_file", str(FSDP_CPU_CONFIG), "--fsdp_version", str(stage1_fsdp.version)],
                    "--resume_from_checkpoint", str(stage1_fsdp.output / "checkpoint-2"))
    assert resumed.report["global_step"] == 4
    # Steps 3 and 4 after the resume (1 and 2 are the checkpoint's log history).
    assert_same_losses(resumed.report["losses"], stage1_fsdp.report["losses"])
    assert_same_weights(load_final_weights(resumed.output), load_final_weights(stage1_fsdp.output), RESUME_TOLERANCE)


@needs_processes
@pytest.mark.parametrize("version", [1, 2], ids=["fsdp1", "fsdp2"])
def test_stage2_under_fsdp_equals_one_process_and_generates(version, stage2_one_process, workspace):
    run = train(workspace, f"stage2_fsdp{version}", workspace.stage2,
                ["--config_file", str(FSDP_CPU_CONFIG), "--fsdp_version", str(version)])
    assert_is_the_asked_fsdp(run.report, version)
    assert_same_losses(run.report["losses"], stage2_one_process.report["losses"])
    final = load_final_weights(run.output)
    assert_same_weights(final, load_final_weights(stage2_one_process.output), WEIGHT_TOLERANCE)
    stage1 = LongVUForConditionalGeneration.from_pretrained(workspace.stage1_checkpoint).state_dict()
    assert_towers_unchanged(final, stage1)
    # The window position embeddings were created (seeded, the same in every process) and trained.
    created = prepare_stage2_model(workspace.stage1_checkpoint).state_dict()
    position_embeddings = [name for name in final if ".pos_embeds." in name]
    assert len(position_embeddings) == 6
    assert all(not torch.equal(final[name], created[name]) for name in position_embeddings)
    assert generates(run.output, {"type": "video", "path": str(workspace.media / "clip.mp4")})


# ---------------------------------------------------------------------------------------------------------------------
# DeepSpeed ZeRO-3
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage1_zero3(workspace):
    """Stage 1 from the pretrained parts under ZeRO-3, 4 steps, DeepSpeed checkpoints at steps 2 and 4."""
    pytest.importorskip("deepspeed", reason="ZeRO-3 needs DeepSpeed: pip install -e '.[deepspeed]'")
    # DeepSpeed's CPU accelerator (gloo). `use_cpu: false`: with `use_cpu: true` accelerate skips DeepSpeed and runs
    # DDP; DS_ACCELERATOR=cpu keeps everything on the CPU.
    config = workspace.root / "stage1_zero3.json"
    config.write_text(json.dumps({**json.loads(workspace.stage1.read_text()), "use_cpu": False}))
    run = train(workspace, "stage1_zero3", config, ["--config_file", str(ZERO3_CPU_CONFIG)], env={"DS_ACCELERATOR": "cpu"})
    run.config = config
    return run


@needs_processes
def test_stage1_under_deepspeed_zero3_equals_one_process(stage1_zero3, stage1_one_process, workspace):
    report = stage1_zero3.report
    assert (report["distributed_type"], report["num_processes"], report["wrapper"]) == ("DEEPSPEED", 2, "DeepSpeedEngine")
    assert report["gradient_accumulation_steps"] == 2 and report["device"] == "cpu"
    assert_same_losses(report["losses"], stage1_one_process.report["losses"])
    final = load_final_weights(stage1_zero3.output)  # gathered at the end (stage3_gather_16bit_weights_on_model_save)
    assert_same_weights(final, load_final_weights(stage1_one_process.output), WEIGHT_TOLERANCE)
    assert_towers_unchanged(final, stage1_initial_towers(workspace))
    assert generates(stage1_zero3.output, {"type": "image", "path": str(workspace.media / "photo1.png")})


@needs_processes
def test_stage1_zero3_checkpoint_resumes_to_the_uninterrupted_result(stage1_zero3, workspace):
    resumed = train(workspace, "stage1_zero3_resumed", stage1_zero3.config, ["--config_file", str(ZERO3_CPU_CONFIG)],
                    "--resume_from_checkpoint", str(stage1_zero3.output / "checkpoint-2"), env={"DS_ACCELERATOR": "cpu"})
    assert resumed.report["global_step"] == 4
    assert_same_losses(resumed.report["losses"], stage1_zero3.report["losses"])
    assert_same_weights(load_final_weights(resumed.output), load_final_weights(stage1_zero3.output), RESUME_TOLERANCE)
