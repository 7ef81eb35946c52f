"""Training data: LLaVA-style conversation records loaded with `datasets`, media decoded lazily per sample.

The official training data (docs/reference.md §7.2) is a JSON list (or JSONL) of records such as

```json
{"id": "v_001", "video": "kinetics/abc.mp4",
 "conversations": [{"from": "human", "value": "<video>\\nWhat happens?"}, {"from": "gpt", "value": "A dog runs."}]}
```

with `"image"` instead of `"video"` for still images and neither for text-only samples. `load_conversation_dataset`
turns such files into a `datasets.Dataset` of small text columns (paths and turns, memory-mapped Arrow), so a
600K-sample set never sits in memory; pixels are decoded only when the collator builds a batch
(`video_processor_input`, `load_image`). A media file that cannot be read raises `MediaError`, which the collator turns
into a skipped, counted sample.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# `<image>` and `<video>` tags mark where the media goes; the reference normalises both to one leading tag per turn.
MEDIA_TAG = re.compile(r"<image>|<video>")
ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_EMPTY_PATH_VALUES = ("", "none", "nan")


class MediaError(RuntimeError):
    """A sample's image or video is missing or cannot be decoded (the collator skips the sample)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# ---------------------------------------------------------------------------------------------------------------------
# Records -> dataset
# ---------------------------------------------------------------------------------------------------------------------


def _media_field(record: dict, key: str) -> str | None:
    value = record.get(key)
    if value is None or str(value).strip().lower() in _EMPTY_PATH_VALUES:
        return None
    if not isinstance(value, str):
        raise ValueError(f"`{key}` must be a path string, got {type(value).__name__}")
    return value


def _turn_role_and_text(turn: dict) -> tuple[str, str]:
    # Official files use {"from", "value"}; chat-style files use {"role", "content"}.
    role = turn.get("from", turn.get("role"))
    text = turn.get("value", turn.get("content"))
    if role not in ROLE_NAMES:
        raise ValueError(f"unknown speaker {role!r} (expected one of {sorted(ROLE_NAMES)})")
    if not isinstance(text, str):
        raise ValueError(f"the text of a {role!r} turn must be a string, got {type(text).__name__}")
    return ROLE_NAMES[role], text


def normalize_record(record: dict, visual_length_estimate: dict[str, int] | None = None) -> dict:
    """One raw record -> `{"sample_id", "media_type", "media_path", "roles", "texts", "media_turn", "length"}`.

    - `media_type` is "video", "image" or "text"; `media_path` is the path as written in the file (resolved against
      the media root when decoded).
    - Media tags are removed from every turn; `media_turn` is the index of the turn that receives the media (the first
      turn that had a tag, else the first user turn), -1 for text-only samples. Like the reference, the media then
      leads that turn.
    - As in the reference, a conversation that does not start with a user (or system) turn loses its first turn.
    - `length` estimates the sample's token count for length-grouped sampling: words of all turns plus
      `visual_length_estimate[media_type]` (the reference uses words + `image_token_len`).
    """
    video, image = _media_field(record, "video"), _media_field(record, "image")
    if video is not None and image is not None:
        raise ValueError("a record holds both `video` and `image`; use one media item per sample")
    turns = record.get("conversations")
    if not isinstance(turns, Sequence) or isinstance(turns, str) or not turns:
        raise ValueError("`conversations` must be a non-empty list of turns")
    roles, texts = zip(*(_turn_role_and_text(turn) for turn in turns))
    roles, texts = list(roles), list(texts)
    if roles[0] == "assistant":
        roles, texts = roles[1:], texts[1:]
    if "assistant" not in roles:
        raise ValueError("the conversation has no assistant (`gpt`) turn to learn from")

    media_type = "video" if video is not None else "image" if image is not None else "text"
    tagged = [i for i, text in enumerate(texts) if MEDIA_TAG.search(text)]
    texts = [MEDIA_TAG.sub("", text).strip() if MEDIA_TAG.search(text) else text for text in texts]
    media_turn = -1
    if media_type != "text":
        media_turn = tagged[0] if tagged else roles.index("user") if "user" in roles else -1
        if media_turn < 0 or roles[media_turn] != "user":
            raise ValueError("the media tag must be in a user (`human`) turn")
    estimates = visual_length_estimate or {}
    words = sum(len(text.split()) for text in texts)
    return {
        "sample_id": str(record.get("id", "")),
        "media_type": media_type,
        "media_path": video or image or "",
        "roles": roles,
        "texts": texts,
        "media_turn": media_turn,
        "length": words + int(estimates.get(media_type, 0)),
    }


def load_conversation_dataset(
    data_files: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    visual_length_estimate: dict[str, int] | None = None,
    cache_dir: str | None = None,
    num_proc: int | None = None,
):
    """Load LLaVA-style JSON (a list of records) or JSONL files into a `datasets.Dataset` of normalised records.

    Columns: `sample_id`, `media_type`, `media_path`, `roles`, `texts`, `media_turn`, `length` (see
    `normalize_record`). No media file is opened here: decoding happens per batch in `LongVUDataCollator`, and
    `length` feeds `TrainingArguments(train_sampling_strategy="group_by_length")`.

    Args:
        data_files: one or more `.json` / `.jsonl` files.
        visual_length_estimate: tokens to add to `length` per media type, e.g. `{"image": 576, "video": 1000}`.
        cache_dir: where `datasets` writes its Arrow cache (default: the `datasets` cache).
        num_proc: processes for the normalisation pass (useful for very large files).

    Example:

    ```python
    >>> dataset = load_conversation_dataset("train_video_data.json", visual_length_estimate={"video": 1000})
    >>> dataset[0]["media_type"], dataset[0]["roles"]
    ('video', ['user', 'assistant'])
    ```
    """
    import datasets

    files = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
    if not files:
        raise ValueError("`data_files` is empty")
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"training data file not found: {path}")
        if not str(path).endswith((".json", ".jsonl")):
            raise ValueError(f"training data must be .json or .jsonl, got {path}")
    try:
        raw = datasets.load_dataset("json", data_files=[str(p) for p in files], split="train", cache_dir=cache_dir)
    except OSError:
        raise
    except Exception as error:  # datasets wraps parse errors (DatasetGenerationError); an empty file is StopIteration
        raise ValueError(data_file_problem(files, error)) from None
    if raw.num_rows == 0:
        raise ValueError(f"training data {_named(files)} holds no records")

    def normalize(record: dict, index: int) -> dict:
        try:
            return normalize_record(record, visual_length_estimate)
        except ValueError as error:
            raise ValueError(f"{files if len(files) > 1 else files[0]}, record {index} (id={record.get('id')!r}): {error}") from None

    return raw.map(
        normalize,
        with_indices=True,
        remove_columns=raw.column_names,
        num_proc=num_proc,
        desc="Normalising conversations",
    )


def _named(files: Sequence) -> str:
    return str(files[0]) if len(files) == 1 else str([str(f) for f in files])


def data_file_problem(files: Sequence[str | os.PathLike], error: BaseException) -> str:
    """One line saying which data file `datasets` could not read and where: each file is parsed again with the
    standard library (only after a failure), so that the message names the file and the line rather than an Arrow
    reader's position."""
    for path in files:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as bad:
            return f"training data file {path}: not UTF-8 text ({bad})"
        problem = _json_problem(text, as_lines=str(path).endswith(".jsonl"))
        if problem is not None:
            return f"training data file {path}{problem}"
    cause = error
    while cause.__cause__ is not None or cause.__context__ is not None:  # the reader's own reason, not the wrapper
        cause = cause.__cause__ or cause.__context__
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"training data {_named(files)} cannot be read as records ({type(cause).__name__}: {reason})"


def _json_problem(text: str, as_lines: bool) -> str | None:
    """What is wrong with one data file's text (", line N: ..." or " holds no records"), or None. A `.json` file may
    hold one JSON document or JSON lines (`datasets` reads both)."""
    if not as_lines:
        try:
            return None if json.loads(text) else " holds no records"
        except RecursionError:
            return ": not valid JSON (nested too deeply)"
        except ValueError as bad:
            whole = f": not valid JSON ({bad})"
        return whole if _json_problem(text, as_lines=True) is not None else None
    records = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                json.loads(line)
            except (ValueError, RecursionError) as bad:
                return f", line {number}: not valid JSON ({bad})"
            records += 1
    return None if records else " holds no records"


# ---------------------------------------------------------------------------------------------------------------------
# Media decoding (called per sample by the collator)
# ---------------------------------------------------------------------------------------------------------------------


def resolve_media_path(path: str, media_root: str | os.PathLike | None) -> str:
    """Join a record's media path with `media_root`; like the reference, a `.gif` may also live under `root/gifs/`."""
    if media_root is None or os.path.isabs(path):
        return path
    candidate = os.path.join(media_root, path)
    if path.lower().endswith(".gif") and not os.path.exists(candidate):
        in_gifs = os.path.join(media_root, "gifs", path)
        if os.path.exists(in_gifs):
            return in_gifs
    return candidate


def load_image(path: str) -> Image.Image:
    """An RGB PIL image; raises `MediaError` if the file is missing or unreadable."""
    if not os.path.isfile(path):
        raise MediaError(path, "file not found")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as error:  # PIL raises many types for bad files
        raise MediaError(path, f"cannot decode image ({type(error).__name__}: {error})") from None


def load_npy_video(path: str) -> np.ndarray:
    """A `.npy` video `(frames, height, width, 3)` uint8, memory-mapped (frames are read when processed)."""
    try:
        frames = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as error:
        raise MediaError(path, f"cannot read .npy ({type(error).__name__}: {error})") from None
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise MediaError(path, f".npy video must be (frames, height, width, 3), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise MediaError(path, f".npy video must be uint8, got {frames.dtype}")
    return frames


def video_processor_input(path: str) -> tuple[str | np.ndarray, bool]:
    """What to hand `LongVUVideoProcessor` for a dataset video, and whether it should sample frames.

    Video files (mp4, mkv, webm, ...) are passed as paths and sampled at the training rate, as the reference does with
    decord (`round(average_fps / fps)`); the processor decodes them streaming, only the sampled frames. Folders of
    frames, `.gif` files and `.npy` arrays keep every frame, as in the reference (`train.py:506-531`).
    Raises `MediaError` when the path does not exist or a `.npy` file is not a uint8 video.
    """
    if os.path.isdir(path):
        if not any(name.lower().endswith(IMAGE_EXTENSIONS) for name in os.listdir(path)):
            raise MediaError(path, "the frame folder holds no image")
        return path, False
    if not os.path.isfile(path):
        raise MediaError(path, "file not found")
    lower = path.lower()
    if lower.endswith(".npy"):
        return load_npy_video(path), False
    return path, not lower.endswith(".gif")


__all__ = [
    "MediaError",
    "load_conversation_dataset",
    "load_image",
    "load_npy_video",
    "normalize_record",
    "resolve_media_path",
    "video_processor_input",
]
