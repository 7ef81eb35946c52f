"""Behaviour of the pure compression functions on hand-made inputs."""

from __future__ import annotations

import pytest
import torch

from longvu_hf.modeling import compression as C


def scene(seed: int, tokens: int = 6, dim: int = 8) -> torch.Tensor:
    return torch.randn(tokens, dim, generator=torch.Generator().manual_seed(seed))


def test_identical_frames_are_dropped_and_cuts_kept():
    # 16 frames of scene 0, except a scene cut at frame 3 (scene 1): the cut and the middle frame survive.
    frames = torch.stack([scene(1) if i == 3 else scene(0) for i in range(16)])
    selection = C.select_frames(frames, threshold=0.83, window_size=16, max_frames=400)
    assert selection.indices.tolist() == [3, 8]
    assert len(selection.scores) == 1 and selection.scores[0].shape == (16,)
    torch.testing.assert_close(selection.features, frames[[3, 8]])


def test_middle_frame_of_every_window_is_kept():
    frames = scene(0).expand(40, -1, -1).clone()  # all identical: only the forced middles remain
    kept = C.select_frames(frames, threshold=0.83, window_size=16, max_frames=400).indices
    assert kept.tolist() == [8, 24, 36]  # windows [0,16), [16,32), [32,40): middles 8, 24, 32+4


@pytest.mark.parametrize("num_frames", [7, 16, 40, 1000])
def test_selection_over_chunks_equals_the_whole_video(num_frames):
    # The model encodes DINOv2 chunk by chunk and selects as the chunks arrive: same frames, features and scores.
    base = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(1))
    frames = base + 0.3 * torch.randn(num_frames, 6, 8, generator=torch.Generator().manual_seed(2))
    whole = C.select_frames(frames, 0.83, 16, 400)
    for chunk_size in (16, 48):
        chunked = C.select_frames((frames[s : s + chunk_size] for s in range(0, num_frames, chunk_size)), 0.83, 16, 400)
        assert torch.equal(chunked.indices, whole.indices) and torch.equal(chunked.features, whole.features)
        assert all(torch.equal(a, b) for a, b in zip(chunked.scores, whole.scores))
    held = C.select_frames(iter([frames]), 0.83, 16, 400, max_features_held=len(whole.indices) - 1)
    assert held.features is None and torch.equal(held.indices, whole.indices)
    with pytest.raises(ValueError, match="partial window"):
        C.select_frames(iter([frames[:5], frames[5:]]), 0.83, 16, 400)


def test_the_model_selects_frames_with_select_frames(monkeypatch):
    from longvu_hf.modeling import video_encoder

    from tiny_model import make_tiny_model

    model = make_tiny_model(dino_window_size=4, vision_chunk_size=8)
    calls = []
    original = C.select_frames
    monkeypatch.setattr(video_encoder.C, "select_frames", lambda *a, **k: calls.append(1) or original(*a, **k))
    pixels = torch.randint(0, 256, (20, 3, 378, 378), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        indices, features, reduced = model.model.video_encoder.select_video_frames(pixels, frame_budget=10)
        expected = original(model.model.video_encoder.dino_features(pixels), model.config.dino_threshold, 4,
                            model.config.max_frames_after_selection)
    assert calls and reduced and torch.equal(indices, expected.indices)
    torch.testing.assert_close(features, expected.features)


def test_window_scores_are_mean_cosine_similarities():
    a, b = scene(0), scene(1)
    window = torch.stack([a, a, b])
    flat = window.flatten(1)
    flat = flat / flat.norm(dim=1, keepdim=True)
    expected = (flat @ flat.T).mean(1)
    torch.testing.assert_close(C.dino_window_scores(window), expected)
    assert C.select_frames_in_window(torch.tensor([0.9, 0.9, 0.9]), 0.83).tolist() == [1]
    assert C.select_frames_in_window(torch.tensor([0.1, 0.9, 0.95, 0.2]), 0.83).tolist() == [0, 2, 3]


def test_cap_400_is_uniform_like_the_reference():
    indices = torch.arange(1000) * 3
    capped = C.cap_frame_indices(indices, 400)
    assert len(capped) == 400
    assert capped.tolist() == [int(i * 1000 / 400) * 3 for i in range(400)]
    assert C.cap_frame_indices(indices[:10], 400).tolist() == indices[:10].tolist()


def test_cap_applies_to_long_videos_only_after_selection():
    frames = torch.randn(1000, 2, 4, generator=torch.Generator().manual_seed(0))  # nothing alike: all kept
    kept = C.select_frames(frames, threshold=0.83, window_size=16, max_frames=400).indices
    assert len(kept) == 400 and kept.tolist() == sorted(kept.tolist())


@pytest.mark.parametrize(
    "size_passed, grid, tokens",
    [
        ((720, 1280), (12, 6), 84),  # a 16:9 video as the reference passes it: (H, W) read as (W, H)
        ((1280, 720), (6, 12), 78),  # the same video with the correct (W, H)
        ((480, 640), (12, 10), 132),
        ((500, 500), (12, 12), 156),
    ],
)
def test_unpadding_table_of_the_reference(size_passed, grid, tokens):
    features = torch.randn(2, 12, 12, 4)
    unpadded = C.unpad_grid(features, size_passed)
    assert tuple(unpadded.shape[1:3]) == grid
    with_newlines = C.add_row_newlines(unpadded, torch.ones(4))
    assert with_newlines.shape == (2, tokens, 4)
    # the newline closes every row
    assert torch.equal(with_newlines[0, grid[1]], torch.ones(4))


def test_lowres_unpadding_uses_the_reference_size_division():
    assert C.lowres_original_size((720, 1280), 12, 8) == (480, 853)
    low = C.unpad_grid(torch.randn(1, 8, 8, 2), C.lowres_original_size((720, 1280), 12, 8))
    assert tuple(low.shape[1:3]) == (8, 4)


def test_padding_key_mask_masks_the_padded_border():
    mask = C.padding_key_mask(24, (1280, 720))  # landscape (W, H): rows at top and bottom are padding
    assert mask.all(dim=1).sum() == 14 and not mask[0].any() and not mask[-1].any()
    assert C.padding_key_mask(24, (300, 300)).all()


def test_budgets_and_resolution_flags():
    budget = C.visual_budget(8192, 40, 16)
    assert budget == 8136
    assert C.frame_budget(budget, 144) == 56 and C.frame_budget(budget, 64) == 127
    assert C.frame_budget(10, 64) == 1
    assert C.resolution_flags(20, budget, 144, 64) == (False, True)
    assert C.resolution_flags(100, budget, 144, 64) == (True, True)
    assert C.resolution_flags(200, budget, 144, 64) == (False, False)


def test_reference_mixing_example():
    # docs/reference.md §5: 100 frames, 16:9 video, 40 text tokens -> 94 full-res frames + 6 low-res = 8136 tokens.
    budget = C.visual_budget(8192, 40, 16)
    num_high = C.num_high_res_frames(budget, 100 * 40, 84, 40)
    assert num_high == 94
    assert num_high * 84 + (100 - num_high) * 40 <= budget
    assert C.num_high_res_frames(100, 200, 84, 40) == 0


def test_query_scores_pick_the_relevant_frames_in_temporal_order():
    query = torch.zeros(3, 4)
    query[:, 0] = 1.0
    frames = torch.zeros(5, 2, 4)
    frames[1, :, 0] = 3.0
    frames[4, :, 0] = 2.0
    frames[2, :, 0] = 1.0
    scores = C.query_frame_scores(frames, query)
    assert scores.tolist() == [0.0, 3.0, 1.0, 0.0, 2.0]
    assert C.pick_high_res_frames(scores, 2).tolist() == [1, 4]
    assert C.pick_high_res_frames(scores, 10).tolist() == [0, 1, 2, 3, 4]
    high = torch.stack([torch.full((3, 4), 10.0), torch.full((3, 4), 40.0)])  # frames 1 and 4 at full resolution
    tokens, counts = C.mix_resolutions(high, frames, torch.tensor([1, 4]))
    assert counts == [2, 3, 2, 2, 3] and tokens.shape == (12, 4)
    assert tokens[2:5].eq(10.0).all() and tokens[9:].eq(40.0).all() and torch.equal(tokens[:2], frames[0])
    with pytest.raises(ValueError, match="high_res_frames"):
        C.mix_resolutions(torch.ones(5, 3, 4), frames, torch.tensor([1, 4]))


@pytest.mark.parametrize("size_wh", [(16, 9), (9, 16), (4, 3), (1, 1), (100, 7)])
def test_tokens_per_unpadded_frame_counts_what_unpadding_and_newlines_produce(size_wh):
    grid = torch.zeros(1, 12, 12, 2)
    produced = C.add_row_newlines(C.unpad_grid(grid, size_wh), torch.zeros(2)).shape[1]
    assert C.tokens_per_unpadded_frame(12, size_wh) == produced


def test_stc_keeps_anchor_frames_whole_and_drops_repeats():
    anchor = scene(0, tokens=5)
    changed = anchor.clone()
    changed[2] = -changed[2]  # one token changes: similarity -1
    frames = torch.stack([anchor, anchor, changed, scene(3, tokens=5)] * 3)  # 12 frames: chunks of 8 and 4
    keep = C.stc_keep_mask(frames, threshold=0.7, window_size=8)
    assert keep[0].all() and keep[8].all()  # anchors whole
    assert not keep[1].any() and not keep[9].any()  # exact repeats dropped
    assert keep[2].tolist() == [False, False, True, False, False]
    tokens, counts, force_remove = C.spatial_token_compression(frames, 0.7, 8, budget=10_000)
    assert force_remove == 0 and sum(counts) == len(tokens) == int(keep.sum())
    assert counts[0] == 5 and counts[8] == 5


def test_stc_forced_truncation_and_budget_never_exceeded():
    frames = torch.randn(20, 7, 4, generator=torch.Generator().manual_seed(1))
    for budget in (1, 13, 50, 99, 139, 140, 500):
        tokens, counts, force_remove = C.spatial_token_compression(frames, threshold=2.0, window_size=8, budget=budget)
        assert len(tokens) <= budget
        assert sum(counts) == len(tokens)
        if budget < 140:
            # every chunk lost its last `force_remove` tokens: the reference's `chunk[:-force_remove]`
            assert force_remove == -(-(140 - budget) // 3)


def test_stc_truncation_matches_a_python_loop():
    frames = torch.randn(19, 5, 3, generator=torch.Generator().manual_seed(2))
    frames[3] = frames[0]
    budget = 40
    keep = C.stc_keep_mask(frames, 0.5, 8)
    chunks = [frames[s : s + 8][keep[s : s + 8]] for s in range(0, 19, 8)]
    total = sum(len(c) for c in chunks)
    force_remove = -(-(total - budget) // len(chunks))
    expected = torch.cat([c[:-force_remove] for c in chunks])[:budget]
    tokens, _, ours = C.spatial_token_compression(frames, 0.5, 8, budget)
    assert ours == force_remove
    torch.testing.assert_close(tokens, expected)
