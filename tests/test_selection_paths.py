"""Videos that DINOv2 selection really reduces, through the one-shot, encode-once and live paths.

Each video (`tiny_model.scene_video_inputs`) is built for one decision and `tiny_model.assert_decision` checks that it
still reaches it: frames dropped, the frame cap hit, and the kept-frame count exactly on each budget boundary (one
below the full-resolution frame budget, on it, on the low-resolution budget, one above). On every one, the features
from `encode_videos` and from a live video fed in chunks that straddle the DINOv2 windows must give the one-shot
report and logits.

Setting (as in `test_mutation_guards.py`): the prompt `[5, V, 7]`, `max_context_length=319` and the margin 16 leave a
selection budget of 300 tokens: 2 frames at full resolution, 4 at low resolution (also where selection starts). The
model has DINOv2 windows of 4 frames and a cap of 5 frames, so that each case takes a few frames.
"""

from __future__ import annotations

import pytest
import torch

from tiny_model import (
    TINY_VIDEO_TOKEN_ID as V,
    assert_decision,
    make_tiny_model,
    predict_kept_frames,
    scene_video_inputs,
)

PROMPT = torch.tensor([[5, V, 7]])
SETTINGS = {"max_context_length": 319}
SELECT_BUDGET = 300

# scenes (one letter per frame, spaces mark the 4-frame windows) -> the decision the video is built for
CASES = {
    "AAAA": "below-full-res-budget",  # 1 kept frame (the window's middle)
    "AAAA BBBB": "at-full-res-budget",  # 2 kept frames: resolution mixing
    "AAAA BC": "drops",  # 3 kept frames, inside the mixing band
    "AAAA BCD": "at-low-res-budget",  # 4 kept frames: all at low resolution
    "AAAA BCDE": "above-low-res-budget",  # 5 kept frames: full resolution and STC
    "AAAA BCDE FG": "cap",  # 7 survivors, the cap keeps 5
}


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(dino_window_size=4, max_frames_after_selection=5)


def one_shot(model, pixels, ids=PROMPT):
    with torch.no_grad():
        return model(input_ids=ids, **pixels, compression_settings=SETTINGS)


def from_features(model, features, ids=PROMPT):
    with torch.no_grad():
        return model(input_ids=ids, video_features=features, compression_settings=SETTINGS)


def live_features(model, pixels, chunk: int):
    live = model.start_live_video(tuple(pixels["video_sizes"][0].tolist()), compression_settings=SETTINGS)
    total = len(pixels["pixel_values_videos"])
    for start in range(0, total, chunk):
        live.append(pixels["pixel_values_videos"][start : start + chunk],
                    pixels["pixel_values_videos_dino"][start : start + chunk], video_sizes=pixels["video_sizes"])
    return live


@pytest.mark.parametrize("scenes", list(CASES))
def test_every_path_reaches_the_decision_the_video_was_built_for(model, scenes):
    pixels = scene_video_inputs(scenes, seed=len(scenes))
    reference = one_shot(model, pixels)
    assert_decision(reference.compression[0], scenes, CASES[scenes], model.config, SELECT_BUDGET)
    encoded = from_features(model, model.encode_videos(**pixels, compression_settings=SETTINGS))
    live = from_features(model, live_features(model, pixels, chunk=3).features())  # chunks straddle the windows
    for name, other in (("encode_videos", encoded), ("live", live)):
        assert other.compression[0] == reference.compression[0], name
        torch.testing.assert_close(other.logits, reference.logits, rtol=1e-4, atol=1e-5, msg=name)


def assert_same_encoding(live, encoded):
    """`LongVULiveVideo.features()` equals `encode_videos` of the frames so far, field by field."""
    (a,), (b,) = live, encoded
    assert (a.num_input_frames, a.size_hw, a.all_frames_kept) == (b.num_input_frames, b.size_hw, b.all_frames_kept)
    assert a.candidate_indices.tolist() == b.candidate_indices.tolist()
    assert a.selected_indices.tolist() == b.selected_indices.tolist()
    torch.testing.assert_close(a.sva, b.sva, rtol=1e-4, atol=1e-5)
    assert live.settings == encoded.settings and live.fingerprint == encoded.fingerprint


def test_a_live_video_forgets_dropped_frames_exactly_at_the_largest_frame_budget(model, monkeypatch):
    # At this context the shortest prompt (the placeholder alone) leaves 512 tokens: 8 low-resolution frames. From the
    # 8th frame on every prompt selects, so the live video keeps only the frames selection keeps, and runs SigLIP and
    # the aggregator on those only; before, it keeps every frame (a prompt may leave room for all of them).
    settings = {"max_context_length": 529}
    scenes = "AAAA AAAA BC"
    pixels = scene_video_inputs(scenes, seed=5)
    live = model.start_live_video((48, 48), compression_settings=settings)
    assert live.budget.selection_frame_budget == 8
    encoded_frames = []
    original = model.model.video_encoder.encode_siglip
    monkeypatch.setattr(model.model.video_encoder, "encode_siglip",
                        lambda frames, *a, **k: encoded_frames.append(len(frames)) or original(frames, *a, **k))

    def feed(start, stop):
        live.append(pixels["pixel_values_videos"][start:stop], pixels["pixel_values_videos_dino"][start:stop])

    def so_far(frames):
        encoded = model.encode_videos(pixels["pixel_values_videos"][:frames], pixels["pixel_values_videos_dino"][:frames],
                                      video_sizes=pixels["video_sizes"], compression_settings=settings)
        encoded_frames.clear()
        return encoded

    feed(0, 7)  # one window closed below the budget: all of its frames are kept
    assert sorted(live.kept) == [0, 1, 2, 3] and encoded_frames == [4]
    features = live.features()
    assert features[0].all_frames_kept and features[0].selected_indices.tolist() == [2, 5]
    assert_same_encoding(features, so_far(7))

    feed(7, 8)  # the 8th frame closes the second window at the budget: only its kept frame is encoded, the rest go
    assert encoded_frames == [1] and sorted(live.kept) == [2, 6]
    features = live.features()
    assert not features[0].all_frames_kept and features[0].candidate_indices.tolist() == [2, 6]
    assert_same_encoding(features, so_far(8))

    feed(8, 10)  # a partial window, scored in the snapshot only
    features = live.features()
    assert sorted(live.kept) == [2, 6]
    assert features[0].candidate_indices.tolist() == predict_kept_frames(scenes, 4, 0.83, 5)[1] == [2, 6, 8, 9]
    assert_same_encoding(features, so_far(10))
