"""Running a benchmark: data-parallel over `accelerate` processes, streamed to JSONL, resumable, merged on the main
process into `predictions.jsonl` and `report.json`."""

from __future__ import annotations

import os
from collections.abc import Callable

import datasets
from tqdm.auto import tqdm

from .protocols import BenchmarkProtocol
from .records import (
    MERGED_FILE,
    REPORT_FILE,
    RUN_FILE,
    append_record,
    check_run_settings,
    end_partial_line,
    ordered_records,
    pending_ids,
    read_records,
    shard_file,
    write_json,
    write_jsonl,
)
from .report import build_report, scored_letter

SUBMISSION_FILE = "submission.csv"


def check_output_dir(output_dir: str) -> None:
    """An output folder is new, empty, or one this runner wrote (it holds run.json): never touch other files."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output {output_dir} exists and is not a folder")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not os.path.isfile(os.path.join(output_dir, RUN_FILE)):
        raise ValueError(
            f"--output {output_dir} is not empty and holds no {RUN_FILE}: it is not an evaluation output folder; "
            "choose a new or empty folder"
        )


def categories_in_order(dataset: datasets.Dataset) -> list[str]:
    """The dataset's categories in first-appearance order (the breakdown's keys)."""
    return [c for c in dict.fromkeys(dataset["category"]) if c]


def run_evaluation(
    dataset: datasets.Dataset,
    predict: Callable[[dict], dict],
    output_dir: str,
    protocol: BenchmarkProtocol,
    run_settings: dict,
    state=None,
    retry_errors: bool = True,
    progress: bool = True,
    run_info: dict | None = None,
) -> dict | None:
    """Answer every question of `dataset` not answered yet in `output_dir`, sharded over processes, and return the
    report on the main process (None on the others).

    Args:
        dataset: rows in the `benchmarks.EVAL_FEATURES` format.
        predict: row -> record (e.g. a `VideoQAPredictor`); a record with `error` set counts as failed.
        output_dir: where records stream (`records.py` describes the files).
        protocol: decides the scoring in the report.
        run_settings: the settings that decide the generations (model, data, sampling, dtype...). A resume with other
            settings is refused; the report repeats them.
        state: an `accelerate.PartialState` (created if None).
        retry_errors: answer again the questions that failed in an earlier run (e.g. a video added since).
        progress: show a tqdm bar on the main process.
        run_info: more facts for the report's `run` section that do not decide generations (e.g. `--limit`).
    """
    from accelerate import PartialState

    state = state or PartialState()
    check_output_dir(output_dir)
    check_run_settings(output_dir, run_settings)
    state.wait_for_everyone()  # every process has checked before the main one writes
    if state.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        write_json(os.path.join(output_dir, RUN_FILE), run_settings)

    all_ids = list(dataset["id"])
    done_before = read_records(output_dir) if os.path.isdir(output_dir) else {}
    todo = pending_ids(all_ids, done_before, retry_errors)
    if "video" in dataset.column_names:
        # Questions about one video in a row (the predictor encodes each video once); a stable sort keeps the
        # dataset's order within a video, and processes get whole runs of videos.
        video_of = dict(zip(all_ids, dataset["video"]))
        first_seen = {video: rank for rank, video in enumerate(dict.fromkeys(video_of[i] for i in todo))}
        todo = sorted(todo, key=lambda question_id: first_seen[video_of[question_id]])
    # Everyone computes the same to-do list from the same files before anyone appends to them.
    state.wait_for_everyone()

    row_of = {question_id: index for index, question_id in enumerate(all_ids)}
    path = shard_file(output_dir, state.process_index)
    end_partial_line(path)
    with state.split_between_processes(todo) as mine:
        where = f", process 0 of {state.num_processes}" if state.num_processes > 1 else ""
        bar = tqdm(
            mine,
            desc=f"{protocol.benchmark}{where} ({len(all_ids) - len(todo)} of {len(all_ids)} answered before)",
            disable=not (progress and state.is_main_process),
            unit="question",
        )
        for question_id in bar:
            record = predict(dataset[row_of[question_id]])
            record["process_index"] = state.process_index
            append_record(path, record)
        bar.close()
    state.wait_for_everyone()
    if not state.is_main_process:
        return None

    records = ordered_records(all_ids, read_records(output_dir))
    write_jsonl(os.path.join(output_dir, MERGED_FILE), records)
    run = dict(run_settings, **(run_info or {}))
    run.update(num_processes=state.num_processes, answered_before_this_run=len(all_ids) - len(todo))
    report = build_report(records, protocol, run, categories_in_order(dataset))
    unanswered = [r for r in records if not r.get("error") and not r.get("answer")]
    if unanswered:  # EgoSchema's full test set: its answers are hidden behind a submission server
        report["submission_file"] = write_submission(output_dir, unanswered, protocol, dataset, row_of)
    write_json(os.path.join(output_dir, REPORT_FILE), report)
    return report


def write_submission(output_dir: str, records: list[dict], protocol: BenchmarkProtocol, dataset, row_of) -> str:
    """`submission.csv` with `q_uid,answer` (the option index; -1 when the answer names no option under `protocol`)."""
    path = os.path.join(output_dir, SUBMISSION_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write("q_uid,answer\n")
        for record in records:
            letters = dataset[row_of[record["id"]]]["letters"]
            letter = scored_letter(record, protocol)
            handle.write(f"{record['id']},{letters.index(letter) if letter in letters else -1}\n")
    os.replace(path + ".tmp", path)
    return path


__all__ = ["categories_in_order", "check_output_dir", "run_evaluation", "write_submission"]
