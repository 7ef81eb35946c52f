"""LongVUProcessor: chat templates of both backbones, one placeholder per video/image, batches, save/load, the
any-to-any pipeline end to end."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_tokenizer, make_video
from PIL import Image

import longvu_hf  # noqa: F401  (registers the Auto classes)
from longvu_hf.processing import LongVUProcessor, LongVUVideoProcessor
from longvu_hf.processing.processing_longvu import get_chat_template

QUESTION = "What is happening in this video?"
QWEN_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<video>\n"
    f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
)
LLAMA3_PROMPT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
    f"<|start_header_id|>user<|end_header_id|>\n\n<video>\n{QUESTION}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def video_message(video=None, text=QUESTION, key="path"):
    block = {"type": "video"} if video is None else {"type": "video", key: video}
    return [{"role": "user", "content": [block, {"type": "text", "text": text}]}]


@pytest.fixture
def processor(tiny_tokenizer):
    return LongVUProcessor(tiny_tokenizer, LongVUVideoProcessor())


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {
        "short": make_video(folder / "short.mp4", fps=8, num_frames=24, width=64, height=36),  # 3 frames at 1 fps
        "long": make_video(folder / "long.mp4", fps=29.97, num_frames=150, width=36, height=64),  # 5 frames
    }


# ------------------------------------------------------------------------------------------------------------------
# Chat templates
# ------------------------------------------------------------------------------------------------------------------


def test_qwen2_template_renders_the_reference_prompt(processor):
    assert processor.apply_chat_template(video_message(), add_generation_prompt=True) == QWEN_PROMPT
    # the placeholder comes first, whatever the block order, as in the reference's "<image>\n" + question
    reordered = [{"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "video"}]}]
    assert processor.apply_chat_template(reordered, add_generation_prompt=True) == QWEN_PROMPT
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A square."},
        {"role": "user", "content": "And now?"},
    ]
    assert processor.apply_chat_template(conversation, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n"
        "<|im_start|>assistant\nA square.<|im_end|>\n<|im_start|>user\nAnd now?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_llama3_template_renders_the_training_prompt(processor):
    rendered = processor.apply_chat_template(
        video_message(), chat_template=LongVUProcessor.LLAMA3_CHAT_TEMPLATE, add_generation_prompt=True
    )
    assert rendered == LLAMA3_PROMPT
    with_answer = processor.apply_chat_template(
        video_message(text=f"{QUESTION}  \n") + [{"role": "assistant", "content": " A square. "}],
        chat_template=LongVUProcessor.LLAMA3_CHAT_TEMPLATE,
    )
    assert with_answer == LLAMA3_PROMPT + "A square.<|eot_id|>"  # contents are trimmed, as in training


def test_chat_template_helpers(processor):
    # Each helper renders its backbone's reference prompt (not just "equals itself").
    for template, expected in ((LongVUProcessor.QWEN_CHAT_TEMPLATE, QWEN_PROMPT),
                               (LongVUProcessor.get_chat_template("llama3"), LLAMA3_PROMPT)):
        assert processor.apply_chat_template(video_message(), chat_template=template, add_generation_prompt=True) \
            == expected
    custom = get_chat_template("qwen2", video_token="<|video_pad|>", image_token="<|image_pad|>",
                               system_prompt="Be brief.")
    rendered = processor.apply_chat_template(video_message(), chat_template=custom, add_generation_prompt=True)
    assert rendered == QWEN_PROMPT.replace("<video>", "<|video_pad|>").replace("You are a helpful assistant.",
                                                                              "Be brief.")
    with pytest.raises(ValueError, match="backbone"):
        get_chat_template("mistral")


def test_default_template_follows_the_tokenizer(tiny_tokenizer):
    assert LongVUProcessor(tiny_tokenizer).chat_template == get_chat_template("qwen2")
    llama_tokenizer = make_tiny_tokenizer()
    llama_tokenizer.bos_token = "<|begin_of_text|>"
    assert LongVUProcessor(llama_tokenizer).chat_template == get_chat_template("llama3")


def test_assistant_tokens_mask(processor):
    out = processor.apply_chat_template(
        [{"role": "user", "content": "What is this?"}, {"role": "assistant", "content": "red square"}],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    learned = processor.tokenizer.decode([token for token, keep in zip(ids, mask) if keep])
    assert learned == "red square <|im_end|>"  # the answer and its end token, nothing of the prompt


# ------------------------------------------------------------------------------------------------------------------
# Placeholders
# ------------------------------------------------------------------------------------------------------------------


def test_placeholder_tokens_come_from_the_tokenizer():
    tokenizer = make_tiny_tokenizer(video_token="<|video_pad|>", image_token="<|image_pad|>")
    processor = LongVUProcessor(tokenizer)
    assert (processor.video_token, processor.image_token) == ("<|video_pad|>", "<|image_pad|>")
    assert processor.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert "'<|video_pad|>'" in processor.chat_template


def test_missing_placeholders_are_added_as_special_tokens():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "hello": 2, "video": 3}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")
    processor = LongVUProcessor(tokenizer, video_token="<vid>")
    assert processor.video_token == "<vid>" and processor.image_token == "<image>"
    assert {"<vid>", "<image>"} <= set(tokenizer.all_special_tokens)
    ids = tokenizer("hello <vid> video <image>")["input_ids"]
    assert processor.video_token_id in ids and processor.image_token_id in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hello video"


def test_one_placeholder_per_video(processor, clips):
    out = processor(text=f"<video>\n{QUESTION}", videos=str(clips["long"]), return_tensors="pt")
    assert (out["input_ids"] == processor.video_token_id).sum() == 1
    assert out["video_num_frames"].tolist() == [5]
    with_metadata = processor(text="<video>", videos=str(clips["long"]), return_metadata=True)
    assert with_metadata["video_metadata"][0].frames_indices == [0, 30, 60, 90, 120]
    assert with_metadata["video_metadata"][0].timestamps == pytest.approx([0.0, 1.001, 2.002, 3.003, 4.004])
    assert set(out.keys()) == {
        "input_ids", "attention_mask", "pixel_values_videos", "pixel_values_videos_dino", "video_num_frames",
        "video_sizes",
    }


@pytest.mark.parametrize(
    "text,num_videos",
    [("<video><video> two placeholders", 1), ("<video> one placeholder", 2), ("no placeholder", 1)],
)
def test_placeholder_count_must_match_videos(processor, clips, text, num_videos):
    with pytest.raises(ValueError, match="video"):
        processor(text=text, videos=[str(clips["short"])] * num_videos)


def test_empty_media_lists_mean_none(processor, clips):
    out = processor(text="<video> what?", videos=[str(clips["short"])], images=[])
    assert "pixel_values" not in out and out["video_num_frames"].tolist() == [3]
    out = processor(text=["what?"], images=[[]], videos=[[]])
    assert set(out.keys()) == {"input_ids", "attention_mask"}


def test_placeholder_without_video(processor):
    with pytest.raises(ValueError, match="no videos were passed"):
        processor(text="<video> where is the video?")
    with pytest.raises(ValueError, match="no images were passed"):
        processor(text="<image> where is the image?")


# ------------------------------------------------------------------------------------------------------------------
# Processing
# ------------------------------------------------------------------------------------------------------------------


def test_batch_of_two_videos_of_different_lengths_left_padded(processor, clips):
    assert processor.tokenizer.padding_side == "left"
    texts = [
        processor.apply_chat_template(video_message(), add_generation_prompt=True),
        processor.apply_chat_template(video_message(text="Describe it"), add_generation_prompt=True),
    ]
    out = processor(text=texts, videos=[str(clips["long"]), str(clips["short"])], padding=True, return_tensors="pt")
    assert out["video_num_frames"].tolist() == [5, 3]
    assert out["pixel_values_videos"].shape == (8, 3, 384, 384)
    assert out["pixel_values_videos_dino"].shape == (8, 3, 378, 378)
    assert out["video_sizes"].tolist() == [[64, 36], [36, 64]]
    assert (out["input_ids"] == processor.video_token_id).sum(dim=1).tolist() == [1, 1]
    mask = out["attention_mask"]
    shorter = int(mask.sum(dim=1).argmin())
    assert mask[shorter, 0] == 0 and mask[shorter, -1] == 1  # padded on the left
    assert (out["input_ids"][shorter][mask[shorter] == 0] == processor.tokenizer.pad_token_id).all()
    # the same frames as one by one
    alone = processor(text=texts[1], videos=str(clips["short"]), return_tensors="pt")
    assert torch.equal(out["pixel_values_videos"][5:], alone["pixel_values_videos"])


@pytest.mark.parametrize("padding_side", [None, "right"])
def test_padding_side(clips, padding_side):
    processor = LongVUProcessor(make_tiny_tokenizer(padding_side=padding_side))
    out = processor(text=["<video> a", "<video> a b c"], videos=[str(clips["short"])] * 2, padding=True)
    first_row = out["attention_mask"][0]
    if padding_side is None:  # the processor's default: left, for generation
        assert first_row[0] == 0 and first_row[-1] == 1
    else:  # a tokenizer configured for the right keeps it
        assert first_row[0] == 1 and first_row[-1] == 0
    forced = processor(
        text=["<video> a", "<video> a b c"], videos=[str(clips["short"])] * 2, padding=True, padding_side="left"
    )
    assert forced["attention_mask"][0][0] == 0


@pytest.mark.parametrize("key", ["path", "url", "video"])
def test_apply_chat_template_with_video_blocks(processor, clips, key):
    video = str(clips["long"])
    out = processor.apply_chat_template(
        video_message(video, key=key),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"fps": 2, "max_frames": 4},
    )
    assert out["video_num_frames"].tolist() == [4]
    assert out["pixel_values_videos"].dtype == torch.uint8
    expected_ids = processor.tokenizer(QWEN_PROMPT, return_tensors="pt")["input_ids"]
    assert torch.equal(out["input_ids"], expected_ids)


def test_apply_chat_template_with_decoded_frames(processor):
    frames = np.random.default_rng(0).integers(0, 256, size=(6, 36, 64, 3), dtype=np.uint8)
    out = processor.apply_chat_template(
        video_message(frames, key="video"), add_generation_prompt=True, tokenize=True, return_dict=True,
        return_tensors="pt", processor_kwargs={"max_frames": 3},
    )
    assert out["video_num_frames"].tolist() == [3]


def test_images(processor):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(30, 40, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]}]
    out = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert out["pixel_values"].shape == (1, 3, 384, 384) and out["pixel_values"].dtype == torch.uint8
    assert out["pixel_values_dino"].shape == (1, 3, 378, 378)
    assert out["image_sizes"].tolist() == [[30, 40]]
    assert (out["input_ids"] == processor.image_token_id).sum() == 1
    assert "pixel_values" in processor.model_input_names and "video_num_frames" in processor.model_input_names


def test_post_process_image_text_to_text(processor):
    tokenizer = processor.tokenizer
    prompt = tokenizer("<|im_start|>user <video> What is this ?<|im_end|>", return_tensors="pt")["input_ids"]
    video_id = processor.video_token_id
    # generate() returns the prompt with the placeholder expanded, then the answer
    expanded = torch.cat([prompt[:, :2], torch.full((1, 5), video_id), prompt[:, 3:]], dim=1)
    answer = tokenizer("red square<|im_end|>", return_tensors="pt")["input_ids"]
    generated = torch.cat([expanded, answer], dim=1)
    assert processor.post_process_image_text_to_text(generated) == ["user What is this ? red square"]
    assert processor.post_process_image_text_to_text(generated, prompt_input_ids=prompt) == [" red square"]
    assert processor.post_process_image_text_to_text(answer[0]) == ["red square"]
    assert processor.post_process_image_text_to_text(answer, skip_special_tokens=False) == ["red square <|im_end|>"]


# ------------------------------------------------------------------------------------------------------------------
# Save / load
# ------------------------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path, clips):
    from transformers import AutoProcessor, AutoVideoProcessor

    tokenizer = make_tiny_tokenizer(video_token="<|video_pad|>")
    processor = LongVUProcessor(tokenizer, LongVUVideoProcessor(max_frames=64), image_token="<image>")
    processor.save_pretrained(tmp_path)
    assert {"processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {
        path.name for path in Path(tmp_path).iterdir()
    }
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, LongVUProcessor)
    assert isinstance(reloaded.video_processor, LongVUVideoProcessor)
    assert isinstance(AutoVideoProcessor.from_pretrained(tmp_path), LongVUVideoProcessor)
    assert reloaded.video_processor.max_frames == 64
    assert (reloaded.video_token, reloaded.image_token) == ("<|video_pad|>", "<image>")
    assert reloaded.video_token_id == processor.video_token_id
    assert reloaded.chat_template == processor.chat_template
    messages = video_message(str(clips["short"]))
    kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    before, after = processor.apply_chat_template(messages, **kwargs), reloaded.apply_chat_template(messages, **kwargs)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


# ------------------------------------------------------------------------------------------------------------------
# Pipeline
# ------------------------------------------------------------------------------------------------------------------


def test_any_to_any_pipeline_end_to_end(tiny_tokenizer, clips):
    if not (Path(__file__).parent / "tiny_model.py").exists():
        pytest.skip("tests/tiny_model.py (the tiny LongVU model) is not there yet")
    from tiny_model import make_tiny_model
    from transformers import pipeline

    processor = LongVUProcessor(tiny_tokenizer)
    model = make_tiny_model(tokenizer=tiny_tokenizer)
    answerer = pipeline("any-to-any", model=model, processor=processor)
    messages = video_message(str(clips["short"]))
    result = answerer(text=messages, max_new_tokens=4, return_full_text=False, generate_kwargs={"do_sample": False})
    answer = result[0]["generated_text"]
    assert isinstance(answer, str) and answer.strip()
    assert "<video>" not in answer and "system" not in answer  # only the new text

    # the same answer as processor + generate by hand
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    by_hand = processor.post_process_image_text_to_text(generated, prompt_input_ids=inputs["input_ids"])[0]
    assert by_hand == answer
