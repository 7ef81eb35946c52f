"""`forward` and `generate` with per-call settings, several videos, batches, beams, several return sequences, and
continuation from a returned cache: each test fails on a plausible one-line bug in that path (a mutation run found
none that did)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from longvu_hf.transformers_compat import CACHE_NAME, cache_of

from tiny_model import TINY_IMAGE_TOKEN_ID as I, TINY_VIDEO_TOKEN_ID as V, make_tiny_model, random_video_inputs

GREEDY = {"do_sample": False, "max_new_tokens": 3, "min_new_tokens": 3}


@pytest.fixture(scope="module")
def model():
    return make_tiny_model()


def videos(*specs) -> dict:
    """Pixel inputs for several videos: `specs` are (frames, seed) pairs."""
    parts = [random_video_inputs(frames, seed=seed) for frames, seed in specs]
    return {
        "pixel_values_videos": torch.cat([p["pixel_values_videos"] for p in parts]),
        "pixel_values_videos_dino": torch.cat([p["pixel_values_videos_dino"] for p in parts]),
        "video_num_frames": torch.tensor([frames for frames, _ in specs]),
        "video_sizes": torch.cat([p["video_sizes"] for p in parts]),
    }


def left_padded(*prompts: list[int]) -> dict:
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


# ------------------------------------------------------------------------------------------------------------------
# Per-call context, in both directions
# ------------------------------------------------------------------------------------------------------------------


def test_a_call_may_allow_a_longer_context_than_the_config():
    # The config allows 300 tokens; the call allows 1024, and the video is spliced with more than 300 tokens: neither
    # `forward` nor `generate` may check the expanded length against the config.
    model = make_tiny_model(max_context_length=300)
    inputs = {"input_ids": torch.tensor([[5, V, 7]]), **videos((6, 0))}
    settings = {"max_context_length": 1024}
    with torch.no_grad():
        out = model(**inputs, compression_settings=settings)
    report = out.compression[0]
    assert report["budget"] == 1024 - 2 - 16 and report["num_visual_tokens"] > 300
    assert out.logits.shape[1] == 2 + report["num_visual_tokens"]
    generated = model.generate(**inputs, **GREEDY, compression_settings=settings, return_dict_in_generate=True)
    assert generated.compression[0] == report and generated.sequences.shape == (1, 3 + 3)


def image_of(height: int, width: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.randint(0, 256, (1, 3, 384, 384), dtype=torch.uint8, generator=generator),
        "pixel_values_dino": torch.randint(0, 256, (1, 3, 378, 378), dtype=torch.uint8, generator=generator),
        "image_sizes": torch.tensor([[height, width]]),
    }


@pytest.mark.parametrize("entry", ["forward", "generate"])
def test_the_call_context_decides_for_images_in_both_directions(entry):
    # A 640x480 image is 450 tokens on this model (images are never compressed): a config of 400 with a call of 1024
    # takes it, a config of 1024 with a call of 400 refuses it.
    ids = torch.tensor([[5, I, 7]])

    def run(config_context, call_context):
        model = make_tiny_model(num_queries=576, highres=False, max_context_length=config_context)
        kwargs = {"input_ids": ids, **image_of(480, 640), "compression_settings": {"max_context_length": call_context}}
        with torch.no_grad():
            if entry == "forward":
                return model(**kwargs).logits.shape[1]
            return model.generate(**kwargs, **GREEDY).shape[1]

    assert run(400, 1024) == (2 + 450 if entry == "forward" else 3 + 3)
    with pytest.raises(ValueError, match="max_context_length`=400"):
        run(1024, 400)


def test_a_call_may_ask_for_a_shorter_context_than_the_config(model):
    inputs = {"input_ids": torch.tensor([[5, V, 7]]), **videos((6, 0))}
    with torch.no_grad():
        out = model(**inputs, compression_settings={"max_context_length": 300})
    report = out.compression[0]
    assert report["budget"] == 300 - 2 - 16 and report["num_visual_tokens"] <= report["budget"]
    assert out.logits.shape[1] <= 300 - 16
    generated = model.generate(**inputs, **GREEDY, compression_settings={"max_context_length": 300},
                               return_dict_in_generate=True)
    assert generated.compression[0] == report


# ------------------------------------------------------------------------------------------------------------------
# Several videos, each with its own cap
# ------------------------------------------------------------------------------------------------------------------


def test_max_visual_tokens_caps_every_video_of_a_sample(model):
    # One sample with two videos and one with a single video: each video, whatever it shares, gets the cap; as a
    # keyword (`forward`) and as a compression setting (`generate`).
    batch = left_padded([5, V, 6, V, 7], [8, V, 9])
    inputs = {**batch, **videos((3, 1), (3, 2), (3, 3))}
    with torch.no_grad():
        uncapped = model(**inputs).compression
        out = model(**inputs, max_visual_tokens=120)
    assert all(r["num_visual_tokens"] > 120 for r in uncapped)
    assert [r["budget"] for r in out.compression] == [120, 120, 120]
    assert all(0 < r["num_visual_tokens"] <= 120 for r in out.compression)
    generated = model.generate(**inputs, **GREEDY, compression_settings={"max_visual_tokens": 120},
                               return_dict_in_generate=True)
    assert list(generated.compression) == list(out.compression)


# ------------------------------------------------------------------------------------------------------------------
# Batches, beams, several return sequences
# ------------------------------------------------------------------------------------------------------------------


def test_a_batch_with_beams_returns_each_prompts_sequences_behind_it(model):
    prompts = [[5, 6, V, 7], [9, V, 10, 11, 12]]
    specs = [(2, 4), (3, 5)]
    batch = left_padded(*prompts)
    options = {"num_beams": 3, "num_return_sequences": 2, **GREEDY}
    out = model.generate(**batch, **videos(*specs), **options)
    assert out.shape == (4, batch["input_ids"].shape[1] + 3)
    # rows 0-1 belong to the first prompt, rows 2-3 to the second, each behind its own prompt as given
    assert torch.equal(out[:, : batch["input_ids"].shape[1]], batch["input_ids"].repeat_interleave(2, dim=0))
    for row, (prompt, spec) in enumerate(zip(prompts, specs)):
        alone = model.generate(input_ids=torch.tensor([prompt]), **videos(spec), **options)
        assert torch.equal(out[2 * row : 2 * row + 2, -3:], alone[:, -3:]), row
        assert out[2 * row, -3:].tolist() != out[2 * row + 1, -3:].tolist()  # two distinct beams


# ------------------------------------------------------------------------------------------------------------------
# Continuing from a returned cache
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("explicit", [True, False], ids=["prompt_expansion", "cache_only"])
def test_continuation_with_new_text_reads_the_video_from_the_cache(model, explicit):
    ids = torch.tensor([[5, 6, V, 7]])
    video = videos((2, 6))
    first = model.generate(input_ids=ids, **video, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    follow_up = torch.cat([first.sequences, torch.tensor([[9, 10]])], dim=1)
    expansion = {"prompt_expansion": first.prompt_expansion} if explicit else {}
    continued = model.generate(input_ids=follow_up, **{CACHE_NAME: cache_of(first)}, **GREEDY, output_logits=True,
                               return_dict_in_generate=True, **expansion)
    assert torch.equal(continued.sequences[:, : follow_up.shape[1]], follow_up)
    # the same as encoding the video again for the whole text (this short video's compression ignores the text)
    with torch.no_grad():
        again = model(input_ids=follow_up, **video)
    unchanged = ("kept_frame_indices", "high_res_frame_indices", "tokens_per_frame", "path")
    assert [again.compression[0][k] for k in unchanged] == [first.compression[0][k] for k in unchanged]
    torch.testing.assert_close(continued.logits[0][0], again.logits[0, -1], rtol=1e-4, atol=1e-5)
    logits = again.logits[0, -1].clone()
    logits[[V, I]] = -float("inf")
    assert continued.sequences[0, follow_up.shape[1]] == logits.argmax()


def test_continuation_refusals(model):
    ids = torch.tensor([[5, 6, V, 7]])
    video = videos((2, 7))
    first = model.generate(input_ids=ids, **video, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    cache = {CACHE_NAME: cache_of(first)}
    edited = first.sequences.clone()
    edited[0, 0] = 9  # not the prompt the cache holds
    for sequences in (edited, first.sequences[:, :3], torch.cat([first.sequences] * 2)):
        with pytest.raises(ValueError, match="describes another prompt"):
            model.generate(input_ids=sequences, **cache, **GREEDY, prompt_expansion=first.prompt_expansion)
    # transformers' way (sequences + cache, nothing else) finds the expansion by the cache's identity, only for the
    # prompt it holds
    for sequences in (edited, first.sequences[:, :3], torch.cat([first.sequences] * 2)):
        with pytest.raises(ValueError, match="placeholders but no pixels"):
            model.generate(input_ids=sequences, **cache, **GREEDY)
    from longvu_hf.modeling.placeholder_expansion import expansion_of_cache

    assert expansion_of_cache(cache_of(first)) is first.prompt_expansion
    assert expansion_of_cache(DynamicCache(config=model.config.text_config)) is None  # another cache: nothing known
    with pytest.raises(ValueError, match="pass no pixels"):
        model.generate(input_ids=first.sequences, **cache, **video, **GREEDY, prompt_expansion=first.prompt_expansion)
    # several sequences per prompt: the cache holds them all, it cannot continue one prompt
    several = model.generate(input_ids=ids, **video, num_beams=2, num_return_sequences=2, max_new_tokens=2,
                             do_sample=False, return_dict_in_generate=True)
    assert several.prompt_expansion is None
    with pytest.raises(ValueError, match="placeholders but no pixels"):
        model.generate(input_ids=several.sequences[:1], **{CACHE_NAME: cache_of(several)}, **GREEDY)
