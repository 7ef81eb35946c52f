"""Fast unit tests (no towers, milliseconds) of the bookkeeping around frame selection: which aggregator rows reused
features hand out, when features cannot serve a call, the per-call settings, and the live video's windows, memory, cap
and snapshots (on a stand-in model whose "DINOv2" sees each scene as one exact direction).

They are the test selection of the CI mutation run (`tests/mutation/run_mutation.py`); `test_selection_paths.py`
checks the same paths end to end on the tiny model.
"""

from __future__ import annotations

import types

import pytest
import torch

from longvu_hf.modeling import live_video
from longvu_hf.modeling.configuration_longvu import CompressionSettings
from longvu_hf.modeling.live_video import LongVULiveVideo
from longvu_hf.modeling.video_features import EncodedVideo, settings_difference
from longvu_hf.modeling.compression_report import VideoBudget

from tiny_model import predict_kept_frames

# ------------------------------------------------------------------------------------------------------------------
# EncodedVideo.frames_for: the rows of the right frames
# ------------------------------------------------------------------------------------------------------------------


def encoded(num_frames, candidates, selected, all_frames_kept):
    """An EncodedVideo whose aggregator row for frame f holds the value f, so a row names its frame."""
    candidates = torch.tensor(candidates)
    return EncodedVideo(num_frames, (36, 64), candidates, candidates.float().view(-1, 1, 1).expand(-1, 2, 3).clone(),
                        torch.tensor(selected), all_frames_kept)


def rows(sva):
    return sva[:, 0, 0].long().tolist()


def test_features_holding_every_frame_serve_both_outcomes():
    video = encoded(6, [0, 1, 2, 3, 4, 5], [1, 4], all_frames_kept=True)
    indices, sva = video.frames_for(selection_runs=True)
    assert indices.tolist() == [1, 4] and rows(sva) == [1, 4]
    indices, sva = video.frames_for(selection_runs=False)
    assert indices.tolist() == list(range(6)) and rows(sva) == list(range(6))


def test_features_holding_the_selected_frames_hand_out_their_rows():
    video = encoded(40, [8, 24, 30, 31], [8, 24, 30, 31], all_frames_kept=False)
    indices, sva = video.frames_for(selection_runs=True)
    assert indices.tolist() == [8, 24, 30, 31] and rows(sva) == [8, 24, 30, 31]
    with pytest.raises(ValueError, match="hold only the DINOv2-selected frames"):
        video.frames_for(selection_runs=False)
    # rows are found by position among the candidates, whatever subset is asked for
    subset = encoded(12, [0, 2, 3, 7, 11], [2, 7, 11], all_frames_kept=False)
    indices, sva = subset.frames_for(selection_runs=True)
    assert indices.tolist() == [2, 7, 11] and rows(sva) == [2, 7, 11]


# ------------------------------------------------------------------------------------------------------------------
# settings_difference: when encoded features cannot serve a call
# ------------------------------------------------------------------------------------------------------------------


def test_features_serve_calls_with_as_much_room_or_less():
    made = {"dino_threshold": 0.83, "max_context_length": 1000, "context_margin": 16}
    assert settings_difference(made, dict(made)) == []
    assert settings_difference(made, {**made, "max_context_length": 999}) == []
    assert settings_difference(made, {**made, "max_context_length": 1004, "context_margin": 20}) == []  # same room
    assert settings_difference(made, {**made, "context_margin": 17}) == []
    more_room = settings_difference(made, {**made, "max_context_length": 1001})
    assert more_room == ["max_context_length - context_margin = 984 (this call: 985, which may keep frames the "
                         "features do not hold)"]
    assert settings_difference(made, {**made, "context_margin": 15}) != []
    assert settings_difference(made, {**made, "dino_threshold": 0.8}) == ["dino_threshold 0.83 (this call: 0.8)"]
    both = settings_difference(made, {"dino_threshold": 0.9, "max_context_length": 2000, "context_margin": 16})
    assert len(both) == 2


# ------------------------------------------------------------------------------------------------------------------
# CompressionSettings
# ------------------------------------------------------------------------------------------------------------------

CONFIG = types.SimpleNamespace(max_context_length=8192, context_margin=16, dino_threshold=0.83, stc_threshold=0.7)


def test_settings_from_a_value():
    assert CompressionSettings.from_value(None) == CompressionSettings()
    given = CompressionSettings(max_context_length=300)
    assert CompressionSettings.from_value(given) is given or CompressionSettings.from_value(given) == given
    assert CompressionSettings.from_value({"stc_threshold": 0.5}) == CompressionSettings(stc_threshold=0.5)
    # overrides that are not None win; None leaves the value
    merged = CompressionSettings.from_value({"max_visual_tokens": 10, "stc_threshold": 0.5}, max_visual_tokens=20,
                                            stc_threshold=None)
    assert merged == CompressionSettings(max_visual_tokens=20, stc_threshold=0.5)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['max_context'\]; known: \['max_context_length'"):
        CompressionSettings.from_value({"max_context": 300})
    with pytest.raises(ValueError, match="must be a CompressionSettings or a dict, got list"):
        CompressionSettings.from_value([300])


def test_settings_resolve_from_the_config():
    assert CompressionSettings().resolve(CONFIG) == CompressionSettings(8192, 16, None, 0.83, 0.7)
    given = CompressionSettings(max_context_length=300, context_margin=0, max_visual_tokens=5, dino_threshold=0.5,
                                stc_threshold=0.6)
    assert given.resolve(CONFIG) == given
    assert CompressionSettings(context_margin=0).resolve(CONFIG).context_margin == 0  # 0 is a value, not "unset"
    assert CompressionSettings(max_context_length=1).resolve(CONFIG).max_context_length == 1
    assert CompressionSettings(max_visual_tokens=1).resolve(CONFIG).max_visual_tokens == 1
    assert CONFIG.max_context_length == 8192  # the config is never written


@pytest.mark.parametrize("field, value, message", [
    ("max_context_length", 0, "`max_context_length` must be a positive number of tokens, got 0"),
    ("context_margin", -1, "`context_margin` must be 0 or more, got -1"),
    ("max_visual_tokens", 0, "`max_visual_tokens` must be at least 1, got 0"),
])
def test_settings_refuse_values_out_of_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        CompressionSettings(**{field: value}).resolve(CONFIG)


# ------------------------------------------------------------------------------------------------------------------
# The live video's bookkeeping, on a stand-in model
# ------------------------------------------------------------------------------------------------------------------


class StandInModel:
    """What `LongVULiveVideo` uses of `LongVUVideoEncoder`, without towers: a frame holds `[scene, frame index]`; its
    "DINOv2 feature" is the scene's own unit vector (duplicates score exactly 1, other scenes exactly 0), and its
    "aggregator output" is `[frame index, scene]`, the scene read from the DINOv2 feature it was given, so a stored
    row names its frame. Every call's arguments are recorded."""

    def __init__(self, window=4, cap=5, largest=8):
        vision = types.SimpleNamespace(image_size=384)
        self.config = types.SimpleNamespace(dino_window_size=window, max_frames_after_selection=cap,
                                            vision_config=vision, dino_image_size=378)
        self.largest = largest
        self.encoded = []  # frame indices that went through "SigLIP", call by call
        self.calls = []  # (what, arguments) of the other calls

    def any_prompt_budget(self, settings):
        self.calls.append(("budget", settings))
        return VideoBudget(select_budget=0, splice_budget=0, selection_frame_budget=self.largest)

    def check_pixels(self, pixels, size, name):
        self.calls.append(("check", pixels[:, 1, 0, 0].tolist(), size, name))

    def dino_features(self, frames):
        return torch.nn.functional.one_hot(frames[:, 0, 0, 0].long(), 26).float().unsqueeze(1)

    def encode_siglip(self, frames):
        self.encoded.append(frames[:, 1, 0, 0].long().tolist())
        return frames, None

    def size_as_reference_reads_it(self, size, is_video):
        return ("as read", size, is_video)

    def aggregate(self, siglip, dino, size_wh):
        self.calls.append(("aggregate", size_wh))
        return torch.stack([siglip[:, 1, 0, 0].float(), dino[:, 0].argmax(-1).float()], dim=-1).unsqueeze(1)


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(live_video, "model_fingerprint",
                        lambda model: "f" * 64 if isinstance(model, StandInModel) else "0" * 64)
    return StandInModel()


SETTINGS = CompressionSettings(max_context_length=529, context_margin=16, dino_threshold=0.83)


def frames_of(scenes: str, start: int = 0) -> torch.Tensor:
    scenes = scenes.replace(" ", "")
    # (frames, 2, 1, 1) like the processor's (frames, channels, height, width): [scene, frame index]
    return torch.tensor([[ord(s) - ord("A"), start + i] for i, s in enumerate(scenes)]).view(-1, 2, 1, 1)


def feed(live, scenes: str, start: int, chunk: int = 3):
    frames = frames_of(scenes, start)
    for s in range(0, len(frames), chunk):
        live.append(frames[s : s + chunk], frames[s : s + chunk])


def check(features, scenes: str, model, all_frames_kept: bool):
    """The snapshot holds the predicted frames, each with its own row."""
    (video,) = features
    scenes = scenes.replace(" ", "")
    _, kept = predict_kept_frames(scenes, model.config.dino_window_size, SETTINGS.dino_threshold,
                                  model.config.max_frames_after_selection)
    assert video.num_input_frames == len(scenes) and video.size_hw == (36, 64)
    assert video.selected_indices.tolist() == kept
    assert video.all_frames_kept is all_frames_kept
    expected = list(range(len(scenes))) if all_frames_kept else kept
    assert video.candidate_indices.tolist() == expected
    assert video.sva[:, 0, 0].long().tolist() == expected
    assert video.sva[:, 0, 1].long().tolist() == [ord(scenes[i]) - ord("A") for i in expected]
    assert all(call == ("aggregate", ("as read", (36, 64), True)) for call in model.calls if call[0] == "aggregate")
    assert features.settings == {"dino_threshold": 0.83, "max_context_length": 529, "context_margin": 16}
    assert features.fingerprint == "f" * 64


def test_live_windows_memory_and_snapshots(stand_in):
    live = LongVULiveVideo(stand_in, (36, 64), SETTINGS)
    assert stand_in.calls == [("budget", SETTINGS)] and live.budget.selection_frame_budget == 8
    with pytest.raises(ValueError, match="No frame has arrived yet"):
        live.features()
    feed(live, "AAA", 0)
    assert live.kept == {} and live.num_frames == 0 and stand_in.encoded == []  # no window is complete
    check(live.features(), "AAA", stand_in, all_frames_kept=True)
    assert live.kept == {} and len(live.pending_pixels) == 3  # the snapshot scored the pending frames for itself

    stand_in.encoded.clear()
    feed(live, "A", 3)  # window 1 closes below the largest frame budget (8): every frame is kept and encoded
    assert stand_in.encoded == [[0, 1, 2, 3]] and sorted(live.kept) == [0, 1, 2, 3] and live.num_frames == 4
    check(live.features(), "AAAA", stand_in, all_frames_kept=True)

    feed(live, "AAA", 4)
    check(live.features(), "AAAA AAA", stand_in, all_frames_kept=True)  # 7 frames: still below the budget
    stand_in.encoded.clear()
    feed(live, "A", 7)  # window 2 closes at the budget: only its kept frame is encoded, window 1's others go
    assert stand_in.encoded == [[6]] and sorted(live.kept) == [2, 6]
    check(live.features(), "AAAA AAAA", stand_in, all_frames_kept=False)

    feed(live, "BC", 8)
    check(live.features(), "AAAA AAAA BC", stand_in, all_frames_kept=False)
    assert sorted(live.kept) == [2, 6] and len(live.pending_pixels) == 2
    feed(live, "DE", 10)  # window 3 closes: 4 distinct scenes, all kept
    assert sorted(live.kept) == [2, 6, 8, 9, 10, 11] and live.pending_pixels == []
    check(live.features(), "AAAA AAAA BCDE", stand_in, all_frames_kept=False)


def test_live_cap_applies_to_the_survivors(stand_in):
    live = LongVULiveVideo(stand_in, (36, 64), SETTINGS)
    feed(live, "AAAA BCDE FG", 0, chunk=5)  # 7 survivors, the cap keeps 5 (uniformly)
    features = live.features()
    assert predict_kept_frames("AAAABCDEFG", 4, 0.83, 5) == ([2, 4, 5, 6, 7, 8, 9], [2, 4, 5, 7, 8])
    check(features, "AAAA BCDE FG", stand_in, all_frames_kept=False)
    short = LongVULiveVideo(StandInModel(cap=1), (36, 64), SETTINGS)
    feed(short, "BCD", 0)  # shorter than a window: never capped (as the one-shot path)
    assert short.features()[0].selected_indices.tolist() == [0, 1, 2]


def test_live_inputs(stand_in):
    live = LongVULiveVideo(stand_in, (36, 64), SETTINGS)
    frames, frames_dino = frames_of("AAAAB"), frames_of("AAAAB", start=10)
    stand_in.calls.clear()
    live.append(frames.unsqueeze(0), frames_dino.unsqueeze(0), video_sizes=torch.tensor([[36, 64]]))  # 5-D: 1 video
    assert live.num_frames == 4 and len(live.pending_pixels) == 1
    assert stand_in.calls[:2] == [("check", [0, 1, 2, 3, 4], 384, "pixel_values_videos"),
                                  ("check", [10, 11, 12, 13, 14], 378, "pixel_values_videos_dino")]
    with pytest.raises(ValueError, match=r"size \(64, 36\) \(height, width\), but this live video is \(36, 64\)"):
        live.append(frames, frames, video_sizes=(64, 36))
    with pytest.raises(ValueError, match="`pixel_values_videos` holds 5 frames but `pixel_values_videos_dino` 4"):
        live.append(frames, frames[:4])
    assert live.num_frames == 4 and len(live.pending_pixels) == 1  # refused frames change nothing


# ------------------------------------------------------------------------------------------------------------------
# Edges of the selection functions
# ------------------------------------------------------------------------------------------------------------------


def test_the_cap_applies_from_one_whole_window_on():
    from longvu_hf.modeling import compression as C

    survivors = torch.arange(4)
    assert C.cap_selected_frames(survivors, num_frames=4, window_size=4, max_frames=3).tolist() == [0, 1, 2]
    assert C.cap_selected_frames(survivors, num_frames=3, window_size=4, max_frames=3).tolist() == [0, 1, 2, 3]
    assert C.cap_frame_indices(torch.tensor([5, 7, 9]), 3).tolist() == [5, 7, 9]  # exactly the cap: all kept


def test_selection_of_nothing_is_an_empty_int64_selection():
    from longvu_hf.modeling import compression as C

    indices, scores = C.select_frames_in_windows(torch.zeros(0, 1, 2), 0.83, 4)
    assert indices.dtype == torch.int64 and indices.shape == (0,) and scores == []
    selection = C.select_frames(iter([]), 0.83, 4, 400)
    assert selection.indices.dtype == torch.int64 and selection.indices.shape == (0,) and selection.features is None


def test_kept_features_are_held_up_to_the_limit_and_dropped_past_it():
    from longvu_hf.modeling import compression as C

    frames = torch.nn.functional.one_hot(torch.arange(12) % 6, 6).float().unsqueeze(1)  # every frame kept
    chunks = lambda: (frames[s : s + 4] for s in range(0, 12, 4))  # noqa: E731
    assert C.select_frames(chunks(), 0.83, 4, 400, max_features_held=12).features.shape == (12, 1, 6)  # 12 = limit
    dropped = C.select_frames(chunks(), 0.83, 4, 400, max_features_held=3)  # past it after the first chunk
    assert dropped.features is None and dropped.indices.tolist() == list(range(12))


def test_the_fingerprint_covers_every_value_of_small_parameters():
    from longvu_hf.modeling.video_features import model_fingerprint

    towers = {name: torch.nn.Linear(1, 2) for name in ("vision_tower", "dino_tower", "vision_aggregator")}
    model = types.SimpleNamespace(config=types.SimpleNamespace(to_diff_dict=lambda: {"model_type": "longvu"}),
                                  **towers)
    before = model_fingerprint(model)
    with torch.no_grad():
        towers["dino_tower"].bias[1] += 1  # the last value of a 2-value parameter
    assert model_fingerprint(model) != before
