"""Tiny random LongVU models for tests (no network, built in code): `longvu_hf.tiny` with fixed test ids."""

from __future__ import annotations

import torch

from longvu_hf import LongVUConfig, LongVUForConditionalGeneration
from longvu_hf import tiny as longvu_tiny

TINY_VOCAB = 128
TINY_VIDEO_TOKEN_ID = 120
TINY_IMAGE_TOKEN_ID = 121


def tiny_config(
    video_token_id: int = TINY_VIDEO_TOKEN_ID,
    image_token_id: int = TINY_IMAGE_TOKEN_ID,
    vocab_size: int = TINY_VOCAB,
    text_model_type: str = "qwen2",
    **overrides,
) -> LongVUConfig:
    """The package's tiny config (`longvu_hf.tiny.tiny_config`) with the test vocabulary's ids as defaults."""
    return longvu_tiny.tiny_config(video_token_id, image_token_id, vocab_size, text_model_type, **overrides)


def make_tiny_model(tokenizer=None, seed: int = 0, **config_overrides) -> LongVUForConditionalGeneration:
    """A tiny random `LongVUForConditionalGeneration` in eval mode.

    With a `tokenizer`, the vocabulary size and the placeholder ids come from it (`tokenizer.video_token`,
    `tokenizer.image_token`, or "<video>"/"<image>").
    """
    if tokenizer is not None:
        video_token = getattr(tokenizer, "video_token", None) or "<video>"
        image_token = getattr(tokenizer, "image_token", None) or "<image>"
        config_overrides.setdefault("video_token_id", tokenizer.convert_tokens_to_ids(video_token))
        config_overrides.setdefault("image_token_id", tokenizer.convert_tokens_to_ids(image_token))
        config_overrides.setdefault("vocab_size", len(tokenizer))
    torch.manual_seed(seed)
    model = LongVUForConditionalGeneration(tiny_config(**config_overrides))
    return model.eval()


def random_video_inputs(
    num_frames: int, height: int = 36, width: int = 64, seed: int = 0, duplicate_runs: int = 1
) -> dict[str, torch.Tensor]:
    """uint8 pixel inputs for one video, as the processor returns them; each distinct frame repeats `duplicate_runs`
    times (exact duplicates). DINOv2 selection drops a duplicate only when its run fills most of a window (14 of 16
    frames at the 0.83 threshold): for videos that selection really reduces, use `scene_video_inputs`."""
    generator = torch.Generator().manual_seed(seed)
    distinct = -(-num_frames // duplicate_runs)
    siglip = torch.randint(0, 256, (distinct, 3, 384, 384), dtype=torch.uint8, generator=generator)
    dino = torch.randint(0, 256, (distinct, 3, 378, 378), dtype=torch.uint8, generator=generator)
    siglip = siglip.repeat_interleave(duplicate_runs, dim=0)[:num_frames]
    dino = dino.repeat_interleave(duplicate_runs, dim=0)[:num_frames]
    return {
        "pixel_values_videos": siglip,
        "pixel_values_videos_dino": dino,
        "video_num_frames": torch.tensor([num_frames]),
        "video_sizes": torch.tensor([[height, width]]),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Videos built for one compression decision
# ----------------------------------------------------------------------------------------------------------------------
#
# With the tiny random DINOv2, two different random frames have a cosine similarity of about 0.1 (measured: 0.09 to
# 0.12), and a frame plus a little noise has a similarity of 1.000 to the frame. A frame's window score is the mean
# similarity to the window's frames, so in a window of n frames a frame whose scene fills k of them scores between
# k/n + lo * (n - k)/n and k/n + hi * (n - k)/n for the similarity bounds (lo, hi) = SCENE_SIMILARITY. Videos made of
# a few scenes therefore have predictable kept frames; `predict_kept_frames` computes them from the scenes alone (and
# refuses scenes whose scores come too close to the threshold), so tests compare the model against a prediction that
# does not come from the code under test.

SCENE_SIMILARITY = (0.0, 0.2)  # bounds on the DINOv2 similarity of two different scenes (measured about 0.1)
SCENE_NOISE = 3  # grey levels of noise on every frame: frames of one scene differ, DINOv2 still sees them alike


def scene_video_inputs(scenes: str, height: int = 48, width: int = 48, seed: int = 0) -> dict[str, torch.Tensor]:
    """uint8 pixel inputs for one video whose frame i shows scene `scenes[i]` (a letter; spaces are ignored, for
    reading): each scene is a random image, each frame that image plus a little noise. Frames of one scene are not
    equal (a wrong frame's features show in the logits) but DINOv2 scores them as duplicates; see
    `predict_kept_frames`."""
    scenes = scenes.replace(" ", "")
    generator = torch.Generator().manual_seed(seed)
    names = sorted(set(scenes))
    base = {
        name: (torch.randint(0, 256, (3, 384, 384), generator=generator),
               torch.randint(0, 256, (3, 378, 378), generator=generator))
        for name in names
    }

    def noisy(image: torch.Tensor) -> torch.Tensor:
        noise = torch.randint(-SCENE_NOISE, SCENE_NOISE + 1, image.shape, generator=generator)
        return (image + noise).clamp(0, 255).to(torch.uint8)

    siglip = torch.stack([noisy(base[name][0]) for name in scenes])
    dino = torch.stack([noisy(base[name][1]) for name in scenes])
    return {
        "pixel_values_videos": siglip,
        "pixel_values_videos_dino": dino,
        "video_num_frames": torch.tensor([len(scenes)]),
        "video_sizes": torch.tensor([[height, width]]),
    }


def predict_kept_frames(
    scenes: str, window: int, threshold: float, cap: int, margin: float = 0.01
) -> tuple[list[int], list[int]]:
    """The frames DINOv2 selection keeps in a `scene_video_inputs` video, from the scenes alone: `(survivors, kept)`,
    before and after the cap (the reference's rules: per window, a frame is kept when its score is below `threshold`,
    the middle frame always; then a uniform pick of `cap` when the video spans a whole window and more survive).
    Raises ValueError when a score could fall within `margin` of the threshold (the data would not decide)."""
    scenes = scenes.replace(" ", "")
    low, high = SCENE_SIMILARITY
    survivors = []
    for start in range(0, len(scenes), window):
        frames = scenes[start : start + window]
        n = len(frames)
        for position, name in enumerate(frames):
            if position == n // 2:
                survivors.append(start + position)
                continue
            k = frames.count(name)
            lowest, highest = (k + low * (n - k)) / n, (k + high * (n - k)) / n
            if highest < threshold - margin:
                survivors.append(start + position)
            elif lowest < threshold + margin:
                raise ValueError(
                    f"scenes {scenes!r}: frame {start + position} scores {lowest:.3f}..{highest:.3f}, too close to the "
                    f"threshold {threshold} to predict"
                )
    kept = survivors
    if len(scenes) >= window and len(survivors) > cap:
        kept = [survivors[int(i * len(survivors) / cap)] for i in range(cap)]
    return survivors, kept


def frame_budgets(select_budget: int, config) -> tuple[int, int]:
    """(full-resolution, low-resolution) frame budgets of a selection budget, by the reference's integer rule
    (`select_budget // tokens`, at least 1); the low-resolution one is also where DINOv2 selection starts."""
    full, low = config.num_queries, config.lowres_grid_size**2
    return max(1, select_budget // full), max(1, select_budget // low)


DECISIONS = ("drops", "cap", "below-full-res-budget", "at-full-res-budget", "at-low-res-budget", "above-low-res-budget")


def assert_decision(report: dict, scenes: str, decision: str, config, select_budget: int,
                    dino_threshold: float | None = None) -> None:
    """Asserts that a one-video compression `report` for a `scene_video_inputs(scenes)` video keeps the predicted
    frames and reaches the `decision` the video was built for, so that a test cannot silently stop testing it:

    - "drops": selection ran and kept a strict subset of the frames, below the cap;
    - "cap": more frames survived selection than `max_frames_after_selection`, and exactly that many were kept;
    - "below-full-res-budget": one kept frame fewer than the full-resolution frame budget: every frame at full
      resolution (path "none");
    - "at-full-res-budget": exactly that budget: resolution mixing (path "mix");
    - "at-low-res-budget": exactly the low-resolution frame budget: every frame at low resolution (path "none", no
      frame upgraded);
    - "above-low-res-budget": one more: full resolution and STC (path "stc").
    The boundary decisions also require that selection ran and dropped frames.
    """
    if decision not in DECISIONS:
        raise ValueError(f"unknown decision {decision!r}; one of {DECISIONS}")
    scenes = scenes.replace(" ", "")
    threshold = config.dino_threshold if dino_threshold is None else dino_threshold
    cap = config.max_frames_after_selection
    survivors, kept = predict_kept_frames(scenes, config.dino_window_size, threshold, cap)
    assert report["num_input_frames"] == len(scenes)
    assert report["frame_selection_ran"], f"{decision}: frame selection did not run"
    assert report["kept_frame_indices"] == kept, (report["kept_frame_indices"], kept)
    assert len(kept) < len(scenes), f"{decision}: selection kept every frame"
    if decision == "cap":
        assert len(survivors) > cap and len(kept) == cap, (survivors, cap)
        return
    assert len(survivors) <= cap, f"{decision}: the cap was reached ({len(survivors)} survivors, cap {cap})"
    full_frames, low_frames = frame_budgets(select_budget, config)
    expected = {
        "drops": None,
        "below-full-res-budget": (full_frames - 1, "none"),
        "at-full-res-budget": (full_frames, "mix"),
        "at-low-res-budget": (low_frames, "none"),
        "above-low-res-budget": (low_frames + 1, "stc"),
    }[decision]
    if expected is None:
        return
    count, path = expected
    assert len(kept) == count and report["path"] == path, (decision, len(kept), count, report["path"])
    if decision == "below-full-res-budget":
        assert report["high_res_frame_indices"] == kept
    if decision == "at-full-res-budget":
        assert 0 < len(report["high_res_frame_indices"]) < len(kept)
    if decision == "at-low-res-budget":
        assert report["high_res_frame_indices"] == []
