"""LongVUForConditionalGeneration with tiny random weights: expansion, generation, save/load, training hooks, errors."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoModelForMultimodalLM
from transformers.generation.streamers import BaseStreamer

from longvu_hf import LongVUConfig, LongVUForConditionalGeneration, LongVUModel

from tiny_model import TINY_IMAGE_TOKEN_ID, TINY_VIDEO_TOKEN_ID, make_tiny_model, random_video_inputs

V = TINY_VIDEO_TOKEN_ID
from longvu_hf.transformers_compat import CACHE_NAME, cache_of  # noqa: E402
I = TINY_IMAGE_TOKEN_ID


@pytest.fixture(scope="module")
def model():
    return make_tiny_model()


def batch_of_two(first_frames=3, second_frames=5, padding_side="left"):
    """Two samples with different prompt lengths and videos of different lengths, padded on `padding_side`."""
    prompts = [[5, 6, V, 7, 8], [5, 9, 10, 11, V, 12, 13, 14]]
    videos = [random_video_inputs(first_frames, seed=1), random_video_inputs(second_frames, 48, 48, seed=2)]
    width = max(map(len, prompts))
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        span = slice(width - len(prompt), width) if padding_side == "left" else slice(0, len(prompt))
        ids[row, span] = torch.tensor(prompt)
        mask[row, span] = 1
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values_videos": torch.cat([v["pixel_values_videos"] for v in videos]),
        "pixel_values_videos_dino": torch.cat([v["pixel_values_videos_dino"] for v in videos]),
        "video_num_frames": torch.tensor([first_frames, second_frames]),
        "video_sizes": torch.cat([v["video_sizes"] for v in videos]),
    }
    singles = [{"input_ids": torch.tensor([p]), **v} for p, v in zip(prompts, videos)]
    return batch, singles


def test_config_round_trip(tmp_path):
    config = make_tiny_model().config
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, LongVUConfig)
    assert loaded.auto_map["AutoConfig"] == "configuration_longvu.LongVUConfig"  # Hub remote code
    assert loaded.to_diff_dict() | {"_name_or_path": ""} == config.to_diff_dict() | {"_name_or_path": ""}
    assert loaded.video_token_id == V and loaded.image_token_id == I
    with pytest.raises(ValueError, match="video_size_convention"):
        LongVUConfig(video_size_convention="sideways")
    with pytest.raises(ValueError, match="num_queries"):
        LongVUConfig(num_queries=100)


def test_release_defaults():
    config = LongVUConfig()
    assert (config.dino_threshold, config.dino_window_size, config.max_frames_after_selection) == (0.83, 16, 400)
    assert (config.stc_window_size, config.stc_threshold, config.lowres_grid_size) == (8, 0.7, 8)
    assert (config.max_context_length, config.context_margin, config.num_queries) == (8192, 16, 144)
    assert config.aggregator_hidden_size == 1024 and config.aggregator_num_layers == 3
    assert config.text_config.model_type == "qwen2" and not config.tie_word_embeddings
    assert config.vision_config.image_size == 384 and config.dino_image_size == 378


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_expand_placeholders(model, padding_side):
    ids = torch.tensor([[0, 0, 5, V, 6], [5, 7, V, 8, 9]]) if padding_side == "left" else torch.tensor(
        [[5, V, 6, 0, 0], [5, 7, V, 8, 9]]
    )
    mask = (ids != 0).long()
    labels = ids.clone().masked_fill(mask == 0, -100)
    new_ids, new_mask, new_labels = model.model.expand_placeholders(ids, mask, labels, [3, 2], [])
    if padding_side == "left":
        assert new_ids.tolist() == [[0, 5, V, V, V, 6], [5, 7, V, V, 8, 9]]
        assert new_mask.tolist() == [[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
        assert new_labels.tolist() == [[-100, 5, -100, -100, -100, 6], [5, 7, -100, -100, 8, 9]]
    else:
        assert new_ids.tolist() == [[5, V, V, V, 6, 0], [5, 7, V, V, 8, 9]]
        assert new_mask.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
        assert new_labels.tolist() == [[5, -100, -100, -100, 6, -100], [5, 7, -100, -100, 8, 9]]


def test_forward_expands_inside_and_returns_report(model):
    inputs = random_video_inputs(4)
    ids = torch.tensor([[5, 6, V, 7, 8]])
    labels = torch.tensor([[-100, -100, -100, 7, 8]])
    out = model(input_ids=ids, labels=labels, **inputs)
    report = out.compression[0]
    assert out.logits.shape[1] == 4 + report["num_visual_tokens"]
    assert out.labels.shape == out.attention_mask.shape == out.logits.shape[:2]
    assert (out.labels[0, 2 : 2 + report["num_visual_tokens"]] == -100).all()
    assert out.labels[0, -2:].tolist() == [7, 8]
    assert torch.isfinite(out.loss)
    for key in ("num_input_frames", "kept_frame_indices", "high_res_frame_indices", "tokens_per_frame", "path",
                "num_visual_tokens", "budget"):
        assert key in report
    assert report["num_input_frames"] == 4 and sum(report["tokens_per_frame"]) == report["num_visual_tokens"]


def test_logits_to_keep_counts_expanded_positions(model):
    inputs = random_video_inputs(3)
    ids = torch.tensor([[5, 6, V, 7, 8]])
    with torch.no_grad():
        full = model(input_ids=ids, **inputs, logits_to_keep=0)
        last_two = model(input_ids=ids, **inputs, logits_to_keep=2)
    expanded_length = 4 + full.compression[0]["num_visual_tokens"]
    assert full.logits.shape[1] == expanded_length and last_two.logits.shape[1] == 2
    torch.testing.assert_close(last_two.logits, full.logits[:, -2:], rtol=1e-5, atol=1e-5)


def test_uint8_and_float_pixels_agree(model):
    inputs = random_video_inputs(2)
    ids = torch.tensor([[5, V, 7]])
    cfg = model.config
    as_float = dict(inputs)
    as_float["pixel_values_videos"] = model.model.video_encoder._normalize(
        inputs["pixel_values_videos"], cfg.siglip_image_mean, cfg.siglip_image_std, "cpu", torch.float32
    )
    as_float["pixel_values_videos_dino"] = model.model.video_encoder._normalize(
        inputs["pixel_values_videos_dino"], cfg.dino_image_mean, cfg.dino_image_std, "cpu", torch.float32
    )
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, **inputs).logits, model(input_ids=ids, **as_float).logits)


def test_five_dimensional_video_input(model):
    inputs = random_video_inputs(3)
    ids = torch.tensor([[5, V, 7]])
    with torch.no_grad():
        flat = model(input_ids=ids, **inputs).logits
        stacked = model(
            input_ids=ids,
            pixel_values_videos=inputs["pixel_values_videos"].unsqueeze(0),
            pixel_values_videos_dino=inputs["pixel_values_videos_dino"].unsqueeze(0),
            video_sizes=inputs["video_sizes"],
        ).logits
    torch.testing.assert_close(flat, stacked)


def test_generate_encodes_once_and_matches_uncached(model, monkeypatch):
    inputs = {"input_ids": torch.tensor([[5, 6, V, 7]]), **random_video_inputs(3)}
    calls = []
    original = model.model.get_video_features

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model.model, "get_video_features", counting)
    cached_output = model.generate(**inputs, max_new_tokens=6, do_sample=False, min_new_tokens=6,
                                   return_dict_in_generate=True)
    cached = cached_output.sequences
    assert len(calls) == 1
    uncached = model.generate(**inputs, max_new_tokens=6, do_sample=False, min_new_tokens=6, use_cache=False)
    assert len(calls) == 2
    assert cached.tolist() == uncached.tolist()
    # the returned sequences hold the prompt as given, then the new tokens
    assert cached.shape[1] == 4 + 6 and cached[:, :4].tolist() == inputs["input_ids"].tolist()
    assert cached_output.compression[0].num_visual_tokens > 0
    assert not hasattr(model, "last_compression")  # reports travel with each call's output, never on the model
    # the placeholders never appear among generated tokens
    assert not (cached[:, -6:] == V).any()


def test_left_padded_batch_equals_single_samples():
    model = make_tiny_model(max_context_length=420)  # small budget: selection, mixing and STC paths are exercised
    batch, singles = batch_of_two()
    greedy = {"max_new_tokens": 5, "do_sample": False, "min_new_tokens": 5, "return_dict_in_generate": True}
    batch_out = model.generate(**batch, **greedy)
    for row, single in enumerate(singles):
        single_out = model.generate(**single, **greedy)
        assert batch_out.sequences[row, -5:].tolist() == single_out.sequences[0, -5:].tolist()
        assert batch_out.compression[row] == single_out.compression[0]
    # budgets come from each sample's own prompt, not from batch item 0
    assert batch_out.compression[0].budget != batch_out.compression[1].budget


def test_right_padded_batch_logits_equal_single_samples():
    model = make_tiny_model()
    batch, singles = batch_of_two(padding_side="right")
    with torch.no_grad():
        out = model(**batch)
        for row, single in enumerate(singles):
            single_logits = model(**single).logits[0]
            length = single_logits.shape[0]
            torch.testing.assert_close(out.logits[row, :length], single_logits, atol=1e-5, rtol=1e-4)
            assert int(out.attention_mask[row].sum()) == length


def test_assisted_decoding_reuses_the_encoded_video(model):
    # The assistant gets the main model's encoded features and the expanded prompt; it must not re-encode or refuse.
    inputs = {"input_ids": torch.tensor([[5, V, 7]]), **random_video_inputs(3)}
    greedy = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assisted = model.generate(**inputs, max_new_tokens=5, do_sample=False, assistant_model=model)
    assert torch.equal(assisted, greedy)
    assert assisted[0, :3].tolist() == [5, V, 7]


def test_beam_search_sampling_and_streamer(model):
    # What the settings imply, not only shapes (tests/test_mutation_guards.py also checks each beam's score against
    # `forward`): two distinct beams, best first, each the prompt then 4 tokens; seeded sampling is reproducible.
    inputs = {"input_ids": torch.tensor([[5, V, 7]]), **random_video_inputs(2)}
    beams = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, num_beams=3, num_return_sequences=2,
                           do_sample=False, return_dict_in_generate=True, output_scores=True)
    assert beams.sequences.shape == (2, 3 + 4) and beams.sequences[:, :3].tolist() == [[5, V, 7]] * 2
    assert beams.sequences[0].tolist() != beams.sequences[1].tolist()
    assert beams.sequences_scores[0] >= beams.sequences_scores[1]
    samples = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        samples.append(model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=True, top_p=0.9,
                                      num_return_sequences=2))
    assert samples[0].shape == (2, 3 + 4) and torch.equal(samples[0], samples[1])
    assert not torch.equal(samples[0], samples[2])

    class Collect(BaseStreamer):
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.tolist())

        def end(self):
            self.chunks.append("end")

    streamer = Collect()
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, streamer=streamer)
    assert streamer.chunks[-1] == "end" and len(streamer.chunks) == 1 + 3 + 1  # prompt, 3 tokens, end
    assert [c[0] for c in streamer.chunks[1:-1]] == out[0, -3:].tolist()


@pytest.mark.parametrize("text_model_type", ["qwen2", "llama"])
def test_save_and_load_with_auto_classes(tmp_path, text_model_type):
    model = make_tiny_model(text_model_type=text_model_type)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.float32)
    assert isinstance(loaded, LongVUForConditionalGeneration)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    tied = loaded.lm_head.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    assert tied == (text_model_type == "llama") == loaded.config.tie_word_embeddings
    assert isinstance(AutoModelForMultimodalLM.from_pretrained(tmp_path), LongVUForConditionalGeneration)
    base = AutoModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert isinstance(base, LongVUModel)
    assert torch.equal(base.video_encoder.image_newline, model.model.video_encoder.image_newline)
    inputs = {"input_ids": torch.tensor([[5, V, 7]]), **random_video_inputs(2)}
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, loaded(**inputs).logits)


def test_eager_and_sdpa_agree(tmp_path):
    model = make_tiny_model()
    model.save_pretrained(tmp_path)
    inputs = {"input_ids": torch.tensor([[5, V, 7]]), **random_video_inputs(2)}
    logits = {}
    for implementation in ("eager", "sdpa"):
        loaded = AutoModelForImageTextToText.from_pretrained(
            tmp_path, attn_implementation=implementation, dtype=torch.float32
        )
        assert loaded.config._attn_implementation == implementation
        with torch.no_grad():
            logits[implementation] = loaded(**inputs).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-4, rtol=1e-4)


def test_activation_checkpointing_backward():
    model = make_tiny_model()
    model.train()
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    model.model.video_encoder.vision_tower.requires_grad_(False)
    model.model.video_encoder.dino_tower.requires_grad_(False)
    inputs = random_video_inputs(2)
    ids = torch.tensor([[5, V, 7, 8]])
    out = model(input_ids=ids, labels=ids, **inputs)
    out.loss.backward()
    aggregator_grads = [p.grad for p in model.model.video_encoder.vision_aggregator.parameters()]
    assert all(g is not None for g in aggregator_grads)
    assert model.model.video_encoder.image_newline.grad is not None
    assert all(p.grad is None for p in model.model.video_encoder.vision_tower.parameters())


def test_no_split_modules_and_device_map():
    from accelerate import infer_auto_device_map

    model = make_tiny_model()
    no_split = set(model._no_split_modules)
    assert {"Qwen2DecoderLayer", "LongVUAggregatorLayer"} <= no_split
    device_map = infer_auto_device_map(
        model, max_memory={0: "300KB", "cpu": "10GB"}, no_split_module_classes=list(no_split)
    )
    # no decoder layer is split between devices
    for name in device_map:
        assert not name.startswith("model.language_model.layers.0.self_attn")


def test_images_on_video_and_image_checkpoints():
    video_ckpt = make_tiny_model()
    image_ckpt = make_tiny_model(num_queries=576, highres=False)
    pixels = {
        "pixel_values": torch.randint(0, 256, (1, 3, 384, 384), dtype=torch.uint8),
        "pixel_values_dino": torch.randint(0, 256, (1, 3, 378, 378), dtype=torch.uint8),
        "image_sizes": torch.tensor([[480, 640]]),
    }
    ids = torch.tensor([[5, I, 7]])
    with torch.no_grad():
        on_video = video_ckpt(input_ids=ids, **pixels)
        on_image = image_ckpt(input_ids=ids, **pixels)
    # docs/reference.md §9.2: a 640x480 image is 54 tokens on a video checkpoint (8x8 path) and 450 on an image one
    assert on_video.image_compression[0]["num_visual_tokens"] == 54
    assert on_image.image_compression[0]["num_visual_tokens"] == 450
    assert on_video.logits.shape[1] == 2 + 54 and on_image.logits.shape[1] == 2 + 450
    assert not any(len(layer.pos_embeds) for layer in image_ckpt.model.video_encoder.vision_aggregator.layers)
    out = video_ckpt.generate(input_ids=ids, max_new_tokens=2, do_sample=False, **pixels)
    assert out.shape[1] == 3 + 2


def test_two_videos_in_one_sample_share_the_budget():
    model = make_tiny_model(max_context_length=300)
    first, second = random_video_inputs(4, seed=3), random_video_inputs(4, seed=4)
    ids = torch.tensor([[5, V, 6, V, 7]])
    inputs = {
        "pixel_values_videos": torch.cat([first["pixel_values_videos"], second["pixel_values_videos"]]),
        "pixel_values_videos_dino": torch.cat([first["pixel_values_videos_dino"], second["pixel_values_videos_dino"]]),
        "video_num_frames": torch.tensor([4, 4]),
        "video_sizes": torch.tensor([[36, 64], [36, 64]]),
    }
    with torch.no_grad():
        out = model(input_ids=ids, **inputs)
    reports = out.compression
    assert len(reports) == 2
    assert all(r["budget"] == (300 - 3 - 16) // 2 for r in reports)
    assert out.logits.shape[1] == 3 + sum(r["num_visual_tokens"] for r in reports) <= 300 - 16


def test_bad_inputs_raise_clear_errors(model):
    inputs = random_video_inputs(3)
    with pytest.raises(ValueError, match="placeholder"):
        model(input_ids=torch.tensor([[5, V, V, 7]]), **inputs)
    with pytest.raises(ValueError, match="placeholder"):
        model(input_ids=torch.tensor([[5, 6, 7]]), **inputs)
    with pytest.raises(ValueError, match="video_num_frames"):
        model(input_ids=torch.tensor([[5, V, 7]]), **{**inputs, "video_num_frames": torch.tensor([5])})
    with pytest.raises(ValueError, match="at least one frame"):
        model(input_ids=torch.tensor([[5, V, 7]]), **{**inputs, "video_num_frames": torch.tensor([0])})
    with pytest.raises(ValueError, match=r"pixel_values_videos.*384"):
        bad = {**inputs, "pixel_values_videos": torch.zeros(3, 3, 224, 224, dtype=torch.uint8)}
        model(input_ids=torch.tensor([[5, V, 7]]), **bad)
    with pytest.raises(ValueError, match="pixel_values_videos_dino"):
        model(input_ids=torch.tensor([[5, V, 7]]), **{**inputs, "pixel_values_videos_dino": None})
    with pytest.raises(ValueError, match="leaves no room"):
        model(input_ids=torch.full((1, 1100), 5).index_fill(1, torch.tensor([3]), V), **inputs)


@pytest.mark.parametrize(
    "pixels, message",
    [
        (lambda u8: u8.double() / 255, "dtype torch.float64"),
        (lambda u8: u8.int(), "dtype torch.int32"),
        (lambda u8: u8.long(), "dtype torch.int64"),
        (lambda u8: u8.float(), "look like raw 0..255"),
    ],
)
def test_pixels_in_the_wrong_form_are_refused(model, pixels, message):
    inputs = random_video_inputs(2)
    inputs["pixel_values_videos"] = pixels(inputs["pixel_values_videos"])
    ids = torch.tensor([[5, V, 7]])
    for call in (model, lambda **kw: model.generate(**kw, max_new_tokens=1)):
        with pytest.raises(ValueError, match=f"`pixel_values_videos` .*{re.escape(message)}"):
            call(input_ids=ids, **inputs)


def test_float_input_ids_are_refused(model):
    for call in (model, lambda **kw: model.generate(**kw, max_new_tokens=1)):
        with pytest.raises(ValueError, match="`input_ids` must hold integer token ids, got dtype torch.float32"):
            call(input_ids=torch.tensor([[5.0, float(V), 7.0]]), **random_video_inputs(2))


def test_video_features_without_a_prompt_get_the_whole_context(model):
    """Called alone (as transformers' `get_video_features` contract allows), a video gets the whole context as its
    budget, and the SigLIP tower's outputs come with the compressed features."""
    inputs = random_video_inputs(3)
    out = model.model.get_video_features(
        inputs["pixel_values_videos"], inputs["pixel_values_videos_dino"], output_hidden_states=True
    )
    config = model.config
    assert out.compression[0]["budget"] == config.max_context_length - config.context_margin
    kept = len(out.compression[0]["kept_frame_indices"])
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    assert out.last_hidden_state.shape == (kept, patches, config.vision_config.hidden_size)
    assert len(out.hidden_states) == config.vision_config.num_hidden_layers + 1
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    with_prompt = model.model.get_video_features(
        inputs["pixel_values_videos"], inputs["pixel_values_videos_dino"], prompt_input_ids=torch.tensor([[5, V, 7]])
    )
    assert with_prompt.compression[0]["budget"] == config.max_context_length - config.context_margin - 2


def test_stacked_videos_get_the_tower_outputs_stacked(model):
    """Videos given stacked, (videos, frames, 3, H, W), get the SigLIP outputs stacked the same way (transformers'
    mixins compare their first dimension with the pixels'), zero on the frames DINOv2 selection dropped; frames given
    concatenated (the processor's layout) keep one row per encoded frame. The compressed features do not change."""
    # One frame 16 times (selection keeps the middle one), and 16 different frames (selection keeps them all).
    videos = [random_video_inputs(16, 48, 48, seed=1, duplicate_runs=16), random_video_inputs(16, 48, 48, seed=2)]
    names = ("pixel_values_videos", "pixel_values_videos_dino")
    sizes = torch.cat([v["video_sizes"] for v in videos])
    stacked = {name: torch.stack([v[name] for v in videos]) for name in names}
    concatenated = {name: torch.cat([v[name] for v in videos]) for name in names}
    with torch.no_grad():
        out_stacked = model.model.get_video_features(
            **stacked, video_sizes=sizes, max_visual_tokens=16, output_hidden_states=True
        )
        out_flat = model.model.get_video_features(
            **concatenated, video_num_frames=torch.tensor([16, 16]), video_sizes=sizes, max_visual_tokens=16
        )
    kept = [report["kept_frame_indices"] for report in out_flat.compression]
    assert kept[0] == [8] and len(kept[1]) == 16  # selection ran on both, dropping frames of the first only
    assert all(report["frame_selection_ran"] for report in out_flat.compression)
    patches, width = out_flat.last_hidden_state.shape[1:]
    assert out_flat.last_hidden_state.shape[0] == 17
    assert out_stacked.last_hidden_state.shape == (2, 16, patches, width)
    for video, (frames, encoded) in enumerate(zip(out_flat.last_hidden_state.split([1, 16]), kept)):
        torch.testing.assert_close(out_stacked.last_hidden_state[video, encoded], frames)
        dropped = [i for i in range(16) if i not in encoded]
        assert not out_stacked.last_hidden_state[video, dropped].any()
    assert all(layer.shape == (2, 16, patches, width) for layer in out_stacked.hidden_states)
    torch.testing.assert_close(out_stacked.hidden_states[-1], out_stacked.last_hidden_state)
    for tokens_stacked, tokens_flat in zip(out_stacked.pooler_output, out_flat.pooler_output, strict=True):
        torch.testing.assert_close(tokens_stacked, tokens_flat)


def test_text_only_forward_and_generate(model):
    ids = torch.tensor([[5, 6, 7]])
    out = model(input_ids=ids)
    assert out.logits.shape == (1, 3, model.config.text_config.vocab_size) and out.compression is None
    assert model.generate(input_ids=ids, max_new_tokens=2, do_sample=False).shape == (1, 5)


def test_frame_selection_on_long_videos_bounds_cached_features():
    """Past twice the cap, cached DINO features are dropped and the capped frames re-encoded: same result."""
    model = make_tiny_model(max_frames_after_selection=5, vision_chunk_size=16, dino_threshold=0.999)
    pixels = random_video_inputs(48, duplicate_runs=2)["pixel_values_videos_dino"]  # 24 distinct frames, twice each
    with torch.no_grad():
        indices, features, ran = model.model.video_encoder.select_video_frames(pixels, frame_budget=1)
        model.config.max_frames_after_selection = 400
        all_kept, _, _ = model.model.video_encoder.select_video_frames(pixels, frame_budget=1)
        expected_features = model.model.video_encoder.dino_features(pixels[indices])
    assert ran and len(indices) == 5
    assert indices.tolist() == all_kept[[int(i * len(all_kept) / 5) for i in range(5)]].tolist()
    torch.testing.assert_close(features, expected_features, atol=1e-5, rtol=1e-5)
    assert len(all_kept) > 2 * 5  # enough survivors to take the re-encoding path


def test_new_window_position_embeddings_are_initialised(tmp_path):
    """Loading an image (576-query) checkpoint into a 144-query config creates the pos_embeds with randn values."""
    make_tiny_model(num_queries=576, highres=False).save_pretrained(tmp_path)
    config = LongVUConfig.from_pretrained(tmp_path)
    config.num_queries = 144
    model = LongVUForConditionalGeneration.from_pretrained(tmp_path, config=config, dtype=torch.float32)
    for layer in model.model.video_encoder.vision_aggregator.layers:
        for pos_embed in layer.pos_embeds:
            assert torch.isfinite(pos_embed).all()
            assert 0.5 < pos_embed.std().item() < 2.0


def test_placeholders_are_never_generated():
    model = make_tiny_model()
    with torch.no_grad():  # make the video placeholder the most likely next token
        hidden = model.model(input_ids=torch.tensor([[5, 6]])).last_hidden_state[0, -1]
        model.lm_head.weight[V] = hidden / hidden.norm() * 1e3
    from transformers import GenerationMixin

    unsuppressed = GenerationMixin.generate(model, torch.tensor([[5, 6]]), max_new_tokens=1, do_sample=False)
    assert unsuppressed[0, -1] == V  # the plain generate would emit it
    inputs = {"input_ids": torch.tensor([[5, V, 7]]), **random_video_inputs(2)}
    out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, suppress_tokens=[9])
    assert not torch.isin(out[:, -5:], torch.tensor([V, I, 9])).any()
    assert not (model.generate(input_ids=torch.tensor([[5, 6]]), max_new_tokens=3, do_sample=False)[:, 2:] == V).any()


def test_max_visual_tokens_caps_the_video_per_call(model):
    inputs = {"input_ids": torch.tensor([[5, 6, V, 7]]), **random_video_inputs(6)}
    with torch.no_grad():
        full = model(**inputs).compression[0]
        capped = model(**inputs, max_visual_tokens=100).compression[0]
    assert full["num_visual_tokens"] > 100 >= capped["num_visual_tokens"] and capped["budget"] == 100
    out = model.generate(**inputs, max_visual_tokens=100, max_new_tokens=2, do_sample=False,
                         return_dict_in_generate=True)
    assert out.compression[0] == capped and out.sequences.shape[1] == 4 + 2
    with pytest.raises(ValueError, match="max_visual_tokens"):
        model(**inputs, max_visual_tokens=0)


def test_images_beyond_the_context_are_refused_not_truncated():
    model = make_tiny_model(num_queries=576, highres=False, max_context_length=400)  # a 640x480 image is 450 tokens
    pixels = {
        "pixel_values": torch.randint(0, 256, (1, 3, 384, 384), dtype=torch.uint8),
        "pixel_values_dino": torch.randint(0, 256, (1, 3, 378, 378), dtype=torch.uint8),
        "image_sizes": torch.tensor([[480, 640]]),
    }
    ids = torch.tensor([[5, I, 7]])
    with pytest.raises(ValueError, match="max_context_length"):
        model(input_ids=ids, **pixels)
    with pytest.raises(ValueError, match="max_context_length"):
        model.generate(input_ids=ids, max_new_tokens=2, **pixels)


def test_generate_from_embeddings_positions_and_a_returned_cache(model):
    """`inputs_embeds`, explicit `position_ids` and a continuation from the returned sequences + cache give the same
    tokens as the plain call; stray video arguments without pixels are refused by name."""
    video = random_video_inputs(3)
    ids = torch.tensor([[5, 6, V, 7, 8]])
    greedy = {"max_new_tokens": 4, "do_sample": False}
    reference = model.generate(input_ids=ids, **video, **greedy)
    embeds = model.get_input_embeddings()(ids)
    assert torch.equal(model.generate(input_ids=ids, inputs_embeds=embeds, **video, **greedy), reference)
    assert torch.equal(model.generate(inputs_embeds=embeds, **video, **greedy), reference[:, ids.shape[1] :])
    positions = torch.arange(ids.shape[1])[None]
    assert torch.equal(model.generate(input_ids=ids, position_ids=positions, **video, **greedy), reference)
    first = model.generate(input_ids=ids, **video, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    continued = model.generate(
        input_ids=first.sequences, **{CACHE_NAME: cache_of(first)}, max_new_tokens=2, do_sample=False,
        video_sizes=video["video_sizes"], prompt_expansion=first.prompt_expansion,  # stray metadata is ignored
    )
    assert torch.equal(continued, reference)
    with pytest.raises(ValueError, match="video_sizes"):
        model.generate(input_ids=ids, video_sizes=video["video_sizes"], **greedy)
    with pytest.raises(ValueError, match="placeholders but no pixels"):
        model.generate(input_ids=ids, **greedy)


def test_compression_settings_apply_to_one_call_only(model):
    from longvu_hf.configuration_longvu import CompressionSettings

    inputs = {"input_ids": torch.tensor([[5, V, 7]]), **random_video_inputs(12)}
    before = model.config.to_dict()
    small = model.generate(**inputs, max_new_tokens=2, return_dict_in_generate=True,
                           compression_settings={"max_context_length": 300, "stc_threshold": 0.5})
    plain = model.generate(**inputs, max_new_tokens=2, return_dict_in_generate=True)
    assert model.config.to_dict() == before
    assert small.compression[0]["budget"] == 300 - 2 - 16 and small.compression[0]["path"] == "stc"
    assert plain.compression[0]["budget"] == 1024 - 2 - 16
    with torch.no_grad():  # forward and get_video_features take the same settings
        forward = model(**inputs, compression_settings=CompressionSettings(max_context_length=300, stc_threshold=0.5))
    assert forward.compression[0] == small.compression[0]
    # the thresholds reach frame selection and STC
    from longvu_hf.modeling import video_encoder

    seen = {}
    stc, select = video_encoder.C.spatial_token_compression, video_encoder.C.select_frames
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(video_encoder.C, "spatial_token_compression",
                      lambda frames, threshold, *a, **k: seen.setdefault("stc", threshold) and stc(frames, threshold, *a, **k))
        patch.setattr(video_encoder.C, "select_frames",
                      lambda chunks, threshold, *a, **k: seen.setdefault("dino", threshold) and select(chunks, threshold, *a, **k))
        with torch.no_grad():
            model(**inputs, compression_settings={"max_context_length": 100, "stc_threshold": 0.31, "dino_threshold": 0.42})
    assert seen == {"stc": 0.31, "dino": 0.42}
    with pytest.raises(ValueError, match="unknown field"):
        model(**inputs, compression_settings={"max_context": 300})
    with pytest.raises(ValueError, match="`context_margin` must be 0 or more"):
        model(**inputs, compression_settings={"context_margin": -1})
