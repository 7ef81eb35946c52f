"""Tiny random LongVU models for tests (no network, built in code)."""

from __future__ import annotations

import torch

from longvu_hf import LongVUConfig, LongVUForConditionalGeneration

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
    """A LongVU config with real input geometry (384/378 px, 24x24 grids, 12x12 queries) and tiny widths."""
    text_config = {
        "model_type": text_model_type,
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "eos_token_id": 2,
        "bos_token_id": 1,
    }
    if text_model_type == "llama":
        text_config["tie_word_embeddings"] = True
    kwargs = {
        "text_config": text_config,
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 384,
            "patch_size": 14,
        },
        "dino_config": {
            "model_type": "dinov2",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "mlp_ratio": 2,
            "use_swiglu_ffn": True,
            "image_size": 518,
            "patch_size": 14,
        },
        "aggregator_hidden_size": 32,
        "aggregator_num_heads": 4,
        "video_token_index": video_token_id,
        "image_token_index": image_token_id,
        "max_context_length": 1024,
    }
    kwargs.update(overrides)
    return LongVUConfig(**kwargs)


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
