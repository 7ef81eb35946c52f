"""The common row format every benchmark loader produces, and small helpers they share."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable

import datasets

# One row per question. `answer` is None when the release has no answer for it (EgoSchema outside the subset);
# `clip_start`/`clip_end` are seconds (MVBench tasks with bounds); `subtitle` is a path ("" if none); `category` is
# what the official breakdown groups by (VideoMME duration, MVBench task, MLVU task type).
EVAL_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "video": datasets.Value("string"),
        "video_kind": datasets.Value("string"),  # "file" or "frames" (a folder of JPEGs)
        "clip_start": datasets.Value("float64"),
        "clip_end": datasets.Value("float64"),
        "question": datasets.Value("string"),
        "options": datasets.Sequence(datasets.Value("string")),
        "letters": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "category": datasets.Value("string"),
        "subtitle": datasets.Value("string"),
    }
)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def eval_row(
    id: str,
    video: str,
    question: str,
    options: list[str],
    letters: str,
    prompt: str,
    answer: str | None,
    category: str = "",
    video_kind: str = "file",
    clip: tuple[float, float] | None = None,
    subtitle: str = "",
) -> dict:
    return {
        "id": str(id),
        "video": video,
        "video_kind": video_kind,
        "clip_start": float(clip[0]) if clip else None,
        "clip_end": float(clip[1]) if clip else None,
        "question": question,
        "options": [str(option) for option in options],
        "letters": letters,
        "prompt": prompt,
        "answer": answer,
        "category": category,
        "subtitle": subtitle,
    }


def rows_to_dataset(rows: Iterable[dict]) -> datasets.Dataset:
    rows = list(rows)
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"Question ids must be unique; repeated: {duplicates}")
    return datasets.Dataset.from_list(rows, features=EVAL_FEATURES)


def read_table(path: str) -> datasets.Dataset:
    """Read an annotation file (parquet, JSON list or JSON lines) with `datasets`' packaged builders."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Annotation file not found: {path}")
    builder = "parquet" if path.endswith(".parquet") else "json"
    previous = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(builder, data_files=path, split="train")
    except Exception as error:  # datasets wraps parse errors in several types; name the file
        raise ValueError(f"Could not read the annotation file {path}: {error}") from error
    finally:
        if previous:
            datasets.enable_progress_bars()


def read_json(path: str):
    """A plain JSON document (a mapping such as EgoSchema's subset_answers.json), with a clear error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Annotation file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error


def first_existing(patterns: list[str]) -> str | None:
    """The first file matching the glob patterns, in order."""
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if matches:
            return matches[0]
    return None


def find_video(folder: str, stem: str) -> str:
    """`folder/stem.<ext>` for the first video extension that exists (else the .mp4 path, reported missing later)."""
    for extension in VIDEO_EXTENSIONS:
        candidate = os.path.join(folder, stem + extension)
        if os.path.exists(candidate):
            return candidate
    return os.path.join(folder, stem + ".mp4")


def check_data_root(data_root: str) -> str:
    if not os.path.isdir(data_root):
        raise FileNotFoundError(f"--data-root {data_root} is not a directory")
    return os.path.abspath(data_root)


def answer_letter(candidates: list, answer, letters: str, where: str) -> str:
    """The letter of the candidate equal to `answer` (MVBench and MLVU give the answer as the option text)."""
    texts = [str(candidate) for candidate in candidates]
    if str(answer) not in texts:
        raise ValueError(f"{where}: the answer {answer!r} is not one of the candidates {texts}")
    return letters[texts.index(str(answer))]
