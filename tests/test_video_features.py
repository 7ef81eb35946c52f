"""Encode a video once, ask it many questions: `encode_videos` + `video_features=` equal the pixel path.

The videos are made of scenes (`tiny_model.scene_video_inputs`) so that DINOv2 selection really drops frames where a
case says it selects: reusing features then has to pick the aggregator rows of the right frames.
"""

from __future__ import annotations

import json

import pytest
import torch

from longvu_hf import LongVUVideoFeatures
from longvu_hf.modeling.video_features import model_fingerprint

from tiny_model import (
    TINY_VIDEO_TOKEN_ID as V,
    assert_decision,
    make_tiny_model,
    predict_kept_frames,
    random_video_inputs,
    scene_video_inputs,
)

A16 = "A" * 16  # a whole DINOv2 window of one scene: selection keeps its middle frame only
# video (frames, or scenes for `scene_video_inputs`), prompt length, max_context_length, and what the prompts of the
# case must reach (path, whether selection ran) for prompt lengths (length, 2, length + 7)
CASES = {
    "none": (3, 3, 1024, {("none", False)}),  # few frames, all at full resolution
    "mix": (12, 3, 1024, {("mix", False)}),  # low resolution for all, the query upgrades some
    # every prompt selects (9 of 24 frames kept), then STC with truncation; the features hold the kept frames only
    "stc": (A16 + "BCDEFGHI", 3, 500, {("stc", True)}),
    # a 10-frame video selection reduces to frames 5 and 9: a 40-token prompt leaves room for all 10 frames (no
    # selection), a 47-token one does not; one encoding, which holds every frame, serves both
    "selection-by-prompt": ("AAAAAAAAAB", 40, 760, {("mix", False), ("none", True)}),
}


def prompt(length: int, seed: int) -> torch.Tensor:
    words = torch.randint(5, 100, (length,), generator=torch.Generator().manual_seed(seed))
    return torch.cat([words[:1], torch.tensor([V]), words[1:]]).unsqueeze(0)


def video(spec, seed: int = 0) -> dict:
    return random_video_inputs(spec, seed=seed) if isinstance(spec, int) else scene_video_inputs(spec, 36, 64, seed)


@pytest.fixture(scope="module")
def model():
    return make_tiny_model()


@pytest.mark.parametrize("case", list(CASES))
def test_features_answer_like_the_pixels(model, case):
    spec, length, context, expected_paths = CASES[case]
    pixels = video(spec)
    settings = {"max_context_length": context}
    features = model.encode_videos(**pixels, compression_settings=settings)
    paths = set()
    for seed, prompt_length in enumerate((length, 2, length + 7)):  # several questions on one encoding
        ids = prompt(prompt_length, seed)
        with torch.no_grad():
            from_pixels = model(input_ids=ids, **pixels, compression_settings=settings)
            from_features = model(input_ids=ids, video_features=features, compression_settings=settings)
        report = from_pixels.compression[0]
        assert from_features.compression[0] == report
        torch.testing.assert_close(from_features.logits, from_pixels.logits, rtol=1e-4, atol=1e-5)
        greedy_pixels = model.generate(input_ids=ids, **pixels, max_new_tokens=4, do_sample=False,
                                       compression_settings=settings)
        greedy_features = model.generate(input_ids=ids, video_features=features, max_new_tokens=4, do_sample=False,
                                         compression_settings=settings)
        assert torch.equal(greedy_features, greedy_pixels)
        paths.add((report["path"], report["frame_selection_ran"]))
        if report["frame_selection_ran"]:  # the data really drops frames (checked against the scenes, not the code)
            assert_decision(report, spec, "drops", model.config, context - ids.shape[1] - 16)
    assert paths == expected_paths


def test_the_frame_cap_path():
    # Selection drops frames and more survive than the cap (uniform): the cap applies to the encoded frames as to the
    # pixels.
    settings = {"max_context_length": 300}
    capped = make_tiny_model(max_frames_after_selection=6, dino_window_size=4)
    scenes = "AAAA BCDE FGHI JJJJ KLMN"
    pixels = scene_video_inputs(scenes, 36, 64)
    features = capped.encode_videos(**pixels, compression_settings=settings)
    ids = prompt(3, 0)
    with torch.no_grad():
        a = capped(input_ids=ids, **pixels, compression_settings=settings)
        b = capped(input_ids=ids, video_features=features, compression_settings=settings)
    assert_decision(a.compression[0], scenes, "cap", capped.config, 300 - 3 - 16)
    assert a.compression[0] == b.compression[0]
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-5)


IDENTITY_MODULES = ("vision_tower", "dino_tower", "vision_aggregator")  # what encoded features come from


@pytest.mark.parametrize("module", IDENTITY_MODULES)
@pytest.mark.parametrize("which", ["first", "last", "largest"])
def test_the_fingerprint_covers_every_tower_and_the_aggregator(model, module, which):
    # One value of one module changes (the first value of its first parameter, or the last value of its last or of
    # its largest parameter): features encoded before are stale, so the fingerprint must change.
    parameters = list(getattr(model.model.video_encoder, module).parameters())
    parameter = {"first": parameters[0], "last": parameters[-1],
                 "largest": max(parameters, key=lambda p: p.numel())}[which]
    assert which != "largest" or parameter.numel() > 1000  # far past the first values
    position = 0 if which == "first" else parameter.numel() - 1
    before = model_fingerprint(model.model.video_encoder)
    saved = parameter.detach().clone()
    try:
        with torch.no_grad():
            parameter.view(-1)[position] += 0.5
        assert model_fingerprint(model.model.video_encoder) != before
    finally:
        with torch.no_grad():
            parameter.copy_(saved)
    assert model_fingerprint(model.model.video_encoder) == before


def test_the_fingerprint_ignores_what_features_do_not_depend_on(model):
    # The projector, the newline embedding and the language model act after the aggregator; per-call settings are
    # checked on their own. Changing them keeps features usable, with the changed model's answers.
    pixels = random_video_inputs(3, seed=4)
    features = model.encode_videos(**pixels)
    changed = make_tiny_model(seed=1, dino_threshold=0.5, stc_threshold=0.6, max_context_length=2048, context_margin=8)
    for name in ("vision_tower", "dino_tower", "vision_aggregator"):
        getattr(changed.model.video_encoder, name).load_state_dict(getattr(model.model.video_encoder, name).state_dict())
    changed.config.dino_threshold = model.config.dino_threshold  # the call's threshold must match the encoding's
    assert model_fingerprint(changed.model.video_encoder) == features.fingerprint
    ids = prompt(3, 0)
    settings = {"max_context_length": 1024, "context_margin": 16}
    with torch.no_grad():
        reused = changed(input_ids=ids, video_features=features, compression_settings=settings)
        reference = changed(input_ids=ids, **pixels, compression_settings=settings)
    torch.testing.assert_close(reused.logits, reference.logits, rtol=1e-4, atol=1e-5)
    # what selection depends on is part of the identity
    for field, value in (("dino_window_size", 8), ("max_frames_after_selection", 100), ("num_queries", 576)):
        assert model_fingerprint(make_tiny_model(**{field: value}).model.video_encoder) != features.fingerprint, field


def test_the_fingerprint_survives_saving_and_loading_the_model(model, tmp_path):
    # A model loaded from its folder writes `dtype: "float32"` into its sub-configs where the model built in code has
    # None: bookkeeping, not identity. Features encoded before saving are served after loading.
    from longvu_hf import LongVUForConditionalGeneration

    model.save_pretrained(tmp_path / "model")
    loaded = LongVUForConditionalGeneration.from_pretrained(tmp_path / "model")
    assert model_fingerprint(loaded.model.video_encoder) == model_fingerprint(model.model.video_encoder)


def test_the_fingerprint_does_not_depend_on_the_order_of_config_fields(model):
    import types

    fingerprints = []
    for names in (("aa_extra", "zz_extra"), ("zz_extra", "aa_extra")):
        config = type(model.config).from_dict(model.config.to_dict())
        for name in names:
            setattr(config, name, len(name))
        towers = {name: getattr(model.model.video_encoder, name) for name in ("vision_tower", "dino_tower", "vision_aggregator")}
        fingerprints.append(model_fingerprint(types.SimpleNamespace(config=config, **towers)))
    assert fingerprints[0] == fingerprints[1] != model_fingerprint(model.model.video_encoder)


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
    scenes = A16 + "B" * 14 + "CD" + "EFGHIJKL"  # selection keeps frames 8, 24, 30, 31, 32..39
    pixels = scene_video_inputs(scenes, 36, 64, seed=chunk)
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
        if one_shot.compression[0]["frame_selection_ran"] and stop > 1:
            assert_decision(one_shot.compression[0], scenes[:stop], "drops", model.config, context - 3 - 16)
        checked += 1
    assert checked >= 2
    if context == 300:  # memory: only the frames selection keeps are held once every prompt selects
        assert live.largest_frame_budget < 40
        # the two complete windows' kept frames; the last 8 frames are a window in progress, not encoded yet
        assert sorted(live.kept) == predict_kept_frames(scenes[:32], 16, model.config.dino_threshold, 400)[1]


def test_live_video_refuses_other_frames(model):
    pixels = random_video_inputs(4)
    live = model.start_live_video((36, 64))
    with pytest.raises(ValueError, match=r"size \(720, 1280\)"):
        live.append(pixels["pixel_values_videos"], pixels["pixel_values_videos_dino"], video_sizes=(720, 1280))
    with pytest.raises(ValueError, match="`pixel_values_videos` must have shape"):
        live.append(pixels["pixel_values_videos"][:, :, :100], pixels["pixel_values_videos_dino"])
