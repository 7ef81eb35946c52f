"""MVBench (Li et al., 2024) in its Hub release layout (`OpenGVLab/MVBench`), 20 tasks.

```
DATA_ROOT/
  json/<task>.json          # [{"video", "question", "candidates", "answer", ("start", "end")}, ...]
  video/<source folder>/... # the unzipped video archives (see MVBENCH_TASKS for the folder of each task)
```
Four tasks give clip bounds in seconds; Episodic Reasoning (TVQA) is a folder of 3-fps JPEGs per question.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import datasets

from ..prompts import mvbench_prompt, option_letters
from .common import answer_letter, check_data_root, eval_row, read_table, rows_to_dataset


@dataclass(frozen=True)
class MVBenchTask:
    name: str  # the name the official breakdown uses
    annotation: str  # file under json/
    folder: str  # folder under video/
    kind: str = "file"  # "file" or "frames"
    has_clip: bool = False


MVBENCH_TASKS = (
    MVBenchTask("Action Sequence", "action_sequence.json", "star/Charades_v1_480", has_clip=True),
    MVBenchTask("Action Prediction", "action_prediction.json", "star/Charades_v1_480", has_clip=True),
    MVBenchTask("Action Antonym", "action_antonym.json", "ssv2_video"),
    MVBenchTask("Fine-grained Action", "fine_grained_action.json", "Moments_in_Time_Raw/videos"),
    MVBenchTask("Unexpected Action", "unexpected_action.json", "FunQA_test/test"),
    MVBenchTask("Object Existence", "object_existence.json", "clevrer/video_validation"),
    MVBenchTask("Object Interaction", "object_interaction.json", "star/Charades_v1_480", has_clip=True),
    MVBenchTask("Object Shuffle", "object_shuffle.json", "perception/videos"),
    MVBenchTask("Moving Direction", "moving_direction.json", "clevrer/video_validation"),
    MVBenchTask("Action Localization", "action_localization.json", "sta/sta_video", has_clip=True),
    MVBenchTask("Scene Transition", "scene_transition.json", "scene_qa/video"),
    MVBenchTask("Action Count", "action_count.json", "perception/videos"),
    MVBenchTask("Moving Count", "moving_count.json", "clevrer/video_validation"),
    MVBenchTask("Moving Attribute", "moving_attribute.json", "clevrer/video_validation"),
    MVBenchTask("State Change", "state_change.json", "perception/videos"),
    MVBenchTask("Fine-grained Pose", "fine_grained_pose.json", "nturgbd"),
    MVBenchTask("Character Order", "character_order.json", "perception/videos"),
    MVBenchTask("Egocentric Navigation", "egocentric_navigation.json", "vlnqa"),
    MVBenchTask("Episodic Reasoning", "episodic_reasoning.json", "tvqa/frames_fps3_hq", kind="frames", has_clip=True),
    MVBenchTask("Counterfactual Inference", "counterfactual_inference.json", "clevrer/video_validation"),
)


def select_tasks(tasks: Sequence[str] | None) -> list[MVBenchTask]:
    """All 20 tasks, or those named (by display name or annotation file stem, e.g. "action_sequence")."""
    if not tasks:
        return list(MVBENCH_TASKS)
    by_key = {t.name: t for t in MVBENCH_TASKS} | {t.annotation[: -len(".json")]: t for t in MVBENCH_TASKS}
    unknown = [name for name in tasks if name not in by_key]
    if unknown:
        raise ValueError(f"Unknown MVBench task(s) {unknown}; known: {[t.annotation[:-5] for t in MVBENCH_TASKS]}")
    chosen = {by_key[name].name for name in tasks}
    return [task for task in MVBENCH_TASKS if task.name in chosen]


def load_mvbench(data_root: str, tasks: Sequence[str] | None = None) -> datasets.Dataset:
    """MVBench questions as evaluation rows (`category` = task name). All 20 annotation files must exist unless
    `tasks` names a subset."""
    data_root = check_data_root(data_root)
    chosen = select_tasks(tasks)
    missing = [t.annotation for t in chosen if not os.path.isfile(os.path.join(data_root, "json", t.annotation))]
    if missing:
        raise FileNotFoundError(
            f"MVBench annotation files missing under {os.path.join(data_root, 'json')}: {missing} "
            "(pass --tasks to evaluate a subset)"
        )
    rows = []
    for task in chosen:
        path = os.path.join(data_root, "json", task.annotation)
        table = read_table(path)
        for index, record in enumerate(table):
            candidates = [str(c) for c in record["candidates"]]
            letters = option_letters(len(candidates))
            if task.has_clip and (record.get("start") is None or record.get("end") is None):
                raise ValueError(f"{path} row {index}: the task {task.name} needs 'start' and 'end'")
            clip = (float(record["start"]), float(record["end"])) if task.has_clip else None
            rows.append(
                eval_row(
                    id=f"{task.annotation[:-5]}/{index}",
                    video=os.path.join(data_root, "video", task.folder, record["video"]),
                    video_kind=task.kind,
                    clip=clip,
                    question=record["question"],
                    options=candidates,
                    letters=letters,
                    prompt=mvbench_prompt(record["question"], candidates),
                    answer=answer_letter(candidates, record["answer"], letters, f"{path} row {index}"),
                    category=task.name,
                )
            )
    return rows_to_dataset(rows)
