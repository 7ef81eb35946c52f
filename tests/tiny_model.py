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
    times (exact duplicates, which DINO selection drops)."""
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
