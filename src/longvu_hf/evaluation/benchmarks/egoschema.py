"""EgoSchema (Mangalam et al., 2023): five-option questions on 3-minute egocentric clips.

Two release layouts are read:

```
DATA_ROOT/                          # the official release (github.com/egoschema/EgoSchema)
  questions.json                    # [{"q_uid", "question", "option 0", ..., "option 4", ...}, ...]
  subset_answers.json               # {"<q_uid>": <answer index>, ...}  (500 questions)
  good_clips_git/<q_uid>.mp4        # or videos/<q_uid>.mp4

DATA_ROOT/                          # the Hub mirror lmms-lab/egoschema
  Subset/test-00000-of-00001.parquet  # question_idx, question, video_idx, option ["A. ...", ...], answer
  videos/<video_idx>.mp4
```
Only the subset has public answers; with `subset_only=False` every question is predicted and the unanswered ones are
written to a submission file instead of being scored.
"""

from __future__ import annotations

import os
import re

import datasets

from ..prompts import egoschema_prompt, option_letters
from .common import check_data_root, eval_row, find_video, first_existing, read_json, read_table, rows_to_dataset

NUM_OPTIONS = 5


def _video_folder(data_root: str) -> str:
    for name in ("good_clips_git", "videos"):
        if os.path.isdir(os.path.join(data_root, name)):
            return os.path.join(data_root, name)
    return os.path.join(data_root, "good_clips_git")


def _row(data_root, q_uid, video_stem, question, options, answer) -> dict:
    if len(options) != NUM_OPTIONS:
        raise ValueError(f"EgoSchema question {q_uid} has {len(options)} options, expected {NUM_OPTIONS}")
    letters = option_letters(NUM_OPTIONS)
    if answer is not None:
        if not 0 <= int(answer) < NUM_OPTIONS:
            raise ValueError(f"EgoSchema question {q_uid}: answer index {answer} out of range")
        answer = letters[int(answer)]
    return eval_row(
        id=q_uid,
        video=find_video(_video_folder(data_root), video_stem),
        question=question,
        options=options,
        letters=letters,
        prompt=egoschema_prompt(question, options),
        answer=answer,
    )


def load_egoschema(data_root: str, subset_only: bool = True) -> datasets.Dataset:
    """EgoSchema questions as evaluation rows (`answer` None outside the subset)."""
    data_root = check_data_root(data_root)
    rows = []
    questions = os.path.join(data_root, "questions.json")
    if os.path.isfile(questions):
        answers = read_json(os.path.join(data_root, "subset_answers.json"))
        if not isinstance(answers, dict):
            raise ValueError(f"{os.path.join(data_root, 'subset_answers.json')} must map q_uid to an answer index")
        for record in read_table(questions):
            q_uid = record["q_uid"]
            if subset_only and q_uid not in answers:
                continue
            options = [record[f"option {i}"] for i in range(NUM_OPTIONS)]
            rows.append(_row(data_root, q_uid, q_uid, record["question"], options, answers.get(q_uid)))
        return rows_to_dataset(rows)

    parquet = first_existing([os.path.join(data_root, "Subset", "*.parquet")])
    if parquet is None:
        raise FileNotFoundError(
            f"No EgoSchema annotations in {data_root}: expected questions.json + subset_answers.json (official release) "
            "or Subset/test-*.parquet (lmms-lab/egoschema)"
        )
    for record in read_table(parquet):
        options = [re.sub(r"^[A-E]\.\s*", "", str(option)) for option in record["option"]]
        answer = record.get("answer")
        answer = None if answer in (None, "") else int(answer)
        rows.append(_row(data_root, str(record["question_idx"]), str(record["video_idx"]), record["question"], options, answer))
    return rows_to_dataset(rows)
