"""MLVU dev (Zhou et al., 2024), its 7 multiple-choice task types, in the release layout (`MLVU/MVLU` on the Hub).

```
DATA_ROOT/                       # or DATA_ROOT/MLVU/
  json/1_plotQA.json ... json/7_topic_reasoning.json   # [{"video", "question", "candidates", "answer", ...}, ...]
  video/1_plotQA/<video> ... video/7_topic_reasoning/<video>
```
The headline score, M-avg, is the mean of the 7 task accuracies.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import datasets

from ..prompts import mlvu_prompt, option_letters
from .common import answer_letter, check_data_root, eval_row, read_table, rows_to_dataset

# task type -> file stem (json/<stem>.json, video/<stem>/)
MLVU_TASKS = {
    "plotQA": "1_plotQA",
    "needle": "2_needle",
    "ego": "3_ego",
    "count": "4_count",
    "order": "5_order",
    "anomaly_reco": "6_anomaly_reco",
    "topic_reasoning": "7_topic_reasoning",
}


def _mlvu_root(data_root: str) -> str:
    if not os.path.isdir(os.path.join(data_root, "json")) and os.path.isdir(os.path.join(data_root, "MLVU", "json")):
        return os.path.join(data_root, "MLVU")
    return data_root


def load_mlvu(data_root: str, tasks: Sequence[str] | None = None) -> datasets.Dataset:
    """MLVU dev multiple-choice questions as evaluation rows (`category` = task type). All 7 annotation files must
    exist unless `tasks` names a subset."""
    data_root = _mlvu_root(check_data_root(data_root))
    chosen = list(tasks) if tasks else list(MLVU_TASKS)
    unknown = [task for task in chosen if task not in MLVU_TASKS]
    if unknown:
        raise ValueError(f"Unknown MLVU task type(s) {unknown}; known: {list(MLVU_TASKS)}")
    missing = [f"{MLVU_TASKS[t]}.json" for t in chosen if not os.path.isfile(os.path.join(data_root, "json", f"{MLVU_TASKS[t]}.json"))]
    if missing:
        raise FileNotFoundError(
            f"MLVU annotation files missing under {os.path.join(data_root, 'json')}: {missing} (pass --tasks to "
            "evaluate a subset)"
        )
    rows = []
    for task in chosen:
        stem = MLVU_TASKS[task]
        path = os.path.join(data_root, "json", f"{stem}.json")
        for index, record in enumerate(read_table(path)):
            candidates = [str(c) for c in record["candidates"]]
            letters = option_letters(len(candidates))
            rows.append(
                eval_row(
                    id=f"{task}/{index}",
                    video=os.path.join(data_root, "video", stem, record["video"]),
                    question=record["question"],
                    options=candidates,
                    letters=letters,
                    prompt=mlvu_prompt(record["question"], candidates),
                    answer=answer_letter(candidates, record["answer"], letters, f"{path} row {index}"),
                    category=task,
                )
            )
    return rows_to_dataset(rows)
