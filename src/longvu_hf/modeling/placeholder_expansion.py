# Copyright 2026 The LongVU-HF Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Placeholder expansion, the one step between the prompt as written and the sequence the language model sees.

The processor writes ONE placeholder per video or image, because a video's token count depends on its content and
on the question: only the model knows it. `expand_placeholders` repeats each placeholder to its item's token count
(`forward` and `generate` both call it; the training collator writes prompts as written and leaves it to
`forward`). `PromptExpansion` is what `generate` returns so that a later call can continue from its cache: the
caller's prompt and the expanded prompt the cache holds, kept on the output rather than on transformers' objects.
transformers' own way to continue (the returned `sequences` plus new text, with the returned cache and nothing else)
works too: the expansion of each cache that `generate` returned is looked up by that cache's identity
(`expansion_of_cache`), in a weak map that forgets it with the cache.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class ExpandedInputs:
    """Every per-token input after expansion; `None` where the input was not given."""

    input_ids: torch.LongTensor | None
    inputs_embeds: torch.Tensor | None
    attention_mask: torch.Tensor
    labels: torch.LongTensor | None
    position_ids: torch.LongTensor | None

    def to_dict(self) -> dict[str, torch.Tensor | None]:
        return {
            "input_ids": self.input_ids,
            "inputs_embeds": self.inputs_embeds,
            "attention_mask": self.attention_mask,
            "labels": self.labels,
            "position_ids": self.position_ids,
        }


@dataclass
class PromptExpansion:
    """The prompt a `generate` call was given (one placeholder per item) and the expanded prompt its cache holds.

    `generate(..., return_dict_in_generate=True)` returns it as `output.prompt_expansion`; to ask a follow-up without
    the pixels, pass the returned `sequences` plus the new text with the returned cache and this:

    ```python
    >>> first = model.generate(**inputs, max_new_tokens=32, return_dict_in_generate=True)
    >>> follow_up = torch.cat([first.sequences, new_question_ids], dim=1)
    >>> model.generate(input_ids=follow_up, cache=first.cache, prompt_expansion=first.prompt_expansion)
    ```
    """

    prompt_ids: torch.LongTensor
    expanded_ids: torch.LongTensor
    expanded_attention_mask: torch.Tensor

    def describes(self, input_ids: torch.LongTensor) -> bool:
        """Whether `input_ids` start with the recorded prompt (same rows)."""
        prompt = self.prompt_ids.to(input_ids.device)
        return (
            input_ids.shape[0] == prompt.shape[0]
            and input_ids.shape[1] >= prompt.shape[1]
            and torch.equal(input_ids[:, : prompt.shape[1]], prompt)
        )

    def expand(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.LongTensor, torch.Tensor]:
        """`input_ids` (the recorded prompt, then anything) with the recorded prompt replaced by its expanded form,
        and the matching attention mask; a ValueError when `input_ids` do not start with the recorded prompt."""
        prompt = self.prompt_ids.to(input_ids.device)
        if not self.describes(input_ids):
            raise ValueError(
                "`prompt_expansion` describes another prompt: `input_ids` must start with the `sequences` of the "
                "generate call that returned it (same rows), followed by the new tokens"
            )
        tail = input_ids[:, prompt.shape[1] :]
        mask_tail = attention_mask[:, prompt.shape[1] :] if attention_mask is not None else torch.ones_like(tail)
        ids = torch.cat([self.expanded_ids.to(tail.device), tail], dim=1)
        mask = torch.cat([self.expanded_attention_mask.to(mask_tail.device, mask_tail.dtype), mask_tail], dim=1)
        return ids, mask


@dataclass
class VisualItemPrompt:
    """What the prompt says about one video or image: `text_length`, its sample's real tokens (placeholders
    included); `num_visual`, the visual items sharing that sample (they split its budget); `query`, the input
    embeddings of the text after the sample's last placeholder (resolution mixing ranks frames by it; None: no
    text)."""

    text_length: int
    num_visual: int
    query: torch.Tensor | None


def prompt_layout(
    video_mask: torch.BoolTensor | None,
    image_mask: torch.BoolTensor | None,
    attention_mask: torch.Tensor | None,
    *,
    videos: bool,
    count: int,
    token_id: int,
    embed_text,
) -> list[VisualItemPrompt]:
    """The `VisualItemPrompt` of each of `count` videos (`videos=True`) or images, in placeholder order.

    `embed_text(row, positions)` gives the input embeddings of those real positions of a row (the query). Without a
    prompt (`video_mask` None), each item is its own sample with no text: the budget is the whole context.
    """
    if video_mask is None:
        return [VisualItemPrompt(text_length=1, num_visual=1, query=None) for _ in range(count)]
    wanted = video_mask if videos else image_mask
    layout = []
    for row in range(wanted.shape[0]):
        real = attention_mask[row].bool() if attention_mask is not None else torch.ones_like(wanted[row])
        positions = torch.where((video_mask[row] | image_mask[row])[real])[0]
        query_start = int(positions[-1]) + 1 if len(positions) else 0
        query = embed_text(row, torch.where(real)[0][query_start:])
        item = VisualItemPrompt(text_length=int(real.sum()), num_visual=len(positions), query=query)
        layout.extend(item for _ in range(int(wanted[row][real].sum())))
    if len(layout) != count:
        raise ValueError(
            f"The prompt holds {len(layout)} placeholder token(s) (id {token_id}) but {count} "
            f"{'videos' if videos else 'images'} were given: write exactly one placeholder per item"
        )
    return layout


def merge_visual_features(
    mask: torch.BoolTensor, inputs_embeds: torch.Tensor, features: Sequence[torch.Tensor], name: str
) -> torch.Tensor:
    """`inputs_embeds` with the expanded placeholder positions (`mask`) replaced by the items' tokens, in order."""
    total = sum(len(f) for f in features)
    if int(mask.sum()) != total:
        raise ValueError(
            f"{name}: {int(mask.sum())} placeholder positions but {total} visual tokens; `mm_encoder_outputs` go "
            "with the expanded prompt (`expand_inputs`), as `generate` passes them"
        )
    flat = torch.cat(list(features)).to(inputs_embeds.device, inputs_embeds.dtype)
    return inputs_embeds.masked_scatter(mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device), flat)


# cache object -> the PromptExpansion of the generate call that returned it; weak, so nothing outlives the cache.
_EXPANSION_OF_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def remember_cache_expansion(cache, expansion: PromptExpansion | None) -> None:
    """Record which expanded prompt `cache` (returned by `generate`) holds; `None` forgets it."""
    if cache is None:
        return
    if expansion is None:
        _EXPANSION_OF_CACHE.pop(cache, None)
    else:
        _EXPANSION_OF_CACHE[cache] = expansion


def expansion_of_cache(cache) -> PromptExpansion | None:
    """The expansion `remember_cache_expansion` recorded for this cache object, if any."""
    if cache is None:
        return None
    try:
        return _EXPANSION_OF_CACHE.get(cache)
    except TypeError:  # not weakly referenceable: never recorded
        return None


def expand_placeholders(
    video_mask: torch.BoolTensor,
    image_mask: torch.BoolTensor,
    attention_mask: torch.Tensor | None,
    video_token_counts: Sequence[int],
    image_token_counts: Sequence[int],
    *,
    input_ids: torch.LongTensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    labels: torch.LongTensor | None = None,
    position_ids: torch.LongTensor | None = None,
    pad_token_id: int | None = None,
    max_context_length: int,
) -> ExpandedInputs:
    """Repeat each video/image placeholder (`video_mask`/`image_mask`, one position per item) to its token count.

    Counts are given in placeholder order (row by row, left to right); there must be exactly one placeholder per
    count. Labels get -100 on the expanded positions; given positions stay consecutive through each expanded
    placeholder and shift the tokens after it; padding (on the input's side) gets position 1. A sequence longer than
    `max_context_length` is refused.
    """
    reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
    if attention_mask is None:
        attention_mask = torch.ones(reference.shape, dtype=torch.long, device=reference.device)
    if int(video_mask.sum()) != len(video_token_counts) or int(image_mask.sum()) != len(image_token_counts):
        raise ValueError(
            f"The prompt holds {int(video_mask.sum())} video and {int(image_mask.sum())} image placeholders for "
            f"{len(video_token_counts)} videos and {len(image_token_counts)} images: write exactly one placeholder "
            "per item"
        )
    left_padding = bool((attention_mask[:, 0] == 0).any()) and bool((attention_mask[:, -1] == 1).all())
    video_counts, image_counts = iter(video_token_counts), iter(image_token_counts)
    per_token = {"input_ids": input_ids, "inputs_embeds": inputs_embeds, "labels": labels}
    rows = {name: [] for name in (*per_token, "position_ids")}
    lengths = []
    for row in range(reference.shape[0]):
        real = attention_mask[row].bool()
        repeats = torch.ones(int(real.sum()), dtype=torch.long, device=reference.device)
        for pos in torch.where(video_mask[row][real])[0].tolist():
            repeats[pos] = next(video_counts)
        for pos in torch.where(image_mask[row][real])[0].tolist():
            repeats[pos] = next(image_counts)
        lengths.append(int(repeats.sum()))
        for name, tensor in per_token.items():
            if tensor is None:
                continue
            values = tensor[row][real]
            if name == "labels":
                values = values.masked_fill(video_mask[row][real] | image_mask[row][real], -100)
            rows[name].append(values.repeat_interleave(repeats, dim=0))
        if position_ids is not None:
            positions = position_ids[row if position_ids.shape[0] > 1 else 0][real.to(position_ids.device)]
            repeats_here = repeats.to(positions.device)
            shift = torch.cumsum(repeats_here - 1, 0) - (repeats_here - 1)  # extra tokens before each one
            starts = torch.cumsum(repeats_here, 0) - repeats_here
            within = torch.arange(lengths[-1], device=positions.device) - starts.repeat_interleave(repeats_here)
            rows["position_ids"].append((positions + shift).repeat_interleave(repeats_here) + within)
    max_len = max(lengths)
    if max_len > max_context_length:
        # Videos are compressed into the budget; only images (never compressed) or a long text can get here.
        raise ValueError(
            f"The expanded sequence ({max_len} tokens) exceeds `max_context_length`={max_context_length}; shorten "
            "the prompt or use fewer images"
        )
    fill = {"input_ids": 0 if pad_token_id is None else pad_token_id, "inputs_embeds": 0.0, "labels": -100,
            "position_ids": 1}
    out = {"attention_mask": attention_mask.new_zeros((len(lengths), max_len))}
    for name, values in rows.items():
        out[name] = values[0].new_full((len(values), max_len, *values[0].shape[1:]), fill[name]) if values else None
    for row, length in enumerate(lengths):
        span = slice(max_len - length, max_len) if left_padding else slice(0, length)
        out["attention_mask"][row, span] = 1
        for name, values in rows.items():
            if values:
                out[name][row, span] = values[row]
    return ExpandedInputs(**out)


__all__ = [
    "ExpandedInputs",
    "PromptExpansion",
    "VisualItemPrompt",
    "expand_placeholders",
    "expansion_of_cache",
    "merge_visual_features",
    "prompt_layout",
    "remember_cache_expansion",
]
