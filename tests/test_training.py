"""Training with tiny random models on CPU: data loading, loss masks token by token, the collator, both stages through
`Trainer`, the stage-1 -> stage-2 switch, LoRA, resuming, skipped media, QLoRA's CPU message, 2-process DDP."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from tokenizers import AddedToken
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Dinov2Model,
    Qwen2ForCausalLM,
    SiglipVisionModel,
    TrainerCallback,
    set_seed,
)
from transformers.trainer_pt_utils import LengthGroupedSampler

from longvu_hf import LongVUForConditionalGeneration, LongVUProcessor, LongVUVideoProcessor
from longvu_hf.training import (
    IGNORE_INDEX,
    LongVUDataCollator,
    LongVUTrainer,
    apply_lora,
    freeze_vision_towers,
    init_model_from_parts,
    load_conversation_dataset,
    load_trained_model,
    prepare_stage2_model,
    qlora_quantization_config,
)
from longvu_hf.training.data import normalize_record
from longvu_hf.training.recipe import apply_global_batch_size, parse_config, train

from conftest import make_tiny_tokenizer, make_video
from tiny_model import make_tiny_model, tiny_config

REPO = Path(__file__).resolve().parents[1]
WORDS = ("dog", "runs", "cat", "sits")
TOWERS = ("model.video_encoder.vision_tower.", "model.video_encoder.dino_tower.")


def conversation(media_tag: str, answer: str = "A dog runs .") -> list[dict]:
    return [{"from": "human", "value": f"{media_tag}\nDescribe the video"}, {"from": "gpt", "value": answer}]


def write_json(path: Path, records: list[dict], lines: bool = False) -> Path:
    with open(path, "w") as handle:
        if lines:
            handle.write("".join(json.dumps(record) + "\n" for record in records))
        else:
            json.dump(records, handle)
    return path


def write_config(path: Path, **values) -> Path:
    """A run config as examples/train.py reads it (flat YAML; JSON is valid YAML)."""
    base = {
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "activation_checkpointing": True,
        "train_sampling_strategy": "group_by_length",
        "disable_tqdm": True,
    }
    path.write_text(json.dumps({**base, **values}))
    return path


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """The tiny models run hundreds of microsecond-sized ops per step: one thread avoids OpenMP synchronisation that
    costs more than the ops themselves (more than 10x slower with 2 threads on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Media files (real mp4s, a gif, a frame folder, a .npy, an image, a corrupt mp4), a processor and a stage-1
    (576-query image) tiny model saved like a checkpoint."""
    root = tmp_path_factory.mktemp("training")
    media = root / "media"
    media.mkdir()
    make_video(media / "clip_a.mp4", fps=2, num_frames=6)  # 3 frames at 1 fps
    make_video(media / "clip_b.mp4", fps=2, num_frames=4, width=48, height=48)  # 2 frames at 1 fps
    make_video(media / "anim.gif", fps=4, num_frames=3, width=32, height=32)
    (media / "frames").mkdir()
    for index in range(2):
        Image.new("RGB", (40, 30), (index * 90, 50, 200)).save(media / "frames" / f"{index:03d}.png")
    np.save(media / "clip.npy", np.random.default_rng(0).integers(0, 255, (2, 30, 40, 3), dtype=np.uint8))
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (36, 64, 3), dtype=np.uint8)).save(media / "photo.png")
    (media / "corrupt.mp4").write_bytes(os.urandom(3000))

    processor = LongVUProcessor(make_tiny_tokenizer(extra_words=WORDS), LongVUVideoProcessor())
    stage1_init = root / "stage1_init"
    make_tiny_model(tokenizer=processor.tokenizer, num_queries=576, highres=False).save_pretrained(stage1_init)
    processor.save_pretrained(stage1_init)
    # The pretrained parts stage 1 starts from: an LLM (with its tokenizer), SigLIP and DINOv2.
    parts = tiny_config(vocab_size=len(processor.tokenizer))
    torch.manual_seed(0)
    Qwen2ForCausalLM(parts.text_config).save_pretrained(root / "llm")
    processor.tokenizer.save_pretrained(root / "llm")
    SiglipVisionModel(parts.vision_config).save_pretrained(root / "siglip")
    Dinov2Model(parts.dino_config).save_pretrained(root / "dino")
    images = write_json(root / "images.json", [{"id": f"i{i}", "image": "photo.png", "conversations": conversation("<image>")} for i in range(8)])
    return SimpleNamespace(root=root, media=media, processor=processor, stage1_init=stage1_init, images=images)


# Widths of the tiny model's new modules when it is built from parts (tiny_model.tiny_config's values).
TINY_PARTS_OVERRIDES = {"aggregator_hidden_size": 32, "aggregator_num_heads": 4, "max_context_length": 1024}


@pytest.fixture(scope="module")
def stage1_run(workspace):
    """Stage 1 on images from the LLM and the two towers: 4 steps, checkpoints at steps 2 and 4 (the resume test
    starts from step 2)."""
    output = workspace.root / "stage1"
    overrides = {"num_queries": 576, "highres": False, **TINY_PARTS_OVERRIDES}
    config = write_config(
        workspace.root / "stage1.json",
        text_model_name_or_path=str(workspace.root / "llm"),
        vision_model_name_or_path=str(workspace.root / "siglip"),
        dino_model_name_or_path=str(workspace.root / "dino"),
        model_config_overrides=overrides,
        data_files=[str(workspace.images)],
        media_root=str(workspace.media),
        output_dir=str(output),
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
    )
    model_args, data_args, training_args = parse_config(config)
    set_seed(training_args.seed)
    before = snapshot(init_model_from_parts(workspace.root / "llm", workspace.root / "siglip", workspace.root / "dino",
                                            workspace.processor, **overrides))
    trainer = train(model_args, data_args, training_args)
    return SimpleNamespace(trainer=trainer, before=before, output=output, config=config)


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def test_dataset_loads_json_and_jsonl(tmp_path):
    records = [
        {"id": 1, "video": "a.mp4", "conversations": conversation("<video>")},
        {"id": "x", "image": "b.png", "conversations": [{"from": "gpt", "value": "stray"}, *conversation("<image>")]},
        {"id": "t", "conversations": [{"from": "human", "value": "Describe"}, {"from": "gpt", "value": "yes"}]},
    ]
    list_file, lines_file = write_json(tmp_path / "a.json", records), write_json(tmp_path / "a.jsonl", records, True)
    for path in (list_file, lines_file):
        dataset = load_conversation_dataset(path, visual_length_estimate={"video": 100, "image": 10}, cache_dir=str(tmp_path / "cache"))
        assert dataset["media_type"] == ["video", "image", "text"]
        assert dataset["media_path"] == ["a.mp4", "b.png", ""]
        assert dataset["sample_id"] == ["1", "x", "t"]
        assert dataset["media_turn"] == [0, 0, -1]
        # The leading assistant turn is dropped, tags are removed, lengths = words + visual estimate.
        assert dataset[1]["roles"] == ["user", "assistant"] and dataset[1]["texts"] == ["Describe the video", "A dog runs ."]
        assert dataset["length"] == [3 + 4 + 100, 3 + 4 + 10, 1 + 1]

    bad = write_json(tmp_path / "bad.json", [records[0], {"id": "q", "conversations": [{"from": "human", "value": "hi"}]}])
    with pytest.raises(ValueError, match=r"record 1 \(id='q'\).*no assistant"):
        load_conversation_dataset(bad, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_conversation_dataset(tmp_path / "nope.json")


def test_media_tag_moves_to_the_tagged_turn():
    row = normalize_record(
        {"video": "v.mp4", "conversations": [
            {"from": "human", "value": "first"}, {"from": "gpt", "value": "ok"},
            {"from": "human", "value": "now <video> look"}, {"from": "gpt", "value": "done"}]}
    )
    assert row["media_turn"] == 2 and row["texts"][2] == "now  look".strip()
    with pytest.raises(ValueError, match="unknown speaker"):
        normalize_record({"conversations": [{"from": "robot", "value": "x"}]})


# ---------------------------------------------------------------------------------------------------------------------
# Loss masks, token by token
# ---------------------------------------------------------------------------------------------------------------------


def newline_processor(backbone: str) -> LongVUProcessor:
    """The tiny word-level tokenizer with "\\n" and "\\n\\n" as tokens, so the reference's newline rules are visible."""
    tokenizer = make_tiny_tokenizer(extra_words=WORDS)
    tokenizer.add_tokens([AddedToken("\n", normalized=False), AddedToken("\n\n", normalized=False)])
    return LongVUProcessor(tokenizer, LongVUVideoProcessor(), chat_template=LongVUProcessor.get_chat_template(backbone))


TWO_TURNS = {
    "video": "v.mp4",
    "conversations": [
        {"from": "human", "value": "<video>\nWhat is happening ?"},
        {"from": "gpt", "value": "A dog runs ."},
        {"from": "human", "value": "yes ?"},
        {"from": "gpt", "value": "yes it is"},
    ],
}
# (token, supervised in "assistant" mode, supervised in "reference" mode)
CHATML_EXPECTED = [
    ("<|im_start|>", 0, 1), ("system", 0, 0), ("\n", 0, 1), ("You", 0, 0), ("are", 0, 0), ("a", 0, 0),
    ("helpful", 0, 0), ("assistant", 0, 0), (".", 0, 0), ("<|im_end|>", 0, 1), ("\n", 0, 1),
    ("<|im_start|>", 0, 1), ("user", 0, 0), ("\n", 0, 1), ("<video>", 0, 0), ("\n", 0, 1), ("What", 0, 0),
    ("is", 0, 0), ("happening", 0, 0), ("?", 0, 0), ("<|im_end|>", 0, 1), ("\n", 0, 1),
    ("<|im_start|>", 0, 1), ("assistant", 0, 1), ("\n", 0, 1), ("A", 1, 1), ("dog", 1, 1), ("runs", 1, 1),
    (".", 1, 1), ("<|im_end|>", 1, 1), ("\n", 0, 1),
    ("<|im_start|>", 0, 1), ("user", 0, 0), ("\n", 0, 1), ("yes", 0, 0), ("?", 0, 0), ("<|im_end|>", 0, 1),
    ("\n", 0, 1),
    ("<|im_start|>", 0, 1), ("assistant", 0, 1), ("\n", 0, 1), ("yes", 1, 1), ("it", 1, 1), ("is", 1, 1),
    ("<|im_end|>", 1, 1), ("\n", 0, 1),
]
LLAMA3_EXPECTED = [
    ("<|begin_of_text|>", 0, 1), ("<|start_header_id|>", 0, 1), ("system", 0, 0), ("<|end_header_id|>", 0, 1),
    ("\n\n", 0, 1), ("You", 0, 0), ("are", 0, 0), ("a", 0, 0), ("helpful", 0, 0), ("assistant", 0, 0), (".", 0, 0),
    ("<|eot_id|>", 0, 1),
    ("<|start_header_id|>", 0, 1), ("user", 0, 0), ("<|end_header_id|>", 0, 1), ("\n\n", 0, 1), ("<video>", 0, 0),
    ("\n", 0, 0), ("What", 0, 0), ("is", 0, 0), ("happening", 0, 0), ("?", 0, 0), ("<|eot_id|>", 0, 1),
    ("<|start_header_id|>", 0, 1), ("assistant", 0, 1), ("<|end_header_id|>", 0, 1), ("\n\n", 0, 1),
    ("A", 1, 1), ("dog", 1, 1), ("runs", 1, 1), (".", 1, 1), ("<|eot_id|>", 1, 1),
    ("<|start_header_id|>", 0, 1), ("user", 0, 0), ("<|end_header_id|>", 0, 1), ("\n\n", 0, 1), ("yes", 0, 0),
    ("?", 0, 0), ("<|eot_id|>", 0, 1),
    ("<|start_header_id|>", 0, 1), ("assistant", 0, 1), ("<|end_header_id|>", 0, 1), ("\n\n", 0, 1),
    ("yes", 1, 1), ("it", 1, 1), ("is", 1, 1), ("<|eot_id|>", 1, 1),
]


@pytest.mark.parametrize("backbone, expected", [("qwen2", CHATML_EXPECTED), ("llama3", LLAMA3_EXPECTED)])
@pytest.mark.parametrize("mode", ["assistant", "reference"])
def test_labels_token_by_token(backbone, expected, mode):
    processor = newline_processor(backbone)
    collator = LongVUDataCollator(processor, label_mode=mode)
    input_ids, labels = collator.tokenize_with_labels(collator.build_messages(normalize_record(TWO_TURNS)))
    tokens = processor.tokenizer.convert_ids_to_tokens(input_ids)
    assert tokens == [token for token, _, _ in expected]
    column = 1 if mode == "assistant" else 2
    expected_labels = [i if flags[column] else IGNORE_INDEX for i, flags in zip(input_ids, expected)]
    assert labels == expected_labels


def processor_id(workspace, token: str) -> int:
    return workspace.processor.tokenizer.convert_tokens_to_ids(token)


def test_model_keeps_the_labels_over_the_expanded_sequence(workspace):
    """The collator labels the text; the model expands each placeholder and labels its visual positions -100."""
    collator = LongVUDataCollator(workspace.processor, media_root=str(workspace.media))
    rows = [normalize_record({"video": "clip_a.mp4", "conversations": conversation("<video>")}),
            normalize_record({"image": "photo.png", "conversations": conversation("<image>", "yes it is")})]
    batch = collator(rows)
    model = make_tiny_model(tokenizer=workspace.processor.tokenizer)
    with torch.no_grad():
        out = model(**batch)
    visual_tokens = [out.compression[0]["num_visual_tokens"], out.image_compression[0]["num_visual_tokens"]]
    for row, placeholder in enumerate([processor_id(workspace, "<video>"), processor_id(workspace, "<image>")]):
        text_ids, text_labels = batch["input_ids"][row], batch["labels"][row]
        expanded_mask = out.attention_mask[row].bool()
        # One placeholder became `visual_tokens[row]` positions, all labelled -100; every other label is kept.
        assert int(expanded_mask.sum()) == int(batch["attention_mask"][row].sum()) - 1 + visual_tokens[row]
        start = int((text_ids == placeholder).nonzero())
        expanded = out.labels[row][expanded_mask]
        assert (expanded[start : start + visual_tokens[row]] == IGNORE_INDEX).all()
        real = batch["attention_mask"][row].bool()
        expected = torch.cat([text_labels[real][:start], text_labels[real][start + 1 :]])
        assert torch.equal(torch.cat([expanded[:start], expanded[start + visual_tokens[row] :]]), expected)
    assert torch.isfinite(out.loss)


# ---------------------------------------------------------------------------------------------------------------------
# Collator: media kinds, batching, skipped samples
# ---------------------------------------------------------------------------------------------------------------------


def test_collator_batches_every_media_kind(workspace):
    records = [
        {"video": "clip_a.mp4", "conversations": conversation("<video>")},  # 3 frames at 1 fps
        {"video": "anim.gif", "conversations": conversation("<video>")},  # every frame: 3
        {"video": "frames", "conversations": conversation("<video>")},  # a folder of 2 frames
        {"video": "clip.npy", "conversations": conversation("<video>", "yes")},  # 2 frames
        {"image": "photo.png", "conversations": conversation("<image>")},
        {"conversations": [{"from": "human", "value": "Describe"}, {"from": "gpt", "value": "a cat sits"}]},
    ]
    collator = LongVUDataCollator(workspace.processor, media_root=str(workspace.media), video_fps=1.0)
    batch = collator([normalize_record(r) for r in records])
    assert batch["video_num_frames"].tolist() == [3, 3, 2, 2]
    assert batch["pixel_values_videos"].shape == (10, 3, 384, 384) and batch["pixel_values_videos"].dtype == torch.uint8
    assert batch["pixel_values_videos_dino"].shape == (10, 3, 378, 378)
    assert batch["video_sizes"].tolist() == [[36, 64], [32, 32], [30, 40], [30, 40]]
    assert batch["pixel_values"].shape == (1, 3, 384, 384) and batch["image_sizes"].tolist() == [[36, 64]]
    tokenizer = workspace.processor.tokenizer
    video_id, image_id = tokenizer.convert_tokens_to_ids(["<video>", "<image>"])
    assert (batch["input_ids"] == video_id).sum(1).tolist() == [1, 1, 1, 1, 0, 0]
    assert (batch["input_ids"] == image_id).sum(1).tolist() == [0, 0, 0, 0, 1, 0]
    # Right padding: pad id, mask 0 and label -100 exactly on the padding.
    lengths = batch["attention_mask"].sum(1)
    for row, length in enumerate(lengths.tolist()):
        assert batch["attention_mask"][row, :length].all() and not batch["attention_mask"][row, length:].any()
        assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
    assert collator.skipped == []


def test_bad_media_is_skipped_and_counted(workspace, caplog):
    collator = LongVUDataCollator(workspace.processor, media_root=str(workspace.media), return_skip_counts=True)
    rows = [normalize_record({"id": sid, "video": path, "conversations": conversation("<video>")})
            for sid, path in [("good", "clip_b.mp4"), ("broken", "corrupt.mp4"), ("gone", "missing.mp4")]]
    with caplog.at_level(logging.WARNING, logger="longvu_hf.training.collator"):
        batch = collator(rows)
    assert batch["input_ids"].shape[0] == 1 and batch["video_num_frames"].tolist() == [2]
    assert int(batch["num_skipped_samples"]) == 2
    assert [entry["sample_id"] for entry in collator.skipped] == ["broken", "gone"]
    assert "corrupt.mp4" in collator.skipped[0]["reason"] and "file not found" in collator.skipped[1]["reason"]
    assert sum("Skipping training sample" in record.message for record in caplog.records) == 2

    # A batch of bad samples only: a placeholder image with nothing to learn, so every process still steps.
    batch = collator(rows[1:])
    assert (batch["labels"] == IGNORE_INDEX).all() and batch["pixel_values"].shape[0] == 1
    assert int(batch["num_skipped_samples"]) == 2
    # ... whose loss is exactly zero and changes no weight.
    model = make_tiny_model(tokenizer=workspace.processor.tokenizer, num_queries=576, highres=False)
    trainer = LongVUTrainer(model=model, args=_cpu_args(workspace.root / "noop"), data_collator=collator)
    inputs = trainer._prepare_inputs(dict(batch))
    loss = trainer.compute_loss(model.train(), inputs)
    loss.backward()
    assert loss.item() == 0.0 and trainer._skipped_local == 2
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())

    # Many failures in a row mean a wrong media_root, not bad files: stop.
    strict = LongVUDataCollator(workspace.processor, media_root="/nonexistent", max_consecutive_skips=3)
    with pytest.raises(RuntimeError, match="media_root"):
        strict(rows[:1] * 3)


def _cpu_args(output_dir):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(output_dir), use_cpu=True, report_to="none", remove_unused_columns=False)


# ---------------------------------------------------------------------------------------------------------------------
# Stage 1, resume, stage 2
# ---------------------------------------------------------------------------------------------------------------------


def test_stage1_model_is_built_from_the_pretrained_parts(stage1_run, workspace):
    before = stage1_run.before
    parts = {
        "model.language_model.": Qwen2ForCausalLM.from_pretrained(workspace.root / "llm").model.state_dict(),
        "model.video_encoder.vision_tower.": SiglipVisionModel.from_pretrained(workspace.root / "siglip").state_dict(),
        "model.video_encoder.dino_tower.": Dinov2Model.from_pretrained(workspace.root / "dino").state_dict(),
    }
    for prefix, weights in parts.items():
        mine = {name[len(prefix):]: tensor for name, tensor in before.items() if name.startswith(prefix)}
        assert mine.keys() == weights.keys() and all(torch.equal(mine[k], weights[k]) for k in weights), prefix
    assert not any(".pos_embeds." in name for name in before)  # 576 queries: 1x1 windows, no position embeddings
    saved = LongVUForConditionalGeneration.from_pretrained(stage1_run.output).config
    assert (saved.num_queries, saved.highres) == (576, False)
    assert saved.video_token_id == workspace.processor.video_token_id


def test_stage1_trains_everything_but_the_towers(stage1_run):
    trainer, before = stage1_run.trainer, stage1_run.before
    history = losses(trainer)
    assert len(history) == 4 and history[-1] < history[0]
    after = trainer.model.state_dict()
    for name, tensor in after.items():
        if name.startswith(TOWERS):
            assert torch.equal(tensor, before[name]), f"frozen tower weight {name} changed"
        else:
            assert not torch.equal(tensor, before[name]), f"trainable weight {name} did not change"
    # Only trainable weights reach the optimizer: the towers carry no optimizer state.
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert optimized and not any(names[i].startswith(TOWERS) for i in optimized)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler) and sampler.lengths == trainer.train_dataset["length"][:]
    # transformers 5.23 renamed the property (the old name warns); 5.18 has only the old one.
    checkpointing = getattr(type(trainer.model), "is_activation_checkpointing", None)
    assert checkpointing_requested(trainer.args) and (
        trainer.model.is_activation_checkpointing if checkpointing is not None else trainer.model.is_gradient_checkpointing
    )
    assert sorted(os.listdir(stage1_run.output)).count("checkpoint-2") == 1


def test_resume_continues_from_the_saved_step(stage1_run, workspace):
    class CountSteps(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    checkpoint = stage1_run.output / "checkpoint-2"
    model_args, data_args, training_args = parse_config(
        stage1_run.config, ["--output_dir", str(workspace.root / "resumed"), "--resume_from_checkpoint", str(checkpoint)]
    )
    from longvu_hf.training.recipe import build_trainer

    trainer = build_trainer(model_args, data_args, training_args)
    counter = CountSteps()
    trainer.add_callback(counter)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert counter.steps == [3, 4]
    # Same data, same optimizer and RNG state: the resumed run ends where the uninterrupted one did.
    resumed, uninterrupted = trainer.model.state_dict(), stage1_run.trainer.model.state_dict()
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=1e-5, atol=1e-6, msg=name)


def test_prepare_stage2_creates_window_position_embeddings(stage1_run, tmp_path):
    stage1 = LongVUForConditionalGeneration.from_pretrained(stage1_run.output).state_dict()
    model = prepare_stage2_model(stage1_run.output, stc_threshold=0.8)
    assert (model.config.num_queries, model.config.highres, model.config.stc_threshold) == (144, True, 0.8)
    state = model.state_dict()
    new = sorted(set(state) - set(stage1))
    assert new == [f"model.video_encoder.vision_aggregator.layers.{i}.pos_embeds.{e}" for i in range(3) for e in range(2)]
    for name in new:
        assert state[name].shape == (4, 32) and torch.isfinite(state[name]).all()
        assert 0.6 < state[name].std().item() < 1.4  # standard normal, like the reference's torch.randn
    assert all(torch.equal(state[name], stage1[name]) for name in stage1)
    again = prepare_stage2_model(stage1_run.output).state_dict()
    assert all(torch.equal(state[name], again[name]) for name in new)  # seeded
    # A 144-query checkpoint cannot be treated as stage 1 for a 576-query model.
    model.save_pretrained(tmp_path / "stage2")
    with pytest.raises(ValueError, match="does not fit a 576-query model"):
        prepare_stage2_model(tmp_path / "stage2", num_queries=576, highres=False)


def test_stage2_on_videos_skips_bad_media_and_the_result_generates(stage1_run, workspace):
    records = [{"id": f"v{i}", "video": "clip_a.mp4", "conversations": conversation("<video>")} for i in range(6)]
    # In order, every batch of 2 keeps one good video: all logged losses are of the same sample.
    records.insert(1, {"id": "broken", "video": "corrupt.mp4", "conversations": conversation("<video>")})
    records.insert(4, {"id": "gone", "video": "missing/clip.mp4", "conversations": conversation("<video>")})
    data = write_json(workspace.root / "videos.jsonl", records, lines=True)
    output = workspace.root / "stage2"
    config = write_config(
        workspace.root / "stage2.json",
        model_name_or_path=str(stage1_run.output),
        from_stage1=True,
        model_config_overrides={"num_queries": 144, "highres": True, "stc_threshold": 0.8},
        data_files=[str(data)],
        media_root=str(workspace.media),
        video_fps=1.0,
        output_dir=str(output),
        num_train_epochs=1,
        train_sampling_strategy="sequential",
        max_missing_media_share=0.2,  # 1 of 8 missing: skipped, not stopped
    )
    stage1 = snapshot(LongVUForConditionalGeneration.from_pretrained(stage1_run.output))
    trainer = train(*parse_config(config))
    assert trainer.skipped_samples == 2 and trainer.state.global_step == 4
    history = losses(trainer)
    assert history[-1] < history[0]
    after = trainer.model.state_dict()
    assert all(torch.equal(after[name], stage1[name]) for name in stage1 if name.startswith(TOWERS))
    assert not torch.equal(after["model.video_encoder.vision_aggregator.layers.0.pos_embeds.0"], prepare_stage2_model(stage1_run.output).state_dict()["model.video_encoder.vision_aggregator.layers.0.pos_embeds.0"])

    model = AutoModelForImageTextToText.from_pretrained(output)
    processor = AutoProcessor.from_pretrained(output)
    assert model.config.num_queries == 144
    messages = [{"role": "user", "content": [{"type": "video", "path": str(workspace.media / "clip_b.mp4")},
                                             {"type": "text", "text": "Describe the video"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


# ---------------------------------------------------------------------------------------------------------------------
# Activation checkpointing
# ---------------------------------------------------------------------------------------------------------------------


def checkpointing_requested(args) -> bool:
    """`activation_checkpointing` (transformers 5.23 on) or `gradient_checkpointing` (before) of TrainingArguments."""
    requested = getattr(args, "activation_checkpointing", None)
    return bool(requested if requested is not None else args.gradient_checkpointing)


def enable_activation_checkpointing(model, use_reentrant: bool) -> None:
    """transformers 5.23 renamed `gradient_checkpointing_enable` (the old name warns); 5.18 has only the old one."""
    kwargs = {"use_reentrant": use_reentrant}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    layers = [m for m in model.modules() if type(m).__name__ == "LongVUAggregatorLayer"]
    assert layers and all(layer.gradient_checkpointing for layer in layers)
    assert all(layer._gradient_checkpointing_func.keywords["use_reentrant"] is use_reentrant for layer in layers)


def checkpointing_batch(workspace) -> dict:
    """A video row (144-query SVA with window position embeddings) and an image row, labelled by the collator."""
    collator = LongVUDataCollator(workspace.processor, media_root=str(workspace.media))
    return collator([normalize_record({"video": "clip_a.mp4", "conversations": conversation("<video>")}),
                     normalize_record({"image": "photo.png", "conversations": conversation("<image>", "yes it is")})])


def trainable_gradients(model, batch) -> dict[str, torch.Tensor]:
    """One training-mode forward with labels and `loss.backward()`; the gradients of every trainable parameter."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    model(**batch).loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    missing = [name for name, grad in grads.items() if grad is None]
    assert not missing, f"trainable parameters without a gradient: {missing[:5]}"
    towers = [(name, p) for name, p in model.named_parameters() if ".vision_tower." in name or ".dino_tower." in name]
    assert towers and all(not p.requires_grad and p.grad is None for _, p in towers), "a frozen tower got a gradient"
    return {name: grad.clone() for name, grad in grads.items()}


def assert_same_gradients(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("use_reentrant", [True, False], ids=["reentrant", "non_reentrant"])
def test_activation_checkpointing_gives_the_same_gradients(workspace, use_reentrant):
    """Checkpointed training (the SVA layers and the decoder layers) gives every trainable parameter (aggregator and
    its window position embeddings, projector, LLM) the gradient it gets without checkpointing. `use_reentrant=True`
    (PEFT's `prepare_model_for_kbit_training` default) once failed in the SVA with "Trying to backward through the
    graph a second time": its layers received the encoder windows in a list, outside the checkpoint's inputs."""
    model = make_tiny_model(tokenizer=workspace.processor.tokenizer)
    freeze_vision_towers(model)
    assert any(".pos_embeds." in name for name, _ in model.named_parameters())
    batch = checkpointing_batch(workspace)
    expected = trainable_gradients(model, batch)
    assert any(name.startswith("model.video_encoder.vision_aggregator.") for name in expected)
    enable_activation_checkpointing(model, use_reentrant)
    assert_same_gradients(trainable_gradients(model, batch), expected)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # PEFT reads it
@pytest.mark.parametrize("use_reentrant", [True, False], ids=["reentrant", "non_reentrant"])
def test_activation_checkpointing_with_peft_kbit_preparation_and_lora(workspace, use_reentrant):
    """QLoRA's preparation on CPU: PEFT's `prepare_model_for_kbit_training` (which, for a float model, only freezes
    everything), the input-gradient hooks and the checkpointing it enables for a quantised one, then LoRA on the LLM
    with the aggregator and the projector trained in full; the gradients match a run without checkpointing."""
    from peft import prepare_model_for_kbit_training

    def build():
        model = prepare_model_for_kbit_training(make_tiny_model(tokenizer=workspace.processor.tokenizer))
        assert not any(p.requires_grad for p in model.parameters())
        model = apply_lora(model, r=4, lora_alpha=8, lora_dropout=0.0)
        for name, param in model.named_parameters():
            if ".lora_B." in name:  # LoRA B starts at zero, which would leave every LoRA A gradient at zero
                torch.nn.init.normal_(param, std=0.02, generator=torch.Generator().manual_seed(len(name)))
        return model

    batch = checkpointing_batch(workspace)
    expected = trainable_gradients(build(), batch)
    assert any(".lora_A." in name for name in expected) and any(".modules_to_save." in name for name in expected)
    model = build()
    # What `prepare_model_for_kbit_training` adds for a quantised model, where `use_reentrant` defaults to True.
    model.enable_input_require_grads()
    enable_activation_checkpointing(model, use_reentrant)
    assert_same_gradients(trainable_gradients(model, batch), expected)


# ---------------------------------------------------------------------------------------------------------------------
# LoRA, QLoRA
# ---------------------------------------------------------------------------------------------------------------------


def test_lora_trains_only_adapters_and_modules_to_save(workspace):
    output = workspace.root / "lora"
    config = write_config(
        workspace.root / "lora.json",
        model_name_or_path=str(workspace.stage1_init),
        data_files=[str(workspace.images)],
        media_root=str(workspace.media),
        output_dir=str(output),
        finetuning="lora",
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        max_steps=3,
    )
    model_args, data_args, training_args = parse_config(config)
    from longvu_hf.training.recipe import build_model

    model = build_model(model_args)
    before = snapshot(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or ".modules_to_save." in n for n in trainable)
    assert any("language_model" in n and ".lora_A." in n for n in trainable)
    assert not any(".lora_" in n and "language_model" not in n for n in trainable)  # regex scoped to the LLM
    assert {n.split(".modules_to_save.")[0] for n in trainable if ".modules_to_save." in n} == {
        "base_model.model.model.video_encoder.vision_aggregator", "base_model.model.model.video_encoder.multi_modal_projector"}

    from longvu_hf.training.recipe import build_trainer

    trainer = build_trainer(model_args, data_args, training_args, model=model)
    trainer.train()
    trainer.save_model(output)
    after = trainer.model.state_dict()
    changed = {name for name in after if not torch.equal(after[name], before[name])}
    assert changed and all(".lora_" in n or ".modules_to_save." in n for n in changed)
    assert any(".lora_B." in n for n in changed)  # LoRA B starts at zero: it moved
    card = ModelCard.load(output / "README.md").data
    assert (card.library_name, card.pipeline_tag) == ("peft", "any-to-any") and "longvu" in card.tags
    assert card.base_model is None  # the base is a local folder here, not a Hub id

    # Inference: the adapter on top of its base, merged, gives the trained model's logits.
    merged = load_trained_model(output)
    assert isinstance(merged, LongVUForConditionalGeneration)
    image = workspace.processor.video_processor.preprocess_images(Image.open(workspace.media / "photo.png"), return_tensors="pt")
    ids = workspace.processor.tokenizer("<image> Describe the image", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = trainer.model.eval()(input_ids=ids, **image).logits
        torch.testing.assert_close(merged.eval()(input_ids=ids, **image).logits, expected, rtol=1e-4, atol=1e-4)
    assert merged.generate(input_ids=ids, **image, max_new_tokens=2).shape[1] > ids.shape[1]
    adapter = AutoModelForImageTextToText.from_pretrained(output)  # transformers' own PEFT integration
    with torch.no_grad():
        torch.testing.assert_close(adapter(input_ids=ids, **image).logits, expected, rtol=1e-4, atol=1e-4)
    from longvu_hf.training.recipe import save_merged_model

    save_merged_model(str(output), str(output / "merged"), torch.float32)
    reloaded = AutoModelForImageTextToText.from_pretrained(output / "merged")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, **image).logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_qlora_stops_clearly_without_a_gpu(workspace, tmp_path, capsys):
    with pytest.raises(RuntimeError, match="QLoRA needs a CUDA GPU"):
        qlora_quantization_config()
    spec = importlib.util.spec_from_file_location("longvu_example_train", REPO / "examples" / "train.py")
    train_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_script)
    config = write_config(tmp_path / "qlora.json", model_name_or_path=str(workspace.stage1_init),
                          data_files=[str(workspace.images)], output_dir=str(tmp_path / "out"), finetuning="qlora")
    with pytest.raises(SystemExit) as stopped:
        train_script.main([str(config)])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("train.py: error: QLoRA needs a CUDA GPU")


# ---------------------------------------------------------------------------------------------------------------------
# Configs and distributed
# ---------------------------------------------------------------------------------------------------------------------


def test_example_configs_and_global_batch(tmp_path):
    stage1 = parse_config(REPO / "examples/configs/stage1_image.yaml", ["--use_cpu", "true"])
    stage2 = parse_config(REPO / "examples/configs/stage2_video.yaml", ["--use_cpu", "true"])
    (m1, d1, t1), (m2, d2, t2) = stage1, stage2
    assert (m1.model_config_overrides["num_queries"], t1.learning_rate, d1.global_batch_size) == (576, 1e-5, 256)
    assert (m2.model_config_overrides["num_queries"], t2.learning_rate, d2.global_batch_size) == (144, 5e-6, 64)
    assert m2.from_stage1 and d2.video_fps == 1.0
    for args in (t1, t2):
        assert (args.lr_scheduler_type, args.warmup_steps, args.num_train_epochs, args.bf16) == ("cosine", 0.03, 1, True)
        assert checkpointing_requested(args) and args.train_sampling_strategy == "group_by_length"
    apply_global_batch_size(t1, d1.global_batch_size)  # one process here: 256 / (1 x 4)
    assert t1.gradient_accumulation_steps == 64
    with pytest.raises(ValueError, match="not a multiple"):
        apply_global_batch_size(t1, 250)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['lerning_rate'\]"):
        parse_config(write_config(tmp_path / "typo.json", model_name_or_path="m", data_files=["d"], lerning_rate=1.0))


def test_accelerate_configs():
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file

    fsdp = load_config_from_file(str(REPO / "examples/accelerate/fsdp.yaml"))
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Qwen2DecoderLayer"
    assert fsdp.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD" and fsdp.fsdp_config["fsdp_use_orig_params"]
    assert load_config_from_file(str(REPO / "examples/accelerate/fsdp_multinode.yaml")).num_machines == 8
    zero3 = load_config_from_file(str(REPO / "examples/accelerate/deepspeed_zero3_multinode.yaml"))
    assert zero3.num_processes == 64 and zero3.deepspeed_config["zero3_init_flag"]
    ds = json.loads((REPO / "examples/accelerate/deepspeed_zero3.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3
    assert yaml.safe_load((REPO / "examples/accelerate/cpu_2proc.yaml").read_text())["num_processes"] == 2


@pytest.mark.heavy
def test_two_process_ddp_run_with_accelerate_launch(workspace):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    output = workspace.root / "ddp"
    config = write_config(
        workspace.root / "ddp.json",
        model_name_or_path=str(workspace.stage1_init),
        data_files=[str(workspace.images)],
        media_root=str(workspace.media),
        output_dir=str(output),
        per_device_train_batch_size=1,
        max_steps=2,
    )
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "examples/accelerate/cpu_2proc.yaml"), "--main_process_port", str(port),
               str(REPO / "examples/train.py"), str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    # 2 steps x 2 processes x 1 sample over 8 samples: half an epoch, so both processes took part.
    assert "'epoch': '0.5'" in result.stdout + result.stderr
    assert (output / "model.safetensors").is_file()
    assert LongVUForConditionalGeneration.from_pretrained(output).config.num_queries == 576


def _run_train_py(config: Path, *options: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(REPO / "examples/train.py"), str(config), *options],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--media_root", "nowhere"], "media_root nowhere: no such folder"),
        (["--model_name_or_path", "checkpoints/LongVU_missing"],
         "model_name_or_path checkpoints/LongVU_missing: no such local folder, and HF_HUB_OFFLINE is set"),
        (["--model_name_or_path", "./LongVU_missing"], "no such folder"),
    ],
    ids=["media-root", "checkpoint-folder", "relative-checkpoint"],
)
def test_train_py_bad_paths_are_one_line(workspace, options, expected):
    output = workspace.root / "never_written"
    config = write_config(workspace.root / "bad_paths.json", model_name_or_path=str(workspace.stage1_init),
                          data_files=[str(workspace.images)], media_root=str(workspace.media),
                          output_dir=str(output), max_steps=1)
    result = _run_train_py(config, *options)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("train.py: error:") and expected in lines[-1], lines
    assert not any("Traceback" in line or "huggingface.co" in line for line in lines)
    assert not output.exists()


def test_missing_media_stops_before_training(workspace, tmp_path):
    records = [{"id": f"m{i}", "image": f"missing_{i}.png", "conversations": conversation("<image>")} for i in range(7)]
    records.append({"id": "ok", "image": "photo.png", "conversations": conversation("<image>")})
    data = write_json(tmp_path / "mostly_missing.json", records)
    output = tmp_path / "never_written"
    config = write_config(tmp_path / "missing_media.json", model_name_or_path=str(workspace.stage1_init),
                          data_files=[str(data)], media_root=str(workspace.media), output_dir=str(output), max_steps=1)
    result = _run_train_py(config)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "7 of 8 training samples name media files that do not exist" in result.stderr.strip().splitlines()[-1]
    assert not output.exists()
    # Under the stated share, the run goes on (the collator skips the few missing ones).
    model_args, data_args, training_args = parse_config(config, ["--max_missing_media_share", "0.9"])
    from longvu_hf.training.recipe import build_trainer

    assert build_trainer(model_args, data_args, training_args).train_dataset.num_rows == 8


@pytest.fixture(scope="module")
def train_script():
    """examples/train.py as a module: its `main` runs in this process (no interpreter start-up per case)."""
    spec = importlib.util.spec_from_file_location("longvu_example_train_main", REPO / "examples" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stops_with_one_line(train_script, capsys, argv: list[str]) -> str:
    """`train.py ARGV` exits with status 2 and one `train.py: error:` line, no traceback; returns that line."""
    with pytest.raises(SystemExit) as stopped:
        train_script.main([str(arg) for arg in argv])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and "DatasetGenerationError" not in err, err[-2000:]
    assert lines[-1].startswith("train.py: error: "), lines
    return lines[-1]


MALFORMED_DATA = {
    # name: (file name, content, what the line says)
    "truncated-json": ("cut.json", '[{"id": "a", "conversations": [', "cut.json: not valid JSON"),
    "bad-jsonl-line": ("bad.jsonl", json.dumps({"id": "a", "conversations": conversation("")}) + "\n{oops\n",
                       "bad.jsonl, line 2: not valid JSON"),
    "empty-file": ("empty.json", "", "empty.json: not valid JSON"),
    "no-records": ("none.json", "[]", "none.json holds no records"),
    "not-utf8": ("latin.jsonl", b"\xff\xfe{}\n", "latin.jsonl: not UTF-8"),
}


@pytest.mark.parametrize("case", list(MALFORMED_DATA))
def test_malformed_data_files_are_one_line(workspace, train_script, capsys, tmp_path, case):
    name, content, expected = MALFORMED_DATA[case]
    data = tmp_path / name
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    output = tmp_path / "never_written"
    config = write_config(tmp_path / "run.json", model_name_or_path=str(workspace.stage1_init), data_files=[str(data)],
                          media_root=str(workspace.media), output_dir=str(output), max_steps=1,
                          dataset_cache_dir=str(tmp_path / "cache"))
    line = _stops_with_one_line(train_script, capsys, [config])
    assert expected in line and str(tmp_path) in line, line
    assert not output.exists()


BAD_CONFIGS = {
    "yaml-syntax": ("model_name_or_path: m\ndata_files: [d.json\n", "not valid YAML at line 3"),
    "wrong-type": ("model_name_or_path: m\ndata_files: 5\n", "option data_files must be list[str] | None, got 5 (int)"),
    "path-a-list": ("model_name_or_path: [m]\ndata_files: [d.json]\n", "option model_name_or_path must be str | None"),
    "not-a-number": ("model_name_or_path: m\ndata_files: [d.json]\nlearning_rate: fast\n",
                     "invalid float value: 'fast'"),
    "overrides-not-json": ("model_name_or_path: m\ndata_files: [d.json]\nmodel_config_overrides: '{num_queries'\n",
                           "model_config_overrides is not a valid JSON object"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_configs_are_one_line(train_script, capsys, tmp_path, case):
    text, expected = BAD_CONFIGS[case]
    config = tmp_path / "run.yaml"
    config.write_text(text)
    assert expected in _stops_with_one_line(train_script, capsys, [config, "--output_dir", tmp_path / "out"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["all-too-long", "all-media-broken"])
def test_a_run_with_nothing_to_train_on_stops_before_training(workspace, train_script, capsys, tmp_path, case):
    if case == "all-too-long":
        records = [{"id": f"l{i}", "image": "photo.png", "conversations": conversation("<image>")} for i in range(4)]
        options, expected = ["--max_length", "5"], "none of the 4 training samples can be trained on: 4 too long"
    else:
        records = [{"id": f"b{i}", "video": "corrupt.mp4", "conversations": conversation("<video>")} for i in range(3)]
        options, expected = [], "none of the 3 training samples can be trained on: 3 media"
    data = write_json(tmp_path / "data.json", records)
    output = tmp_path / "never_written"
    config = write_config(tmp_path / "run.json", model_name_or_path=str(workspace.stage1_init), data_files=[str(data)],
                          media_root=str(workspace.media), output_dir=str(output), max_steps=1)
    assert expected in _stops_with_one_line(train_script, capsys, [config, *options])
    assert not output.exists()


def test_an_output_dir_holding_a_model_is_refused_unless_overwrite(workspace, train_script, capsys, tmp_path):
    import shutil

    start = tmp_path / "start"
    shutil.copytree(workspace.stage1_init, start)
    weights = start / "model.safetensors"
    before = weights.read_bytes()
    config = write_config(tmp_path / "run.json", model_name_or_path=str(start), data_files=[str(workspace.images)],
                          media_root=str(workspace.media), output_dir=str(start), max_steps=1)
    line = _stops_with_one_line(train_script, capsys, [config])
    assert "is the folder of model_name_or_path" in line and "--overwrite" in line
    earlier = tmp_path / "earlier_run"
    earlier.mkdir()
    (earlier / "model.safetensors").write_bytes(b"a model")
    line = _stops_with_one_line(train_script, capsys, [config, "--output_dir", earlier])
    assert "already holds a saved model" in line and "model.safetensors" in line
    assert (earlier / "model.safetensors").read_bytes() == b"a model" and weights.read_bytes() == before
    # A folder of checkpoints only (an interrupted run) is not a saved model: resuming into it stays possible.
    (earlier / "model.safetensors").unlink()
    (earlier / "checkpoint-2").mkdir()
    (earlier / "checkpoint-2" / "model.safetensors").write_bytes(b"a checkpoint")
    from longvu_hf.training.recipe import check_output_dir

    check_output_dir(*[parse_config(config, ["--output_dir", str(earlier)])[i] for i in (0, 2)])
    # Asked for explicitly: the run trains into its own starting folder and replaces the weights.
    train_script.main([str(config), "--overwrite"])
    assert weights.read_bytes() != before
    LongVUForConditionalGeneration.from_pretrained(start)
