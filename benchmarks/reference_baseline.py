"""Baselines for the benchmarks: LongVU's pipeline the way the official code runs it, built from our modules.

The official implementation (`Vision-CAIR/LongVU`, `longvu/cambrian_arch.py`; docs/reference.md §1.3-§5) converts every
sampled frame to float pixels for both encoders up front, runs DINOv2 on all frames in chunks of 64 and keeps all
their features, selects frames window by window, runs SigLIP on the kept frames in chunks of 64, aggregates all kept
frames at once, unpads each frame in a Python loop and applies the query mixing and STC chunk by chunk. The functions
below do the same, step by step (written from the reference's logic, not copied), so the benchmarks can run them
side by side with `longvu_hf` on the same inputs and check that both give the same result.

Nothing here is used by the package itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from longvu_hf.modeling import compression as C
from longvu_hf.modeling.aggregator import window_key_mask

REFERENCE_CHUNK_SIZE = 64  # `encode_images` in the reference hard-codes it


# --------------------------------------------------------------------------------------------------------------------
# Compression steps, loop by loop as in `cambrian_arch.py`
# --------------------------------------------------------------------------------------------------------------------


def reference_select_frames(
    features: torch.Tensor, window_size: int = 16, threshold: float = 0.83, max_frames: int = 400
) -> tuple[torch.Tensor, torch.Tensor]:
    """`select_frame` for one video (docs/reference.md §3): returns the kept indices and the kept features.

    Like the reference, the similarity is computed in the features' own dtype, the kept indices are gathered as a
    Python list of 0-d tensors, and the kept features are copied window by window before the 400-frame cap.
    """
    if len(features) // window_size == 0:
        flat = features.flatten(1, 2)
        flat = flat / torch.norm(flat, dim=1, keepdim=True)
        scores = torch.mean(flat @ flat.T, dim=1)
        scores[len(features) // 2] = 0
        kept = torch.where(scores < threshold)[0]
        return kept, features[kept]
    kept_features, kept_indices = [], []
    for window_number, start in enumerate(range(0, len(features), window_size)):
        window = features[start : start + window_size]
        flat = window.flatten(1, 2)
        flat = flat / torch.norm(flat, dim=1, keepdim=True)
        scores = torch.mean(flat @ flat.T, dim=1)
        scores[len(window) // 2] = 0
        local = torch.where(scores < threshold)[0]
        kept_features.append(window[local])
        kept_indices.extend(local + window_number * window_size)
    kept_features = torch.cat(kept_features, dim=0)
    kept_indices = torch.tensor(kept_indices)
    if len(kept_features) > max_frames:
        step = len(kept_features) / float(max_frames)
        picks = [int(step * i) for i in range(max_frames)]
        kept_features, kept_indices = kept_features[picks], kept_indices[picks]
    return kept_indices, kept_features


def reference_unpad_image(grid: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
    """`unpad_image` on a `(1, height, width, dim)` grid; `original_size` is read as (width, height)."""
    original_width, original_height = original_size
    height, width = grid.shape[1:3]
    if original_width / original_height > width / height:
        padding = (height - int(original_height * (width / original_width))) // 2
        return grid[:, padding : height - padding, :]
    padding = (width - int(original_width * (height / original_height))) // 2
    return grid[:, :, padding : width - padding]


def reference_unpad_and_newline(
    grids: torch.Tensor, original_size: tuple[int, int], newline: torch.Tensor
) -> list[torch.Tensor]:
    """Per frame: unpad, append the newline after every row, flatten (the `for batch_i in range(bs)` loop)."""
    frames = []
    for frame in grids:
        unpadded = reference_unpad_image(frame.unsqueeze(0), original_size)
        rows = unpadded.shape[1]
        with_newlines = torch.cat((unpadded, newline.view(1, 1, 1, -1).expand(1, rows, 1, -1)), dim=2)
        frames.append(with_newlines.flatten(1, 2).squeeze(0))
    return frames


def reference_mix(
    low_frames: list[torch.Tensor], high_frames: list[torch.Tensor], query_embeds: torch.Tensor, budget: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The "ablation mix" block (docs/reference.md §4.2): returns the mixed sequence and the high-resolution positions,
    or None when nothing can be upgraded."""
    low = torch.cat(low_frames)
    high = torch.cat(high_frames)
    num_frames = len(low_frames)
    if budget <= len(low):
        return None
    num_high = math.floor((budget - len(low)) / (len(high) // num_frames - len(low) // num_frames))
    if num_high < 1:
        return None
    scores = torch.matmul(low, query_embeds.transpose(0, 1)).mean(dim=-1)
    frame_scores = scores.reshape(num_frames, -1).mean(dim=-1)
    num_high = min(num_high, frame_scores.shape[0])
    top = torch.topk(frame_scores, num_high).indices
    top = top[torch.sort(top)[1]]
    low_by_frame = low.reshape(num_frames, -1, low.shape[-1])
    high_by_frame = high.reshape(num_frames, -1, high.shape[-1])
    pieces, next_top = [], 0
    for frame in range(num_frames):
        if next_top < len(top) and frame == top[next_top]:
            pieces.append(high_by_frame[frame])
            next_top += 1
        else:
            pieces.append(low_by_frame[frame])
    return torch.cat(pieces, dim=0), top


def reference_stc(frames: torch.Tensor, threshold: float, budget: int, window_size: int = 8) -> torch.Tensor:
    """The "ablation drop" block (docs/reference.md §5): STC chunk by chunk, forced truncation, final cut."""
    chunks = []
    for start in range(0, len(frames), window_size):
        chunk = frames[start : start + window_size]
        if len(chunk) == 1:
            chunks.append(chunk[0])
            continue
        anchor = chunk[0].unsqueeze(0).repeat_interleave(len(chunk) - 1, dim=0)
        sim = F.cosine_similarity(anchor, chunk[1:], dim=-1)
        chunks.append(torch.cat([chunk[0], chunk[1:].flatten(0, 1)[sim.flatten(0, 1) < threshold]], dim=0))
    total = sum(len(c) for c in chunks)
    if total > budget:
        force_remove = math.ceil((total - budget) / len(chunks))
        chunks = [c[:-force_remove] for c in chunks]
    return torch.cat(chunks, dim=0)[:budget]


# --------------------------------------------------------------------------------------------------------------------
# The whole pipeline up to the first token
# --------------------------------------------------------------------------------------------------------------------


def reference_float_pixels(pixels: torch.Tensor, mean, std, dtype: torch.dtype, device) -> torch.Tensor:
    """What `process_images` hands the model: every frame normalised to float, then `.half().cuda()`.

    The reference builds float32 tensors of all frames on the host first; this converts chunk by chunk straight into
    `dtype` on `device`, which is kinder to the baseline's host memory than the reference itself.
    """
    mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    out = torch.empty(pixels.shape, dtype=dtype, device=device)
    for start in range(0, len(pixels), REFERENCE_CHUNK_SIZE):
        chunk = pixels[start : start + REFERENCE_CHUNK_SIZE].float()
        out[start : start + REFERENCE_CHUNK_SIZE] = ((chunk / 255.0 - mean) / std).to(dtype).to(device)
    return out


@torch.no_grad()
def reference_first_token(model, input_ids: torch.Tensor, video: dict, dtype: torch.dtype) -> dict:
    """Prefill as the official pipeline does it, with `model`'s weights: float pixels of all frames, towers in chunks
    of 64, all DINO features kept, loop-based compression, then the LLM on the spliced sequence.

    Args:
        model: a `LongVUForConditionalGeneration` (batch of one video, one placeholder in `input_ids`).
        input_ids: `(1, length)` prompt with one video placeholder.
        video: uint8 `pixel_values_videos`, `pixel_values_videos_dino` and `video_sizes` as the processor returns them.
        dtype: pixel dtype (the reference uses float16 on CUDA).

    Returns:
        `{"token": first greedy token id, "num_visual_tokens", "kept_frame_indices", "path"}`.
    """
    base, encoder, cfg = model.model, model.model.video_encoder, model.config
    device = model.device
    siglip_pixels = reference_float_pixels(
        video["pixel_values_videos"], cfg.siglip_image_mean, cfg.siglip_image_std, dtype, device
    )
    dino_pixels = reference_float_pixels(
        video["pixel_values_videos_dino"], cfg.dino_image_mean, cfg.dino_image_std, dtype, device
    )
    chunk_size = cfg.vision_chunk_size
    cfg.vision_chunk_size = REFERENCE_CHUNK_SIZE
    try:
        dino = encoder.dino_features(dino_pixels)  # all frames, all features kept
        text_len = input_ids.shape[1]
        margin = cfg.context_margin
        selection_tokens = cfg.lowres_grid_size**2 if cfg.highres else cfg.num_queries
        max_frames = max(1, (cfg.max_context_length - text_len - margin) // selection_tokens)
        if len(dino) < max_frames:
            kept = torch.arange(len(dino))
        else:
            kept, dino = reference_select_frames(
                dino, cfg.dino_window_size, cfg.dino_threshold, cfg.max_frames_after_selection
            )
        siglip_pixels, dino_pixels = siglip_pixels[kept.to(device)], dino_pixels[kept.to(device)]
        siglip = encoder.siglip_features(siglip_pixels)
    finally:
        cfg.vision_chunk_size = chunk_size

    height, width = (int(v) for v in video["video_sizes"][0])
    size_wh = (height, width) if cfg.video_size_convention == "reference" else (width, height)
    content = C.padding_key_mask(cfg.encoder_grid_size, size_wh, device=siglip.device)
    key_mask = torch.cat([window_key_mask(content, cfg.query_grid_size)] * 2, dim=-1)
    sva = encoder.vision_aggregator([siglip, dino], key_mask)  # all kept frames at once, as the reference

    max_visual_len = cfg.max_context_length - text_len - margin
    side, low_side = cfg.query_grid_size, cfg.lowres_grid_size
    n_kept = len(sva)
    mix_res = max(1, max_visual_len // (side * side)) <= n_kept <= max(1, max_visual_len // (low_side * low_side))
    high_grids = encoder.multi_modal_projector(sva.view(n_kept, side, side, -1))
    high_frames = reference_unpad_and_newline(high_grids, size_wh, encoder.image_newline)
    frames = high_frames
    if cfg.highres and mix_res:
        low = F.interpolate(
            sva.view(n_kept, side, side, -1).permute(0, 3, 1, 2).float(), size=(low_side, low_side), mode="bilinear",
            align_corners=False,
        ).to(sva.dtype)
        low_grids = encoder.multi_modal_projector(low.permute(0, 2, 3, 1))
        frames = reference_unpad_and_newline(low_grids, C.lowres_original_size(size_wh, side, low_side), encoder.image_newline)

    video_id = cfg.video_token_id
    position = int(torch.where(input_ids[0] == video_id)[0][0])
    embed = base.get_input_embeddings()
    before = embed(input_ids[0, :position].to(device))
    after = embed(input_ids[0, position + 1 :].to(device))
    splice_budget = cfg.max_context_length - margin - (text_len - 1)
    path = "none"
    visual = torch.cat(frames)
    if cfg.highres and mix_res and cfg.num_queries > low_side * low_side:
        mixed = reference_mix(frames, high_frames, after, splice_budget)
        if mixed is not None:
            visual, path = mixed[0], "mix"
    if path != "mix" and splice_budget < len(visual):
        visual = reference_stc(torch.stack(frames), cfg.stc_threshold, splice_budget, cfg.stc_window_size)
        path = "stc"
    embeds = torch.cat([before, visual.to(before.dtype), after]).unsqueeze(0)
    hidden = base.language_model(inputs_embeds=embeds, use_cache=True).last_hidden_state
    logits = model.lm_head(hidden[:, -1:])
    return {
        "token": int(logits[0, -1].argmax()),
        "num_visual_tokens": int(len(visual)),
        "kept_frame_indices": kept.tolist(),
        "path": path,
    }
