"""Video-MME (Fu et al., 2024) in its Hub release layout (`lmms-lab/Video-MME`).

```
DATA_ROOT/
  videomme/test-00000-of-00001.parquet   # or test-*.parquet at the root (the official LongVU script), or a .json/.jsonl
  data/<videoID>.mp4                     # from videos_chunked_*.zip
  subtitle/<videoID>.srt                 # from subtitle.zip (optional)
```
Columns used: `question_id`, `videoID` (or `url`), `duration` ("short" / "medium" / "long"), `question`,
`options` (["A. ...", ...]), `answer` ("A"...).
"""

from __future__ import annotations

import os
import re

import datasets

from ..prompts import option_letters, videomme_prompt
from .common import check_data_root, eval_row, find_video, first_existing, read_table, rows_to_dataset

DURATIONS = ("short", "medium", "long")
REQUIRED_COLUMNS = ("question_id", "duration", "question", "options", "answer")


def find_videomme_annotations(data_root: str) -> str:
    found = first_existing(
        [
            os.path.join(data_root, "videomme", "test-*.parquet"),
            os.path.join(data_root, "test-*.parquet"),
            os.path.join(data_root, "videomme", "*.parquet"),
            os.path.join(data_root, "*.parquet"),
            os.path.join(data_root, "videomme", "*.json*"),
            os.path.join(data_root, "*.json*"),
        ]
    )
    if found is None:
        raise FileNotFoundError(
            f"No Video-MME annotation file in {data_root}: expected videomme/test-00000-of-00001.parquet "
            "(the lmms-lab/Video-MME release), test-*.parquet, or a .json/.jsonl with the same columns"
        )
    return found


def load_videomme(data_root: str) -> datasets.Dataset:
    """Video-MME questions as evaluation rows (`category` = duration)."""
    data_root = check_data_root(data_root)
    path = find_videomme_annotations(data_root)
    table = read_table(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if "videoID" not in table.column_names and "url" not in table.column_names:
        missing.append("videoID")
    if missing:
        raise ValueError(f"{path} lacks the Video-MME columns {missing}")
    rows = []
    for record in table:
        video_name = record.get("videoID") or str(record["url"]).split("watch?v=")[-1]
        options = list(record["options"])
        duration = str(record["duration"])
        if duration not in DURATIONS:
            raise ValueError(f"{path}: question {record['question_id']} has duration {duration!r}, not one of {DURATIONS}")
        subtitle = os.path.join(data_root, "subtitle", f"{video_name}.srt")
        rows.append(
            eval_row(
                id=record["question_id"],
                video=find_video(os.path.join(data_root, "data"), video_name),
                question=record["question"],
                # The release writes "A. text"; keep the text for matching answers that repeat it.
                options=[re.sub(r"^[A-Z]\.\s*", "", option) for option in options],
                letters=option_letters(len(options)),
                prompt=videomme_prompt(record["question"], options),
                answer=str(record["answer"]).strip(),
                category=duration,
                subtitle=subtitle if os.path.isfile(subtitle) else "",
            )
        )
    return rows_to_dataset(rows)
