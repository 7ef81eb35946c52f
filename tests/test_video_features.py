"""Encode a video once, ask it many questions: `encode_videos` + `video_features=` equal the pixel path."""

from __future__ import annotations

import json

import pytest
import torch

from longvu_hf import LongVUVideoFeatures

from tiny_model import TINY_VIDEO_TOKEN_ID as V, make_tiny_model, random_video_inputs

# (frames, duplicate runs, prompt length, max_context_length): which compression path each reaches is asserted below.
CASES = {
    "none": (3, 1, 3, 1024),  # few frames, all at full resolution
    "mix": (12, 1, 3, 1024),  # low resolution for all, the query upgrades some
    "stc": (40, 2, 3, 500),  # selection runs, then STC with truncation
    "selection-by-prompt": (10, 2, 40, 760),  # a long prompt triggers selection that a short one does not
}


def prompt(length: int, seed: int) -> torch.Tensor:
    words = torch.randint(5, 100, (length,), generator=torch.Generator().manual_seed(seed))
    return torch.cat([words[:1], torch.tensor([V]), words[1:]]).unsqueeze(0)


@pytest.fixture(scope="module")
def model():
    return make_tiny_model()


@pytest.mark.parametrize("case", list(CASES))
def test_features_answer_like_the_pixels(model, case):
    frames, runs, length, context = CASES[case]
    pixels = random_video_inputs(frames, duplicate_runs=runs)
    settings = {"max_context_length": context}
    features = model.encode_videos(**pixels, compression_settings=settings)
    paths = set()
    for seed, prompt_length in enumerate((length, 2, length + 7)):  # several questions on one encoding
        ids = prompt(prompt_length, seed)
        with torch.no_grad():
            from_pixels = model(input_ids=ids, **pixels, compression_settings=settings)
            from_features = model(input_ids=ids, video_features=features, compression_settings=settings)
        assert from_features.compression[0] == from_pixels.compression[0]
        torch.testing.assert_close(from_features.logits, from_pixels.logits, rtol=1e-4, atol=1e-5)
        greedy_pixels = model.generate(input_ids=ids, **pixels, max_new_tokens=4, do_sample=False,
                                       compression_settings=settings)
        greedy_features = model.generate(input_ids=ids, video_features=features, max_new_tokens=4, do_sample=False,
                                         compression_settings=settings)
        assert torch.equal(greedy_features, greedy_pixels)
        paths.add((from_pixels.compression[0]["path"], from_pixels.compression[0]["frame_selection_ran"]))
    expected_paths = {
        "none": {("none", False)}, "mix": {("mix", False)}, "stc": {("stc", True)},
        "selection-by-prompt": {p for p in paths},
    }[case]
    assert paths == expected_paths
    if case == "selection-by-prompt":
        assert {ran for _, ran in paths} == {True, False}, paths  # both outcomes served by one encoding


def test_the_frame_cap_path():
    # More survivors than the cap: the cap (uniform) applies to the encoded frames as to the pixels.
    settings = {"max_context_length": 300}
    capped = make_tiny_model(max_frames_after_selection=6, dino_window_size=4)
    pixels = random_video_inputs(24)
    features = capped.encode_videos(**pixels, compression_settings=settings)
    ids = prompt(3, 0)
    with torch.no_grad():
        a = capped(input_ids=ids, **pixels, compression_settings=settings)
        b = capped(input_ids=ids, video_features=features, compression_settings=settings)
    assert len(a.compression[0]["kept_frame_indices"]) == 6 and a.compression[0] == b.compression[0]
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-5)


def test_a_batch_mixing_encoded_and_new_videos(model):
    first, second = random_video_inputs(5, seed=1), random_video_inputs(12, seed=2)
    features = model.encode_videos(**first)
    mixed = LongVUVideoFeatures([features[0], None], fingerprint=features.fingerprint, settings=features.settings)
    ids = torch.cat([prompt(3, 0), prompt(3, 1)])
    both = {
        "pixel_values_videos": torch.cat([first["pixel_values_videos"], second["pixel_values_videos"]]),
        "pixel_values_videos_dino": torch.cat([first["pixel_values_videos_dino"], second["pixel_values_videos_dino"]]),
        "video_num_frames": torch.tensor([5, 12]),
        "video_sizes": torch.cat([first["video_sizes"], second["video_sizes"]]),
    }
    with torch.no_grad():
        from_pixels = model(input_ids=ids, **both)
        from_mixed = model(input_ids=ids, video_features=mixed, **second)
    assert list(from_mixed.compression) == list(from_pixels.compression)
    torch.testing.assert_close(from_mixed.logits, from_pixels.logits, rtol=1e-4, atol=1e-5)


def test_save_load_and_refusals(model, tmp_path):
    pixels = random_video_inputs(12)
    features = model.encode_videos(**pixels)
    tensors, meta = features.save(tmp_path / "clip.longvu")
    loaded = LongVUVideoFeatures.load(tmp_path / "clip.longvu")
    ids = prompt(3, 0)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, video_features=loaded).logits,
                                   model(input_ids=ids, **pixels).logits, rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="encoded by another model"):
            make_tiny_model(seed=1)(input_ids=ids, video_features=loaded)
        with pytest.raises(ValueError, match="dino_threshold 0.83 \\(this call: 0.5\\)"):
            model(input_ids=ids, video_features=loaded, compression_settings={"dino_threshold": 0.5})
        with pytest.raises(ValueError, match="max_context_length - context_margin"):
            model(input_ids=ids, video_features=loaded, compression_settings={"max_context_length": 4000})
        with pytest.raises(ValueError, match="do not pass `pixel_values_videos` as well"):
            model(input_ids=ids, video_features=loaded, **pixels)
    # a smaller context than the encoding's is served (it keeps fewer frames)
    with torch.no_grad():
        small = {"max_context_length": 300}
        torch.testing.assert_close(model(input_ids=ids, video_features=loaded, compression_settings=small).logits,
                                   model(input_ids=ids, **pixels, compression_settings=small).logits,
                                   rtol=1e-4, atol=1e-5)
    tensors.write_bytes(tensors.read_bytes()[:-10])
    with pytest.raises(ValueError, match="changed or truncated"):
        LongVUVideoFeatures.load(tmp_path / "clip.longvu")
    meta.write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ValueError, match="format 99"):
        LongVUVideoFeatures.load(tmp_path / "clip.longvu")
    with pytest.raises(FileNotFoundError, match="nowhere.longvu.safetensors"):
        LongVUVideoFeatures.load(tmp_path / "nowhere.longvu")


@pytest.mark.parametrize(
    "chunk, context",  # chunks that split DINO windows and one that matches them; 300: selection for every prompt
    [(1, 300), (5, 1024), pytest.param(16, 300, marks=pytest.mark.heavy), pytest.param(23, 1024, marks=pytest.mark.heavy)],
)
def test_live_video_answers_like_the_frames_so_far(model, chunk, context):
    settings = {"max_context_length": context}
    pixels = random_video_inputs(40, duplicate_runs=3, seed=chunk)
    live = model.start_live_video(tuple(pixels["video_sizes"][0].tolist()), compression_settings=settings)
    with pytest.raises(ValueError, match="No frame has arrived yet"):
        live.features()
    ids = prompt(3, 0)
    checked = 0
    for start in range(0, 40, chunk):
        stop = min(start + chunk, 40)
        live.append(pixels["pixel_values_videos"][start:stop], pixels["pixel_values_videos_dino"][start:stop],
                    video_sizes=pixels["video_sizes"])
        if stop not in (1, 5, 17, 23, 32, 40):
            continue
        so_far = {"pixel_values_videos": pixels["pixel_values_videos"][:stop],
                  "pixel_values_videos_dino": pixels["pixel_values_videos_dino"][:stop],
                  "video_num_frames": torch.tensor([stop]), "video_sizes": pixels["video_sizes"]}
        with torch.no_grad():
            one_shot = model(input_ids=ids, **so_far, compression_settings=settings)
            from_live = model(input_ids=ids, video_features=live.features(), compression_settings=settings)
        assert from_live.compression[0] == one_shot.compression[0], stop
        torch.testing.assert_close(from_live.logits, one_shot.logits, rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked >= 2
    if context == 300:  # memory: only the frames selection keeps are held once every prompt selects
        assert len(live.kept) < 40 and live.largest_frame_budget < 40


def test_live_video_refuses_other_frames(model):
    pixels = random_video_inputs(4)
    live = model.start_live_video((36, 64))
    with pytest.raises(ValueError, match=r"size \(720, 1280\)"):
        live.append(pixels["pixel_values_videos"], pixels["pixel_values_videos_dino"], video_sizes=(720, 1280))
    with pytest.raises(ValueError, match="`pixel_values_videos` must have shape"):
        live.append(pixels["pixel_values_videos"][:, :, :100], pixels["pixel_values_videos_dino"])
