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
"""What the model decided for each video (or image) of a call: typed, read by attribute, `to_dict()` for JSON.

The reports are also read-only mappings (`report["path"]`, `dict(report)`), the form the first releases returned, and
compare equal to a dict with the same fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class _ReportMapping(Mapping):
    """Mapping access to a report dataclass's fields (the first releases returned dicts)."""

    def __getitem__(self, name: str) -> Any:
        if name not in self._field_names():
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._field_names())

    def __len__(self) -> int:
        return len(self._field_names())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return self.to_dict() == dict(other)

    __hash__ = None  # mutable lists inside

    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists, ints, strings), ready for `json.dumps`."""
        return {name: list(value) if isinstance(value, (list, tuple)) else value for name, value in
                ((name, getattr(self, name)) for name in self._field_names())}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        """The report from its `to_dict()` form (a JSON file, another process); unknown keys are refused."""
        unknown = sorted(set(values) - set(cls._field_names()))
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
        return cls(**dict(values))


@dataclass(eq=False)
class VideoBudget:
    """The visual-token budget of one video for one prompt and one call's settings, decided once.

    `select_budget` is what DINOv2 frame selection and the high/low resolution choice count against (the context left
    by the prompt's text, shared by the prompt's visual items); `splice_budget` is what the video's tokens must fit
    in (the same, under the call's `max_visual_tokens` cap); `selection_frame_budget` is the number of frames at
    which frame selection runs.
    """

    select_budget: int
    splice_budget: int
    selection_frame_budget: int

    def runs_selection(self, num_frames: int) -> bool:
        """Whether DINOv2 frame selection runs on a video of `num_frames` frames under this budget (the one place
        this is decided): when the video has at least as many frames as the budget allows."""
        return num_frames >= self.selection_frame_budget


@dataclass(eq=False)
class CompressionReport(_ReportMapping):
    """What the model did with one video for one prompt.

    Example:

    ```python
    >>> out = model(**inputs)
    >>> report = out.compression[0]
    >>> report.path, report.num_visual_tokens, report.budget
    ('stc', 1988, 7936)
    >>> json.dumps(report.to_dict())
    ```

    Fields: `num_input_frames` (sampled frames), `kept_frame_indices` (after DINOv2 selection and the 400-frame cap),
    `frame_selection_ran`, `high_res_frame_indices` (the kept frames at full resolution), `tokens_per_frame` (one entry
    per kept frame, after spatial token compression), `path` ("none": every kept frame as is, "mix": query-based
    high/low resolution mixing, "stc": spatial token compression), `num_visual_tokens`, `budget` (the visual tokens the
    prompt leaves) and `stc_force_remove` (tokens spatial token compression had to truncate).
    """

    num_input_frames: int
    kept_frame_indices: list[int]
    frame_selection_ran: bool
    high_res_frame_indices: list[int]
    tokens_per_frame: list[int]
    path: str
    num_visual_tokens: int
    budget: int
    stc_force_remove: int = 0


@dataclass(eq=False)
class ImageCompressionReport(_ReportMapping):
    """What the model did with one image: its token count, and whether it used the low-resolution grid (video
    checkpoints encode images at the low resolution, as the reference does)."""

    num_visual_tokens: int
    low_res: bool


class CompressionReports(Sequence):
    """The compression report of each video (or image) of a call, in placeholder order (`CompressionReport` /
    `ImageCompressionReport`).

    A sequence of its own rather than a list, so that transformers handles it as metadata (as it does a cache) and
    never as tensors to compare or move.
    """

    def __init__(self, reports):
        self._reports = tuple(reports)

    def __getitem__(self, index):
        return self._reports[index]

    def __len__(self) -> int:
        return len(self._reports)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    def to_list(self) -> list[dict[str, Any]]:
        """Every report's `to_dict()`, for JSON."""
        return [report.to_dict() for report in self._reports]

    def __repr__(self) -> str:
        return f"CompressionReports({list(self._reports)!r})"


__all__ = ["CompressionReport", "CompressionReports", "ImageCompressionReport", "VideoBudget"]
