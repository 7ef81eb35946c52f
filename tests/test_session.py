"""The library layer every front end stands on: `longvu_hf.session.VideoSession` (a video streamed into the towers
once, then asked many questions) and `plan_budget` (the one budget check), on the tiny random model."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from longvu_hf import LongVUProcessor, LongVUVideoProcessor
from longvu_hf.media_inputs import InputPolicy, InputRefused
from longvu_hf.session import (
    DECODING,
    DINO,
    SIGLIP,
    BudgetError,
    VideoReadError,
    VideoSession,
    plan_budget,
    tower_progress,
)
from longvu_hf.tiny import tiny_model, tiny_tokenizer, write_scene_clip

QUESTION = "What is happening in this video ?"
FOLLOW_UP = "Describe the main events"
FPS = 8.0  # 48 frames of the clip: DINOv2 selection drops repeats, and the context of 400 forces mixing or STC
FRAMES = 48


@pytest.fixture(scope="module")
def loaded():
    tokenizer = tiny_tokenizer()
    return tiny_model(tokenizer, max_context_length=400), LongVUProcessor(tokenizer, LongVUVideoProcessor())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    # 6 s at 8 fps of coloured scenes, with repeats for DINOv2 selection to drop.
    return write_scene_clip(tmp_path_factory.mktemp("session") / "clip.mp4", seconds=6, fps=8, width=64, height=36)


def one_shot_generate(model, processor, clip, messages, **settings):
    """`generate` on the processor's one-shot inputs (every frame decoded at once): the reference."""
    messages[0]["content"][0]["path"] = str(clip)
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt", processor_kwargs={"fps": FPS})
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=5, do_sample=False, return_dict_in_generate=True, **settings)
    answer = processor.decode(output.sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    return answer, output.compression[0]


def test_the_towers_run_once_and_answers_equal_generate(loaded, clip, monkeypatch):
    model, processor = loaded
    tower_frames, streams = [], []
    encode = model.encode_video_stream
    monkeypatch.setattr(model, "encode_video_stream", lambda *a, **k: streams.append(1) or encode(*a, **k))
    # Hooks on both towers for the whole test: frames entering DINOv2 or SigLIP, whoever calls them.
    with tower_progress(model, lambda stage, count, total: tower_frames.append((stage, count)), None):
        session = VideoSession.open(model, processor, str(clip), fps=FPS)
        encoded = list(tower_frames)
        first = session.ask(QUESTION, max_new_tokens=5)
        second = session.ask(FOLLOW_UP, history=[(QUESTION, first.text)], max_new_tokens=5)
    assert streams == [1] and tower_frames == encoded  # no tower ran for the questions
    assert sum(count for stage, count in encoded if stage == DINO) >= FRAMES
    assert {DINO, SIGLIP} <= {stage for stage, _ in encoded}
    assert session.info.num_frames == FRAMES and session.info.frame_times[:3] == [0.0, 0.125, 0.25]

    user = {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}
    expected, report = one_shot_generate(model, processor, clip, [user])
    assert (first.text, first.compression) == (expected, report) and first.text
    assert first.compression.frame_selection_ran and first.compression.path in ("mix", "stc")
    assert first.budget.prompt_tokens + first.budget.context_margin + first.budget.visual_budget == 400
    history = [user, {"role": "assistant", "content": [{"type": "text", "text": first.text}]},
               {"role": "user", "content": [{"type": "text", "text": FOLLOW_UP}]}]
    assert (second.text, second.compression) == one_shot_generate(model, processor, clip, history)
    assert second.budget.prompt_tokens > first.budget.prompt_tokens  # the history takes room from the video


def test_per_call_settings_compress_and_thumbnails(loaded, clip):
    model, processor = loaded
    session = VideoSession.open(model, processor, str(clip), fps=FPS, keep_thumbnails=True)
    capped = session.ask(QUESTION, compression_settings={"max_visual_tokens": 100}, max_new_tokens=3)
    assert capped.budget.visual_budget == capped.compression.budget == 100 >= capped.compression.num_visual_tokens
    report, budget = session.compress(QUESTION, compression_settings={"max_visual_tokens": 100})
    assert report == capped.compression and budget == capped.budget
    expected = one_shot_generate(model, processor, clip, [{"role": "user", "content": [
        {"type": "video"}, {"type": "text", "text": QUESTION}]}], compression_settings={"max_visual_tokens": 100})[1]
    assert report == expected
    assert sorted(session.info.thumbnails) == list(range(FRAMES))
    images = session.info.thumbnail_images(report.kept_frame_indices)
    assert set(images) == set(report.kept_frame_indices) and all(image.height == 90 for image in images.values())
    assert Image.open(io.BytesIO(session.info.thumbnails[0])).format == "JPEG"


def test_progress_reports_every_stage_and_its_exceptions_stop_the_work(loaded, clip):
    model, processor = loaded
    events = []
    VideoSession.open(model, processor, str(clip), fps=FPS, progress=lambda *event: events.append(event))
    counts = {stage: sum(count for s, count, _ in events if s == stage) for stage in (DECODING, DINO, SIGLIP)}
    assert counts[DECODING] == FRAMES and counts[DINO] >= FRAMES and 0 < counts[SIGLIP] <= FRAMES
    assert {total for stage, _, total in events if stage == DECODING} == {FRAMES}

    class Deadline(ValueError):  # as the web page's: a ValueError that must not read as "cannot be read"
        pass

    def too_late(stage, count, total):
        raise Deadline(stage)

    with pytest.raises(Deadline, match=DECODING):  # the caller's own exception, not a "cannot be read"
        VideoSession.open(model, processor, str(clip), fps=FPS, progress=too_late)


def test_errors_name_the_input(loaded, clip, tmp_path):
    model, processor = loaded
    with pytest.raises(FileNotFoundError, match=r"^video nowhere\.mp4: no such file"):
        VideoSession.open(model, processor, "nowhere.mp4")
    broken = clip.read_bytes()[:2000]  # the container's header, then nothing
    with pytest.raises((VideoReadError, InputRefused), match="holiday.mp4") as refused:
        VideoSession.open(model, processor, broken, display_name="holiday.mp4", work_dir=tmp_path)
    assert str(tmp_path) not in str(refused.value) and "\n" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []  # the bytes' temporary file is gone
    with pytest.raises(InputRefused, match="48 frames to decode"):  # the caller's policy bounds the decoding
        VideoSession.open(model, processor, str(clip), fps=FPS, policy=InputPolicy.local_user(max_frames=5))
    session = VideoSession.open(model, processor, str(clip), fps=FPS, max_frames=4)
    assert session.info.num_frames == 4  # a frame cap counts in the bounds and in the sampling


def test_plan_budget_is_the_one_check(loaded, clip):
    model, processor = loaded
    budget = plan_budget(model.config, 30)
    assert budget.visual_budget == 400 - 30 - 16 and budget.to_dict()["prompt_tokens"] == 30
    with pytest.raises(BudgetError) as refused:
        plan_budget(model.config, 30, {"max_context_length": 40})
    assert refused.value.no_room and refused.value.minimum == 47
    assert "raise --max-context-length to at least 47" in refused.value.describe(lambda name: "--" + name.replace(
        "_", "-"))
    with pytest.raises(BudgetError, match="^context_margin -1: must be 0 or more$"):
        plan_budget(model.config, 0, {"context_margin": -1})
    with pytest.raises(BudgetError, match="^max_visual_tokens 0: must be at least 1$"):  # refused before decoding
        VideoSession.open(model, processor, "nowhere.mp4", compression_settings={"max_visual_tokens": 0})
    session = VideoSession.open(model, processor, str(clip), num_frames=3)
    with pytest.raises(BudgetError, match="leaves no room for the video"):
        session.ask(QUESTION, compression_settings={"max_context_length": 20})
    assert model.config.max_context_length == 400  # per call: the config is never changed
