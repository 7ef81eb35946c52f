"""LongVU's spatiotemporal compression as small, pure tensor functions.

Each function is one step of the paper (arXiv 2410.17434, §3) as the official code implements it
(`Vision-CAIR/LongVU`, `longvu/cambrian_arch.py`; `docs/reference.md` §3-5 describes every quirk kept here). None of them
knows about models or configs: they take tensors and numbers and return tensors and numbers.

Steps, in the order the model applies them:
1. `frame_budget` / `resolution_flags`: how many frames fit the context (integer arithmetic of the reference).
2. `dino_window_scores` / `select_frames_in_window` / `cap_frame_indices`: temporal reduction with DINOv2
   features (paper §3.1).
3. `unpad_grid` / `add_row_newlines` / `tokens_per_unpadded_frame`: remove the rows or columns of the square padding,
   append a newline per row.
4. `num_high_res_frames` / `query_frame_scores` / `mix_resolutions`: the text query picks the frames that keep
   full resolution (paper §3.2).
5. `spatial_token_compression` / `truncate_chunks`: STC (paper §3.3) and the forced truncation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------------------------
# 1. Budgets
# --------------------------------------------------------------------------------------------------------------------


def visual_budget(max_context_length: int, text_length: int, margin: int) -> int:
    """Tokens left for visual tokens: `max_context_length - text_length - margin` (docs/reference.md §3, §4.1, §4.2).

    The reference counts `text_length` with the placeholder for frame selection and the SVA flags, and without it when
    splicing; callers pass whichever count the step uses.
    """
    return max_context_length - text_length - margin


def max_text_length(max_context_length: int, margin: int, visual_tokens: int) -> int:
    """The longest text that still leaves `visual_tokens` for the video: `visual_budget` solved for the text
    (`visual_budget(max_context_length, max_text_length(...), margin) == visual_tokens`)."""
    return visual_budget(max_context_length, visual_tokens, margin)


def frame_budget(budget: int, tokens_per_frame: int) -> int:
    """Frames of `tokens_per_frame` tokens (newlines not counted) that fit `budget`, at least 1."""
    return max(1, budget // tokens_per_frame)


def resolution_flags(num_frames: int, budget: int, high_tokens: int, low_tokens: int) -> tuple[bool, bool]:
    """The reference's `(input_mix_res, input_high_res)` flags for a video of `num_frames` frames (docs/reference.md §4.1).

    - fewer frames than fit at full resolution: no mixing, full resolution;
    - more frames than fit even at low resolution: no mixing (and, in the released configs, still full resolution:
      the downsampling branch is unreachable, so STC does the work);
    - otherwise: build the low-resolution copy and try mixing.
    """
    if num_frames < frame_budget(budget, high_tokens):
        return False, True
    if num_frames > frame_budget(budget, low_tokens):
        return False, False
    return True, True


# --------------------------------------------------------------------------------------------------------------------
# 2. Temporal reduction with DINOv2 features
# --------------------------------------------------------------------------------------------------------------------


def dino_window_scores(window_features: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of every frame of a window to all frames of the window (itself included).

    Args:
        window_features: `(num_frames, ...)` DINOv2 features of one window; everything after dim 0 is flattened.

    Returns:
        `(num_frames,)` float32 scores, before the middle frame is forced to 0.
    """
    flat = window_features.flatten(1).float()
    flat = flat / torch.norm(flat, dim=1, keepdim=True)
    return torch.mean(flat @ flat.T, dim=1)


def select_frames_in_window(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Local indices of the frames kept in one window: score < threshold, the middle frame always kept."""
    scores = scores.clone()
    scores[len(scores) // 2] = 0
    return torch.where(scores < threshold)[0]


def cap_frame_indices(indices: torch.Tensor, max_frames: int) -> torch.Tensor:
    """Uniformly subsample to at most `max_frames` entries with the reference's `int(i * n / max_frames)` rule."""
    if len(indices) <= max_frames:
        return indices
    interval = len(indices) / float(max_frames)
    picks = torch.tensor([int(interval * i) for i in range(max_frames)], dtype=torch.long, device=indices.device)
    return indices[picks]


def select_frames_in_windows(
    dino_features: torch.Tensor, threshold: float, window_size: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Kept frame indices (sorted, int64) and per-window scores over consecutive windows of `window_size` frames; the
    last window may be shorter (docs/reference.md §3 steps 5-7). No cap is applied."""
    kept, scores = [], []
    for start in range(0, len(dino_features), window_size):
        window_scores = dino_window_scores(dino_features[start : start + window_size])
        scores.append(window_scores)
        kept.append(select_frames_in_window(window_scores, threshold).cpu() + start)
    indices = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long)
    return indices, scores


def cap_selected_frames(indices: torch.Tensor, num_frames: int, window_size: int, max_frames: int) -> torch.Tensor:
    """The reference's hard cap after selection (docs/reference.md §3 step 8). It applies only when the video spans at
    least one whole window (a single short window never exceeds the cap)."""
    return cap_frame_indices(indices, max_frames) if num_frames >= window_size else indices


def select_frames(
    dino_features: torch.Tensor | Iterable[torch.Tensor],
    threshold: float,
    window_size: int,
    max_frames: int,
    max_features_held: int | None = None,
) -> FrameSelection:
    """Temporal reduction of a whole video (docs/reference.md §3 steps 5-8): per window, frames whose DINOv2 features
    repeat the window's are dropped; then the hard cap.

    Args:
        dino_features: `(num_frames, tokens, dim)` DINOv2 features of every sampled frame, or the same as consecutive
            chunks (an iterable, e.g. a generator that encodes chunk by chunk), each a whole number of windows except
            the last: the result is the same, and only the kept frames' features are held.
        threshold: DINO similarity threshold (0.83).
        window_size: frames per window (16); the last window may be shorter.
        max_frames: hard cap applied after selection (400).
        max_features_held: stop holding kept features once more frames than this survive (hour-long videos); the
            result's `features` is then None and the caller re-encodes the frames it keeps.

    Returns:
        A `FrameSelection`: the kept frame indices (sorted, int64), their features (or None), the per-window scores.
    """
    chunks = [dino_features] if isinstance(dino_features, torch.Tensor) else dino_features
    kept_indices, kept_features, scores, num_frames = [], [], [], 0
    for features in chunks:
        if num_frames % window_size:
            raise ValueError(f"only the last chunk may end with a partial window of {window_size} frames")
        local, chunk_scores = select_frames_in_windows(features, threshold, window_size)
        kept_indices.append(local + num_frames)
        scores.extend(chunk_scores)
        num_frames += len(features)
        if kept_features is not None:
            kept_features.append(features[local.to(features.device)])
            if max_features_held is not None and sum(map(len, kept_features)) > max_features_held:
                kept_features = None
    indices = torch.cat(kept_indices) if kept_indices else torch.zeros(0, dtype=torch.long)
    picks = cap_selected_frames(torch.arange(len(indices)), num_frames, window_size, max_frames)
    features = torch.cat(kept_features)[picks.to(kept_features[0].device)] if kept_features else None
    return FrameSelection(indices[picks], features, scores)


@dataclass(frozen=True)
class FrameSelection:
    """What `select_frames` keeps: `indices` of the kept frames (sorted, after the cap), their DINOv2 `features` (None
    when they were not held), and the per-window `scores`."""

    indices: torch.Tensor
    features: torch.Tensor | None
    scores: list[torch.Tensor]


# --------------------------------------------------------------------------------------------------------------------
# 3. Unpadding and row newlines
# --------------------------------------------------------------------------------------------------------------------


def unpad_slices(grid_height: int, grid_width: int, original_size: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of a square-padded grid that hold the original content (reference `unpad_image`).

    `original_size` is read as `(width, height)`, exactly as the reference does; the caller decides what it passes
    (for videos the reference passes `(height, width)`, see `LongVUConfig.video_size_convention`).
    """
    original_width, original_height = original_size
    if original_width / original_height > grid_width / grid_height:
        new_height = int(original_height * (grid_width / original_width))
        padding = (grid_height - new_height) // 2
        return slice(padding, grid_height - padding), slice(0, grid_width)
    new_width = int(original_width * (grid_height / original_height))
    padding = (grid_width - new_width) // 2
    return slice(0, grid_height), slice(padding, grid_width - padding)


def unpad_grid(features: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
    """Crop `(..., height, width, dim)` grid features to the content area (see `unpad_slices`)."""
    rows, cols = unpad_slices(features.shape[-3], features.shape[-2], original_size)
    return features[..., rows, cols, :]


def tokens_per_unpadded_frame(grid_size: int, original_size: tuple[int, int]) -> int:
    """Tokens of one square `grid_size` frame after `unpad_grid` and `add_row_newlines`."""
    rows, cols = unpad_slices(grid_size, grid_size, original_size)
    return len(range(grid_size)[rows]) * (len(range(grid_size)[cols]) + 1)


def padding_key_mask(grid_size: int, original_size: tuple[int, int], device=None) -> torch.Tensor:
    """`(grid, grid)` bool mask of the encoder tokens that cover real content (reference `unmask_attention_mask`).

    Differs from `unpad_slices` in one detail kept from the reference: nothing is masked when the padding is 0.
    """
    mask = torch.ones(grid_size, grid_size, dtype=torch.bool, device=device)
    original_width, original_height = original_size
    if original_width / original_height > 1:
        padding = (grid_size - int(original_height * (grid_size / original_width))) // 2
        if padding > 0:
            mask[:padding, :] = False
            mask[-padding:, :] = False
    else:
        padding = (grid_size - int(original_width * (grid_size / original_height))) // 2
        if padding > 0:
            mask[:, :padding] = False
            mask[:, -padding:] = False
    return mask


def add_row_newlines(grid: torch.Tensor, newline: torch.Tensor) -> torch.Tensor:
    """Append `newline` after every row of `(frames, height, width, dim)` features; returns `(frames, tokens, dim)`."""
    frames, height = grid.shape[:2]
    newlines = newline.to(grid.device, grid.dtype).view(1, 1, 1, -1).expand(frames, height, 1, -1)
    return torch.cat([grid, newlines], dim=2).flatten(1, 2)


def lowres_original_size(original_size: tuple[int, int], high_grid: int, low_grid: int) -> tuple[int, int]:
    """The size the reference passes when unpadding the low-resolution grid: each entry divided by high/low (1.5)."""
    factor = high_grid / low_grid
    return int(original_size[0] / factor), int(original_size[1] / factor)


# --------------------------------------------------------------------------------------------------------------------
# 4. Query-based selection of high-resolution frames
# --------------------------------------------------------------------------------------------------------------------


def num_high_res_frames(budget: int, visual_len: int, high_per_frame: int, low_per_frame: int) -> int:
    """How many low-resolution frames can be upgraded to full resolution within `budget` (docs/reference.md §4.2).

    `visual_len` is the total of the all-low-resolution sequence; per-frame counts include newlines and unpadding.
    Returns 0 when nothing can be upgraded.
    """
    extra = high_per_frame - low_per_frame
    if budget <= visual_len or extra <= 0:
        return 0
    return max(0, math.floor((budget - visual_len) / extra))


def query_frame_scores(low_res_frames: torch.Tensor, query_embeds: torch.Tensor) -> torch.Tensor:
    """Per-frame relevance to the text query: mean over the frame's tokens (newlines included) of the mean over text
    tokens of the raw dot product (input embeddings, not contextual; docs/reference.md §4.2).

    Args:
        low_res_frames: `(frames, tokens, dim)` projected low-resolution tokens.
        query_embeds: `(text_tokens, dim)` input embeddings of the text after the placeholder.
    """
    frames, tokens, dim = low_res_frames.shape
    sim = torch.matmul(low_res_frames.reshape(-1, dim), query_embeds.T).mean(dim=-1)
    return sim.reshape(frames, tokens).mean(dim=-1)


def pick_high_res_frames(scores: torch.Tensor, num_high: int) -> torch.Tensor:
    """Positions of the `num_high` best-scoring frames, in temporal order."""
    num_high = min(num_high, scores.shape[0])
    top = torch.topk(scores, num_high).indices
    return torch.sort(top).values


def mix_resolutions(
    high_res_frames: torch.Tensor | Sequence[torch.Tensor], low_res_frames: torch.Tensor, high_positions: torch.Tensor
) -> tuple[torch.Tensor, list[int]]:
    """Concatenate frames in temporal order: full resolution at `high_positions`, low resolution elsewhere.

    Args:
        high_res_frames: `(len(high_positions), high_tokens, dim)` (or a sequence of `(high_tokens, dim)` tensors), the
            full-resolution tokens of the frames at `high_positions`, in that order (only those frames need
            projecting at full resolution).
        low_res_frames: `(frames, low_tokens, dim)`, every frame at low resolution.
        high_positions: sorted frame positions, as `pick_high_res_frames` returns them.

    Returns the `(tokens, dim)` sequence and the token count of every frame.
    """
    if len(high_res_frames) != len(high_positions):
        raise ValueError(
            f"`high_res_frames` holds {len(high_res_frames)} frames but `high_positions` names {len(high_positions)}"
        )
    high_by_position = dict(zip(high_positions.tolist(), high_res_frames))
    pieces = [high_by_position.get(i, low) for i, low in enumerate(low_res_frames)]
    return torch.cat(pieces, dim=0), [len(p) for p in pieces]


# --------------------------------------------------------------------------------------------------------------------
# 5. Spatial token compression (STC)
# --------------------------------------------------------------------------------------------------------------------


def stc_keep_mask(frames: torch.Tensor, threshold: float, window_size: int) -> torch.Tensor:
    """Which tokens STC keeps (docs/reference.md §5 steps 1-4), computed for all chunks at once.

    The first frame of every chunk of `window_size` frames (the anchor) is kept whole; token t of another frame is
    kept iff its cosine similarity to the anchor's token t is below `threshold`. Newline tokens of non-anchor frames
    equal the anchor's and are therefore dropped.

    Args:
        frames: `(frames, tokens, dim)`, every frame with the same token count.

    Returns:
        `(frames, tokens)` bool mask.
    """
    keep = torch.empty(frames.shape[:2], dtype=torch.bool, device=frames.device)
    # Chunk by chunk: the anchor broadcasts against its chunk, with no gathered copy of every frame.
    for start in range(0, frames.shape[0], window_size):
        chunk = frames[start : start + window_size]
        keep[start : start + window_size] = F.cosine_similarity(chunk[:1], chunk, dim=-1) < threshold
        keep[start] = True
    return keep


def spatial_token_compression(
    frames: torch.Tensor, threshold: float, window_size: int, budget: int
) -> tuple[torch.Tensor, list[int], int]:
    """STC, then the reference's forced per-chunk truncation and the final cut to `budget` (docs/reference.md §5).

    Returns the `(tokens, dim)` sequence, the token count of each frame, and `force_remove` (0 if not needed).
    """
    keep = stc_keep_mask(frames, threshold, window_size)
    per_frame = keep.sum(dim=1)
    chunk_ids = torch.arange(len(frames), device=frames.device) // window_size
    num_chunks = int(chunk_ids[-1]) + 1 if len(frames) else 0
    total = int(per_frame.sum())
    force_remove = 0
    if total > budget and num_chunks:
        force_remove = math.ceil((total - budget) / num_chunks)
        keep = truncate_chunks(keep, chunk_ids, force_remove)
    tokens = frames[keep][:budget]
    counts = keep.sum(dim=1)
    # The final cut to `budget` can only remove tokens from the end.
    excess = int(counts.sum()) - len(tokens)
    counts = counts.tolist()
    for i in range(len(counts) - 1, -1, -1):
        if excess <= 0:
            break
        removed = min(excess, counts[i])
        counts[i] -= removed
        excess -= removed
    return tokens, counts, force_remove


def truncate_chunks(keep: torch.Tensor, chunk_ids: torch.Tensor, force_remove: int) -> torch.Tensor:
    """Drop the last `force_remove` kept tokens of every chunk (the reference's `chunk[:-force_remove]`)."""
    flat_keep = keep.flatten()
    token_chunk = chunk_ids.repeat_interleave(keep.shape[1])
    kept_chunk = token_chunk[flat_keep]
    chunk_sizes = torch.bincount(kept_chunk, minlength=int(chunk_ids.max()) + 1)
    # Position of every kept token inside its chunk, counted from the chunk's end.
    order = torch.arange(len(kept_chunk), device=keep.device)
    chunk_start = torch.cumsum(chunk_sizes, 0) - chunk_sizes
    from_end = chunk_sizes[kept_chunk] - (order - chunk_start[kept_chunk])
    survivors = from_end > force_remove
    new_flat = flat_keep.clone()
    new_flat[flat_keep.nonzero(as_tuple=True)[0][~survivors]] = False
    return new_flat.view_as(keep)
